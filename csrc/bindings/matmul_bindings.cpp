// Bindings for the thread pool, batched matmul, single dot-kernel calls and the bandwidth probe. Numpy
// shapes, dtypes and strides are checked here; sizes against the weight type are checked by matmul itself
// (std::invalid_argument, which pybind11 raises as ValueError).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <mutex>
#include <string>
#include <vector>

#include "bindings.h"
#include "core/thread_pool.h"
#include "kernels.h"
#include "layers/matmul.h"
#include "tools/read_bandwidth.h"

namespace py = pybind11;

namespace flashmtp {

namespace {

// _core.ThreadPool: the pool and the scratch its matmul calls reuse, so repeated calls allocate nothing.
struct PyThreadPool {
    explicit PyThreadPool(int n_threads) : pool(n_threads) {}
    ThreadPool pool;
    MatmulScratch scratch;
    std::mutex scratch_mutex;  // Python threads may share one pool object
};

// Weight types matmul can run with the given ISA's table: a dot kernel and an activation quantizer exist.
std::vector<uint32_t> matmul_types(const std::string &isa) {
    const KernelTable &table = kernel_table_named(isa);
    std::vector<uint32_t> types;
    for (uint32_t type = 0; type < DTYPE_COUNT; ++type) {
        const DTypeTraits *traits = dtype_traits(type);
        if (traits && table.vec_dot[type] && table.quantize_row[traits->vec_dot_type]) types.push_back(type);
    }
    return types;
}

// w_raw: uint8 [n_rows, row bytes], rows may be strided (a view of a padded array); x: float32 [n_tokens,
// n_cols] or [n_cols]. Returns float32 [n_tokens, n_rows] (or [n_rows] for a 1-D x).
py::array_t<float> matmul_py(uint32_t type, const py::array &w_raw, const py::array &x, PyThreadPool *pool,
                             const std::string &isa) {
    const DTypeTraits *traits = dtype_traits(type);
    if (!traits) throw py::value_error("matmul: unknown weight type id " + std::to_string(type));
    if (!w_raw.dtype().is(py::dtype::of<uint8_t>()) || w_raw.ndim() != 2) {
        throw py::value_error("matmul: w_raw must be a 2-D uint8 array [n_rows, row bytes], got " +
                              std::string(py::str(w_raw.dtype())) + " with " + std::to_string(w_raw.ndim()) +
                              " dimension(s)");
    }
    if (!x.dtype().is(py::dtype::of<float>()) || (x.ndim() != 1 && x.ndim() != 2)) {
        throw py::value_error("matmul: x must be a float32 array [n_tokens, n_cols] or [n_cols], got " +
                              std::string(py::str(x.dtype())) + " with " + std::to_string(x.ndim()) +
                              " dimension(s)");
    }
    const auto x_c = py::array_t<float, py::array::c_style>::ensure(x);  // copies only a non-contiguous x
    const int64_t n_tokens = x.ndim() == 2 ? int64_t(x.shape(0)) : 1;
    const int64_t n_cols = int64_t(x.shape(x.ndim() - 1));
    const int64_t n_rows = int64_t(w_raw.shape(0));
    if (n_cols <= 0 || n_cols % traits->block_size != 0) {
        throw py::value_error("matmul: x has " + std::to_string(n_cols) + " columns, not a positive multiple of the " +
                              traits->name + " block size " + std::to_string(traits->block_size));
    }
    const size_t row_bytes = dtype_row_size(*traits, n_cols);
    if (size_t(w_raw.shape(1)) != row_bytes) {
        throw py::value_error("matmul: w_raw rows hold " + std::to_string(w_raw.shape(1)) + " bytes but a " +
                              traits->name + " row of " + std::to_string(n_cols) + " columns (from x) takes " +
                              std::to_string(row_bytes));
    }
    if (w_raw.strides(1) != 1 || (n_rows > 1 && w_raw.strides(0) < py::ssize_t(row_bytes))) {
        throw py::value_error("matmul: w_raw rows must be contiguous bytes with a row stride >= the row size");
    }
    const size_t row_stride = n_rows > 1 ? size_t(w_raw.strides(0)) : row_bytes;
    const KernelTable &table = kernel_table_named(isa);
    const WeightMatrix w{DType(type), w_raw.data(), n_rows, n_cols, row_stride};

    py::array_t<float> y = x.ndim() == 2 ? py::array_t<float>({py::ssize_t(n_tokens), py::ssize_t(n_rows)})
                                         : py::array_t<float>(py::ssize_t(n_rows));
    float *y_data = y.mutable_data();
    py::gil_scoped_release release;
    if (pool) {
        std::lock_guard<std::mutex> lock(pool->scratch_mutex);
        matmul(w, x_c.data(), n_tokens, y_data, pool->pool, pool->scratch, table);
    } else {
        ThreadPool inline_pool(1);
        MatmulScratch scratch;
        matmul(w, x_c.data(), n_tokens, y_data, inline_pool, scratch, table);
    }
    return y;
}

// One kernel call: w_row uint8 [row bytes] of `type` holding n elements; x uint8 [n_x, activation row bytes]
// in the type's activation format, rows possibly strided. Returns float32 [n_x].
py::array_t<float> vec_dot_py(uint32_t type, const py::array &w_row, const py::array &x, int64_t n,
                              const std::string &isa) {
    const DTypeTraits *traits = dtype_traits(type);
    if (!traits) throw py::value_error("vec_dot: unknown weight type id " + std::to_string(type));
    const DTypeTraits &activation = *dtype_traits(traits->vec_dot_type);
    if (n <= 0 || n % traits->block_size != 0) {
        throw py::value_error("vec_dot: n = " + std::to_string(n) + " is not a positive multiple of the " +
                              traits->name + " block size " + std::to_string(traits->block_size));
    }
    const size_t w_bytes = checked_row_bytes(*traits, n, "vec_dot"), x_bytes = dtype_row_size(activation, n);
    const bool w_ok = w_row.dtype().is(py::dtype::of<uint8_t>()) && w_row.ndim() == 1 &&
                      size_t(w_row.shape(0)) == w_bytes && w_row.strides(0) == 1;
    if (!w_ok) {
        throw py::value_error("vec_dot: w_row must be " + std::to_string(w_bytes) + " contiguous uint8 bytes (" +
                              std::to_string(n) + " " + traits->name + " elements)");
    }
    const bool x_ok = x.dtype().is(py::dtype::of<uint8_t>()) && x.ndim() == 2 && size_t(x.shape(1)) == x_bytes &&
                      x.strides(1) == 1 && (x.shape(0) < 2 || x.strides(0) >= py::ssize_t(x_bytes));
    if (!x_ok) {
        throw py::value_error("vec_dot: x must be uint8 [n_x, " + std::to_string(x_bytes) + "] (" +
                              std::to_string(n) + " elements of " + activation.name +
                              "), rows contiguous, row stride >= the row size");
    }
    if (x.shape(0) < 1 || x.shape(0) > VEC_DOT_MAX_X) {
        throw py::value_error("vec_dot: n_x = " + std::to_string(x.shape(0)) + " rows, need 1.." +
                              std::to_string(VEC_DOT_MAX_X));
    }
    const int n_x = int(x.shape(0));
    // Q8_K blocks start with a float: their rows must be 4-byte aligned (kernels.h).
    const size_t x_align = activation.type_size % 4 == 0 ? 4 : 1;
    if (reinterpret_cast<uintptr_t>(x.data()) % x_align != 0 || size_t(x.strides(0)) % x_align != 0) {
        throw py::value_error(std::string("vec_dot: ") + activation.name + " rows must start at " +
                              std::to_string(x_align) + "-byte aligned addresses");
    }
    const VecDotFn dot = kernel_table_named(isa).vec_dot[type];
    if (!dot) throw py::value_error(std::string("vec_dot: no dot kernel for weight type ") + traits->name);
    py::array_t<float> out(n_x);
    dot(n, w_row.data(), x.data(), n_x > 1 ? size_t(x.strides(0)) : x_bytes, n_x, out.mutable_data());
    return out;
}

double read_bandwidth_py(size_t n_bytes, PyThreadPool *pool, int repeats) {
    py::gil_scoped_release release;
    if (pool) return read_bandwidth_gbps(pool->pool, n_bytes, repeats);
    ThreadPool inline_pool(1);
    return read_bandwidth_gbps(inline_pool, n_bytes, repeats);
}

double read_seconds_py(const py::array &buffer, PyThreadPool *pool) {
    if (!(buffer.flags() & py::array::c_style)) throw py::value_error("read_seconds: the array must be C-contiguous");
    const void *data = buffer.data();
    const size_t n_bytes = size_t(buffer.nbytes());
    py::gil_scoped_release release;
    if (pool) return read_seconds(pool->pool, data, n_bytes);
    ThreadPool inline_pool(1);
    return read_seconds(inline_pool, data, n_bytes);
}

}  // namespace

void bind_matmul(py::module_ &m) {
    py::class_<PyThreadPool>(m, "ThreadPool", "A persistent pool of n_threads threads (the caller included).")
        .def(py::init<int>(), py::arg("n_threads"))
        .def_property_readonly("n_threads", [](const PyThreadPool &p) { return p.pool.n_threads(); });
    m.def("matmul_types", &matmul_types, py::arg("isa") = "",
          "Weight type ids that matmul supports with this ISA's kernels.");
    m.def("matmul", &matmul_py, py::arg("type"), py::arg("w_raw"), py::arg("x"), py::arg("pool") = nullptr,
          py::arg("isa") = "",
          "y[t, r] = dot(w[r], x[t]): w_raw uint8 [n_rows, row bytes] of `type`, x float32 [n_tokens, n_cols]"
          " -> float32 [n_tokens, n_rows]. Runs on `pool` (None: the calling thread only).");
    m.def("vec_dot", &vec_dot_py, py::arg("type"), py::arg("w_row"), py::arg("x"), py::arg("n"),
          py::arg("isa") = "",
          "One dot kernel call: a raw weight row of n elements against 1..VEC_DOT_MAX_X raw activation rows (uint8"
          " [n_x, row bytes] in the type's activation format, rows may be strided) -> float32 [n_x].");
    m.def("read_bandwidth", &read_bandwidth_py, py::arg("n_bytes"), py::arg("pool") = nullptr,
          py::arg("repeats") = 5, "Median memory read bandwidth in GB/s over a buffer of n_bytes.");
    m.def("read_seconds", &read_seconds_py, py::arg("buffer"), py::arg("pool") = nullptr,
          "Seconds to read a C-contiguous array once, split over the pool's threads as matmul splits rows.");
}

}  // namespace flashmtp
