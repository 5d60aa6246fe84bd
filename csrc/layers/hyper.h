// DeepSeek-V4 manifold-constrained hyper-connections (mHC): the residual state of a token is n parallel
// streams X [n, D] instead of one vector. Each block (attention, then the MoE) is wrapped by a mixer:
//     hc_pre:  (pre, post, comb) = weights projected from RMS(flatten X); block input x = sum_j pre_j X_j
//     hc_post: X'_k = post_k * block(x) + sum_j comb[j, k] X_j         (sum over comb's FIRST index)
// The embedding enters as n identical copies (hc_expand) and the output head collapses the streams into one
// vector before output_norm (hc_head). Mirrors transformers' DeepseekV4HyperConnection, the mixing in
// DeepseekV4DecoderLayer.forward, DeepseekV4HyperHead and DeepseekV4Model.forward; shared/spec/deepseek4.md
// "Residual streams" has the formulas.
// Owns: the arithmetic and its order (all fp32, every sum in a fixed sequential order, so a token's results
// are bit-identical whatever the batch, its position in it and the thread count); the projection goes through
// matmul. Does not own: the streams or the block (the caller's buffers), the weights (views into the file).
// No per-sequence state, so nothing to keep for a rewind: the streams live for one forward pass (the final
// streams that feed the MTP layer are the caller's to keep).
#pragma once

#include <cstdint>
#include <vector>

#include "core/thread_pool.h"
#include "kernels.h"
#include "layers/matmul.h"

namespace flashmtp {

constexpr int kHcMaxStreams = 8;  // hc_mult bound (V4 uses 4): per-element mixing keeps n values in registers

struct HcParams {
    int n_streams;       // hc_mult, n
    int64_t n_embd;      // D
    int sinkhorn_iters;  // hc_sinkhorn_iters (>= 1): the first column normalisation counts as one
    float hc_eps;        // added to pre, to comb, and to every Sinkhorn row / column sum
    float norm_eps;      // rms_norm_eps: the unweighted RMS over the n * D flattened streams
};

// One mixer of a block (GGUF blk.N.hc_attn_* or blk.N.hc_ffn_*).
struct HcMixer {
    WeightMatrix fn;     // [(2 + n) * n rows, n * D columns], F32, F16 or BF16 (GGUF hc_attn_fn {n*D, (2+n)*n})
    const float *base;   // [(2 + n) * n]: pre | post | comb
    const float *scale;  // [3]: pre, post, comb
};

// The output head's collapse (GGUF output_hc_*; the MTP file has its own).
struct HcHead {
    WeightMatrix fn;     // [n rows, n * D columns], F32, F16 or BF16
    const float *base;   // [n]
    const float *scale;  // [1]
};

// Buffers of hc_pre / hc_head; they grow to the largest batch seen and never shrink. One per concurrent caller.
struct HcScratch {
    std::vector<float> normed;  // [n_tokens, n * D]: RMS(flatten X), the projection's input
    std::vector<float> mix;     // [n_tokens, rows of fn]: the raw projection
    MatmulScratch matmul;
};

// Floats per token of the mixing weights hc_pre writes and hc_post reads:
//     pre [n] | post [n] | comb [n, n] (row-major [j, k], doubly stochastic after Sinkhorn)
inline int64_t hc_weights_size(int n_streams) { return int64_t(2 + n_streams) * n_streams; }

// std::invalid_argument naming the problem unless the parameters and the weights fit each other: n in
// [1, kHcMaxStreams], D > 0, sinkhorn_iters >= 1, fn of a float type with the shape above, base and scale set.
// The loader calls these once; hc_pre and hc_head call them too (a few comparisons).
void hc_check(const HcParams &params, const HcMixer &mixer);
void hc_check(const HcParams &params, const HcHead &head);

// streams [n_tokens, n, D] = n copies of each embedding row embd [n_tokens, D]: how the residual state starts.
void hc_expand(const HcParams &params, const float *embd, int64_t n_tokens, float *streams);

// From the streams [n_tokens, n, D]: the mixing weights [n_tokens, hc_weights_size(n)] and the block input
// x [n_tokens, D] (before the block's own weighted RMSNorm). Threads: the projection over fn's rows (matmul),
// everything else one task per token.
void hc_pre(const HcParams &params, const HcMixer &mixer, const float *streams, int64_t n_tokens, float *weights,
            float *x, ThreadPool &pool, HcScratch &scratch, const KernelTable &table = kernels());

// out [n_tokens, n, D] = post ⊗ block_out + comb^T streams, with weights from hc_pre on the same streams and
// block_out [n_tokens, D] the block's output for its x. out may be streams itself (in-place update).
void hc_post(const HcParams &params, const float *weights, const float *block_out, const float *streams,
             int64_t n_tokens, float *out, ThreadPool &pool);

// h [n_tokens, D] = sum_j pre_j X_j with pre = sigmoid(fn . RMS(flatten X) * scale + base) + hc_eps: the
// final streams [n_tokens, n, D] collapsed for output_norm and the output matrix.
void hc_head(const HcParams &params, const HcHead &head, const float *streams, int64_t n_tokens, float *h,
             ThreadPool &pool, HcScratch &scratch, const KernelTable &table = kernels());

}  // namespace flashmtp
