// One registration function per binding file; module.cpp calls them all.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "kernels.h"

namespace flashmtp {

void bind_kernels(pybind11::module_ &m);  // kernel_bindings.cpp: dtypes, ISA, quantize/dequantize
void bind_matmul(pybind11::module_ &m);   // matmul_bindings.cpp: thread pool, matmul, vec_dot, bandwidth
void bind_gguf(pybind11::module_ &m);     // gguf_bindings.cpp: GGUFFile, metadata, tensor views, summary
void bind_model(pybind11::module_ &m);    // model_bindings.cpp: Engine, Session
void bind_sampler(pybind11::module_ &m);  // sampler_bindings.cpp: Sampler
void bind_tokenizer(pybind11::module_ &m);  // tokenizer_bindings.cpp: Tokenizer, TokenTextStream
void bind_generate(pybind11::module_ &m);   // generate_bindings.cpp: Generation, GenerateStats
void bind_chat(pybind11::module_ &m);       // chat_bindings.cpp: ChatTemplate (the compiled CLI's formatter)
void bind_hyper(pybind11::module_ &m);      // hyper_bindings.cpp: DeepSeek-V4 HcMixer, HcHead, hc_expand
void bind_ds4_attention(pybind11::module_ &m);  // ds4_attention_bindings.cpp: Ds4Attention, rope freqs
void bind_moe(pybind11::module_ &m);        // moe_bindings.cpp: moe_route, MoeLayer (DeepSeek-V4 MoE FFN)

// A float32 array argument, converted to C order and float32 by pybind11 when it is not already.
using FloatArray = pybind11::array_t<float, pybind11::array::c_style | pybind11::array::forcecast>;

// Bytes of a row of n elements of type t. ValueError (naming `what`) unless n is a non-negative multiple of
// the block size whose row size fits in memory.
size_t checked_row_bytes(const DTypeTraits &t, int64_t n, const std::string &what);

// The data of a C-contiguous array at an address the kernels may read blocks from (8-byte aligned): the
// array's own memory when it is aligned, else a copy kept in `storage`.
const uint8_t *aligned_data(const pybind11::array &a, std::vector<uint64_t> &storage);

// The kernel table of an ISA named "scalar", "avx2" or "avx512"; "" is the one chosen for this CPU.
// Unknown or unavailable ISAs raise ValueError.
const KernelTable &kernel_table_named(const std::string &isa);

}  // namespace flashmtp
