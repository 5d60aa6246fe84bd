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
#include "runtime/tokenizer.h"

namespace flashmtp {

struct GenerateParams {
    int max_tokens = 128;  // >= 1; counts an end-of-generation token that ends generation early
    int n_ctx = 0;         // fresh session's positions; 0: exactly prompt + max_tokens, at most the training context
    bool add_special = true;     // prepend BOS when the model asks for it
    bool parse_special = false;  // match control-token text in the prompt as those tokens
    SamplerParams sampler;
};

struct GenerateStats {
    int n_prompt = 0;       // prompt tokens, BOS included
    int n_reused = 0;       // leading prompt tokens already in a kept session: not decoded again
    int n_generated = 0;    // sampled tokens, an ending end-of-generation token included
    bool stopped_at_eos = false;  // ended by an end-of-generation token (Tokenizer::is_eog), not max_tokens
    double prefill_s = 0;   // the prompt's one decode call
    double generate_s = 0;  // every sample and single-token decode after it

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

    // Prefills on the first call, then samples one token: appends its text (possibly empty: a character
    // split across tokens is held back until whole) to `piece` and decodes it unless generation ends with
    // it. Returns false, leaving `piece` alone, once generation has ended.
    bool step(std::string &piece);

    const std::vector<int32_t> &tokens() const { return tokens_; }  // the prompt's, then the generated ones
    const GenerateStats &stats() const { return stats_; }
    // The session; its first n_past() positions hold tokens()' first n_past() (the last sampled token is
    // never decoded).
    const Session &session() const { return *session_; }

private:
    // Shared by both constructors: max_tokens and a non-empty prompt; then whether prompt + max_tokens fit.
    void check_request();
    void check_fits(int n_ctx, bool n_ctx_is_training) const;

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
};

// Runs a Generation to the end, passing each non-empty text piece to on_text as it is produced.
GenerateStats generate(const Engine &engine, const Tokenizer &tokenizer, std::string_view prompt,
                       const GenerateParams &params, const std::function<void(const std::string &)> &on_text);

}  // namespace flashmtp
