// llama: loading and validating a llama-family GGUF file, and the forward pass shared with qwen2.
// Reading order: hyperparameters, tensor binding (every check happens once, here), state, forward.
#include "models/llama.h"

#include <string>

#include "layers/ffn.h"
#include "layers/norm.h"
#include "models/loader.h"

namespace flashmtp {

namespace {

// ---- hyperparameters ---------------------------------------------------------------------------------------

LlamaHparams read_hparams(const GGUFFile &file, const LlamaVariant &variant) {
    const std::string p = std::string(variant.arch) + ".";
    LlamaHparams h{};
    h.n_embd = required_int(file, p + "embedding_length");
    h.n_layer = required_int(file, p + "block_count");
    h.n_ff = required_int(file, p + "feed_forward_length");
    h.n_ctx_train = required_int(file, p + "context_length");
    h.n_head = required_int(file, p + "attention.head_count");
    h.n_head_kv = optional_int(file, p + "attention.head_count_kv", h.n_head);
    if (h.n_embd % h.n_head != 0) {
        fail(file, "embedding_length " + std::to_string(h.n_embd) + " is not a multiple of head_count " +
                       std::to_string(h.n_head));
    }
    h.head_dim = optional_int(file, p + "attention.key_length", h.n_embd / h.n_head);
    if (optional_int(file, p + "attention.value_length", h.head_dim) != h.head_dim) {
        fail(file, "attention.value_length differs from attention.key_length: not a llama-family model");
    }
    if (h.n_head % h.n_head_kv != 0) {
        fail(file, "head_count " + std::to_string(h.n_head) + " is not a multiple of head_count_kv " +
                       std::to_string(h.n_head_kv));
    }
    h.n_rot = optional_int(file, p + "rope.dimension_count", h.head_dim);
    if (h.n_rot % 2 != 0 || h.n_rot > h.head_dim) {
        fail(file, "rope.dimension_count " + std::to_string(h.n_rot) + " must be even and at most the head size " +
                       std::to_string(h.head_dim));
    }
    h.rms_eps = float(file.get(p + "attention.layer_norm_rms_epsilon").to_f64(file.path() + ": " + p +
                                                                        "attention.layer_norm_rms_epsilon"));
    h.rope_freq_base = optional_float(file, p + "rope.freq_base", 10000.0);
    if (!(h.rms_eps > 0.0f) || !(h.rope_freq_base > 0.0f)) {
        fail(file, "layer_norm_rms_eps and rope.freq_base must be positive");
    }
    h.rope_mode = variant.rope_mode;
    return h;
}

// ---- forward helpers -----------------------------------------------------------------------------------------

// y [n_rows, n] += bias [n]
void add_bias(float *y, const float *bias, int64_t n_rows, int64_t n) {
    for (int64_t r = 0; r < n_rows; ++r) {
        for (int64_t i = 0; i < n; ++i) y[r * n + i] += bias[i];
    }
}

// x [n] += delta [n]
void add_residual(float *x, const float *delta, int64_t n) {
    for (int64_t i = 0; i < n; ++i) x[i] += delta[i];
}

}  // namespace

LlamaModel llama_load(const GGUFFile &file, const LlamaVariant &variant) {
    LlamaModel model{};
    LlamaHparams &h = model.hparams;
    h = read_hparams(file, variant);
    TensorBinder bind(file);

    model.token_embd = bind.token_embedding(h.n_embd, h.n_vocab);

    const int64_t q_dim = h.n_head * h.head_dim, kv_dim = h.n_head_kv * h.head_dim;
    for (int64_t i = 0; i < h.n_layer; ++i) {
        const std::string b = "blk." + std::to_string(i) + ".";
        LlamaLayer layer{};
        layer.attn_norm = bind.vector_f32(b + "attn_norm.weight", h.n_embd);
        layer.attn_q = bind.matrix(b + "attn_q.weight", h.n_embd, q_dim);
        layer.attn_k = bind.matrix(b + "attn_k.weight", h.n_embd, kv_dim);
        layer.attn_v = bind.matrix(b + "attn_v.weight", h.n_embd, kv_dim);
        if (variant.attn_qkv_bias) {
            layer.attn_q_bias = bind.vector_f32(b + "attn_q.bias", q_dim);
            layer.attn_k_bias = bind.vector_f32(b + "attn_k.bias", kv_dim);
            layer.attn_v_bias = bind.vector_f32(b + "attn_v.bias", kv_dim);
        }
        layer.attn_output = bind.matrix(b + "attn_output.weight", q_dim, h.n_embd);
        layer.ffn_norm = bind.vector_f32(b + "ffn_norm.weight", h.n_embd);
        layer.ffn_gate = bind.matrix(b + "ffn_gate.weight", h.n_embd, h.n_ff);
        layer.ffn_up = bind.matrix(b + "ffn_up.weight", h.n_embd, h.n_ff);
        layer.ffn_down = bind.matrix(b + "ffn_down.weight", h.n_ff, h.n_embd);
        model.layers.push_back(layer);
    }
    model.output_norm = bind.vector_f32("output_norm.weight", h.n_embd);
    // Small models tie the output matrix to the embedding and leave output.weight out of the file.
    model.output = bind.has("output.weight") ? bind.matrix("output.weight", h.n_embd, h.n_vocab) : model.token_embd;
    bind.check_all_used(variant.arch);
    return model;
}

LlamaModel llama_load_llama(const GGUFFile &file) { return llama_load(file, {"llama", false, ROPE_NORMAL}); }

// ---- state and forward ---------------------------------------------------------------------------------------

void llama_state_init(const LlamaModel &model, LlamaState &state, int64_t n_ctx, int n_threads) {
    const LlamaHparams &h = model.hparams;
    state.n_ctx = n_ctx;
    state.cache_floats = size_t(h.n_layer) * size_t(n_ctx) * size_t(h.n_head_kv * h.head_dim);
    state.k_cache.reset(new float[state.cache_floats]);  // default-initialised: see LlamaState
    state.v_cache.reset(new float[state.cache_floats]);
    attention_reserve(state.attention_scratch, n_threads, n_ctx);
}

void llama_forward(const LlamaModel &model, LlamaState &s, const int32_t *tokens, int64_t n_tokens, int64_t n_past,
                   int64_t n_logits, float *logits, ThreadPool &pool) {
    const LlamaHparams &h = model.hparams;
    const int64_t n_embd = h.n_embd, q_dim = h.n_head * h.head_dim, kv_dim = h.n_head_kv * h.head_dim;
    const size_t n = size_t(n_tokens);
    s.x.resize(n * size_t(n_embd));
    s.x_norm.resize(n * size_t(n_embd));
    s.q.resize(n * size_t(q_dim));
    s.k.resize(n * size_t(kv_dim));
    s.attn.resize(n * size_t(q_dim));
    s.proj.resize(n * size_t(n_embd));
    s.gate.resize(n * size_t(h.n_ff));
    s.up.resize(n * size_t(h.n_ff));
    s.positions.resize(n);
    for (int64_t t = 0; t < n_tokens; ++t) s.positions[size_t(t)] = int32_t(n_past + t);
    s.rope_cos.resize(n * size_t(h.n_rot / 2));
    s.rope_sin.resize(n * size_t(h.n_rot / 2));
    rope_angles(s.positions.data(), n_tokens, h.n_rot, h.rope_freq_base, s.rope_cos.data(), s.rope_sin.data());

    const DequantizeRowFn dequantize = kernels().dequantize_row[model.token_embd.type];
    const auto *embd = static_cast<const uint8_t *>(model.token_embd.data);  // [n_vocab, row_stride bytes]
    for (int64_t t = 0; t < n_tokens; ++t) {
        dequantize(embd + size_t(tokens[t]) * model.token_embd.row_stride, s.x.data() + t * n_embd, n_embd);
    }

    const AttentionShape shape{h.n_head, h.n_head_kv, h.head_dim};
    for (int64_t il = 0; il < h.n_layer; ++il) {
        const LlamaLayer &layer = model.layers[size_t(il)];
        float *k_layer = s.k_cache.get() + size_t(il) * size_t(s.n_ctx) * size_t(kv_dim);  // [kv_dim, n_ctx]
        float *v_layer = s.v_cache.get() + size_t(il) * size_t(s.n_ctx) * size_t(kv_dim);  // [n_ctx, kv_dim]
        // The batch's values go straight into their cache rows (the projection's output layout); its keys go
        // through s.k (RoPE first), then into the transposed key cache.
        float *k_new = s.k.data();                 // [n_tokens, n_head_kv, head_dim]
        float *v_new = v_layer + n_past * kv_dim;  // [n_tokens, n_head_kv, head_dim]

        rms_norm(s.x.data(), layer.attn_norm, n_tokens, n_embd, h.rms_eps, s.x_norm.data());
        const MatmulOutput qkv[] = {{&layer.attn_q, s.q.data()}, {&layer.attn_k, k_new}, {&layer.attn_v, v_new}};
        matmul_shared_input(qkv, 3, s.x_norm.data(), n_tokens, pool, s.matmul_scratch);
        if (layer.attn_q_bias) {
            add_bias(s.q.data(), layer.attn_q_bias, n_tokens, q_dim);
            add_bias(k_new, layer.attn_k_bias, n_tokens, kv_dim);
            add_bias(v_new, layer.attn_v_bias, n_tokens, kv_dim);
        }
        rope_apply(s.q.data(), s.rope_cos.data(), s.rope_sin.data(), n_tokens, h.n_head, h.head_dim, h.n_rot,
                   h.rope_mode);
        rope_apply(k_new, s.rope_cos.data(), s.rope_sin.data(), n_tokens, h.n_head_kv, h.head_dim, h.n_rot,
                   h.rope_mode);
        for (int64_t t = 0; t < n_tokens; ++t) {
            for (int64_t c = 0; c < kv_dim; ++c) k_layer[c * s.n_ctx + n_past + t] = k_new[t * kv_dim + c];
        }
        attention(shape, s.q.data(), k_layer, s.n_ctx, v_layer, n_past, n_tokens, s.attn.data(), pool,
                  s.attention_scratch);
        matmul(layer.attn_output, s.attn.data(), n_tokens, s.proj.data(), pool, s.matmul_scratch);
        add_residual(s.x.data(), s.proj.data(), n_tokens * n_embd);

        rms_norm(s.x.data(), layer.ffn_norm, n_tokens, n_embd, h.rms_eps, s.x_norm.data());
        const MatmulOutput gate_up[] = {{&layer.ffn_gate, s.gate.data()}, {&layer.ffn_up, s.up.data()}};
        matmul_shared_input(gate_up, 2, s.x_norm.data(), n_tokens, pool, s.matmul_scratch);
        swiglu(s.gate.data(), s.up.data(), n_tokens * h.n_ff, pool);
        matmul(layer.ffn_down, s.gate.data(), n_tokens, s.proj.data(), pool, s.matmul_scratch);
        add_residual(s.x.data(), s.proj.data(), n_tokens * n_embd);
    }

    if (n_logits == 0) return;
    const float *x_last = s.x.data() + (n_tokens - n_logits) * n_embd;  // [n_logits, n_embd]
    rms_norm(x_last, model.output_norm, n_logits, n_embd, h.rms_eps, s.x_norm.data());
    matmul(model.output, s.x_norm.data(), n_logits, logits, pool, s.matmul_scratch);
}

}  // namespace flashmtp
