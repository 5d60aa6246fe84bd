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
      tokens_(tokenizer.encode(prompt, params.add_special, params.parse_special)),
      policy_(params.speculative.draft, params.speculative.costs) {
    check_request(engine.has_draft_head());
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
      tokens_(std::move(prompt)),
      policy_(params.speculative.draft, params.speculative.costs) {
    check_request(session.has_draft_head());
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

void Generation::check_request(bool has_draft_head) {
    if (params_.max_tokens < 1) {
        throw std::invalid_argument("generate: max_tokens must be >= 1, got " + std::to_string(params_.max_tokens));
    }
    if (tokens_.empty()) throw std::invalid_argument("generate: the prompt is empty (no tokens to decode)");
    params_.speculative.validate();
    if (params_.speculative.draft != 0 && !has_draft_head) {
        throw std::invalid_argument("generate: drafting needs an MTP draft head; load the model with its MTP "
                                    "file (or set draft to 0)");
    }
    stats_.n_prompt = int(tokens_.size());
    yielded_ = tokens_.size();
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
    if (yielded_ == tokens_.size()) {
        if (done_) return false;
        const auto t0 = std::chrono::steady_clock::now();
        const bool prefill = !prefilled_;
        produce();
        // The first call decodes the prompt too: that part is prefill_s, not generation.
        stats_.generate_s += seconds_since(t0) - (prefill ? stats_.prefill_s : 0.0);
    }
    const int32_t id = tokens_[yielded_++];
    if (!tokenizer_.is_eog(id)) piece += text_.push(id);
    if (done_ && yielded_ == tokens_.size()) piece += text_.flush();
    return true;
}

void Generation::emit(int32_t id) {
    tokens_.push_back(id);
    ++stats_.n_generated;
    if (tokenizer_.is_eog(id)) {
        stats_.stopped_at_eos = true;
        done_ = true;
    } else if (stats_.n_generated == params_.max_tokens) {
        done_ = true;
    }
}

void Generation::produce() {
    if (!prefilled_) {
        const auto t0 = std::chrono::steady_clock::now();
        const int n_reused = stats_.n_reused;
        session_->decode(tokens_.data() + n_reused, int(tokens_.size()) - n_reused, logits_.data(), 1);
        stats_.prefill_s = seconds_since(t0);
        prefilled_ = true;
    }
    // The token at position P: drawn at its absolute position, so a seed gives the same text however the loop
    // is driven, with or without drafts.
    const int64_t P = session_->n_past();
    const int64_t n_vocab = int64_t(logits_.size());
    const int32_t id = forced_ >= 0 ? forced_
                                    : sampler_.sample(logits_.data(), n_vocab, tokens_.data(), tokens_.size(),
                                                      uint64_t(P));
    forced_ = -1;
    emit(id);
    if (done_) return;

    SpeculativeStats &spec = stats_.speculative;
    int k = policy_.choose(params_.max_tokens - stats_.n_generated);
    if (k == 0) {
        const auto t0 = std::chrono::steady_clock::now();
        session_->decode(&id, 1, logits_.data(), 1);
        policy_.record(0, 0, 0, 0, seconds_since(t0));
        if (params_.speculative.draft != 0) ++spec.plain_steps;
        return;
    }

    // Draft k tokens for positions P + 1..P + k (fewer if the head drafts an end of generation).
    head_logits_.resize(size_t(n_vocab));
    batch_.assign(1, id);
    q_.resize(size_t(Session::kMaxDraft));
    const auto t_draft = std::chrono::steady_clock::now();
    session_->draft(id, head_logits_.data());
    const double first_s = seconds_since(t_draft);
    for (int i = 0; i < k; ++i) {
        if (i > 0) {
            session_->draft_next(batch_.back(), head_logits_.data());
            tokens_.push_back(batch_.back());  // the drafts so far: the next one's history (sampler penalties)
        }
        const int32_t d = choose_draft(head_logits_.data(), uint64_t(P + 1 + i), &q_[size_t(i)]);
        batch_.push_back(d);
        if (tokenizer_.is_eog(d)) k = i + 1;
    }
    tokens_.resize(tokens_.size() - size_t(k - 1));
    const double draft_s = seconds_since(t_draft);
    spec.draft_s += draft_s;

    // Verify [id, d_1..d_k] in one batch; accept drafts while the main model agrees.
    verify_logits_.resize(size_t(k + 1) * size_t(n_vocab));
    const auto t_verify = std::chrono::steady_clock::now();
    session_->decode(batch_.data(), k + 1, verify_logits_.data(), k + 1);
    int accepted = 0;
    while (accepted < k && !done_ &&
           accept(verify_logits_.data() + size_t(accepted) * size_t(n_vocab), batch_[size_t(accepted + 1)],
                  uint64_t(P + 1 + accepted), q_[size_t(accepted)])) {
        emit(batch_[size_t(accepted + 1)]);
        ++accepted;
    }
    // Keep [0, P + 1 + accepted): the sampled token and the accepted drafts.
    if (accepted < k) session_->rewind(int(P + 1 + accepted));
    std::copy_n(verify_logits_.data() + size_t(accepted) * size_t(n_vocab), n_vocab, logits_.data());
    const double verify_s = seconds_since(t_verify);
    spec.verify_s += verify_s;
    policy_.record(k, accepted, first_s, draft_s - first_s, verify_s);

    ++spec.rounds;
    spec.drafted += k;
    spec.accepted += accepted;
    if (accepted < k) ++spec.rollbacks;
    for (int i = 0; i < k && i <= accepted; ++i) {
        ++spec.tried_at[size_t(i)];
        if (i < accepted) ++spec.accepted_at[size_t(i)];
    }
}

int32_t Generation::choose_draft(const float *head_logits, uint64_t position, TokenDistribution *q) {
    const int64_t n_vocab = int64_t(logits_.size());
    const bool greedy = params_.sampler.temperature == 0 || params_.speculative.mode == DraftMode::greedy;
    if (greedy) return int32_t(std::max_element(head_logits, head_logits + n_vocab) - head_logits);
    if (params_.speculative.mode == DraftMode::coupled) {
        return sampler_.sample(head_logits, n_vocab, tokens_.data(), tokens_.size(), position);
    }
    // residual: a draw from the head's distribution on its own stream (3; the verifier uses 1 and 2)
    *q = sampler_.distribution(head_logits, n_vocab, tokens_.data(), tokens_.size());
    const double u = sampler_.uniform(position, 3);
    double cumulative = 0;
    for (size_t j = 0; j < q->ids.size(); ++j) {
        cumulative += q->probs[j];
        if (u < cumulative) return q->ids[j];
    }
    return q->ids.back();
}

bool Generation::accept(const float *logits, int32_t draft, uint64_t position, const TokenDistribution &q) {
    const int64_t n_vocab = int64_t(logits_.size());
    if (params_.speculative.mode != DraftMode::residual || params_.sampler.temperature == 0) {
        // The verifier's token is the plain decoder's; the next round samples it again if this one rejects.
        return sampler_.sample(logits, n_vocab, tokens_.data(), tokens_.size(), position) == draft;
    }
    // min(1, p(d) / q(d)) at uniform stream 1; a rejection draws from max(0, p - q) at stream 2.
    const TokenDistribution p = sampler_.distribution(logits, n_vocab, tokens_.data(), tokens_.size());
    q_dense_.resize(size_t(n_vocab));
    for (size_t j = 0; j < q.ids.size(); ++j) q_dense_[size_t(q.ids[j])] = q.probs[j];
    double p_draft = 0;
    for (size_t j = 0; j < p.ids.size(); ++j) {
        if (p.ids[j] == draft) p_draft = p.probs[j];
    }
    const double q_draft = q_dense_[size_t(draft)];
    bool ok = sampler_.uniform(position, 1) * q_draft < p_draft;
    if (!ok) {
        double total = 0;
        for (size_t j = 0; j < p.ids.size(); ++j) {
            total += std::max(0.0, double(p.probs[j]) - q_dense_[size_t(p.ids[j])]);
        }
        // total = 0 only if p <= q everywhere, i.e. p = q: then the draft cannot be rejected (u * q < p).
        const double u = sampler_.uniform(position, 2) * total;
        double cumulative = 0;
        forced_ = p.ids.front();
        for (size_t j = 0; j < p.ids.size(); ++j) {
            const double r = std::max(0.0, double(p.probs[j]) - q_dense_[size_t(p.ids[j])]);
            if (r <= 0) continue;
            forced_ = p.ids[j];
            cumulative += r;
            if (u < cumulative) break;
        }
    }
    for (size_t j = 0; j < q.ids.size(); ++j) q_dense_[size_t(q.ids[j])] = 0;
    return ok;
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
