// One registration function per binding file; module.cpp calls them all.
#pragma once

#include <pybind11/pybind11.h>

#include <string>

#include "kernels.h"

namespace flashmtp {

void bind_kernels(pybind11::module_ &m);  // kernel_bindings.cpp: dtypes, ISA, quantize/dequantize
void bind_matmul(pybind11::module_ &m);   // matmul_bindings.cpp: thread pool, matmul, vec_dot, bandwidth
void bind_gguf(pybind11::module_ &m);     // gguf_bindings.cpp: GGUFFile, metadata, tensor views, summary

// The kernel table of an ISA named "scalar", "avx2" or "avx512"; "" is the one chosen for this CPU.
// Unknown or unavailable ISAs raise ValueError.
const KernelTable &kernel_table_named(const std::string &isa);

}  // namespace flashmtp
