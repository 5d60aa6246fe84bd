// The llama decoder and its close relatives (qwen2): pre-norm blocks of grouped-query attention with RoPE
// and a SwiGLU feed-forward, RMSNorm everywhere, tied or untied output matrix.
// Owns: the hyperparameters and weight views of one such model, their validation against the GGUF file, the
// per-sequence state (KV cache, activation buffers) and the forward pass over a batch of tokens.
// Does not own: the file mapping (the GGUFFile, kept alive by the engine), the threads, the arithmetic of the
// blocks (csrc/layers).
//
// The architectures differ only in the options of LlamaVariant: llama.cpp loads them (llama_load_llama),
// qwen2.cpp adds q/k/v biases and NeoX RoPE (qwen2_load).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/gguf.h"
#include "core/thread_pool.h"
#include "layers/attention.h"
#include "layers/matmul.h"
#include "layers/rope.h"

namespace flashmtp {

struct LlamaVariant {
    const char *arch;        // GGUF general.architecture, also the metadata key prefix
    bool attn_qkv_bias;      // qwen2: attn_q/k/v.bias [out] added after the projection
    RopeMode rope_mode;
};

struct LlamaHparams {
    int64_t n_vocab, n_embd, n_layer, n_ff, n_ctx_train;
    int64_t n_head, n_head_kv, head_dim, n_rot;
    float rms_eps, rope_freq_base;
    RopeMode rope_mode;
};

struct LlamaLayer {
    const float *attn_norm;                             // [n_embd]
    WeightMatrix attn_q;                                // [n_head * head_dim, n_embd]
    WeightMatrix attn_k, attn_v;                        // [n_head_kv * head_dim, n_embd]
    WeightMatrix attn_output;                           // [n_embd, n_head * head_dim]
    const float *attn_q_bias, *attn_k_bias, *attn_v_bias;  // [rows of the projection]; null without biases
    const float *ffn_norm;                              // [n_embd]
    WeightMatrix ffn_gate, ffn_up, ffn_down;            // [n_ff, n_embd], [n_ff, n_embd], [n_embd, n_ff]
};

struct LlamaModel {
    LlamaHparams hparams;
    WeightMatrix token_embd;  // [n_vocab, n_embd], rows dequantized one token at a time
    std::vector<LlamaLayer> layers;
    const float *output_norm;  // [n_embd]
    WeightMatrix output;       // [n_vocab, n_embd]: output.weight, or token_embd when the file ties them
};

// Reads and validates the hyperparameters and every tensor of `file` for `variant`: each expected tensor must
// exist with its shape and a type the kernels can use, and no other tensor may be present. Throws GGUFError
// naming the file, the tensor or key, and expected vs found. The views point into `file`'s mapping.
LlamaModel llama_load(const GGUFFile &file, const LlamaVariant &variant);
LlamaModel llama_load_llama(const GGUFFile &file);  // llama.cpp
LlamaModel qwen2_load(const GGUFFile &file);        // qwen2.cpp

// Everything one sequence owns: the KV cache, indexed by absolute position, and the activation buffers,
// sized for the largest batch seen so far.
struct LlamaState {
    int64_t n_ctx = 0;
    // k_cache [n_layer, n_head_kv, head_dim, n_ctx]: keys transposed, position innermost (attention.h);
    // v_cache [n_layer, n_ctx, n_head_kv * head_dim]. Both left uninitialised: a position is written before any
    // query reads it, and pages no position has reached are never touched, so they cost address space but
    // little memory (a 32k-position cache for a chat of a few hundred tokens stays a few MB resident).
    std::unique_ptr<float[]> k_cache, v_cache;
    size_t cache_floats = 0;  // of each
    // Activations of one batch; resized by llama_forward.
    std::vector<float> x;      // [n_tokens, n_embd] residual stream
    std::vector<float> x_norm; // [n_tokens, n_embd]
    std::vector<float> q;      // [n_tokens, n_head * head_dim]
    std::vector<float> k;      // [n_tokens, n_head_kv * head_dim] this batch's keys, before the cache
    std::vector<float> attn;   // [n_tokens, n_head * head_dim]
    std::vector<float> proj;   // [n_tokens, n_embd] attention or ffn output projection
    std::vector<float> gate, up;  // [n_tokens, n_ff]
    std::vector<int32_t> positions;  // [n_tokens]
    std::vector<float> rope_cos, rope_sin;  // [n_tokens, n_rot / 2]
    MatmulScratch matmul_scratch;
    AttentionScratch attention_scratch;
};

// A state for contexts of n_ctx positions, for a pool of n_threads.
void llama_state_init(const LlamaModel &model, LlamaState &state, int64_t n_ctx, int n_threads);

// Runs tokens [n_tokens] at positions n_past.. through the model, writing their keys and values into the cache,
// and the logits of the last n_logits tokens into logits [n_logits, n_vocab]. The caller has checked the token
// ids, 0 <= n_logits <= n_tokens and n_past + n_tokens <= state.n_ctx.
void llama_forward(const LlamaModel &model, LlamaState &state, const int32_t *tokens, int64_t n_tokens,
                   int64_t n_past, int64_t n_logits, float *logits, ThreadPool &pool);

}  // namespace flashmtp
