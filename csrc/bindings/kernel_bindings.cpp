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
    QuantizeRowFn fn = kernel_table_named(isa).quantize_row[type];
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
    DequantizeRowFn fn = kernel_table_named(isa).dequantize_row[type];
    if (!fn) throw py::value_error(std::string("cannot dequantize type ") + t.name);
    py::array_t<float> out(n);
    {
        py::gil_scoped_release release;
        fn(raw.data(), out.mutable_data(), n);
    }
    return out;
}

}  // namespace

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
}

}  // namespace flashmtp
