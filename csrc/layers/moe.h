// DeepSeek-V4 mixture-of-experts FFN: a router picks k of n_expert experts per token (learned top-k, or a fixed
// token-id table on the first "hash" layers), each picked expert is a clamped SwiGLU FFN, and one shared expert
// sees every token:
//     out[t] = sum_{i < k} w[t, i] * expert_{ids[t, i]}(x[t]) + shared(x[t])
//     expert(x) = W2 (silu(min(W1 x, L)) * clamp(W3 x, -L, L))
// Owns: routing (scores, top-k or hash lookup, weight normalisation), grouping a batch's token slots by expert,
// and the combine. Does not own: the norm before it (x arrives normed), the residual around it, the matrix
// products (layers/matmul.h), the activation (kernels' swiglu).
//
// Batch invariance (DESIGN.md): a token's output is bit-identical for any batch size, position and thread
// count. Routing and the combine are per token; every expert runs on the rows of its tokens through matmul,
// which is itself invariant; a token sums its k expert outputs in ascending expert id (ties, possible on hash
// layers, by slot) whatever the batch: a canonical order that does not depend on how top-k lists its picks,
// and the order transformers accumulates in (index_add_ over experts in ascending id).
//
// State: none. The layer keeps nothing between calls, so rewinding a sequence needs nothing from it.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "core/thread_pool.h"
#include "layers/matmul.h"

namespace flashmtp {

// Router score functions, numbered as llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE (GGUF expert_gating_func).
enum MoeGatingFunc : uint32_t {
    MOE_GATING_SIGMOID = 2,         // 1 / (1 + e^-z)
    MOE_GATING_SQRT_SOFTPLUS = 4,   // sqrt(log(1 + e^z)): DeepSeek-V4's "sqrtsoftplus"
};

// The routing half of an MoE layer: hyperparameters and weight views (GGUF names in brackets).
struct MoeRouter {
    int64_t n_expert = 0;
    int64_t n_expert_used = 0;      // k
    MoeGatingFunc gating = MOE_GATING_SQRT_SOFTPLUS;
    bool weights_norm = true;       // [expert_weights_norm] divide the k weights by their sum (+ 1e-20)
    float weights_scale = 1.0f;     // [expert_weights_scale] then multiply by this
    // Routed layers: [exp_probs_b] [n_expert] added to the scores to choose the experts, never to weight them;
    // nullptr for none. Hash layers: nullptr.
    const float *selection_bias = nullptr;
    // Hash layers: [ffn_gate_tid2eid] [n_vocab, k] (ggml {k, n_vocab}) expert ids of each token id; nullptr on
    // routed layers.
    const int32_t *tid2eid = nullptr;
    int64_t n_vocab = 0;            // rows of tid2eid
};

// Routes n_tokens tokens from their router logits [n_tokens, n_expert] (x times ffn_gate_inp), which it
// overwrites with the scores (so that routing needs no buffer of its own):
//     score = gating(logits)
//     routed layers: ids = the k largest score + selection_bias, in descending order; equal values: the lower
//                    expert id first; NaN last (deterministic)
//     hash layers:   ids = tid2eid[token_ids[t]] in table order (token_ids [n_tokens] is used only here)
//     weights = score[ids] / (sum of them + 1e-20) * weights_scale   (without weights_norm: score[ids] * scale)
// ids [n_tokens, k], weights [n_tokens, k]. Throws std::invalid_argument naming the problem on a bad router
// (k outside [1, n_expert], an unknown gating function, a hash layer without token ids or with a bias), a token
// id outside [0, n_vocab) or a table entry outside [0, n_expert).
void moe_route(const MoeRouter &router, float *logits, const int32_t *token_ids, int64_t n_tokens, int32_t *ids,
               float *weights);

// One MoE FFN layer as the GGUF file holds it (ggml shapes in braces: first dimension contiguous).
struct MoeLayer {
    MoeRouter router;
    WeightMatrix gate_inp;     // [ffn_gate_inp] {D, n_expert}: n_expert rows of D
    // [ffn_gate_exps], [ffn_up_exps] {D, I, n_expert} and [ffn_down_exps] {I, D, n_expert}: each view is expert
    // 0's matrix (I rows of D; D rows of I); expert e's starts n_rows * row_stride bytes after expert e - 1's.
    WeightMatrix gate_exps;
    WeightMatrix up_exps;
    WeightMatrix down_exps;
    WeightMatrix gate_shexp;   // [ffn_gate_shexp] {D, I_shared}
    WeightMatrix up_shexp;     // [ffn_up_shexp] {D, I_shared}
    WeightMatrix down_shexp;   // [ffn_down_shexp] {I_shared, D}
    // SwiGLU clamps L of the routed and the shared experts ([swiglu_clamp_exp] / [swiglu_clamp_shexp] of the
    // layer); INFINITY for none (llama.cpp reads a GGUF value of 0 as none).
    float swiglu_limit_exp = INFINITY;
    float swiglu_limit_shexp = INFINITY;
};

// Throws std::invalid_argument naming the problem when the router is invalid (as moe_route) or the matrices'
// shapes do not fit together. moe_forward checks this on every call (a few compares); a loader calls it once.
void moe_check_layer(const MoeLayer &layer);

// Expert e's matrix of a 3D expert tensor whose view is expert 0's.
WeightMatrix moe_expert_matrix(const WeightMatrix &experts, int64_t e);

// Buffers of moe_forward. They grow to the largest batch seen and never shrink, so steady-state decoding
// allocates nothing. One per concurrent caller.
struct MoeScratch {
    std::vector<float> logits;         // [n_tokens, n_expert] router logits, then scores
    std::vector<int32_t> ids;          // [n_tokens, k]
    std::vector<float> weights;        // [n_tokens, k]
    std::vector<int64_t> expert_begin; // [n_expert + 1] first grouped row of each expert
    std::vector<int64_t> expert_cursor;  // [n_expert] next free grouped row while grouping
    std::vector<int64_t> slot_row;     // [n_tokens, k] grouped row of each (token, slot); then sorted per token
    std::vector<int64_t> row_token;    // [n_tokens * k] token of each grouped row
    std::vector<float> row_weight;     // [n_tokens * k] routing weight of each grouped row
    std::vector<float> x_grouped;      // [n_tokens * k, D] token rows in expert order
    std::vector<float> gate;           // [n_tokens * k, I] routed gate, then the SwiGLU output
    std::vector<float> up;             // [n_tokens * k, I]
    std::vector<float> y_grouped;      // [n_tokens * k, D] expert outputs, unweighted
    std::vector<float> shared_gate;    // [n_tokens, I_shared]
    std::vector<float> shared_up;      // [n_tokens, I_shared]
    std::vector<float> shared_out;     // [n_tokens, D]
    MatmulScratch matmul;
};

// out [n_tokens, D] = the layer applied to x [n_tokens, D] (already normed; out may be x); token_ids [n_tokens]
// feed hash layers (may be nullptr on routed layers). Each expert picked by some token runs once for the batch,
// on the rows of its tokens, so its weights are read once per call whatever n_tokens is. Throws as moe_route
// and moe_check_layer do.
void moe_forward(const MoeLayer &layer, const float *x, const int32_t *token_ids, int64_t n_tokens, float *out,
                 ThreadPool &pool, MoeScratch &scratch);

}  // namespace flashmtp
