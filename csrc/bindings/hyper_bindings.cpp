// Bindings for the DeepSeek-V4 hyper-connection layer (tests and benchmarks): HcMixer (hc_pre / hc_post),
// HcHead, hc_expand. Each object keeps copies of its weights and its scratch, so repeated calls allocate nothing
// and time only the layer; objects asking for the same thread count share one pool, as the mixers of a model
// do (86 objects with a pool each would leave 86 workers spinning beside the one at work). Array shapes against
// the parameters are checked here; the weights against the parameters by the layer's hc_check
// (std::invalid_argument, raised as ValueError).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "bindings.h"
#include "core/thread_pool.h"
#include "layers/hyper.h"

namespace py = pybind11;

namespace flashmtp {

namespace {


ThreadPool &shared_pool(int n_threads) {
    static std::mutex mutex;
    static std::map<int, std::unique_ptr<ThreadPool>> pools;  // by thread count; they live until exit
    if (n_threads < 1) throw py::value_error("hc: n_threads must be >= 1, got " + std::to_string(n_threads));
    std::lock_guard<std::mutex> lock(mutex);
    std::unique_ptr<ThreadPool> &pool = pools[n_threads];
    if (!pool) pool = std::make_unique<ThreadPool>(n_threads);
    return *pool;
}

HcParams make_params(int n_streams, int64_t n_embd, int sinkhorn_iters, float hc_eps, float norm_eps) {
    return {n_streams, n_embd, sinkhorn_iters, hc_eps, norm_eps};
}

// Owned copies of fn (raw bytes of fn_type, [n_rows, row bytes]), base and scale.
struct HcWeights {
    HcWeights(uint32_t fn_type, const py::array &fn_raw, const FloatArray &base_in, const FloatArray &scale_in) {
        const DTypeTraits *traits = dtype_traits(fn_type);
        if (!traits) throw py::value_error("hc: unknown fn type id " + std::to_string(fn_type));
        if (!fn_raw.dtype().is(py::dtype::of<uint8_t>()) || fn_raw.ndim() != 2 ||
            fn_raw.shape(1) % py::ssize_t(traits->type_size) != 0) {
            throw py::value_error(std::string("hc: fn_raw must be a 2-D uint8 array [n_rows, row bytes] of whole ") +
                                  traits->name + " blocks, got " + std::string(py::str(fn_raw.dtype())) + " with " +
                                  std::to_string(fn_raw.ndim()) + " dimension(s)");
        }
        const auto contiguous = py::array_t<uint8_t, py::array::c_style>::ensure(fn_raw);
        fn_bytes.resize((size_t(contiguous.nbytes()) + 7) / 8);
        std::memcpy(fn_bytes.data(), contiguous.data(), size_t(contiguous.nbytes()));
        base.assign(base_in.data(), base_in.data() + base_in.size());
        scale.assign(scale_in.data(), scale_in.data() + scale_in.size());
        const int64_t n_rows = fn_raw.shape(0), row_bytes = fn_raw.shape(1);
        const int64_t n_cols = row_bytes / int64_t(traits->type_size) * traits->block_size;
        fn = {DType(fn_type), fn_bytes.data(), n_rows, n_cols, size_t(row_bytes)};
    }
    void check_sizes(int64_t n_base, int64_t n_scale, const char *what) const {
        if (int64_t(base.size()) != n_base || int64_t(scale.size()) != n_scale) {
            throw py::value_error(std::string(what) + ": base has " + std::to_string(base.size()) +
                                  " values and scale " + std::to_string(scale.size()) + ", expected " +
                                  std::to_string(n_base) + " and " + std::to_string(n_scale));
        }
    }
    std::vector<uint64_t> fn_bytes;  // 8-byte aligned storage of fn
    std::vector<float> base, scale;
    WeightMatrix fn{};
};

// streams float32 [n_tokens, n, D] checked against the parameters; returns n_tokens.
int64_t streams_tokens(const FloatArray &streams, const HcParams &p, const char *what) {
    if (streams.ndim() != 3 || streams.shape(1) != p.n_streams || streams.shape(2) != p.n_embd) {
        std::string shape;
        for (py::ssize_t i = 0; i < streams.ndim(); ++i) shape += (i ? ", " : "") + std::to_string(streams.shape(i));
        throw py::value_error(std::string(what) + ": streams must be [n_tokens, " + std::to_string(p.n_streams) +
                              ", " + std::to_string(p.n_embd) + "], got [" + shape + "]");
    }
    return int64_t(streams.shape(0));
}

struct PyHcMixer {
    PyHcMixer(uint32_t fn_type, const py::array &fn_raw, const FloatArray &base, const FloatArray &scale,
              int n_streams, int64_t n_embd, int sinkhorn_iters, float hc_eps, float norm_eps, int n_threads,
              const std::string &isa)
        : params(make_params(n_streams, n_embd, sinkhorn_iters, hc_eps, norm_eps)),
          weights(fn_type, fn_raw, base, scale), table(&kernel_table_named(isa)), pool(shared_pool(n_threads)) {
        mixer = {weights.fn, weights.base.data(), weights.scale.data()};
        hc_check(params, mixer);
        weights.check_sizes(hc_weights_size(n_streams), 3, "HcMixer");
    }

    std::tuple<py::array_t<float>, py::array_t<float>> pre(const FloatArray &streams) {
        const int64_t n_tokens = streams_tokens(streams, params, "HcMixer.pre");
        py::array_t<float> w({py::ssize_t(n_tokens), py::ssize_t(hc_weights_size(params.n_streams))});
        py::array_t<float> x({py::ssize_t(n_tokens), py::ssize_t(params.n_embd)});
        float *w_data = w.mutable_data(), *x_data = x.mutable_data();
        py::gil_scoped_release release;
        std::lock_guard<std::mutex> lock(mutex);
        hc_pre(params, mixer, streams.data(), n_tokens, w_data, x_data, pool, scratch, *table);
        return {w, x};
    }

    py::array_t<float> post(const FloatArray &weights_in, const FloatArray &block_out, const FloatArray &streams) {
        const int64_t n_tokens = streams_tokens(streams, params, "HcMixer.post");
        const int64_t n_weights = hc_weights_size(params.n_streams);
        if (weights_in.ndim() != 2 || weights_in.shape(0) != n_tokens || weights_in.shape(1) != n_weights) {
            throw py::value_error("HcMixer.post: weights must be [" + std::to_string(n_tokens) + ", " +
                                  std::to_string(n_weights) + "] (from pre on the same streams)");
        }
        if (block_out.ndim() != 2 || block_out.shape(0) != n_tokens || block_out.shape(1) != params.n_embd) {
            throw py::value_error("HcMixer.post: block_out must be [" + std::to_string(n_tokens) + ", " +
                                  std::to_string(params.n_embd) + "]");
        }
        py::array_t<float> out({py::ssize_t(n_tokens), py::ssize_t(params.n_streams), py::ssize_t(params.n_embd)});
        float *out_data = out.mutable_data();
        py::gil_scoped_release release;
        std::lock_guard<std::mutex> lock(mutex);
        hc_post(params, weights_in.data(), block_out.data(), streams.data(), n_tokens, out_data, pool);
        return out;
    }

    HcParams params;
    HcWeights weights;
    HcMixer mixer{};
    const KernelTable *table;
    ThreadPool &pool;  // shared with other objects of the same thread count: calls on it are serialised
    HcScratch scratch;
    std::mutex mutex;  // Python threads may share one object
};

struct PyHcHead {
    PyHcHead(uint32_t fn_type, const py::array &fn_raw, const FloatArray &base, const FloatArray &scale,
             int n_streams, int64_t n_embd, float hc_eps, float norm_eps, int n_threads, const std::string &isa)
        : params(make_params(n_streams, n_embd, 1, hc_eps, norm_eps)),
          weights(fn_type, fn_raw, base, scale), table(&kernel_table_named(isa)), pool(shared_pool(n_threads)) {
        head = {weights.fn, weights.base.data(), weights.scale.data()};
        hc_check(params, head);
        weights.check_sizes(n_streams, 1, "HcHead");
    }

    py::array_t<float> call(const FloatArray &streams) {
        const int64_t n_tokens = streams_tokens(streams, params, "HcHead");
        py::array_t<float> h({py::ssize_t(n_tokens), py::ssize_t(params.n_embd)});
        float *h_data = h.mutable_data();
        py::gil_scoped_release release;
        std::lock_guard<std::mutex> lock(mutex);
        hc_head(params, head, streams.data(), n_tokens, h_data, pool, scratch, *table);
        return h;
    }

    HcParams params;
    HcWeights weights;
    HcHead head{};
    const KernelTable *table;
    ThreadPool &pool;  // shared with other objects of the same thread count: calls on it are serialised
    HcScratch scratch;
    std::mutex mutex;
};

py::array_t<float> hc_expand_py(const FloatArray &embd, int n_streams) {
    if (embd.ndim() != 2) throw py::value_error("hc_expand: embd must be [n_tokens, D]");
    const HcParams params = make_params(n_streams, int64_t(embd.shape(1)), 1, 0.0f, 0.0f);
    py::array_t<float> streams({embd.shape(0), py::ssize_t(n_streams), embd.shape(1)});
    hc_expand(params, embd.data(), int64_t(embd.shape(0)), streams.mutable_data());
    return streams;
}

}  // namespace

void bind_hyper(py::module_ &m) {
    py::class_<PyHcMixer>(m, "HcMixer",
                          "One DeepSeek-V4 hyper-connection mixer (hc_attn_* / hc_ffn_*); runs on a pool of "
                          "n_threads shared by all hc objects of that thread count.")
        .def(py::init<uint32_t, const py::array &, const FloatArray &, const FloatArray &, int, int64_t, int, float,
                      float, int, const std::string &>(),
             py::arg("fn_type"), py::arg("fn_raw"), py::arg("base"), py::arg("scale"), py::arg("n_streams"),
             py::arg("n_embd"), py::arg("sinkhorn_iters"), py::arg("hc_eps"), py::arg("norm_eps"),
             py::arg("n_threads") = 1, py::arg("isa") = "",
             "fn_raw: uint8 [(2 + n) * n, n * D * element bytes] of fn_type (f32, f16 or bf16); base float32 "
             "[(2 + n) * n]; scale float32 [3].")
        .def("pre", &PyHcMixer::pre, py::arg("streams"),
             "streams float32 [n_tokens, n, D] -> (weights [n_tokens, (2 + n) * n] = pre | post | comb, "
             "x [n_tokens, D]).")
        .def("post", &PyHcMixer::post, py::arg("weights"), py::arg("block_out"), py::arg("streams"),
             "-> new streams [n_tokens, n, D] = post * block_out + comb^T streams.");
    py::class_<PyHcHead>(m, "HcHead",
                         "DeepSeek-V4 output hyper-head (output_hc_*); runs on the shared pool of n_threads.")
        .def(py::init<uint32_t, const py::array &, const FloatArray &, const FloatArray &, int, int64_t, float, float,
                      int, const std::string &>(),
             py::arg("fn_type"), py::arg("fn_raw"), py::arg("base"), py::arg("scale"), py::arg("n_streams"),
             py::arg("n_embd"), py::arg("hc_eps"), py::arg("norm_eps"), py::arg("n_threads") = 1,
             py::arg("isa") = "",
             "fn_raw: uint8 [n, n * D * element bytes] of fn_type (f32, f16 or bf16); base float32 [n]; "
             "scale float32 [1].")
        .def("__call__", &PyHcHead::call, py::arg("streams"), "streams float32 [n_tokens, n, D] -> h [n_tokens, D].");
    m.def("hc_expand", &hc_expand_py, py::arg("embd"), py::arg("n_streams"),
          "embd float32 [n_tokens, D] -> streams [n_tokens, n_streams, D]: n copies of each row.");
}

}  // namespace flashmtp
