// Internal: each kernel source file contributes its functions to a KernelTable through one fill function.
// dispatch.cpp calls them in order: scalar parts into every table, then the ISA parts over their tables.
#pragma once

#include "kernels.h"

namespace flashmtp {

template <VecDotFn Dot, int NX>
void dot_rows_nx(int64_t n, const uint8_t *w, size_t w_stride, int64_t n_rows, const void *x, size_t x_stride,
                 float *y, size_t y_stride) {
    for (int64_t r = 0; r < n_rows; ++r) {
        float out[NX];
        Dot(n, w + size_t(r) * w_stride, x, x_stride, NX, out);
        for (int i = 0; i < NX; ++i) y[size_t(i) * y_stride + size_t(r)] = out[i];
    }
}

// n_x is a constant in each loop, so the inlined kernel's own dispatch on it folds away.
template <VecDotFn Dot>
void dot_rows_of(int64_t n, const void *w, size_t w_stride, int64_t n_rows, const void *x, size_t x_stride, int n_x,
                 float *y, size_t y_stride) {
    static_assert(VEC_DOT_MAX_X == 8, "one case per n_x below");
    const auto *rows = static_cast<const uint8_t *>(w);
    switch (n_x) {
        case 1: return dot_rows_nx<Dot, 1>(n, rows, w_stride, n_rows, x, x_stride, y, y_stride);
        case 2: return dot_rows_nx<Dot, 2>(n, rows, w_stride, n_rows, x, x_stride, y, y_stride);
        case 3: return dot_rows_nx<Dot, 3>(n, rows, w_stride, n_rows, x, x_stride, y, y_stride);
        case 4: return dot_rows_nx<Dot, 4>(n, rows, w_stride, n_rows, x, x_stride, y, y_stride);
        case 5: return dot_rows_nx<Dot, 5>(n, rows, w_stride, n_rows, x, x_stride, y, y_stride);
        case 6: return dot_rows_nx<Dot, 6>(n, rows, w_stride, n_rows, x, x_stride, y, y_stride);
        case 7: return dot_rows_nx<Dot, 7>(n, rows, w_stride, n_rows, x, x_stride, y, y_stride);
        default: return dot_rows_nx<Dot, 8>(n, rows, w_stride, n_rows, x, x_stride, y, y_stride);
    }
}

// Installs a weight type's dot kernel and its loop over rows (kernels.h) together, so that they cannot disagree.
template <VecDotFn Dot>
void set_vec_dot(KernelTable &table, DType type) {
    table.vec_dot[type] = Dot;
    table.dot_rows[type] = dot_rows_of<Dot>;
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
