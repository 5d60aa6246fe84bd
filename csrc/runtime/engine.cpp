// Engine and Session: the public API over the model code (models/model.h). The engine loads the model of the
// file's general.architecture and owns the mapping and the thread pool; a session owns one model state and
// checks every input before the forward pass sees it.
#include <algorithm>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/gguf.h"
#include "core/thread_pool.h"
#include "flashmtp.h"
#include "models/model.h"

namespace flashmtp {

namespace {

class EngineImpl final : public Engine, public std::enable_shared_from_this<EngineImpl> {
public:
    EngineImpl(std::shared_ptr<GGUFFile> file, std::shared_ptr<GGUFFile> mtp_file, int n_threads)
        : file_(std::move(file)), mtp_file_(std::move(mtp_file)),
          architecture_(file_->get_string("general.architecture")), model_(load_model(*file_, mtp_file_.get())),
          pool_(n_threads) {}

    const std::string &architecture() const override { return architecture_; }
    int n_vocab() const override { return int(model_->dims().n_vocab); }
    int n_embd() const override { return int(model_->dims().n_embd); }
    int n_layer() const override { return int(model_->dims().n_layer); }
    int n_head() const override { return int(model_->dims().n_head); }
    int n_head_kv() const override { return int(model_->dims().n_head_kv); }
    int n_ff() const override { return int(model_->dims().n_ff); }
    int n_ctx_train() const override { return int(model_->dims().n_ctx_train); }
    int n_threads() const override { return pool_.n_threads(); }
    bool has_draft_head() const override { return model_->has_draft_head(); }
    size_t draft_head_bytes() const override { return model_->draft_head_bytes(); }

    std::unique_ptr<Session> new_session(int n_ctx) const override;

    const Model &model() const { return *model_; }
    // The pool serialises concurrent jobs itself, so sessions on several threads may share it.
    ThreadPool &pool() const { return pool_; }

private:
    std::shared_ptr<GGUFFile> file_;      // the mapping every weight view points into
    std::shared_ptr<GGUFFile> mtp_file_;  // the MTP sidecar's, or null
    std::string architecture_;
    std::unique_ptr<Model> model_;
    mutable ThreadPool pool_;
};

class SessionImpl final : public Session {
public:
    SessionImpl(std::shared_ptr<const EngineImpl> engine, int n_ctx)
        : engine_(std::move(engine)), n_ctx_(n_ctx), state_(new_state()) {}

    void decode(const int32_t *tokens, int n_tokens, float *logits_out, int n_logits) override {
        if (n_tokens < 1) {
            throw std::invalid_argument("decode: need at least one token, got " + std::to_string(n_tokens));
        }
        if (n_logits < 0 || n_logits > n_tokens) {
            throw std::invalid_argument("decode: n_logits " + std::to_string(n_logits) + " is outside [0, " +
                                        std::to_string(n_tokens) + "] (the batch's token count)");
        }
        if (int64_t(n_past_) + n_tokens > n_ctx_) {
            throw std::invalid_argument("decode: " + std::to_string(n_tokens) + " token(s) after " +
                                        std::to_string(n_past_) + " past position(s) exceed the context of " +
                                        std::to_string(n_ctx_));
        }
        check_tokens(tokens, n_tokens, "decode");
        n_drafted_ = -1;
        // In passes of at most kMaxBatch tokens (same bits as one pass: batch invariance); the logits wanted are
        // the batch's last n_logits tokens, so each pass gives those of its own tokens among them.
        const int first_logit = n_tokens - n_logits;
        for (int at = 0; at < n_tokens; at += kMaxBatch) {
            const int n = std::min(kMaxBatch, n_tokens - at), logits_from = std::max(at, first_logit);
            const int n_pass_logits = std::max(0, at + n - logits_from);
            float *pass_logits =
                n_pass_logits > 0 ? logits_out + size_t(logits_from - first_logit) * n_vocab() : nullptr;
            engine_->model().forward(*state_, tokens + at, n, n_past_, n_pass_logits, pass_logits, engine_->pool());
            history_.insert(history_.end(), tokens + at, tokens + at + n);
            n_past_ += n;
        }
    }

    int n_past() const override { return n_past_; }

    // Within the state's rewind depth (a KV cache indexed by absolute position has no limit) the model drops the
    // positions in place. Beyond it the session re-runs the kept tokens [0, n_past) into a fresh state: exact,
    // because a token's results do not depend on the batches it ran in; in passes of kMaxBatch tokens so
    // that the activation buffers stay bounded whatever n_past is.
    void rewind(int n_past) override {
        if (n_past < 0 || n_past > n_past_) {
            throw std::invalid_argument("rewind: position " + std::to_string(n_past) + " is outside [0, " +
                                        std::to_string(n_past_) + "]");
        }
        n_drafted_ = -1;
        if (n_past == n_past_) return;
        const Model &model = engine_->model();
        if (model.can_rewind(*state_, n_past_, n_past)) {
            model.rewind(*state_, n_past);
        } else {
            std::unique_ptr<ModelState> fresh = new_state();
            for (int at = 0; at < n_past; at += kMaxBatch) {
                const int n = std::min(kMaxBatch, n_past - at);
                model.forward(*fresh, history_.data() + at, n, at, 0, nullptr, engine_->pool());
            }
            state_ = std::move(fresh);
        }
        history_.resize(size_t(n_past));
        n_past_ = n_past;
    }

    bool has_draft_head() const override { return engine_->has_draft_head(); }

    void draft(int32_t next, float *logits) override {
        if (!engine_->has_draft_head()) throw std::logic_error("draft: the engine has no MTP draft head");
        if (n_past_ == 0) throw std::invalid_argument("draft: the session is empty; decode the prompt first");
        check_tokens(&next, 1, "draft");
        engine_->model().draft_first(*state_, n_past_, next, logits, engine_->pool());
        n_drafted_ = 1;
    }

    void draft_next(int32_t drafted, float *logits) override {
        if (n_drafted_ < 1) throw std::logic_error("draft_next: call draft first (decode and rewind end a draft)");
        if (n_drafted_ >= kMaxDraft) {
            throw std::invalid_argument("draft_next: a draft has at most " + std::to_string(kMaxDraft) + " tokens");
        }
        check_tokens(&drafted, 1, "draft_next");
        engine_->model().draft_next(*state_, drafted, logits, engine_->pool());
        ++n_drafted_;
    }

    int n_ctx() const override { return n_ctx_; }
    int n_vocab() const override { return engine_->n_vocab(); }
    size_t state_size() const override { return state_->size_bytes(); }

private:
    // Tokens per forward pass. A pass's activations grow with its tokens (V4-Flash: about 0.6 MB per token in
    // attention alone), so a long prompt goes in passes: bounded memory, buffers that stay in use.
    static constexpr int kMaxBatch = 512;

    std::unique_ptr<ModelState> new_state() const {
        return engine_->model().new_state(n_ctx_, engine_->n_threads(), rewind_depth());
    }

    void check_tokens(const int32_t *tokens, int n_tokens, const char *what) const {
        const int n_vocab = this->n_vocab();
        for (int t = 0; t < n_tokens; ++t) {
            if (tokens[t] < 0 || tokens[t] >= n_vocab) {
                throw std::invalid_argument(std::string(what) + ": token id " + std::to_string(tokens[t]) +
                                            " at index " + std::to_string(t) + " is outside the vocabulary [0, " +
                                            std::to_string(n_vocab) + ")");
            }
        }
    }

    std::shared_ptr<const EngineImpl> engine_;
    int n_ctx_;
    std::unique_ptr<ModelState> state_;
    std::vector<int32_t> history_;  // [n_past] the tokens decoded: a rewind beyond the state's depth re-runs them
    int n_past_ = 0;
    int n_drafted_ = -1;  // tokens of the current draft; -1: none (draft_next needs draft first)
};

std::unique_ptr<Session> EngineImpl::new_session(int n_ctx) const {
    if (n_ctx < 0) throw std::invalid_argument("new_session: n_ctx " + std::to_string(n_ctx) + " is negative");
    return std::make_unique<SessionImpl>(shared_from_this(), n_ctx == 0 ? n_ctx_train() : n_ctx);
}

}  // namespace

std::shared_ptr<Engine> Engine::load(const std::string &path, int n_threads, const std::string &mtp_path) {
    if (n_threads < 1) throw std::invalid_argument("Engine::load: n_threads " + std::to_string(n_threads) + " < 1");
    return std::make_shared<EngineImpl>(GGUFFile::open(path), mtp_path.empty() ? nullptr : GGUFFile::open(mtp_path),
                                        n_threads);
}

}  // namespace flashmtp
