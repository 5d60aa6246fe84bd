// One registration function per binding file; module.cpp calls them all.
#pragma once

#include <pybind11/pybind11.h>

namespace flashmtp {

void bind_kernels(pybind11::module_ &m);  // kernel_bindings.cpp: dtypes, quantize/dequantize, dots, matmul
void bind_matmul(pybind11::module_ &m);   // matmul_bindings.cpp: thread pool, matmul, vec_dot, bandwidth

}  // namespace flashmtp
