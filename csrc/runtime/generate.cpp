#include "runtime/generate.h"

#include <algorithm>
#include <chrono>
#include <stdexcept>

namespace flashmtp {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

Generation::Generation(const Engine &engine, const Tokenizer &tokenizer, std::string_view prompt,
                       const GenerateParams &params)
    : tokenizer_(tokenizer),
      params_(params),
      sampler_(params.sampler),
      text_(tokenizer),
      tokens_(tokenizer.encode(prompt, params.add_special, params.parse_special)) {
    check_request();
    if (params.n_ctx < 0) {
        throw std::invalid_argument("generate: n_ctx must be >= 0 (0: fit the request), got " +
                                    std::to_string(params.n_ctx));
    }
    const int64_t needed = int64_t(tokens_.size()) + params.max_tokens;
    const int n_ctx = params.n_ctx > 0 ? params.n_ctx : int(std::min<int64_t>(needed, engine.n_ctx_train()));
    check_fits(n_ctx, params.n_ctx == 0);
    owned_session_ = engine.new_session(n_ctx);
    session_ = owned_session_.get();
    logits_.resize(size_t(session_->n_vocab()));
}

Generation::Generation(Session &session, const Tokenizer &tokenizer, std::vector<int32_t> prompt,
                       const std::vector<int32_t> &cached, const GenerateParams &params)
    : tokenizer_(tokenizer),
      params_(params),
      session_(&session),
      sampler_(params.sampler),
      text_(tokenizer),
      tokens_(std::move(prompt)) {
    check_request();
    check_fits(session.n_ctx(), false);
    if (size_t(session.n_past()) < cached.size()) {
        throw std::invalid_argument("generate: " + std::to_string(cached.size()) +
                                    " cached tokens given, but the session holds only " +
                                    std::to_string(session.n_past()));
    }
    const size_t common = size_t(
        std::mismatch(cached.begin(), cached.end(), tokens_.begin(), tokens_.end()).first - cached.begin());
    // At least the prompt's last token is decoded again: its logits pick the first new token.
    stats_.n_reused = int(std::min(common, tokens_.size() - 1));
    session.rewind(stats_.n_reused);
    logits_.resize(size_t(session.n_vocab()));
}

void Generation::check_request() {
    if (params_.max_tokens < 1) {
        throw std::invalid_argument("generate: max_tokens must be >= 1, got " + std::to_string(params_.max_tokens));
    }
    if (tokens_.empty()) throw std::invalid_argument("generate: the prompt is empty (no tokens to decode)");
    stats_.n_prompt = int(tokens_.size());
}

void Generation::check_fits(int n_ctx, bool n_ctx_is_training) const {
    // The last sampled token is never decoded, but asking for its position too keeps the rule simple.
    const int64_t needed = int64_t(tokens_.size()) + params_.max_tokens;
    if (needed > n_ctx) {
        throw std::invalid_argument("generate: prompt (" + std::to_string(tokens_.size()) + " tokens) + max_tokens (" +
                                    std::to_string(params_.max_tokens) + ") = " + std::to_string(needed) +
                                    " exceeds the context of " + std::to_string(n_ctx) + " positions" +
                                    (n_ctx_is_training ? " (the model's training context)" : ""));
    }
}

bool Generation::step(std::string &piece) {
    if (done_) return false;
    if (!prefilled_) {
        const auto t0 = std::chrono::steady_clock::now();
        const int n_reused = stats_.n_reused;
        session_->decode(tokens_.data() + n_reused, int(tokens_.size()) - n_reused, logits_.data(), 1);
        stats_.prefill_s = seconds_since(t0);
        prefilled_ = true;
    }
    const auto t0 = std::chrono::steady_clock::now();
    // Drawn at the token's absolute position, so a seed gives the same text however the loop is driven.
    const int32_t id = sampler_.sample(logits_.data(), int64_t(logits_.size()), tokens_.data(), tokens_.size(),
                                       uint64_t(session_->n_past()));
    tokens_.push_back(id);
    ++stats_.n_generated;
    if (tokenizer_.is_eog(id)) {
        stats_.stopped_at_eos = true;
        done_ = true;
    } else {
        piece += text_.push(id);
        done_ = stats_.n_generated == params_.max_tokens;
        if (!done_) session_->decode(&id, 1, logits_.data(), 1);
    }
    if (done_) piece += text_.flush();
    stats_.generate_s += seconds_since(t0);
    return true;
}

GenerateStats generate(const Engine &engine, const Tokenizer &tokenizer, std::string_view prompt,
                       const GenerateParams &params, const std::function<void(const std::string &)> &on_text) {
    Generation generation(engine, tokenizer, prompt, params);
    std::string piece;
    while (generation.step(piece)) {
        if (!piece.empty()) on_text(piece);
        piece.clear();
    }
    return generation.stats();
}

}  // namespace flashmtp
