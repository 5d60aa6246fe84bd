// Internal: each kernel source file contributes its functions to a KernelTable through one fill function.
// dispatch.cpp calls them in order: scalar parts into every table, then the ISA parts over their tables.
#pragma once

#include "kernels.h"

namespace flashmtp {

template <VecDotFn Dot>
void gemv_of(int64_t n, const void *w, size_t w_stride, int64_t n_rows, const void *x, float *y) {
    const auto *rows = static_cast<const uint8_t *>(w);
    for (int64_t r = 0; r < n_rows; ++r) Dot(n, rows + size_t(r) * w_stride, x, 0, 1, y + r);
}

// Installs a weight type's dot kernel and its GEMV loop (kernels.h) together, so that they cannot disagree.
template <VecDotFn Dot>
void set_vec_dot(KernelTable &table, DType type) {
    table.vec_dot[type] = Dot;
    table.gemv[type] = gemv_of<Dot>;
}

void kernel_table_fill_quant_ref(KernelTable &table);        // kernels/ref/quant_ref.cpp
void kernel_table_fill_dot_ref(KernelTable &table);          // kernels/ref/dot_ref.cpp (float, legacy, mxfp4)
void kernel_table_fill_dot_kquants_ref(KernelTable &table);  // kernels/ref/dot_kquants_ref.cpp
void kernel_table_fill_act_ref(KernelTable &table);          // kernels/ref/act_ref.cpp (SwiGLU)

void kernel_table_fill_avx2(KernelTable &table);             // kernels/cpu/dot_avx2.cpp
void kernel_table_fill_avx2_kquants(KernelTable &table);     // kernels/cpu/dot_kquants_avx2.cpp
void kernel_table_fill_avx2_quant(KernelTable &table);       // kernels/cpu/quant_avx2.cpp (Q8_0, Q8_0X, Q8_K)
void kernel_table_fill_avx2_act(KernelTable &table);         // kernels/cpu/act_avx2.cpp (SwiGLU)
void kernel_table_fill_avx512(KernelTable &table);           // kernels/cpu/dot_avx512.cpp
void kernel_table_fill_avx512_kquants(KernelTable &table);   // kernels/cpu/dot_kquants_avx512.cpp
void kernel_table_fill_avx512_quant(KernelTable &table);     // kernels/cpu/quant_avx512.cpp (Q8_0, Q8_0X, Q8_K)
void kernel_table_fill_avx512_act(KernelTable &table);       // kernels/cpu/act_avx512.cpp (SwiGLU)

}  // namespace flashmtp
