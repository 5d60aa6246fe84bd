// Bindings for the DeepSeek-V4 attention layer (layers/ds4_attention.h), for tests against transformers:
// _core.Ds4Attention owns copies of its weights, one sequence's state and a thread pool; forward() continues
// the sequence. Weight matrices come as (type id, uint8 [n_rows, row bytes]) as a GGUF tensor stores them,
// vectors as float32.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "bindings.h"
#include "core/thread_pool.h"
#include "kernels.h"
#include "layers/ds4_attention.h"

namespace py = pybind11;

namespace flashmtp {

namespace {

Ds4AttentionKind kind_named(const std::string &name) {
    if (name == "window") return DS4_ATTN_WINDOW;
    if (name == "hca") return DS4_ATTN_HCA;
    if (name == "csa") return DS4_ATTN_CSA;
    throw py::value_error("Ds4Attention: kind must be 'window', 'hca' or 'csa', got '" + name + "'");
}

class PyDs4Attention {
public:
    PyDs4Attention(const py::dict &shape, const py::dict &matrices, const py::dict &vectors,
                   FloatArray rope_freqs, int n_threads)
        : pool_(n_threads) {
        const auto get = [&](const char *key) {
            if (!shape.contains(key)) throw py::value_error(std::string("Ds4Attention: shape lacks '") + key + "'");
            return shape[key];
        };
        const auto get_or_zero = [&](const char *key) { return shape.contains(key) ? shape[key].cast<int64_t>() : 0; };
        shape_ = {kind_named(get("kind").cast<std::string>()), get("n_embd").cast<int64_t>(),
                  get("n_head").cast<int64_t>(), get("head_dim").cast<int64_t>(), get("n_rot").cast<int64_t>(),
                  get("q_lora_rank").cast<int64_t>(), get("o_groups").cast<int64_t>(),
                  get("o_lora_rank").cast<int64_t>(), get("window").cast<int64_t>(), get_or_zero("compress_ratio"),
                  get_or_zero("index_n_head"), get_or_zero("index_head_dim"), get_or_zero("index_top_k"),
                  get("eps").cast<float>()};
        const auto matrix = [&](const char *name) {
            WeightMatrix w{DTYPE_F32, nullptr, 0, 0, 0};
            if (!matrices.contains(name)) return w;
            const auto entry = matrices[name].cast<py::tuple>();
            const uint32_t type = entry[0].cast<uint32_t>();
            const DTypeTraits *traits = dtype_traits(type);
            if (!traits) throw py::value_error(std::string("Ds4Attention: ") + name + " has unknown type id");
            const auto raw = py::array_t<uint8_t, py::array::c_style>::ensure(entry[1]);
            if (!raw || raw.ndim() != 2) {
                throw py::value_error(std::string("Ds4Attention: ") + name + " must be uint8 [n_rows, row bytes]");
            }
            const size_t row_bytes = size_t(raw.shape(1));
            if (row_bytes % traits->type_size != 0) {
                throw py::value_error(std::string("Ds4Attention: ") + name + " rows are not whole " + traits->name +
                                      " blocks");
            }
            w = {DType(type), keep(raw.data(), size_t(raw.nbytes())), int64_t(raw.shape(0)),
                 int64_t(row_bytes / traits->type_size) * traits->block_size, row_bytes};
            return w;
        };
        const auto vector = [&](const char *name) -> const float * {
            if (!vectors.contains(name)) return nullptr;
            const auto v = FloatArray::ensure(vectors[name]);
            return reinterpret_cast<const float *>(keep(v.data(), size_t(v.nbytes())));
        };
        weights_.q_a = matrix("q_a");
        weights_.q_b = matrix("q_b");
        weights_.kv = matrix("kv");
        weights_.o_a = matrix("o_a");
        weights_.o_b = matrix("o_b");
        weights_.q_a_norm = vector("q_a_norm");
        weights_.kv_norm = vector("kv_norm");
        weights_.sinks = vector("sinks");
        weights_.compressor = {matrix("compressor.kv"), matrix("compressor.gate"), vector("compressor.ape"),
                               vector("compressor.norm")};
        weights_.indexer = {{matrix("indexer.kv"), matrix("indexer.gate"), vector("indexer.ape"),
                             vector("indexer.norm")},
                            matrix("indexer.q_b"), matrix("indexer.proj")};
        if (rope_freqs.ndim() != 1 || rope_freqs.shape(0) != shape_.n_rot / 2) {
            throw py::value_error("Ds4Attention: rope_freqs must be float32 [n_rot / 2]");
        }
        rope_freqs_.assign(rope_freqs.data(), rope_freqs.data() + rope_freqs.shape(0));
        ds4_attention_validate(shape_, weights_);
        ds4_attention_state_init(shape_, state_);
    }

    py::array_t<float> forward(FloatArray x) {
        if (x.ndim() != 2 || x.shape(1) != shape_.n_embd) {
            throw py::value_error("Ds4Attention.forward: x must be float32 [n_tokens, " +
                                  std::to_string(shape_.n_embd) + "]");
        }
        const int64_t n_tokens = x.shape(0);
        py::array_t<float> out({py::ssize_t(n_tokens), py::ssize_t(shape_.n_embd)});
        {
            py::gil_scoped_release release;
            ds4_attention_forward(shape_, weights_, rope_freqs_.data(), x.data(), n_tokens, out.mutable_data(),
                                  state_, pool_, scratch_);
        }
        return out;
    }

    void reset() { ds4_attention_state_init(shape_, state_); }
    int64_t n_past() const { return state_.n_past; }
    int64_t n_entries() const {
        return shape_.kind == DS4_ATTN_WINDOW ? 0 : int64_t(state_.compressor.entries.size()) / shape_.head_dim;
    }

private:
    // An 8-byte aligned copy owned by this object (the kernels read blocks at aligned addresses).
    const uint8_t *keep(const void *data, size_t n_bytes) {
        storage_.emplace_back((n_bytes + 7) / 8);
        std::memcpy(storage_.back().data(), data, n_bytes);
        return reinterpret_cast<const uint8_t *>(storage_.back().data());
    }

    ThreadPool pool_;
    Ds4AttentionShape shape_{};
    Ds4AttentionWeights weights_{};
    std::vector<std::vector<uint64_t>> storage_;
    std::vector<float> rope_freqs_;
    Ds4AttentionState state_;
    Ds4AttentionScratch scratch_;
};

}  // namespace

void bind_ds4_attention(py::module_ &m) {
    py::class_<PyDs4Attention>(m, "Ds4Attention",
                               "One DeepSeek-V4 attention layer with one sequence's state (layers/ds4_attention.h).")
        .def(py::init<const py::dict &, const py::dict &, const py::dict &,
                      FloatArray, int>(),
             py::arg("shape"), py::arg("matrices"), py::arg("vectors"), py::arg("rope_freqs"),
             py::arg("n_threads") = 1,
             "shape: kind ('window' | 'hca' | 'csa'), n_embd, n_head, head_dim, n_rot, q_lora_rank, o_groups, "
             "o_lora_rank, window, eps, and compress_ratio, index_n_head, index_head_dim, index_top_k where used; "
             "matrices: name -> (type id, uint8 [n_rows, row bytes]) for q_a, q_b, kv, o_a, o_b, compressor.kv, "
             "compressor.gate, indexer.kv, indexer.gate, indexer.q_b, indexer.proj; vectors: name -> float32 for "
             "q_a_norm, kv_norm, sinks, compressor.ape, compressor.norm, indexer.ape, indexer.norm.")
        .def("forward", &PyDs4Attention::forward, py::arg("x"),
             "Attention output float32 [n_tokens, n_embd] of the next n_tokens positions of the sequence.")
        .def("reset", &PyDs4Attention::reset, "Start a new sequence.")
        .def_property_readonly("n_past", &PyDs4Attention::n_past)
        .def_property_readonly("n_entries", &PyDs4Attention::n_entries, "Compressed entries so far.");
    m.def("ds4_rope_freqs", &ds4_rope_freqs, py::arg("n_rot"), py::arg("theta"),
          "DeepSeek-V4 'main' rotary frequencies [n_rot / 2].");
    m.def("ds4_rope_freqs_yarn", &ds4_rope_freqs_yarn, py::arg("n_rot"), py::arg("theta"), py::arg("factor"),
          py::arg("original_context"), py::arg("beta_fast"), py::arg("beta_slow"),
          "DeepSeek-V4 'compress' rotary frequencies [n_rot / 2] (YaRN, attention factor 1).");
}

}  // namespace flashmtp
