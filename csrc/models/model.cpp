// The Model interface over each family's load / state / forward functions.
#include "models/model.h"

#include <algorithm>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/error.h"
#include "models/deepseek4.h"
#include "models/deepseek4_mtp.h"
#include "models/llama.h"

namespace flashmtp {

void Model::draft_first(ModelState &, int64_t, int32_t, float *, ThreadPool &) const {
    throw std::logic_error("draft_first: this model has no draft head");
}

void Model::draft_next(ModelState &, int32_t, float *, ThreadPool &) const {
    throw std::logic_error("draft_next: this model has no draft head");
}

namespace {

struct LlamaStateBox final : ModelState {
    LlamaState state;
    size_t size_bytes() const override { return 2 * state.cache_floats * sizeof(float); }
};

class LlamaFamily final : public Model {
public:
    explicit LlamaFamily(LlamaModel model) : model_(std::move(model)) {
        const LlamaHparams &h = model_.hparams;
        dims_ = {h.n_vocab, h.n_embd, h.n_layer, h.n_head, h.n_head_kv, h.n_ff, h.n_ctx_train};
    }
    const ModelDims &dims() const override { return dims_; }
    // The KV cache is indexed by absolute position: rows from n_past on are rewritten before they are read.
    bool can_rewind(const ModelState &, int64_t, int64_t) const override { return true; }
    void rewind(ModelState &, int64_t) const override {}
    std::unique_ptr<ModelState> new_state(int64_t n_ctx, int n_threads, int64_t) const override {
        auto box = std::make_unique<LlamaStateBox>();
        llama_state_init(model_, box->state, n_ctx, n_threads);
        return box;
    }
    void forward(ModelState &state, const int32_t *tokens, int64_t n_tokens, int64_t n_past, int64_t n_logits,
                 float *logits, ThreadPool &pool) const override {
        llama_forward(model_, static_cast<LlamaStateBox &>(state).state, tokens, n_tokens, n_past, n_logits,
                      logits, pool);
    }

private:
    LlamaModel model_;
    ModelDims dims_;
};

struct Ds4StateBox final : ModelState {
    Ds4State state;
    // With a draft head: the head's state, and the main model's final streams and tokens of the latest
    // positions, which the head reads when it catches up (position p in row p % ring_rows).
    Ds4State head;
    int64_t ring_rows = 0;          // the head's window + the rewind depth: what a rewind must leave readable
    std::vector<float> ring;        // [ring_rows, n_streams, n_embd]
    std::vector<int32_t> ring_tokens;  // [ring_rows]
    int64_t head_valid = 0;  // head positions [.., head_valid) ran on the main model's streams and decoded tokens;
                             // the next one on a sampled token (pending_*), later ones on the head's own drafts
    int64_t pending_position = -1;
    int32_t pending_token = -1;
    std::vector<float> head_x;         // draft_first's inputs: [n_tokens, n_streams, n_embd] streams
    std::vector<int32_t> head_next;    // [n_tokens] and the next tokens
    size_t size_bytes() const override {
        return deepseek4_state_bytes(state) + deepseek4_state_bytes(head) + ring.size() * sizeof(float);
    }
};

class Deepseek4 final : public Model {
public:
    Deepseek4(Ds4Model model, std::optional<Ds4MtpHead> head) : model_(std::move(model)), head_(std::move(head)) {
        const Ds4Hparams &h = model_.hparams;
        // n_ff: the routed experts' feed-forward length.
        dims_ = {h.n_vocab, h.n_embd, h.n_layer, h.n_head, 1, h.n_ff_exp, h.n_ctx_train};
    }
    const ModelDims &dims() const override { return dims_; }

    std::unique_ptr<ModelState> new_state(int64_t, int, int64_t rewind_depth) const override {
        auto box = std::make_unique<Ds4StateBox>();
        deepseek4_state_init(model_, box->state, rewind_depth);
        if (head_) {
            deepseek4_mtp_state_init(*head_, box->head, rewind_depth);
            const Ds4Hparams &h = model_.hparams;
            box->ring_rows = head_->block.attn_shape.window + rewind_depth;
            box->ring.assign(size_t(box->ring_rows * h.hc.n_streams * h.n_embd), 0.0f);
            box->ring_tokens.assign(size_t(box->ring_rows), 0);
        }
        return box;
    }

    void forward(ModelState &state, const int32_t *tokens, int64_t n_tokens, int64_t n_past, int64_t n_logits,
                 float *logits, ThreadPool &pool) const override {
        Ds4StateBox &box = static_cast<Ds4StateBox &>(state);
        deepseek4_forward(model_, box.state, tokens, n_tokens, n_past, n_logits, logits, pool);
        if (!head_) return;
        const size_t row = box.ring.size() / size_t(box.ring_rows);  // n_streams * n_embd
        for (int64_t t = std::max<int64_t>(0, n_tokens - box.ring_rows); t < n_tokens; ++t) {
            const int64_t r = (n_past + t) % box.ring_rows;
            std::memcpy(box.ring.data() + r * row, box.state.streams.data() + t * row, row * sizeof(float));
            box.ring_tokens[size_t(r)] = tokens[t];
        }
    }

    bool can_rewind(const ModelState &state, int64_t current, int64_t n_past) const override {
        const Ds4AttentionState &a = static_cast<const Ds4StateBox &>(state).state.attn.front();
        return current - n_past <= a.rewind_depth;
    }

    void rewind(ModelState &state, int64_t n_past) const override {
        Ds4StateBox &box = static_cast<Ds4StateBox &>(state);
        deepseek4_rewind(model_, box.state, n_past);
        // Head position i read the main streams at i and the token at i + 1: only positions before n_past - 1
        // keep both; the pending one (draft_first) loses its token when n_past <= its position + 1.
        box.head_valid = std::min(box.head_valid, std::max<int64_t>(0, n_past - 1));
        if (n_past <= box.pending_position + 1) box.pending_position = -1;
    }

    bool has_draft_head() const override { return head_.has_value(); }

    size_t draft_head_bytes() const override {
        if (!head_) return 0;
        const Ds4Layer &b = head_->block;
        const auto bytes = [](const WeightMatrix &w, int64_t n_mat = 1) {
            return size_t(n_mat * w.n_rows) * w.row_stride;
        };
        const int64_t E = b.moe.router.n_expert;
        size_t total = bytes(head_->eh_proj) + bytes(b.attn.q_a) + bytes(b.attn.q_b) + bytes(b.attn.kv) +
                       bytes(b.attn.o_a) + bytes(b.attn.o_b) + bytes(b.moe.gate_inp) + bytes(b.moe.gate_exps, E) +
                       bytes(b.moe.up_exps, E) + bytes(b.moe.down_exps, E) + bytes(b.moe.gate_shexp) +
                       bytes(b.moe.up_shexp) + bytes(b.moe.down_shexp) + bytes(b.hc_attn.fn) + bytes(b.hc_ffn.fn) +
                       bytes(head_->hc_head.fn);
        if (head_->token_embd.data != model_.token_embd.data) total += bytes(head_->token_embd);
        if (head_->output.data != model_.output.data) total += bytes(head_->output);
        return total;
    }

    // The head catches up over positions [start, n_past): position i reads the main streams of i and the token
    // at i + 1 (the last one `next`). It starts where its valid positions end, or a window before n_past when
    // that is later: a window layer's position n_past - 1 reads keys from n_past - window on only, so the
    // result is exact either way (ds4_attention_seek).
    void draft_first(ModelState &state, int64_t n_past, int32_t next, float *logits,
                     ThreadPool &pool) const override {
        Ds4StateBox &box = static_cast<Ds4StateBox &>(state);
        const Ds4AttentionShape &shape = head_->block.attn_shape;
        Ds4AttentionState &attn = box.head.attn.front();
        // The previous draft's first position ran on the token then sampled; it holds if that token was decoded.
        if (box.head_valid == box.pending_position && n_past > box.pending_position + 1 &&
            box.ring_tokens[size_t((box.pending_position + 1) % box.ring_rows)] == box.pending_token) {
            box.head_valid = box.pending_position + 1;
        }
        const int64_t valid = std::min(box.head_valid, n_past - 1);
        int64_t start = valid;
        // Reuse the head's state from `valid` on if it still holds every key the queries from there read: a
        // state that started without its history (seek) has the keys from first_position on only.
        const bool has_keys = attn.first_position == 0 || valid >= attn.first_position + shape.window - 1;
        if (valid >= n_past - shape.window && has_keys && attn.n_past - valid <= attn.rewind_depth) {
            ds4_attention_rewind(shape, attn, valid);
        } else {
            start = std::max<int64_t>(0, n_past - shape.window);
            ds4_attention_seek(shape, attn, start);
        }
        const int64_t n_tokens = n_past - start;
        const size_t row = box.ring.size() / size_t(box.ring_rows);
        box.head_x.resize(size_t(n_tokens) * row);  // [n_tokens, n_streams, n_embd]
        box.head_next.resize(size_t(n_tokens));
        for (int64_t t = 0; t < n_tokens; ++t) {
            const int64_t r = (start + t) % box.ring_rows;
            std::memcpy(box.head_x.data() + t * row, box.ring.data() + r * row, row * sizeof(float));
            box.head_next[size_t(t)] = t + 1 < n_tokens ? box.ring_tokens[size_t((r + 1) % box.ring_rows)] : next;
        }
        deepseek4_mtp_forward(model_, *head_, box.head, box.head_x.data(), box.head_next.data(), n_tokens, 1, logits,
                              pool);
        box.head_valid = box.pending_position = n_past - 1;
        box.pending_token = next;
    }

    void draft_next(ModelState &state, int32_t drafted, float *logits, ThreadPool &pool) const override {
        Ds4StateBox &box = static_cast<Ds4StateBox &>(state);
        const size_t row = box.ring.size() / size_t(box.ring_rows);
        const float *last = box.head.streams.data() + box.head.streams.size() - row;  // the previous step's output
        deepseek4_mtp_forward(model_, *head_, box.head, last, &drafted, 1, 1, logits, pool);
    }

private:
    Ds4Model model_;
    std::optional<Ds4MtpHead> head_;
    ModelDims dims_;
};

}  // namespace

std::unique_ptr<Model> load_model(const GGUFFile &file, const GGUFFile *mtp_file) {
    const std::string &arch = file.get_string("general.architecture");
    if (mtp_file && arch != "deepseek4") {
        throw GGUFError(mtp_file->path() + ": an MTP head needs a deepseek4 main model; " + file.path() +
                        " is '" + arch + "'");
    }
    if (arch == "llama") return std::make_unique<LlamaFamily>(llama_load_llama(file));
    if (arch == "qwen2") return std::make_unique<LlamaFamily>(qwen2_load(file));
    if (arch == "deepseek4") {
        Ds4Model model = deepseek4_load(file);
        std::optional<Ds4MtpHead> head;
        if (mtp_file) {
            head = deepseek4_mtp_load(*mtp_file, model);
        } else if (deepseek4_has_mtp_block(file)) {
            head = deepseek4_mtp_load(file, model);
        }
        return std::make_unique<Deepseek4>(std::move(model), std::move(head));
    }
    throw GGUFError(file.path() + ": architecture '" + arch +
                    "' is not supported (supported: llama, qwen2, deepseek4)");
}

}  // namespace flashmtp
