// Order of operations follows transformers (the oracle) step by step, all in fp32: the RMS scale multiplies
// the flattened streams before the projection (not the projection's result), activations and the softmax use
// division, Sinkhorn divides by (sum + eps). Every sum over streams runs j = 0 .. n-1 and every sum over the
// n * D elements runs in one fixed order, so no result depends on the batch or on the thread that ran it.
#include "layers/hyper.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace flashmtp {

namespace {

constexpr int64_t kPostChunk = 256;  // hc_post's elements per step: n chunks of inputs stay in L1
// Below this many stream elements (n_tokens x n x D) a per-token loop runs on the calling thread: a few tokens
// of a small model (tiny-v4: 1024 per token) take about as long as a hand-off to the pool.
constexpr int64_t kShareElements = 16384;

bool worth_sharing(const HcParams &p, int64_t n_tokens) { return n_tokens * p.n_streams * p.n_embd >= kShareElements; }

float sigmoid(float z) { return 1.0f / (1.0f + std::exp(-z)); }

void check_params(const HcParams &p, const char *what) {
    if (p.n_streams < 1 || p.n_streams > kHcMaxStreams) {
        throw std::invalid_argument(std::string(what) + ": hc_mult " + std::to_string(p.n_streams) +
                                    " outside [1, " + std::to_string(kHcMaxStreams) + "]");
    }
    if (p.n_embd <= 0) {
        throw std::invalid_argument(std::string(what) + ": n_embd " + std::to_string(p.n_embd) + " is not positive");
    }
    if (p.sinkhorn_iters < 1) {
        throw std::invalid_argument(std::string(what) + ": hc_sinkhorn_iters " + std::to_string(p.sinkhorn_iters) +
                                    " is below 1");
    }
}

// fn must be a plain float matrix of the given shape: the projection then reads the normalised streams in
// fp32 (a quantized fn would quantize its activations too, and fn is small: 1.5 MB F32 at V4-Flash size).
void check_fn(const WeightMatrix &fn, int64_t n_rows, int64_t n_cols, const char *shape, const char *what) {
    if (fn.type != DTYPE_F32 && fn.type != DTYPE_F16 && fn.type != DTYPE_BF16) {
        const DTypeTraits *traits = dtype_traits(fn.type);
        throw std::invalid_argument(std::string(what) + ": fn has type " +
                                    (traits ? traits->name : "id " + std::to_string(fn.type)) +
                                    ", expected f32, f16 or bf16");
    }
    if (fn.n_rows != n_rows || fn.n_cols != n_cols) {
        throw std::invalid_argument(std::string(what) + ": fn is [" + std::to_string(fn.n_rows) + ", " +
                                    std::to_string(fn.n_cols) + "], expected [" + std::to_string(n_rows) + ", " +
                                    std::to_string(n_cols) + "] (" + shape + ")");
    }
    if (!fn.data) throw std::invalid_argument(std::string(what) + ": fn has no data");
}

// normed [n * D] = row / sqrt(mean(row^2) + eps): the unweighted RMS over a token's flattened streams. The
// sum of squares in double, as rms_norm does (16384 terms at V4-Flash size), in kLanes interleaved partial sums
// added up in a fixed order at the end: one chain of dependent adds would cost 16384 add latencies. The scale
// is rounded to fp32 once and multiplies each element, as transformers' rsqrt(...).to(x.dtype) does.
constexpr int64_t kLanes = 8;
void rms_unweighted(const float *row, int64_t n, float eps, float *normed) {
    double lane[kLanes] = {};
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes) {
        for (int64_t l = 0; l < kLanes; ++l) lane[l] += double(row[i + l]) * double(row[i + l]);
    }
    for (; i < n; ++i) lane[i % kLanes] += double(row[i]) * double(row[i]);
    double sum = 0.0;
    for (int64_t l = 0; l < kLanes; ++l) sum += lane[l];
    const float scale = float(1.0 / std::sqrt(sum / double(n) + double(eps)));
    for (i = 0; i < n; ++i) normed[i] = row[i] * scale;
}

// x [D] = sum_j pre[j] * streams[j] over the token's n streams [n, D]; per element the sum runs j = 0 .. n-1.
// Streams on the outer loop so that the inner one runs over contiguous elements (vectorised).
void collapse(const float *pre, const float *streams, int n, int64_t d, float *x) {
    for (int64_t i = 0; i < d; ++i) x[i] = pre[0] * streams[i];
    for (int j = 1; j < n; ++j) {
        const float *stream = streams + j * d;
        for (int64_t i = 0; i < d; ++i) x[i] += pre[j] * stream[i];
    }
}

// comb [n, n] (row-major [j, k]) -> Sinkhorn-Knopp towards a doubly stochastic matrix, in transformers' order:
// one column normalisation, then (iters - 1) rounds of rows then columns.
void sinkhorn(float *comb, int n, int iters, float eps) {
    auto normalise_columns = [&] {
        for (int k = 0; k < n; ++k) {
            float sum = comb[k];
            for (int j = 1; j < n; ++j) sum += comb[j * n + k];
            for (int j = 0; j < n; ++j) comb[j * n + k] /= sum + eps;
        }
    };
    normalise_columns();
    for (int it = 1; it < iters; ++it) {
        for (int j = 0; j < n; ++j) {
            float *row = comb + j * n;
            float sum = row[0];
            for (int k = 1; k < n; ++k) sum += row[k];
            for (int k = 0; k < n; ++k) row[k] /= sum + eps;
        }
        normalise_columns();
    }
}

// mix [n_tokens, fn.n_rows] = fn . RMS(flatten streams), one token's normalisation per task, then matmul.
void project(const HcParams &p, const WeightMatrix &fn, const float *streams, int64_t n_tokens, ThreadPool &pool,
             HcScratch &scratch, const KernelTable &table) {
    const int64_t width = p.n_streams * p.n_embd;
    if (scratch.normed.size() < size_t(n_tokens * width)) scratch.normed.resize(size_t(n_tokens * width));
    if (scratch.mix.size() < size_t(n_tokens * fn.n_rows)) scratch.mix.resize(size_t(n_tokens * fn.n_rows));
    float *normed = scratch.normed.data();
    pool.parallel_for(n_tokens, worth_sharing(p, n_tokens), [&](int64_t t, int) {
        rms_unweighted(streams + t * width, width, p.norm_eps, normed + t * width);
    });
    matmul(fn, normed, n_tokens, scratch.mix.data(), pool, scratch.matmul, table);
}

void check_call(const void *a, const void *b, const void *c, int64_t n_tokens, const char *what) {
    if (n_tokens < 0) throw std::invalid_argument(std::string(what) + ": negative n_tokens");
    if (n_tokens > 0 && (!a || !b || !c)) throw std::invalid_argument(std::string(what) + ": null buffer");
}

}  // namespace

void hc_check(const HcParams &params, const HcMixer &mixer) {
    check_params(params, "hc mixer");
    check_fn(mixer.fn, hc_weights_size(params.n_streams), params.n_streams * params.n_embd, "[(2 + n) * n, n * D]",
             "hc mixer");
    if (!mixer.base || !mixer.scale) throw std::invalid_argument("hc mixer: base or scale missing");
}

void hc_check(const HcParams &params, const HcHead &head) {
    check_params(params, "hc head");
    check_fn(head.fn, params.n_streams, params.n_streams * params.n_embd, "[n, n * D]", "hc head");
    if (!head.base || !head.scale) throw std::invalid_argument("hc head: base or scale missing");
}

void hc_expand(const HcParams &params, const float *embd, int64_t n_tokens, float *streams) {
    check_params(params, "hc_expand");
    check_call(embd, streams, streams, n_tokens, "hc_expand");
    const int64_t d = params.n_embd;
    for (int64_t t = 0; t < n_tokens; ++t) {
        for (int j = 0; j < params.n_streams; ++j) {
            std::copy(embd + t * d, embd + (t + 1) * d, streams + (t * params.n_streams + j) * d);
        }
    }
}

void hc_pre(const HcParams &params, const HcMixer &mixer, const float *streams, int64_t n_tokens, float *weights,
            float *x, ThreadPool &pool, HcScratch &scratch, const KernelTable &table) {
    hc_check(params, mixer);
    check_call(streams, weights, x, n_tokens, "hc_pre");
    if (n_tokens == 0) return;
    project(params, mixer.fn, streams, n_tokens, pool, scratch, table);
    const int n = params.n_streams;
    const int64_t d = params.n_embd, n_weights = hc_weights_size(n);
    const float *mix_all = scratch.mix.data();
    pool.parallel_for(n_tokens, worth_sharing(params, n_tokens), [&](int64_t t, int) {
        const float *mix = mix_all + t * n_weights;  // [n_weights]: pre | post | comb, before activation
        float *w = weights + t * n_weights;
        float *pre = w, *post = w + n, *comb = w + 2 * n;
        for (int j = 0; j < n; ++j) {
            pre[j] = sigmoid(mix[j] * mixer.scale[0] + mixer.base[j]) + params.hc_eps;
            post[j] = 2.0f * sigmoid(mix[n + j] * mixer.scale[1] + mixer.base[n + j]);
        }
        // comb row j: softmax over k of mix * scale + base, then + eps
        for (int j = 0; j < n; ++j) {
            float *row = comb + j * n;
            const float *mix_row = mix + 2 * n + j * n, *base_row = mixer.base + 2 * n + j * n;
            for (int k = 0; k < n; ++k) row[k] = mix_row[k] * mixer.scale[2] + base_row[k];
            float max = row[0];
            for (int k = 1; k < n; ++k) max = std::max(max, row[k]);
            float sum = 0.0f;
            for (int k = 0; k < n; ++k) {
                row[k] = std::exp(row[k] - max);
                sum += row[k];
            }
            for (int k = 0; k < n; ++k) row[k] = row[k] / sum + params.hc_eps;
        }
        sinkhorn(comb, n, params.sinkhorn_iters, params.hc_eps);
        collapse(pre, streams + t * n * d, n, d, x + t * d);
    });
}

void hc_post(const HcParams &params, const float *weights, const float *block_out, const float *streams,
             int64_t n_tokens, float *out, ThreadPool &pool) {
    check_params(params, "hc_post");
    check_call(weights, block_out, streams, n_tokens, "hc_post");
    if (n_tokens > 0 && !out) throw std::invalid_argument("hc_post: null buffer");
    const int n = params.n_streams;
    const int64_t d = params.n_embd, n_weights = hc_weights_size(n);
    pool.parallel_for(n_tokens, worth_sharing(params, n_tokens), [&](int64_t t, int) {
        const float *post = weights + t * n_weights + n, *comb = post + n;  // post [n], comb [n, n]
        const float *y = block_out + t * d;                                 // [D]
        const float *in = streams + t * n * d;                              // [n, D]
        float *dst = out + t * n * d;                                       // [n, D], may be `in`
        // In chunks of kPostChunk elements: the chunk of every input stream is copied aside before any output
        // stream overwrites it (in-place update), and the inner loops run over contiguous elements. Per element
        // the order is fixed: acc = comb[0, k] X_0, then + comb[j, k] X_j for j = 1 .. n-1, then post_k y + acc.
        for (int64_t start = 0; start < d; start += kPostChunk) {
            const int64_t len = std::min(kPostChunk, d - start);
            float column[kHcMaxStreams][kPostChunk];  // X_j[start .. start + len)
            for (int j = 0; j < n; ++j) std::copy(in + j * d + start, in + j * d + start + len, column[j]);
            for (int k = 0; k < n; ++k) {
                float acc[kPostChunk];
                for (int64_t i = 0; i < len; ++i) acc[i] = comb[k] * column[0][i];
                for (int j = 1; j < n; ++j) {
                    const float c = comb[j * n + k];
                    for (int64_t i = 0; i < len; ++i) acc[i] += c * column[j][i];
                }
                float *out_k = dst + k * d + start;
                for (int64_t i = 0; i < len; ++i) out_k[i] = post[k] * y[start + i] + acc[i];
            }
        }
    });
}

void hc_head(const HcParams &params, const HcHead &head, const float *streams, int64_t n_tokens, float *h,
             ThreadPool &pool, HcScratch &scratch, const KernelTable &table) {
    hc_check(params, head);
    check_call(streams, h, h, n_tokens, "hc_head");
    if (n_tokens == 0) return;
    project(params, head.fn, streams, n_tokens, pool, scratch, table);
    const int n = params.n_streams;
    const int64_t d = params.n_embd;
    const float *mix_all = scratch.mix.data();
    pool.parallel_for(n_tokens, worth_sharing(params, n_tokens), [&](int64_t t, int) {
        float pre[kHcMaxStreams];
        for (int j = 0; j < n; ++j) pre[j] = sigmoid(mix_all[t * n + j] * head.scale[0] + head.base[j]) + params.hc_eps;
        collapse(pre, streams + t * n * d, n, d, h + t * d);
    });
}

}  // namespace flashmtp
