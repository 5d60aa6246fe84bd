// One registration function per binding file; module.cpp calls them all.
#pragma once

#include <pybind11/pybind11.h>

namespace flashmtp {

void bind_kernels(pybind11::module_ &m);  // kernel_bindings.cpp: dtypes, quantize/dequantize, dots, matmul
void bind_gguf(pybind11::module_ &m);     // gguf_bindings.cpp: GGUFFile, metadata, tensor views, summary

}  // namespace flashmtp
