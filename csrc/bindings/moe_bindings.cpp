// Bindings for the DeepSeek-V4 MoE layer (layers/moe.h): moe_route on its own, and MoeLayer, which holds copies
// of one layer's weights, a thread pool and the scratch, so that repeated forward calls allocate nothing.
// Numpy dtypes and ranks are checked here; shapes against each other by the layer (std::invalid_argument,
// raised as ValueError).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "bindings.h"
#include "core/thread_pool.h"
#include "kernels.h"
#include "layers/moe.h"

namespace py = pybind11;

namespace flashmtp {

namespace {

using Int32Array = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
using ByteArray = py::array_t<uint8_t, py::array::c_style>;

void check_rank(const py::array &a, int ndim, const std::string &what) {
    if (a.ndim() != ndim) {
        throw py::value_error(what + " must have " + std::to_string(ndim) + " dimension(s), got " +
                              std::to_string(a.ndim()));
    }
}

MoeRouter make_router(int64_t n_expert, int64_t n_expert_used, uint32_t gating, bool weights_norm,
                      float weights_scale) {
    MoeRouter r;
    r.n_expert = n_expert;
    r.n_expert_used = n_expert_used;
    r.gating = MoeGatingFunc(gating);
    r.weights_norm = weights_norm;
    r.weights_scale = weights_scale;
    return r;
}

// tid2eid int32 [n_vocab, k] -> the router's table pointer and row count.
void set_tid2eid(MoeRouter &r, const Int32Array &tid2eid) {
    check_rank(tid2eid, 2, "tid2eid");
    if (tid2eid.shape(1) != r.n_expert_used) {
        throw py::value_error("tid2eid has " + std::to_string(tid2eid.shape(1)) + " columns, expected k = " +
                              std::to_string(r.n_expert_used));
    }
    r.tid2eid = tid2eid.data();
    r.n_vocab = int64_t(tid2eid.shape(0));
}

const int32_t *token_ids_or_null(const std::optional<Int32Array> &token_ids, int64_t n_tokens) {
    if (!token_ids) return nullptr;
    check_rank(*token_ids, 1, "token_ids");
    if (token_ids->shape(0) != n_tokens) {
        throw py::value_error("token_ids has " + std::to_string(token_ids->shape(0)) + " entries for " +
                              std::to_string(n_tokens) + " tokens");
    }
    return token_ids->data();
}

// logits float32 [n_tokens, n_expert] -> (ids int32 [n_tokens, k], weights float32 [n_tokens, k]).
std::tuple<py::array_t<int32_t>, py::array_t<float>> moe_route_py(
    const FloatArray &logits, int64_t n_expert_used, uint32_t gating, bool weights_norm, float weights_scale,
    const std::optional<FloatArray> &selection_bias, const std::optional<Int32Array> &tid2eid,
    const std::optional<Int32Array> &token_ids) {
    check_rank(logits, 2, "logits");
    const int64_t n_tokens = logits.shape(0), n_expert = logits.shape(1);
    MoeRouter r = make_router(n_expert, n_expert_used, gating, weights_norm, weights_scale);
    if (selection_bias) {
        if (selection_bias->ndim() != 1 || selection_bias->shape(0) != n_expert) {
            throw py::value_error("selection_bias must be float32 [n_expert = " + std::to_string(n_expert) + "]");
        }
        r.selection_bias = selection_bias->data();
    }
    if (tid2eid) set_tid2eid(r, *tid2eid);
    const int32_t *ids_in = token_ids_or_null(token_ids, n_tokens);
    std::vector<float> scores(logits.data(), logits.data() + n_tokens * n_expert);  // moe_route overwrites
    const int64_t k = std::max<int64_t>(n_expert_used, 0);
    py::array_t<int32_t> ids({py::ssize_t(n_tokens), py::ssize_t(k)});
    py::array_t<float> weights({py::ssize_t(n_tokens), py::ssize_t(k)});
    moe_route(r, scores.data(), ids_in, n_tokens, ids.mutable_data(), weights.mutable_data());
    return {ids, weights};
}

// One layer with its own copies of the weights (8-byte aligned, as GGUF data would be).
class PyMoeLayer {
public:
    PyMoeLayer(const FloatArray &gate_inp, uint32_t weight_type, const ByteArray &gate_exps,
               const ByteArray &up_exps, const ByteArray &down_exps, const ByteArray &gate_shexp,
               const ByteArray &up_shexp, const ByteArray &down_shexp, int64_t n_expert_used, uint32_t gating,
               bool weights_norm, float weights_scale, const std::optional<FloatArray> &selection_bias,
               const std::optional<Int32Array> &tid2eid, float swiglu_limit_exp, float swiglu_limit_shexp,
               int n_threads)
        : pool_(n_threads) {
        const DTypeTraits *traits = dtype_traits(weight_type);
        if (!traits) throw py::value_error("MoeLayer: unknown weight type id " + std::to_string(weight_type));
        check_rank(gate_inp, 2, "gate_inp");
        const int64_t n_expert = gate_inp.shape(0), n_embd = gate_inp.shape(1);
        layer_.router = make_router(n_expert, n_expert_used, gating, weights_norm, weights_scale);
        gate_inp_ = copy(gate_inp.data(), size_t(gate_inp.nbytes()));
        layer_.gate_inp = {DTYPE_F32, gate_inp_.data(), n_expert, n_embd, size_t(n_embd) * sizeof(float)};
        layer_.gate_exps = experts(gate_exps, *traits, weight_type, n_expert, "gate_exps", gate_exps_);
        layer_.up_exps = experts(up_exps, *traits, weight_type, n_expert, "up_exps", up_exps_);
        layer_.down_exps = experts(down_exps, *traits, weight_type, n_expert, "down_exps", down_exps_);
        layer_.gate_shexp = matrix(gate_shexp, *traits, weight_type, "gate_shexp", gate_shexp_);
        layer_.up_shexp = matrix(up_shexp, *traits, weight_type, "up_shexp", up_shexp_);
        layer_.down_shexp = matrix(down_shexp, *traits, weight_type, "down_shexp", down_shexp_);
        if (selection_bias) {
            if (selection_bias->ndim() != 1 || selection_bias->shape(0) != n_expert) {
                throw py::value_error("selection_bias must be float32 [n_expert = " + std::to_string(n_expert) +
                                      "]");
            }
            selection_bias_.assign(selection_bias->data(), selection_bias->data() + n_expert);
            layer_.router.selection_bias = selection_bias_.data();
        }
        if (tid2eid) {
            set_tid2eid(layer_.router, *tid2eid);
            tid2eid_.assign(tid2eid->data(), tid2eid->data() + tid2eid->size());
            layer_.router.tid2eid = tid2eid_.data();
        }
        layer_.swiglu_limit_exp = swiglu_limit_exp;
        layer_.swiglu_limit_shexp = swiglu_limit_shexp;
        moe_check_layer(layer_);
    }

    // x float32 [n_tokens, D] -> float32 [n_tokens, D]
    py::array_t<float> forward(const FloatArray &x, const std::optional<Int32Array> &token_ids) {
        check_rank(x, 2, "x");
        const int64_t n_tokens = x.shape(0);
        if (x.shape(1) != layer_.gate_inp.n_cols) {
            throw py::value_error("x has " + std::to_string(x.shape(1)) + " columns, the layer's width is " +
                                  std::to_string(layer_.gate_inp.n_cols));
        }
        const int32_t *ids = token_ids_or_null(token_ids, n_tokens);
        py::array_t<float> out({py::ssize_t(n_tokens), py::ssize_t(x.shape(1))});
        float *out_data = out.mutable_data();
        py::gil_scoped_release release;
        std::lock_guard<std::mutex> lock(mutex_);
        moe_forward(layer_, x.data(), ids, n_tokens, out_data, pool_, scratch_);
        return out;
    }

    int n_threads() const { return pool_.n_threads(); }

private:
    static std::vector<uint64_t> copy(const void *data, size_t n_bytes) {
        std::vector<uint64_t> storage((n_bytes + 7) / 8);
        std::memcpy(storage.data(), data, n_bytes);
        return storage;
    }

    // raw uint8 [n_rows, row bytes] -> a view of a copy; the column count follows from the row size.
    static WeightMatrix matrix(const ByteArray &raw, const DTypeTraits &t, uint32_t type, const std::string &what,
                               std::vector<uint64_t> &storage) {
        check_rank(raw, 2, what);
        return view(raw, raw.shape(0), raw.shape(1), t, type, what, storage);
    }

    // raw uint8 [n_expert, n_rows, row bytes] -> expert 0's view of a copy.
    static WeightMatrix experts(const ByteArray &raw, const DTypeTraits &t, uint32_t type, int64_t n_expert,
                                const std::string &what, std::vector<uint64_t> &storage) {
        check_rank(raw, 3, what);
        if (raw.shape(0) != n_expert) {
            throw py::value_error(what + " holds " + std::to_string(raw.shape(0)) + " experts, gate_inp " +
                                  std::to_string(n_expert));
        }
        return view(raw, raw.shape(1), raw.shape(2), t, type, what, storage);
    }

    static WeightMatrix view(const ByteArray &raw, int64_t n_rows, int64_t row_bytes, const DTypeTraits &t,
                             uint32_t type, const std::string &what, std::vector<uint64_t> &storage) {
        if (row_bytes <= 0 || size_t(row_bytes) % t.type_size != 0) {
            throw py::value_error(what + ": rows of " + std::to_string(row_bytes) + " bytes are not whole " +
                                  t.name + " blocks of " + std::to_string(t.type_size) + " bytes");
        }
        storage = copy(raw.data(), size_t(raw.nbytes()));
        const int64_t n_cols = row_bytes / int64_t(t.type_size) * t.block_size;
        return {DType(type), storage.data(), n_rows, n_cols, size_t(row_bytes)};
    }

    MoeLayer layer_;
    std::vector<uint64_t> gate_inp_, gate_exps_, up_exps_, down_exps_, gate_shexp_, up_shexp_, down_shexp_;
    std::vector<float> selection_bias_;
    std::vector<int32_t> tid2eid_;
    ThreadPool pool_;
    MoeScratch scratch_;
    std::mutex mutex_;  // Python threads may share one layer object
};

}  // namespace

void bind_moe(py::module_ &m) {
    m.def("moe_route", &moe_route_py, py::arg("logits"), py::arg("n_expert_used"), py::arg("gating") = 4,
          py::arg("weights_norm") = true, py::arg("weights_scale") = 1.0f, py::arg("selection_bias") = py::none(),
          py::arg("tid2eid") = py::none(), py::arg("token_ids") = py::none(),
          "DeepSeek-V4 MoE routing of router logits float32 [n_tokens, n_expert] -> (ids int32 [n_tokens, k],"
          " weights float32 [n_tokens, k]). gating: 2 sigmoid, 4 sqrtsoftplus (llama.cpp's numbering). Routed:"
          " top-k of score + selection_bias, descending, ties to the lower id. Hash: tid2eid int32 [n_vocab, k]"
          " rows of token_ids int32 [n_tokens].");
    const char *layer_doc =
        "One DeepSeek-V4 MoE FFN layer (routed or hash) over copies of its weights, with its own thread pool.";
    py::class_<PyMoeLayer>(m, "MoeLayer", layer_doc)
        .def(py::init<const FloatArray &, uint32_t, const ByteArray &, const ByteArray &, const ByteArray &,
                      const ByteArray &, const ByteArray &, const ByteArray &, int64_t, uint32_t, bool, float,
                      const std::optional<FloatArray> &, const std::optional<Int32Array> &, float, float, int>(),
             py::arg("gate_inp"), py::arg("weight_type"), py::arg("gate_exps"), py::arg("up_exps"),
             py::arg("down_exps"), py::arg("gate_shexp"), py::arg("up_shexp"), py::arg("down_shexp"),
             py::arg("n_expert_used"), py::arg("gating") = 4, py::arg("weights_norm") = true,
             py::arg("weights_scale") = 1.0f, py::arg("selection_bias") = py::none(),
             py::arg("tid2eid") = py::none(), py::arg("swiglu_limit_exp") = INFINITY,
             py::arg("swiglu_limit_shexp") = INFINITY, py::arg("n_threads") = 1,
             "gate_inp float32 [n_expert, D]; expert tensors uint8 [n_expert, rows, row bytes] and shared ones"
             " uint8 [rows, row bytes], all of weight_type (gate/up: I rows of D, down: D rows of I).")
        .def("forward", &PyMoeLayer::forward, py::arg("x"), py::arg("token_ids") = py::none(),
             "x float32 [n_tokens, D] (normed) -> float32 [n_tokens, D]; token_ids int32 [n_tokens] for hash"
             " layers.")
        .def_property_readonly("n_threads", &PyMoeLayer::n_threads);
}

}  // namespace flashmtp
