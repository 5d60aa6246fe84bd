// The Model interface over each family's load / state / forward functions.
#include "models/model.h"

#include <string>

#include "core/error.h"
#include "models/deepseek4.h"
#include "models/llama.h"

namespace flashmtp {

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
    bool rewinds_in_place() const override { return true; }  // the KV cache is indexed by absolute position
    std::unique_ptr<ModelState> new_state(int64_t n_ctx, int n_threads) const override {
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
    size_t size_bytes() const override { return deepseek4_state_bytes(state); }
};

class Deepseek4 final : public Model {
public:
    explicit Deepseek4(Ds4Model model) : model_(std::move(model)) {
        const Ds4Hparams &h = model_.hparams;
        // n_ff: the routed experts' feed-forward length.
        dims_ = {h.n_vocab, h.n_embd, h.n_layer, h.n_head, 1, h.n_ff_exp, h.n_ctx_train};
    }
    const ModelDims &dims() const override { return dims_; }
    bool rewinds_in_place() const override { return false; }  // rings and compressor windows (Ds4State)
    std::unique_ptr<ModelState> new_state(int64_t, int) const override {
        auto box = std::make_unique<Ds4StateBox>();
        deepseek4_state_init(model_, box->state);
        return box;
    }
    void forward(ModelState &state, const int32_t *tokens, int64_t n_tokens, int64_t n_past, int64_t n_logits,
                 float *logits, ThreadPool &pool) const override {
        deepseek4_forward(model_, static_cast<Ds4StateBox &>(state).state, tokens, n_tokens, n_past, n_logits,
                          logits, pool);
    }

private:
    Ds4Model model_;
    ModelDims dims_;
};

}  // namespace

std::unique_ptr<Model> load_model(const GGUFFile &file) {
    const std::string &arch = file.get_string("general.architecture");
    if (arch == "llama") return std::make_unique<LlamaFamily>(llama_load_llama(file));
    if (arch == "qwen2") return std::make_unique<LlamaFamily>(qwen2_load(file));
    if (arch == "deepseek4") return std::make_unique<Deepseek4>(deepseek4_load(file));
    throw GGUFError(file.path() + ": architecture '" + arch +
                    "' is not supported (supported: llama, qwen2, deepseek4)");
}

}  // namespace flashmtp
