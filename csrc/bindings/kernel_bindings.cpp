// Kernel-level bindings: type traits, ISA selection, (de)quantization of rows. Numpy in, numpy out; shapes
// and sizes are checked here so the kernels below never see a bad size.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

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

const KernelTable &table_for(const std::string &isa) {
    if (isa.empty()) return kernels();
    const KernelTable *t = kernels_for(isa_from_name(isa));
    if (!t) throw py::value_error("this CPU or build lacks ISA " + isa);
    return *t;
}

int64_t check_elements(const DTypeTraits &t, int64_t n) {
    if (n < 0 || n % t.block_size != 0) {
        throw py::value_error(std::string(t.name) + ": element count " + std::to_string(n) +
                              " is not a multiple of the block size " + std::to_string(t.block_size));
    }
    return n;
}

// float32 [n] -> uint8 [row bytes]
py::array_t<uint8_t> quantize(uint32_t type, py::array_t<float, py::array::c_style | py::array::forcecast> x,
                              const std::string &isa) {
    const DTypeTraits &t = traits_or_throw(type);
    const int64_t n = check_elements(t, int64_t(x.size()));
    QuantizeRowFn fn = table_for(isa).quantize_row[type];
    if (!fn) throw py::value_error(std::string("no quantizer for type ") + t.name);
    py::array_t<uint8_t> out(py::ssize_t(dtype_row_size(t, n)));
    {
        py::gil_scoped_release release;
        fn(x.data(), out.mutable_data(), n);
    }
    return out;
}

// uint8 [row bytes] -> float32 [n]
py::array_t<float> dequantize(uint32_t type, py::array_t<uint8_t, py::array::c_style | py::array::forcecast> raw,
                              int64_t n, const std::string &isa) {
    const DTypeTraits &t = traits_or_throw(type);
    check_elements(t, n);
    if (size_t(raw.size()) != dtype_row_size(t, n)) {
        throw py::value_error(std::string(t.name) + ": " + std::to_string(n) + " elements need " +
                              std::to_string(dtype_row_size(t, n)) + " bytes, got " + std::to_string(raw.size()));
    }
    DequantizeRowFn fn = table_for(isa).dequantize_row[type];
    if (!fn) throw py::value_error(std::string("cannot dequantize type ") + t.name);
    py::array_t<float> out(n);
    {
        py::gil_scoped_release release;
        fn(raw.data(), out.mutable_data(), n);
    }
    return out;
}

// uint8 [row bytes] weight row, uint8 [n_x, activation row bytes] activation rows -> float32 [n_x]
py::array_t<float> vec_dot(uint32_t type, py::array_t<uint8_t, py::array::c_style | py::array::forcecast> w,
                           py::array_t<uint8_t, py::array::c_style | py::array::forcecast> x, int64_t n,
                           const std::string &isa) {
    const DTypeTraits &t = traits_or_throw(type);
    check_elements(t, n);
    const size_t w_bytes = dtype_row_size(t, n), x_bytes = dtype_row_size(*dtype_traits(t.vec_dot_type), n);
    if (size_t(w.size()) != w_bytes) {
        throw py::value_error(std::string(t.name) + ": a weight row of " + std::to_string(n) + " elements needs " +
                              std::to_string(w_bytes) + " bytes, got " + std::to_string(w.size()));
    }
    if (x.ndim() != 2 || size_t(x.shape(1)) != x_bytes || x.shape(0) < 1 || x.shape(0) > VEC_DOT_MAX_X) {
        throw py::value_error(std::string(t.name) + ": activations must be [n_x <= " +
                              std::to_string(VEC_DOT_MAX_X) + ", " + std::to_string(x_bytes) + "] bytes of " +
                              dtype_traits(t.vec_dot_type)->name);
    }
    VecDotFn fn = table_for(isa).vec_dot[type];
    if (!fn) throw py::value_error(std::string("no vec_dot for weight type ") + t.name);
    const int n_x = int(x.shape(0));
    py::array_t<float> out(n_x);
    {
        py::gil_scoped_release release;
        fn(n, w.data(), x.data(), x_bytes, n_x, out.mutable_data());
    }
    return out;
}

}  // namespace

void bind_kernels(py::module_ &m) {
    m.def("dtype_info", [](uint32_t type) {
        const DTypeTraits &t = traits_or_throw(type);
        py::dict d;
        d["name"] = t.name;
        d["block_size"] = t.block_size;
        d["type_size"] = t.type_size;
        d["is_quantized"] = t.is_quantized;
        d["vec_dot_type"] = uint32_t(t.vec_dot_type);
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
    m.def("vec_dot", &vec_dot, py::arg("type"), py::arg("w"), py::arg("x"), py::arg("n"), py::arg("isa") = "",
          "Dot products of one weight row of `type` (raw bytes) with 1..4 activation rows already in its "
          "vec_dot_type (uint8 [n_x, row bytes]).");
}

}  // namespace flashmtp
