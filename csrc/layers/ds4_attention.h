// DeepSeek-V4 attention of one layer (transformers' DeepseekV4Attention), for a batch of consecutive tokens of
// one sequence, in its three layer types:
//   DS4_ATTN_WINDOW  sliding-window attention only (compress ratio 0);
//   DS4_ATTN_HCA     plus a non-overlapping compressor: every complete window of m tokens becomes one key;
//   DS4_ATTN_CSA     plus an overlapping compressor and a lightning indexer that picks the top-k entries.
// Shared K=V multi-query attention: one kv head is both key and value; a learned per-head sink logit joins
// the softmax denominator; the output's rotated channels are rotated back (angle -phi at the query position);
// then the grouped low-rank output projection. shared/spec/deepseek4.md "Attention" and "Layer types" give
// the math; transformers' modeling_deepseek_v4.py is the oracle.
// Owns: the layer's arithmetic and the layout of its per-sequence state. Does not own: the weights (views into
// the model file), the state's lifetime (the session's) or the RMS norm in front of the layer (the block's).
//
// Batch invariance: every projection is a batch-invariant matmul, a compressed entry is computed from the
// projections of its window's tokens by one function whatever call they arrived in, and each (token, head)
// is reduced over its keys in position order by one task. So a token's output is bit-identical whether the
// sequence reaches it in one prefill, in chunks of any size or token by token, at any thread count.
#pragma once

#include <cstdint>
#include <vector>

#include "core/thread_pool.h"
#include "layers/matmul.h"

namespace flashmtp {

enum Ds4AttentionKind { DS4_ATTN_WINDOW, DS4_ATTN_HCA, DS4_ATTN_CSA };

struct Ds4AttentionShape {
    Ds4AttentionKind kind;
    int64_t n_embd;
    int64_t n_head;
    int64_t head_dim;
    int64_t n_rot;           // the LAST n_rot channels of each head rotate (also of the indexer's heads)
    int64_t q_lora_rank;
    int64_t o_groups;
    int64_t o_lora_rank;
    int64_t window;          // sliding_window: query t sees the window keys at positions (t - window, t]
    int64_t compress_ratio;  // m: tokens per compressed entry (0 for DS4_ATTN_WINDOW)
    int64_t index_n_head;    // CSA only, like the two below
    int64_t index_head_dim;
    int64_t index_top_k;
    float eps;               // rms_norm_eps
};

// One compressor: `c` = 1 (HCA) or 2 (CSA, overlapping) series of `dim` channels per token.
struct Ds4CompressorWeights {
    WeightMatrix kv;    // [c * dim, n_embd]  C, the pooled values
    WeightMatrix gate;  // [c * dim, n_embd]  Z, the pooling logits
    const float *ape;   // [m, c * dim]       added to Z by the token's offset in its window
    const float *norm;  // [dim]              RMS_w of each entry
};

struct Ds4IndexerWeights {
    Ds4CompressorWeights compressor;  // overlapping, dim = index_head_dim
    WeightMatrix q_b;                 // [index_n_head * index_head_dim, q_lora_rank]
    WeightMatrix proj;                // [index_n_head, n_embd] per-head score weights
};

struct Ds4AttentionWeights {
    WeightMatrix q_a;        // [q_lora_rank, n_embd]
    const float *q_a_norm;   // [q_lora_rank]
    WeightMatrix q_b;        // [n_head * head_dim, q_lora_rank]
    WeightMatrix kv;         // [head_dim, n_embd]
    const float *kv_norm;    // [head_dim]
    const float *sinks;      // [n_head]
    WeightMatrix o_a;        // [o_groups * o_lora_rank, n_head * head_dim / o_groups]: group g is rows
                             // [g * o_lora_rank, (g + 1) * o_lora_rank), applied to heads of group g
    WeightMatrix o_b;        // [n_embd, o_groups * o_lora_rank]
    Ds4CompressorWeights compressor;  // HCA and CSA (dim = head_dim)
    Ds4IndexerWeights indexer;        // CSA
};

// Rotary frequencies f_i, i < n_rot / 2, of pair (2i, 2i+1), in float as transformers computes them (its
// buffers are float32, and an angle is float(position) * f_i in float32).
// "main" (window layers): f_i = theta^(-2i / n_rot).
std::vector<float> ds4_rope_freqs(int64_t n_rot, double theta);
// "compress" (HCA/CSA layers, their compressors and the indexer): YaRN-scaled, no mscale (attention factor 1).
std::vector<float> ds4_rope_freqs_yarn(int64_t n_rot, double theta, double factor, double original_context,
                                       double beta_fast, double beta_slow);

// A compressor's per-sequence state.
struct Ds4CompressorState {
    // Projections of the latest c * m + rewind_depth positions, position p in row p % rows: a window is pooled
    // when its last token arrives, and CSA's entry w also reads window w - 1, so c * m rows are all a forward
    // pass needs; the rewind_depth more keep the rows a rewind of that many positions needs again.
    int64_t rows = 0;
    std::vector<float> kv;       // [rows, c * dim]
    std::vector<float> score;    // [rows, c * dim]  gate logits + ape
    std::vector<float> entries;  // [n_entries, dim]  pooled, normed, rotated at position w * m; grows
};

// One sequence's state of one layer, indexed by absolute position. Rewinding to position p needs the window
// keys of positions [p - window, p), the compressor rows of positions [(floor(p / m) - c + 1) * m, p) and the
// first floor(p / m) entries. The rings keep rewind_depth positions beyond what a forward pass reads, so a
// rewind by up to rewind_depth positions only drops entries and moves n_past: every row it needs is still
// there, and the rows of dropped positions are rewritten before anything reads them.
struct Ds4AttentionState {
    int64_t n_past = 0;             // positions processed
    int64_t first_position = 0;     // window layers: keys before it are not read (ds4_attention_seek)
    int64_t rewind_depth = 0;       // positions ds4_attention_rewind may drop
    int64_t window_rows = 0;        // window + rewind_depth
    std::vector<float> window_kv;   // [window_rows, head_dim]: position p's normed, rotated kv in row p % window_rows
    Ds4CompressorState compressor;  // HCA, CSA
    Ds4CompressorState indexer;     // CSA
};

// Throws std::invalid_argument naming the first size that does not fit the shape.
void ds4_attention_validate(const Ds4AttentionShape &shape, const Ds4AttentionWeights &weights);

// Sizes an empty state (n_past = 0) for the shape, with rings that allow rewinds of up to rewind_depth positions.
void ds4_attention_state_init(const Ds4AttentionShape &shape, Ds4AttentionState &state, int64_t rewind_depth = 0);

// Drops positions [n_past, state.n_past): the state becomes bit-identical in everything later forward passes
// read to one that only ever saw positions [0, n_past). Throws std::invalid_argument unless
// max(state.n_past - rewind_depth, state.first_position) <= n_past <= state.n_past.
void ds4_attention_rewind(const Ds4AttentionShape &shape, Ds4AttentionState &state, int64_t n_past);

// Window layers only: moves an empty or any state to position p as if positions [0, p) had been seen but
// without their keys: queries read window keys from p on. Keys of later positions are exact, and a query at
// position q >= p + window - 1 is exactly what it would be with the full history (its window starts at p or
// later). The MTP head uses it to catch up from the last window of the main model's positions only.
void ds4_attention_seek(const Ds4AttentionShape &shape, Ds4AttentionState &state, int64_t p);

// Work buffers reused across calls; they grow to the largest batch and context seen. One per caller.
struct Ds4AttentionScratch {
    MatmulScratch matmul;
    // per batch (shapes in ds4_attention_forward): rotary angles, projections, the indexer's inputs, the
    // attention output by group, the low-rank output by group and by token
    std::vector<float> rope_cos, rope_sin, q_lora, q, kv, comp_kv, comp_gate;
    std::vector<float> index_kv, index_gate, index_weights, index_q;
    std::vector<float> attn_out, lora_out, lora_by_token;
    std::vector<int64_t> selected;           // [n_tokens, index_top_k] CSA entries each query attends to
    std::vector<int64_t> n_selected;         // [n_tokens]
    std::vector<float> pool_weights;         // [2 m + n_rot] one compressor channel's softmax; an entry's angles
    std::vector<float> index_scores;         // [token block, entries] the indexer's scores
    std::vector<float> thread_scores;        // [n_threads, 8 heads x keys]
    std::vector<int64_t> thread_candidates;  // [n_threads, entries of the latest query] (indexer)
    std::vector<const float *> thread_keys;  // [n_threads, keys of the latest query]
};

// out [n_tokens, n_embd] = attention of x [n_tokens, n_embd] (the normed block input) at positions
// state.n_past .. state.n_past + n_tokens - 1, which then advances by n_tokens.
// rope_freqs [n_rot / 2]: "main" for a window layer, "compress" for HCA/CSA (whose compressors and indexer
// use the same set). out must not alias x.
void ds4_attention_forward(const Ds4AttentionShape &shape, const Ds4AttentionWeights &weights,
                           const float *rope_freqs, const float *x, int64_t n_tokens, float *out,
                           Ds4AttentionState &state, ThreadPool &pool, Ds4AttentionScratch &scratch);

}  // namespace flashmtp
