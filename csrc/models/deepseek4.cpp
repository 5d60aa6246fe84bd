// deepseek4: loading and validating a DeepSeek-V4 GGUF file, the per-sequence state and the forward pass.
// Reading order: hyperparameters, tensor binding (every check happens once, here), state, forward.
#include "models/deepseek4.h"

#include <cmath>
#include <stdexcept>
#include <string>

#include "layers/norm.h"
#include "models/loader.h"

namespace flashmtp {

namespace {

constexpr const char *kArch = "deepseek4";
constexpr int64_t kCsaRatio = 4;  // DeepSeek's rule (and the converter's): ratio 4 is CSA, any other > 0 HCA

// ---- hyperparameters ---------------------------------------------------------------------------------------

std::string key(const char *name) { return std::string(kArch) + "." + name; }

int64_t req(const GGUFFile &file, const char *name) { return required_int(file, key(name)); }

// A non-negative integer that may be absent (counts that are legitimately 0).
int64_t count_or(const GGUFFile &file, const char *name, int64_t fallback) {
    const std::string k = key(name);
    if (!file.has(k)) return fallback;
    const int64_t value = file.get(k).to_i64(file.path() + ": " + k);
    if (value < 0) fail(file, "metadata " + k + " = " + std::to_string(value) + ", expected a value >= 0");
    return value;
}

// A float key; integers are accepted too (llama.cpp writes original_context_length as u32).
double real(const GGUFFile &file, const std::string &k) {
    const GGUFValue &value = file.get(k);
    const std::string what = file.path() + ": " + k;
    return value.is_integer() ? double(value.to_i64(what)) : value.to_f64(what);
}

// Element i of a per-block numeric array key that must have at least n entries.
const GGUFValue &block_array(const GGUFFile &file, const char *name, int64_t n) {
    const std::string k = key(name);
    const GGUFValue &value = file.get(k);
    if (value.type != GGUF_TYPE_ARRAY || value.array_size < uint64_t(n)) {
        fail(file, "metadata " + k + ": expected an array of at least " + std::to_string(n) +
                       " entries (one per block), found " +
                       (value.type == GGUF_TYPE_ARRAY ? std::to_string(value.array_size) + " entries"
                                                      : std::string("a scalar")));
    }
    return value;
}

void expect_equal(const GGUFFile &file, const char *name, int64_t found, int64_t expected, const char *why) {
    if (found != expected) {
        fail(file, "metadata " + key(name) + " = " + std::to_string(found) + ", expected " +
                       std::to_string(expected) + " (" + why + ")");
    }
}

Ds4Hparams read_hparams(const GGUFFile &file) {
    Ds4Hparams h{};
    h.n_embd = req(file, "embedding_length");
    h.n_ctx_train = req(file, "context_length");
    const int64_t block_count = req(file, "block_count");
    // An MTP file (or a main file that carries the MTP block) counts the MTP block in block_count.
    h.n_nextn = count_or(file, "nextn_predict_layers", 0);
    if (h.n_nextn > 1) fail(file, "metadata " + key("nextn_predict_layers") + " = " + std::to_string(h.n_nextn) +
                                      ", expected 0 or 1 (the deepseek4 layout has one MTP block)");
    h.n_layer = block_count - h.n_nextn;
    if (h.n_layer < 1) fail(file, "block_count " + std::to_string(block_count) + " leaves no main block after " +
                                      std::to_string(h.n_nextn) + " MTP block(s): an MTP-only file");
    h.n_head = req(file, "attention.head_count");
    expect_equal(file, "attention.head_count_kv", count_or(file, "attention.head_count_kv", 1), 1,
                 "DeepSeek-V4 attention shares one key/value head");
    h.head_dim = req(file, "attention.key_length");
    expect_equal(file, "attention.value_length", count_or(file, "attention.value_length", h.head_dim), h.head_dim,
                 "keys are values: value_length must equal key_length");
    h.n_rot = req(file, "rope.dimension_count");
    if (h.n_rot % 2 != 0 || h.n_rot > h.head_dim) {
        fail(file, "metadata " + key("rope.dimension_count") + " = " + std::to_string(h.n_rot) +
                       ", expected an even value of at most key_length " + std::to_string(h.head_dim));
    }
    h.n_expert = req(file, "expert_count");
    h.n_expert_used = req(file, "expert_used_count");
    h.n_ff_exp = req(file, "expert_feed_forward_length");
    h.n_ff_shexp = h.n_ff_exp * req(file, "expert_shared_count");
    h.n_hash_layer = count_or(file, "hash_layer_count", 0);
    if (h.n_hash_layer > h.n_layer) {
        fail(file, "metadata " + key("hash_layer_count") + " = " + std::to_string(h.n_hash_layer) +
                       " exceeds the " + std::to_string(h.n_layer) + " main blocks");
    }
    h.rms_eps = float(real(file, key("attention.layer_norm_rms_epsilon")));
    if (!(h.rms_eps > 0.0f)) fail(file, "metadata " + key("attention.layer_norm_rms_epsilon") + " must be > 0");
    h.hc.n_streams = int(req(file, "hyper_connection.count"));
    h.hc.n_embd = h.n_embd;
    h.hc.sinkhorn_iters = int(req(file, "hyper_connection.sinkhorn_iterations"));
    h.hc.hc_eps = float(real(file, key("hyper_connection.epsilon")));
    h.hc.norm_eps = h.rms_eps;
    if (file.has(key("embedding_length_out"))) {
        expect_equal(file, "embedding_length_out", req(file, "embedding_length_out"), h.hc.n_streams * h.n_embd,
                     "hyper_connection.count x embedding_length");
    }
    return h;
}

// Rotary frequency sets of the model (see Ds4Model).
void read_rope(const GGUFFile &file, const Ds4Hparams &h, Ds4Model &model) {
    model.rope_main = ds4_rope_freqs(h.n_rot, optional_float(file, key("rope.freq_base"), 10000.0));
    const double compress_theta = real(file, key("attention.compress_rope_freq_base"));
    const std::string type_key = key("rope.scaling.type");
    const std::string type = file.has(type_key) ? file.get_string(type_key) : "none";
    if (type == "yarn") {
        model.rope_compress = ds4_rope_freqs_yarn(
            h.n_rot, compress_theta, real(file, key("rope.scaling.factor")),
            real(file, key("rope.scaling.original_context_length")),
            optional_float(file, key("rope.scaling.yarn_beta_fast"), 32.0),
            optional_float(file, key("rope.scaling.yarn_beta_slow"), 1.0));
    } else if (type == "none") {
        model.rope_compress = ds4_rope_freqs(h.n_rot, compress_theta);
    } else {
        fail(file, "metadata " + type_key + " = '" + type + "', expected yarn or none");
    }
}

// ---- tensor binding ------------------------------------------------------------------------------------------

// The layers' own checks throw std::invalid_argument; the loader reports them against the file and block.
template <typename Check>
void check_block(const GGUFFile &file, const std::string &block, Check check) {
    try {
        check();
    } catch (const std::invalid_argument &e) {
        fail(file, block + ": " + e.what());
    }
}

Ds4CompressorWeights bind_compressor(TensorBinder &bind, const std::string &prefix, int64_t n_embd, int64_t c,
                                     int64_t dim, int64_t ratio) {
    Ds4CompressorWeights w{};
    w.kv = bind.matrix(prefix + "_kv.weight", n_embd, c * dim);
    w.gate = bind.matrix(prefix + "_gate.weight", n_embd, c * dim);
    w.ape = bind.f32(prefix + "_ape.weight", {c * dim, ratio});
    w.norm = bind.vector_f32(prefix + "_norm.weight", dim);
    return w;
}

HcMixer bind_mixer(TensorBinder &bind, const std::string &prefix, const HcParams &hc) {
    const int64_t rows = hc_weights_size(hc.n_streams);
    return {bind.matrix(prefix + "_fn.weight", hc.n_streams * hc.n_embd, rows),
            bind.vector_f32(prefix + "_base.weight", rows), bind.vector_f32(prefix + "_scale.weight", 3)};
}

// What every block reads from the metadata besides its index: the per-block arrays, the attention sizes and
// the router settings all blocks share (hash blocks add the table, routed ones the bias).
struct BlockConfig {
    const GGUFValue *ratios, *clamp_exp, *clamp_shexp;
    int64_t q_lora_rank, window, o_groups, o_lora_rank;
    MoeRouter router;
};

BlockConfig read_block_config(const GGUFFile &file, const Ds4Hparams &h, int64_t n_blocks) {
    BlockConfig c{};
    c.ratios = &block_array(file, "attention.compress_ratios", n_blocks);
    c.clamp_exp = &block_array(file, "swiglu_clamp_exp", n_blocks);
    c.clamp_shexp = &block_array(file, "swiglu_clamp_shexp", n_blocks);
    c.q_lora_rank = req(file, "attention.q_lora_rank");
    c.window = req(file, "attention.sliding_window");
    c.o_groups = req(file, "attention.output_group_count");
    c.o_lora_rank = req(file, "attention.output_lora_rank");
    if ((h.n_head * h.head_dim) % c.o_groups != 0) {
        fail(file, "metadata " + key("attention.output_group_count") + " = " + std::to_string(c.o_groups) +
                       " does not divide head_count x key_length = " + std::to_string(h.n_head * h.head_dim));
    }
    c.router.n_expert = h.n_expert;
    c.router.n_expert_used = h.n_expert_used;
    c.router.gating = MoeGatingFunc(count_or(file, "expert_gating_func", MOE_GATING_SQRT_SOFTPLUS));
    c.router.weights_norm = file.has(key("expert_weights_norm")) ? file.get_bool(key("expert_weights_norm")) : true;
    c.router.weights_scale = optional_float(file, key("expert_weights_scale"), 1.0);
    return c;
}

}  // namespace

Ds4Layer deepseek4_bind_block(const GGUFFile &file, TensorBinder &bind, const Ds4Hparams &h, int64_t il,
                              bool hash_routed) {
    const BlockConfig config = read_block_config(file, h, il + 1);
    const std::string block = "blk." + std::to_string(il), b = block + ".";
    Ds4Layer layer{};
    const std::string ratio_key = key("attention.compress_ratios") + "[" + std::to_string(il) + "]";
    const int64_t ratio = config.ratios->array_i64(uint64_t(il), ratio_key);
    if (ratio < 0) fail(file, "metadata " + ratio_key + " = " + std::to_string(ratio) + ", expected >= 0");
    const int64_t D = h.n_embd, H = h.n_head, d = h.head_dim, q_lora_rank = config.q_lora_rank;
    Ds4AttentionShape &s = layer.attn_shape;
    s.kind = ratio == 0 ? DS4_ATTN_WINDOW : ratio == kCsaRatio ? DS4_ATTN_CSA : DS4_ATTN_HCA;
    s.n_embd = D;
    s.n_head = H;
    s.head_dim = d;
    s.n_rot = h.n_rot;
    s.q_lora_rank = q_lora_rank;
    s.o_groups = config.o_groups;
    s.o_lora_rank = config.o_lora_rank;
    s.window = config.window;
    s.compress_ratio = ratio;
    s.eps = h.rms_eps;
    if (s.kind == DS4_ATTN_CSA) {
        s.index_n_head = req(file, "attention.indexer.head_count");
        s.index_head_dim = req(file, "attention.indexer.key_length");
        s.index_top_k = req(file, "attention.indexer.top_k");
    }

    layer.attn_norm = bind.vector_f32(b + "attn_norm.weight", D);
    Ds4AttentionWeights &a = layer.attn;
    a.sinks = bind.vector_f32(b + "attn_sinks.weight", H);
    a.q_a = bind.matrix(b + "attn_q_a.weight", D, q_lora_rank);
    a.q_a_norm = bind.vector_f32(b + "attn_q_a_norm.weight", q_lora_rank);
    a.q_b = bind.matrix(b + "attn_q_b.weight", q_lora_rank, H * d);
    a.kv = bind.matrix(b + "attn_kv.weight", D, d);
    a.kv_norm = bind.vector_f32(b + "attn_kv_a_norm.weight", d);
    a.o_a = bind.matrix(b + "attn_output_a.weight", H * d / s.o_groups, s.o_groups * s.o_lora_rank);
    a.o_b = bind.matrix(b + "attn_output_b.weight", s.o_groups * s.o_lora_rank, D);
    if (s.kind == DS4_ATTN_CSA) {
        a.compressor = bind_compressor(bind, b + "attn_compressor", D, 2, d, ratio);
        a.indexer.proj = bind.matrix(b + "indexer.proj.weight", D, s.index_n_head);
        a.indexer.q_b = bind.matrix(b + "indexer.attn_q_b.weight", q_lora_rank, s.index_n_head * s.index_head_dim);
        a.indexer.compressor = bind_compressor(bind, b + "indexer_compressor", D, 2, s.index_head_dim, ratio);
    } else if (s.kind == DS4_ATTN_HCA) {
        a.compressor = bind_compressor(bind, b + "attn_compressor", D, 1, d, ratio);
    }
    check_block(file, block, [&] { ds4_attention_validate(s, a); });

    layer.hc_attn = bind_mixer(bind, b + "hc_attn", h.hc);
    layer.hc_ffn = bind_mixer(bind, b + "hc_ffn", h.hc);
    check_block(file, block, [&] {
        hc_check(h.hc, layer.hc_attn);
        hc_check(h.hc, layer.hc_ffn);
    });

    layer.ffn_norm = bind.vector_f32(b + "ffn_norm.weight", D);
    MoeLayer &m = layer.moe;
    m.router = config.router;
    if (hash_routed) {
        m.router.tid2eid = bind.i32(b + "ffn_gate_tid2eid.weight", {h.n_expert_used, h.n_vocab});
        m.router.n_vocab = h.n_vocab;
    } else {
        m.router.selection_bias = bind.vector_f32(b + "exp_probs_b.bias", h.n_expert);
    }
    m.gate_inp = bind.matrix(b + "ffn_gate_inp.weight", D, h.n_expert);
    m.gate_exps = bind.matrices(b + "ffn_gate_exps.weight", D, h.n_ff_exp, h.n_expert);
    m.up_exps = bind.matrices(b + "ffn_up_exps.weight", D, h.n_ff_exp, h.n_expert);
    m.down_exps = bind.matrices(b + "ffn_down_exps.weight", h.n_ff_exp, D, h.n_expert);
    m.gate_shexp = bind.matrix(b + "ffn_gate_shexp.weight", D, h.n_ff_shexp);
    m.up_shexp = bind.matrix(b + "ffn_up_shexp.weight", D, h.n_ff_shexp);
    m.down_shexp = bind.matrix(b + "ffn_down_shexp.weight", h.n_ff_shexp, D);
    // llama.cpp reads a clamp of 0 as none.
    const float l_exp = float(config.clamp_exp->array_f64(uint64_t(il), key("swiglu_clamp_exp")));
    const float l_shexp = float(config.clamp_shexp->array_f64(uint64_t(il), key("swiglu_clamp_shexp")));
    m.swiglu_limit_exp = l_exp > 0.0f ? l_exp : INFINITY;
    m.swiglu_limit_shexp = l_shexp > 0.0f ? l_shexp : INFINITY;
    check_block(file, block, [&] { moe_check_layer(m); });
    return layer;
}

Ds4Hparams deepseek4_read_hparams(const GGUFFile &file) { return read_hparams(file); }

Ds4Model deepseek4_load(const GGUFFile &file) {
    Ds4Model model{};
    Ds4Hparams &h = model.hparams;
    h = read_hparams(file);
    read_rope(file, h, model);
    TensorBinder bind(file);
    if (h.n_nextn > 0 && !bind.has("blk.0.attn_norm.weight")) {
        fail(file, "an MTP-only file (nextn_predict_layers = " + std::to_string(h.n_nextn) +
                       ", no blk.0.attn_norm.weight): load the main model's file");
    }
    model.token_embd = bind.token_embedding(h.n_embd, h.n_vocab);
    for (int64_t il = 0; il < h.n_layer; ++il) {
        model.layers.push_back(deepseek4_bind_block(file, bind, h, il, il < h.n_hash_layer));
    }
    // The MTP block (and its nextn.* tensors) belongs to the MTP head, which loads it from this file or the
    // sidecar; the main model neither runs nor validates it.
    if (h.n_nextn > 0) bind.skip_prefix("blk." + std::to_string(h.n_layer) + ".");

    const int64_t n = h.hc.n_streams, D = h.n_embd;
    model.hc_head = {bind.matrix("output_hc_fn.weight", n * D, n), bind.vector_f32("output_hc_base.weight", n),
                     bind.vector_f32("output_hc_scale.weight", 1)};
    check_block(file, "output_hc", [&] { hc_check(h.hc, model.hc_head); });
    model.output_norm = bind.vector_f32("output_norm.weight", D);
    model.output = bind.matrix("output.weight", D, h.n_vocab);
    bind.check_all_used(kArch);
    return model;
}

// ---- state and forward ---------------------------------------------------------------------------------------

void deepseek4_state_init(const Ds4Model &model, Ds4State &state, int64_t rewind_depth) {
    state.attn.assign(model.layers.size(), Ds4AttentionState{});
    for (size_t il = 0; il < model.layers.size(); ++il) {
        ds4_attention_state_init(model.layers[il].attn_shape, state.attn[il], rewind_depth);
    }
}

void deepseek4_rewind(const Ds4Model &model, Ds4State &state, int64_t n_past) {
    for (size_t il = 0; il < model.layers.size(); ++il) {
        ds4_attention_rewind(model.layers[il].attn_shape, state.attn[il], n_past);
    }
}

void deepseek4_embed(const WeightMatrix &token_embd, const int32_t *tokens, int64_t n_tokens, float *out) {
    const DequantizeRowFn dequantize = kernels().dequantize_row[token_embd.type];
    const auto *rows = static_cast<const uint8_t *>(token_embd.data);  // [n_vocab, row_stride bytes]
    for (int64_t t = 0; t < n_tokens; ++t) {
        dequantize(rows + size_t(tokens[t]) * token_embd.row_stride, out + t * token_embd.n_cols, token_embd.n_cols);
    }
}

void deepseek4_resize_batch(const Ds4Hparams &h, Ds4State &s, int64_t n_tokens) {
    const size_t T = size_t(n_tokens), D = size_t(h.n_embd), n = size_t(h.hc.n_streams);
    s.embd.resize(T * D);
    s.streams.resize(T * n * D);
    s.hc_weights.resize(T * size_t(hc_weights_size(int(n))));
    s.x.resize(T * D);
    s.x_norm.resize(T * D);
    s.block_out.resize(T * D);
}

void deepseek4_block_forward(const Ds4Hparams &h, const Ds4Layer &layer, const float *rope, const int32_t *tokens,
                             int64_t n_tokens, Ds4AttentionState &attn, Ds4State &s, ThreadPool &pool) {
    const int64_t D = h.n_embd;
    hc_pre(h.hc, layer.hc_attn, s.streams.data(), n_tokens, s.hc_weights.data(), s.x.data(), pool, s.hc_scratch);
    rms_norm(s.x.data(), layer.attn_norm, n_tokens, D, h.rms_eps, s.x_norm.data());
    ds4_attention_forward(layer.attn_shape, layer.attn, rope, s.x_norm.data(), n_tokens, s.block_out.data(), attn,
                          pool, s.attn_scratch);
    hc_post(h.hc, s.hc_weights.data(), s.block_out.data(), s.streams.data(), n_tokens, s.streams.data(), pool);

    hc_pre(h.hc, layer.hc_ffn, s.streams.data(), n_tokens, s.hc_weights.data(), s.x.data(), pool, s.hc_scratch);
    rms_norm(s.x.data(), layer.ffn_norm, n_tokens, D, h.rms_eps, s.x_norm.data());
    moe_forward(layer.moe, s.x_norm.data(), tokens, n_tokens, s.block_out.data(), pool, s.moe_scratch);
    hc_post(h.hc, s.hc_weights.data(), s.block_out.data(), s.streams.data(), n_tokens, s.streams.data(), pool);
}

void deepseek4_logits(const Ds4Hparams &h, const HcHead &head, const float *norm, const WeightMatrix &output,
                      const float *streams, int64_t n_logits, float *logits, Ds4State &s, ThreadPool &pool) {
    hc_head(h.hc, head, streams, n_logits, s.x.data(), pool, s.hc_scratch);
    rms_norm(s.x.data(), norm, n_logits, h.n_embd, h.rms_eps, s.x_norm.data());
    matmul(output, s.x_norm.data(), n_logits, logits, pool, s.matmul_scratch);
}

size_t deepseek4_state_bytes(const Ds4State &state) {
    size_t floats = 0;
    for (const Ds4AttentionState &a : state.attn) {
        floats += a.window_kv.size();
        for (const Ds4CompressorState *c : {&a.compressor, &a.indexer}) {
            floats += c->kv.size() + c->score.size() + c->entries.size();
        }
    }
    return floats * sizeof(float);
}

void deepseek4_forward(const Ds4Model &model, Ds4State &s, const int32_t *tokens, int64_t n_tokens,
                       int64_t n_past, int64_t n_logits, float *logits, ThreadPool &pool) {
    const Ds4Hparams &h = model.hparams;
    if (s.attn.size() != model.layers.size() || s.attn.front().n_past != n_past) {
        throw std::invalid_argument("deepseek4_forward: position " + std::to_string(n_past) +
                                    " is not the state's position count");
    }
    const int64_t D = h.n_embd, n = h.hc.n_streams;
    deepseek4_resize_batch(h, s, n_tokens);

    deepseek4_embed(model.token_embd, tokens, n_tokens, s.embd.data());
    hc_expand(h.hc, s.embd.data(), n_tokens, s.streams.data());

    for (size_t il = 0; il < model.layers.size(); ++il) {
        const Ds4Layer &layer = model.layers[il];
        const float *rope = layer.attn_shape.kind == DS4_ATTN_WINDOW ? model.rope_main.data()
                                                                     : model.rope_compress.data();
        deepseek4_block_forward(h, layer, rope, tokens, n_tokens, s.attn[il], s, pool);
    }
    // s.streams now holds the batch's final residual streams, which the MTP head reads (see Ds4State).

    if (n_logits == 0) return;
    const float *last = s.streams.data() + (n_tokens - n_logits) * n * D;  // [n_logits, n, D]
    deepseek4_logits(h, model.hc_head, model.output_norm, model.output, last, n_logits, logits, s, pool);
}

}  // namespace flashmtp
