// Kernel-level bindings: type traits, ISA selection, (de)quantization of rows. Numpy in, numpy out; shapes
// and sizes are checked here so the kernels below never see a bad size.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "bindings.h"
#include "kernels.h"

namespace py = pybind11;

namespace flashmtp {

namespace {

const DTypeTraits &traits_or_throw(uint32_t type) {
    const DTypeTraits *t = dtype_traits(type);
    if (!t) throw py::value_error("unknown tensor type id " + std::to_string(type));
    return *t;
}

Isa isa_from_name(const std::string &name) {
    for (int i = 0; i < ISA_COUNT; ++i) {
        if (name == isa_name(Isa(i))) return Isa(i);
    }
    throw py::value_error("unknown ISA '" + name + "' (expected scalar, avx2 or avx512)");
}


// float32 [n] -> uint8 [row bytes]
py::array_t<uint8_t> quantize(uint32_t type, FloatArray x,
                              const std::string &isa) {
    const DTypeTraits &t = traits_or_throw(type);
    const int64_t n = int64_t(x.size());
    const size_t n_bytes = checked_row_bytes(t, n, "quantize");
    QuantizeRowFn fn = kernel_table_named(isa).quantize_row[type];
    if (!fn) throw py::value_error(std::string("no quantizer for type ") + t.name);
    py::array_t<uint8_t> out{py::ssize_t(n_bytes)};
    {
        py::gil_scoped_release release;
        fn(x.data(), out.mutable_data(), n);
    }
    return out;
}

// uint8 [row bytes] -> float32 [n]
py::array_t<float> dequantize(uint32_t type, const py::array &raw, int64_t n, const std::string &isa) {
    const DTypeTraits &t = traits_or_throw(type);
    const size_t n_bytes = checked_row_bytes(t, n, "dequantize");
    if (!raw.dtype().is(py::dtype::of<uint8_t>())) {
        throw py::value_error("dequantize: raw must be a uint8 array, got " + std::string(py::str(raw.dtype())));
    }
    if (size_t(raw.size()) != n_bytes) {
        throw py::value_error(std::string(t.name) + ": " + std::to_string(n) + " elements need " +
                              std::to_string(n_bytes) + " bytes, got " + std::to_string(raw.size()));
    }
    DequantizeRowFn fn = kernel_table_named(isa).dequantize_row[type];
    if (!fn) throw py::value_error(std::string("cannot dequantize type ") + t.name);
    const auto contiguous = py::array_t<uint8_t, py::array::c_style>::ensure(raw);  // copies only if strided
    std::vector<uint64_t> storage;
    const uint8_t *src = aligned_data(contiguous, storage);
    py::array_t<float> out(n);
    {
        py::gil_scoped_release release;
        fn(src, out.mutable_data(), n);
    }
    return out;
}

// SwiGLU of float32 arrays of one shape -> a new float32 array (the kernel works in place on a copy of gate).
py::array_t<float> swiglu(FloatArray gate,
                          FloatArray up, float limit,
                          const std::string &isa) {
    if (gate.ndim() != up.ndim() || !std::equal(gate.shape(), gate.shape() + gate.ndim(), up.shape())) {
        throw py::value_error("swiglu: gate and up must have the same shape");
    }
    if (!(limit > 0.0f)) throw py::value_error("swiglu: limit must be positive (inf for no clamp)");
    const SwigluFn fn = kernel_table_named(isa).swiglu;
    py::array_t<float> out(std::vector<py::ssize_t>(gate.shape(), gate.shape() + gate.ndim()));
    std::memcpy(out.mutable_data(), gate.data(), sizeof(float) * size_t(gate.size()));
    fn(int64_t(gate.size()), out.mutable_data(), up.data(), limit);
    return out;
}

}  // namespace

size_t checked_row_bytes(const DTypeTraits &t, int64_t n, const std::string &what) {
    if (n < 0 || n % t.block_size != 0) {
        throw py::value_error(what + ": " + t.name + ": element count " + std::to_string(n) +
                              " is not a multiple of the block size " + std::to_string(t.block_size));
    }
    // Rows beyond 2^48 bytes cannot exist in memory; the bound also keeps n / block * size from overflowing.
    if (uint64_t(n / t.block_size) > (uint64_t(1) << 48) / t.type_size) {
        throw py::value_error(what + ": " + std::to_string(n) + " " + t.name + " elements is too many");
    }
    return dtype_row_size(t, n);
}

const uint8_t *aligned_data(const py::array &a, std::vector<uint64_t> &storage) {
    const auto *data = static_cast<const uint8_t *>(a.data());
    if (reinterpret_cast<uintptr_t>(data) % 8 == 0) return data;
    storage.resize((size_t(a.nbytes()) + 7) / 8);
    std::memcpy(storage.data(), data, size_t(a.nbytes()));
    return reinterpret_cast<const uint8_t *>(storage.data());
}

const KernelTable &kernel_table_named(const std::string &isa) {
    if (isa.empty()) return kernels();
    const KernelTable *t = kernels_for(isa_from_name(isa));
    if (!t) throw py::value_error("this CPU or build lacks ISA " + isa);
    return *t;
}

void bind_kernels(py::module_ &m) {
    m.def("dtype_info", [](uint32_t type) {
        const DTypeTraits &t = traits_or_throw(type);
        py::dict d;
        d["name"] = t.name;
        d["block_size"] = t.block_size;
        d["type_size"] = t.type_size;
        d["is_quantized"] = t.is_quantized;
        d["vec_dot_type"] = uint32_t(t.vec_dot_type);
        d["is_internal"] = t.is_internal;
        return d;
    }, py::arg("type"), "Block size, bytes per block and activation type of a tensor type id.");
    m.def("isa", []() { return std::string(isa_name(kernels().isa)); },
          "The kernel ISA chosen for this CPU (FLASHMTP_ISA may lower it).");
    m.def("isa_available", [](const std::string &isa) { return kernels_for(isa_from_name(isa)) != nullptr; },
          py::arg("isa"));
    m.def("quantize", &quantize, py::arg("type"), py::arg("x"), py::arg("isa") = "",
          "Quantize a float32 row to raw blocks of `type` (uint8 array).");
    m.def("dequantize", &dequantize, py::arg("type"), py::arg("raw"), py::arg("n"), py::arg("isa") = "",
          "Dequantize raw blocks of `type` holding n elements to float32.");
    m.def("exp_row", [](FloatArray x, float shift,
                        const std::string &isa) {
        py::array_t<float> out(std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
        kernel_table_named(isa).exp_row(int64_t(x.size()), x.data(), shift, out.mutable_data());
        return out;
    }, py::arg("x"), py::arg("shift") = 0.0f, py::arg("isa") = "",
          "exp(x - shift), elementwise (the softmax kernel's exp).");
    m.def("swiglu", &swiglu, py::arg("gate"), py::arg("up"), py::arg("limit") = INFINITY, py::arg("isa") = "",
          "silu(min(gate, limit)) * clamp(up, -limit, limit), elementwise (the SwiGLU kernel).");
}

}  // namespace flashmtp
