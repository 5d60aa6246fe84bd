// flashmtp's public C++ API. The CLI, the benches and the Python bindings use only this header.
//
// An Engine holds one model's read-only weights (zero-copy views into the mapped GGUF file) and the thread
// pool; share it freely between threads. A Session is one timeline over an engine: it owns the KV cache and
// every buffer of a forward pass; use each session from one thread at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace flashmtp {

const char *version();

class Session {
public:
    virtual ~Session() = default;

    // Runs tokens [n_tokens] at positions n_past()..n_past() + n_tokens - 1 in one batch and appends them to
    // the timeline. logits_out receives the logits of the last n_logits tokens, [n_logits, n_vocab] row-major:
    // n_tokens for all of them (verifying drafts), 1 for the next token only, 0 for none (logits_out unused).
    // A token's logits are bit-identical whatever batch it was decoded in and whatever the thread count.
    // Throws std::invalid_argument, leaving the session unchanged, if n_tokens < 1, n_logits is outside
    // [0, n_tokens], a token id is outside [0, n_vocab), or the tokens do not fit in the context.
    virtual void decode(const int32_t *tokens, int n_tokens, float *logits_out, int n_logits) = 0;

    // Positions decoded so far.
    virtual int n_past() const = 0;
    // Drops every position from n_past on: later decodes give bit-identical results to a session that never
    // saw them. Throws std::invalid_argument unless 0 <= n_past <= n_past(). Dropping up to rewind_depth()
    // positions (a rejected draft) only truncates; a longer rewind of a model with rings (deepseek4) re-runs
    // the kept tokens.
    virtual void rewind(int n_past) = 0;
    // Positions a rewind drops in place, whatever the model (kMaxDraft + 1 drafts and more).
    static constexpr int rewind_depth() { return 16; }

    // The MTP draft head (engines with Engine::has_draft_head()). `next` is the token at position n_past(),
    // sampled from the last logits and not decoded yet: writes the head's logits [n_vocab] for the token at
    // n_past() + 1, catching the head up with the positions decoded since it last ran. Then draft_next(d)
    // with the token d chosen from them gives the logits for the position after d, up to kMaxDraft tokens in
    // all. Decoding or rewinding ends a draft; the head's state follows the session's (rewinds included).
    // Throws std::logic_error without a head, std::invalid_argument for a token outside the vocabulary, an
    // empty session, or more than kMaxDraft drafts.
    static constexpr int kMaxDraft = 8;
    virtual bool has_draft_head() const = 0;
    virtual void draft(int32_t next, float *logits) = 0;
    virtual void draft_next(int32_t drafted, float *logits) = 0;
    // Positions the session can hold.
    virtual int n_ctx() const = 0;
    // Its engine's vocabulary size: the row length of decode's logits.
    virtual int n_vocab() const = 0;
    // Bytes of per-sequence state, fp32: the KV cache (llama, qwen2); the attention rings and compressed entries
    // (deepseek4, growing with the entries).
    virtual size_t state_size() const = 0;
};

class Engine {
public:
    // Maps the GGUF file at `path` and validates it for its architecture (llama, qwen2, deepseek4):
    // hyperparameters and every tensor's name, shape and type. Throws flashmtp::GGUFError (core/error.h; a std::runtime_error)
    // naming the file, the tensor or key, and expected vs found. n_threads >= 1 counts the calling thread.
    // mtp_path: an MTP sidecar GGUF for the draft head (deepseek4; checked against the main model). Without
    // one, a deepseek4 file that carries its MTP block gets its head from there.
    static std::shared_ptr<Engine> load(const std::string &path, int n_threads = 1,
                                        const std::string &mtp_path = "");
    virtual ~Engine() = default;

    virtual const std::string &architecture() const = 0;
    virtual int n_vocab() const = 0;
    virtual int n_embd() const = 0;
    virtual int n_layer() const = 0;
    virtual int n_head() const = 0;
    virtual int n_head_kv() const = 0;
    virtual int n_ff() const = 0;
    virtual int n_ctx_train() const = 0;
    virtual int n_threads() const = 0;
    // Whether a draft head is loaded (Session::draft), and the bytes of weights only it reads.
    virtual bool has_draft_head() const = 0;
    virtual size_t draft_head_bytes() const = 0;

    // A new, empty timeline of n_ctx positions (0: the training context). The session keeps the engine alive.
    // Throws std::invalid_argument if n_ctx is negative.
    virtual std::unique_ptr<Session> new_session(int n_ctx = 0) const = 0;
};

}  // namespace flashmtp
