// The engine's view of a model family: load by architecture, make a per-sequence state, run a batch, rewind,
// and, for models with an MTP head, draft. The Session logic (input checks, positions, rewind beyond the
// state's depth, drafting order) is written once in runtime/engine.cpp over this interface.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "core/gguf.h"
#include "core/thread_pool.h"

namespace flashmtp {

struct ModelDims {
    int64_t n_vocab, n_embd, n_layer, n_head, n_head_kv, n_ff, n_ctx_train;
};

// One sequence's state: caches and activation buffers, owned by a session.
class ModelState {
public:
    virtual ~ModelState() = default;
    // Bytes of per-sequence state (caches, fp32).
    virtual size_t size_bytes() const = 0;
};

class Model {
public:
    virtual ~Model() = default;
    virtual const ModelDims &dims() const = 0;
    // An empty state for contexts of n_ctx positions, for a pool of n_threads, that can rewind by up to
    // rewind_depth positions in place.
    virtual std::unique_ptr<ModelState> new_state(int64_t n_ctx, int n_threads, int64_t rewind_depth) const = 0;
    // Runs tokens [n_tokens] at positions n_past.. and writes the logits of the last n_logits tokens into
    // logits [n_logits, n_vocab]. The caller has checked the token ids, n_logits and the context.
    virtual void forward(ModelState &state, const int32_t *tokens, int64_t n_tokens, int64_t n_past,
                         int64_t n_logits, float *logits, ThreadPool &pool) const = 0;
    // True when the state can drop positions [n_past, current) in place: always for a cache indexed by absolute
    // position, within the state's rewind depth for one that keeps rings. Else the session re-runs the kept
    // tokens into a fresh state.
    virtual bool can_rewind(const ModelState &state, int64_t current, int64_t n_past) const = 0;
    // Drops positions [n_past, current) in place; the caller has checked can_rewind.
    virtual void rewind(ModelState &state, int64_t n_past) const = 0;

    // The MTP draft head, for models loaded with one.
    virtual bool has_draft_head() const { return false; }
    // Bytes of weights only the draft head reads (what loading it adds to the resident set).
    virtual size_t draft_head_bytes() const { return 0; }
    // With positions [0, n_past) decoded and `next` the token at n_past (not decoded yet): catches the head up
    // with the positions decoded since its last use (a window of them at most, see Ds4 state) and writes its
    // logits [n_vocab] for position n_past + 1.
    virtual void draft_first(ModelState &state, int64_t n_past, int32_t next, float *logits,
                             ThreadPool &pool) const;
    // One recursive step: `drafted` is the token the previous draft call's logits chose; writes the logits for
    // the position after it.
    virtual void draft_next(ModelState &state, int32_t drafted, float *logits, ThreadPool &pool) const;
};

// The model of `file`'s general.architecture (llama, qwen2, deepseek4), loaded and validated; its weight views
// point into `file`'s mapping. `mtp_file`, when not null, holds the MTP draft head (a deepseek4 sidecar);
// a deepseek4 file that carries its MTP block gets its head without one. Throws GGUFError naming the file and
// the problem.
std::unique_ptr<Model> load_model(const GGUFFile &file, const GGUFFile *mtp_file = nullptr);

}  // namespace flashmtp
