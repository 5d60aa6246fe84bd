// deepseek4 MTP head: loading (from a sidecar or the main file) with its checks against the main model, and
// the forward pass. The block itself is a main-model block (models/deepseek4.cpp binds and runs it).
#include "models/deepseek4_mtp.h"

#include <cstring>
#include <string>

#include "kernels.h"
#include "layers/norm.h"
#include "models/loader.h"

namespace flashmtp {

namespace {

void expect_same(const GGUFFile &file, const char *what, int64_t found, int64_t expected) {
    if (found != expected) {
        fail(file, std::string("the MTP head does not match the main model: ") + what + " " +
                       std::to_string(found) + " vs the main model's " + std::to_string(expected));
    }
}

// A copy of a main-model matrix carried by a sidecar: the main model's view when the bytes are identical (the
// copy's pages are then never read again), else the copy.
WeightMatrix shared_or_copy(const WeightMatrix &copy, const WeightMatrix &main, bool &identical) {
    identical = copy.type == main.type && copy.n_rows == main.n_rows && copy.n_cols == main.n_cols &&
                copy.row_stride == main.row_stride &&
                std::memcmp(copy.data, main.data, size_t(copy.n_rows) * copy.row_stride) == 0;
    return identical ? main : copy;
}

}  // namespace

bool deepseek4_has_mtp_block(const GGUFFile &file) {
    const Ds4Hparams h = deepseek4_read_hparams(file);
    return h.n_nextn == 1 && file.find_tensor("blk." + std::to_string(h.n_layer) + ".nextn.eh_proj.weight");
}

Ds4MtpHead deepseek4_mtp_load(const GGUFFile &file, const Ds4Model &main) {
    const std::string &arch = file.get_string("general.architecture");
    if (arch != "deepseek4") fail(file, "architecture '" + arch + "' is not deepseek4: not a DeepSeek-V4 MTP head");
    const Ds4Hparams h = deepseek4_read_hparams(file);
    const Ds4Hparams &m = main.hparams;
    if (h.n_nextn != 1) {
        fail(file, "no MTP block (deepseek4.nextn_predict_layers = " + std::to_string(h.n_nextn) +
                       ", expected 1): not an MTP file, and the main file carries no MTP block");
    }
    expect_same(file, "hidden size (embedding_length)", h.n_embd, m.n_embd);
    expect_same(file, "main block count (block_count - nextn_predict_layers)", h.n_layer, m.n_layer);
    expect_same(file, "hyper-connection count", h.hc.n_streams, m.hc.n_streams);
    expect_same(file, "head count", h.n_head, m.n_head);
    expect_same(file, "key length", h.head_dim, m.head_dim);
    expect_same(file, "rope dimension count", h.n_rot, m.n_rot);

    Ds4MtpHead head{};
    TensorBinder bind(file);
    // A main file carrying the block: everything but the block is the main model's (already bound there).
    const bool in_main_file = bind.has("blk.0.attn_norm.weight");
    const int64_t il = m.n_layer, D = m.n_embd, n = m.hc.n_streams;
    const std::string b = "blk." + std::to_string(il) + ".", nextn = b + "nextn.";
    // The block's own hyperparameters (expert counts and sizes) are read from this file: a sidecar from
    // another conversion of the same model may differ only where the block's tensors say so.
    Ds4Hparams block_h = m;
    block_h.n_expert = h.n_expert;
    block_h.n_expert_used = h.n_expert_used;
    block_h.n_ff_exp = h.n_ff_exp;
    block_h.n_ff_shexp = h.n_ff_shexp;
    head.block = deepseek4_bind_block(file, bind, block_h, il, false);
    if (head.block.attn_shape.kind != DS4_ATTN_WINDOW) {
        fail(file, "MTP block " + b.substr(0, b.size() - 1) + " has compress ratio " +
                       std::to_string(head.block.attn_shape.compress_ratio) + ", expected 0 (window attention)");
    }
    head.eh_proj = bind.matrix(nextn + "eh_proj.weight", 2 * D, D);
    head.enorm = bind.vector_f32(nextn + "enorm.weight", D);
    head.hnorm = bind.vector_f32(nextn + "hnorm.weight", D);

    if (bind.has(nextn + "hc_head_fn.weight")) {
        head.hc_head = {bind.matrix(nextn + "hc_head_fn.weight", n * D, n),
                        bind.vector_f32(nextn + "hc_head_base.weight", n),
                        bind.vector_f32(nextn + "hc_head_scale.weight", 1)};
    } else if (!in_main_file) {
        head.hc_head = {bind.matrix("output_hc_fn.weight", n * D, n), bind.vector_f32("output_hc_base.weight", n),
                        bind.vector_f32("output_hc_scale.weight", 1)};
    } else {
        fail(file, "the main file's MTP block has no hc-head (" + nextn + "hc_head_fn.weight): the root " +
                       "output_hc_* tensors are the main model's");
    }
    try {
        hc_check(m.hc, head.hc_head);
    } catch (const std::invalid_argument &e) {
        fail(file, "MTP hc-head: " + std::string(e.what()));
    }

    head.token_embd = main.token_embd;
    head.output = main.output;
    const float *output_norm = main.output_norm;
    if (!in_main_file) {
        bool identical = false;
        if (bind.has("token_embd.weight")) {
            head.token_embd = shared_or_copy(bind.matrix("token_embd.weight", D, m.n_vocab), main.token_embd,
                                             identical);
            head.shared_copies.emplace_back("token_embd.weight", identical);
        }
        if (bind.has("output.weight")) {
            head.output = shared_or_copy(bind.matrix("output.weight", D, m.n_vocab), main.output, identical);
            head.shared_copies.emplace_back("output.weight", identical);
        }
        if (bind.has("output_norm.weight")) {
            const float *copy = bind.vector_f32("output_norm.weight", D);
            identical = std::memcmp(copy, main.output_norm, size_t(D) * sizeof(float)) == 0;
            if (!identical) output_norm = copy;
            head.shared_copies.emplace_back("output_norm.weight", identical);
        }
    }
    // llama.cpp's optional private embedding and output of the head
    if (bind.has(nextn + "embed_tokens.weight")) {
        head.token_embd = bind.matrix(nextn + "embed_tokens.weight", D, m.n_vocab);
    }
    if (bind.has(nextn + "shared_head_head.weight")) {
        head.output = bind.matrix(nextn + "shared_head_head.weight", D, m.n_vocab);
    }
    if (!kernels().dequantize_row[head.token_embd.type]) {
        fail(file, std::string("the MTP head's token embedding type ") + dtype_traits(head.token_embd.type)->name +
                       " cannot be dequantized");
    }
    head.head_norm = bind.has(nextn + "shared_head_norm.weight") ? bind.vector_f32(nextn + "shared_head_norm.weight", D)
                                                                 : output_norm;
    if (!in_main_file) bind.check_all_used("deepseek4 (MTP sidecar)");
    return head;
}

void deepseek4_mtp_state_init(const Ds4MtpHead &head, Ds4State &state, int64_t rewind_depth) {
    state.attn.assign(1, Ds4AttentionState{});
    ds4_attention_state_init(head.block.attn_shape, state.attn[0], rewind_depth);
}

void deepseek4_mtp_forward(const Ds4Model &main, const Ds4MtpHead &head, Ds4State &s, const float *x_streams,
                           const int32_t *next_tokens, int64_t n_tokens, int64_t n_logits, float *logits,
                           ThreadPool &pool) {
    const Ds4Hparams &h = main.hparams;
    const int64_t D = h.n_embd, n = h.hc.n_streams, rows = n_tokens * n;
    // [e ; h_k] for every (token, stream): the h halves first, while x_streams (possibly s.streams) is intact
    s.mtp_input.resize(size_t(rows * 2 * D));
    float *input = s.mtp_input.data();  // [n_tokens, n_streams, 2 n_embd]
    for (int64_t r = 0; r < rows; ++r) rms_norm(x_streams + r * D, head.hnorm, 1, D, h.rms_eps, input + r * 2 * D + D);
    deepseek4_resize_batch(h, s, n_tokens);

    deepseek4_embed(head.token_embd, next_tokens, n_tokens, s.embd.data());
    rms_norm(s.embd.data(), head.enorm, n_tokens, D, h.rms_eps, s.embd.data());
    for (int64_t r = 0; r < rows; ++r) {
        const float *e = s.embd.data() + (r / n) * D;
        std::memcpy(input + r * 2 * D, e, size_t(D) * sizeof(float));
    }
    matmul(head.eh_proj, input, rows, s.streams.data(), pool, s.matmul_scratch);

    deepseek4_block_forward(h, head.block, main.rope_main.data(), next_tokens, n_tokens, s.attn[0], s, pool);
    if (n_logits == 0) return;
    const float *last = s.streams.data() + (n_tokens - n_logits) * n * D;  // [n_logits, n, D]
    deepseek4_logits(h, head.hc_head, head.head_norm, head.output, last, n_logits, logits, s, pool);
}

}  // namespace flashmtp
