// The engine's view of a model family: load by architecture, make a per-sequence state, run a batch. The
// Session logic (input checks, positions, rewind) is written once in runtime/engine.cpp over this interface.
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
    // True when dropping positions from p on is exact by truncating the position count alone (a cache indexed
    // by absolute position whose later rows are overwritten before they are read). False when the state keeps
    // only a moving suffix (rings, running compressions): the session then rewinds by re-running its kept
    // tokens into a fresh state.
    virtual bool rewinds_in_place() const = 0;
    // An empty state for contexts of n_ctx positions, for a pool of n_threads.
    virtual std::unique_ptr<ModelState> new_state(int64_t n_ctx, int n_threads) const = 0;
    // Runs tokens [n_tokens] at positions n_past.. and writes the logits of the last n_logits tokens into
    // logits [n_logits, n_vocab]. The caller has checked the token ids, n_logits and the context.
    virtual void forward(ModelState &state, const int32_t *tokens, int64_t n_tokens, int64_t n_past,
                         int64_t n_logits, float *logits, ThreadPool &pool) const = 0;
};

// The model of `file`'s general.architecture (llama, qwen2, deepseek4), loaded and validated; its weight views
// point into `file`'s mapping. Throws GGUFError naming the file and the problem.
std::unique_ptr<Model> load_model(const GGUFFile &file);

}  // namespace flashmtp
