// Text generation: a prompt in, sampled text out, one token at a time.
// Owns: the generation loop (tokenize, context check, one-batch prefill, sample/decode until max_tokens or an
// end-of-generation token), prompt-prefix reuse on a kept session, streaming text in whole UTF-8 characters,
// timing statistics.
// Does not own: the forward pass (Session), sampling rules (Sampler), tokenization (Tokenizer), chat templates.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "flashmtp.h"
#include "runtime/sampler.h"
#include "runtime/speculative.h"
#include "runtime/tokenizer.h"

namespace flashmtp {

struct GenerateParams {
    int max_tokens = 128;  // >= 1; counts an end-of-generation token that ends generation early
    int n_ctx = 0;         // fresh session's positions; 0: exactly prompt + max_tokens, at most the training context
    bool add_special = true;     // prepend BOS when the model asks for it
    bool parse_special = false;  // match control-token text in the prompt as those tokens
    SamplerParams sampler;
    // MTP speculative decoding (runtime/speculative.h); needs an engine with a draft head unless draft is 0.
    SpeculativeParams speculative;
};

struct GenerateStats {
    int n_prompt = 0;       // prompt tokens, BOS included
    int n_reused = 0;       // leading prompt tokens already in a kept session: not decoded again
    int n_generated = 0;    // sampled tokens, an ending end-of-generation token included
    bool stopped_at_eos = false;  // ended by an end-of-generation token (Tokenizer::is_eog), not max_tokens
    double prefill_s = 0;   // the prompt's one decode call
    double generate_s = 0;  // every sample, draft and decode after it
    SpeculativeStats speculative;  // all zero without drafting

    double prompt_tokens_per_s() const { return prefill_s > 0 ? (n_prompt - n_reused) / prefill_s : 0; }
    double generated_tokens_per_s() const { return generate_s > 0 ? n_generated / generate_s : 0; }
};

// One generation, driven step by step (Python iterates it) or run to the end by generate(). Keeps a
// reference to `tokenizer` (and to a caller's session): they must outlive the generation.
class Generation {
public:
    // Over a fresh session of `engine`: tokenizes the prompt (params.add_special, params.parse_special) and
    // creates the session. Throws std::invalid_argument for invalid sampler settings, max_tokens < 1, an
    // empty prompt, or a prompt + max_tokens that does not fit the context (naming the numbers).
    Generation(const Engine &engine, const Tokenizer &tokenizer, std::string_view prompt,
               const GenerateParams &params);

    // Over the caller's `session`, whose first positions hold `cached` (a chat's earlier turns, e.g. the
    // previous generation's tokens()[0, n_past)): keeps the longest common prefix of `cached` and `prompt`,
    // rewinds the rest and prefills only the remainder. Exact rewind makes the result bit-identical to a
    // fresh session. params.n_ctx and the add/parse_special flags are unused. Throws as above, with the
    // session's n_ctx as the context, leaving the session unchanged.
    Generation(Session &session, const Tokenizer &tokenizer, std::vector<int32_t> prompt,
               const std::vector<int32_t> &cached, const GenerateParams &params);

    // Prefills on the first call, then yields one generated token per call: appends its text (possibly empty:
    // a character split across tokens is held back until whole) to `piece`. Tokens are produced a round at a
    // time: one sampled token and decoded, or, with drafting, the sampled token plus the drafts the main model
    // accepted in one verify batch. Returns false, leaving `piece` alone, once generation has ended.
    bool step(std::string &piece);

    const std::vector<int32_t> &tokens() const { return tokens_; }  // the prompt's, then the generated ones
    const GenerateStats &stats() const { return stats_; }
    // The session; its first n_past() positions hold tokens()' first n_past() (the last sampled token is
    // never decoded).
    const Session &session() const { return *session_; }

private:
    // Shared by both constructors: max_tokens, a non-empty prompt, the speculative settings against the
    // engine; then whether prompt + max_tokens fit.
    void check_request(bool has_draft_head);
    void check_fits(int n_ctx, bool n_ctx_is_training) const;
    // One round: appends its tokens to tokens_ (from queue_end_ on) and leaves the session decoded up to the
    // last one (exclusive) with logits_ of the position before it.
    void produce();
    // Appends a generated token; sets done_ on an end-of-generation token or at max_tokens.
    void emit(int32_t id);
    // The draft for `position` from the head's logits (history: tokens_).
    int32_t choose_draft(const float *head_logits, uint64_t position, TokenDistribution *q);
    // Whether the main model's logits at position - 1 accept `draft` at `position`; on a rejection sets forced_
    // when the next token is not the plain sample (the residual mode).
    bool accept(const float *logits, int32_t draft, uint64_t position, const TokenDistribution &q);

    const Tokenizer &tokenizer_;
    GenerateParams params_;
    std::unique_ptr<Session> owned_session_;  // the fresh session, when the caller gave none
    Session *session_ = nullptr;
    Sampler sampler_;
    TokenTextStream text_;
    std::vector<int32_t> tokens_;  // [n_prompt + n_generated]: the sampler's history
    std::vector<float> logits_;    // [n_vocab] of the last decoded token
    GenerateStats stats_;
    bool prefilled_ = false;
    bool done_ = false;
    size_t yielded_ = 0;           // tokens_[0, yielded_) were returned by step() (or are the prompt)
    int32_t forced_ = -1;          // the next round's first token when it is not the plain sample
    DraftPolicy policy_;
    std::vector<float> head_logits_;    // [n_vocab]
    std::vector<float> verify_logits_;  // [kMaxDraft + 1, n_vocab]
    std::vector<int32_t> batch_;        // [kMaxDraft + 1] the verify batch
    std::vector<TokenDistribution> q_;  // [kMaxDraft] the head's distributions (residual mode)
    std::vector<float> q_dense_;        // [n_vocab] scratch: q by token id, zero between calls
};

// Runs a Generation to the end, passing each non-empty text piece to on_text as it is produced.
GenerateStats generate(const Engine &engine, const Tokenizer &tokenizer, std::string_view prompt,
                       const GenerateParams &params, const std::function<void(const std::string &)> &on_text);

}  // namespace flashmtp
