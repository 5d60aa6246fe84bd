// AVX2 (+FMA, F16C) dot products: float weights against F32 activations, and the 32-element block types
// against Q8_0X (dot_x86.h), with int8 products summed by maddubs + madd.
// Every kernel unpacks or converts a weight vector once and uses it for all n_x activation rows; each row's
// float operations are those of n_x = 1 (kernels.h, batch invariance).
#include <immintrin.h>

#include <cassert>
#include <cstring>

#include "../kernel_fill.h"
#define FLASHMTP_DOT_X86_AVX512 0  // see dot_x86.h
#include "dot_x86.h"

namespace flashmtp {

namespace {

// Sum of adjacent groups of four u8 * s8 products into 8 int32 lanes. The pair sums of maddubs cannot
// saturate here: |u| <= 128 and |s| <= 127 in every caller.
struct IntDotAvx2 {
    static __m256i dot(__m256i u, __m256i s) {
        return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
    }
};

// ---- float weights --------------------------------------------------------------------------------------------
// Per row: two accumulators of 8 lanes over 16 elements a step (elements i and i + 8 of each step), the tail
// zero-padded to a full step, ending with hsum_ps(acc[0] + acc[1]).

struct LoadF32 {
    static constexpr size_t size = 4;
    static __m256 load8(const uint8_t *p) { return _mm256_loadu_ps(reinterpret_cast<const float *>(p)); }
};
struct LoadF16 {
    static constexpr size_t size = 2;
    static __m256 load8(const uint8_t *p) {
        return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p)));
    }
};
struct LoadBF16 {
    static constexpr size_t size = 2;
    static __m256 load8(const uint8_t *p) {
        const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p)));
        return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
    }
};

template <class Load, int NX>
inline void float_step(const uint8_t *w, const uint8_t *const (&x)[NX], __m256 (&acc)[NX][2]) {
    const __m256 w0 = Load::load8(w), w1 = Load::load8(w + 8 * Load::size);
    for (int r = 0; r < NX; ++r) {
        acc[r][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(reinterpret_cast<const float *>(x[r])), acc[r][0]);
        acc[r][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(reinterpret_cast<const float *>(x[r] + 32)), acc[r][1]);
    }
}

template <class Load, int NX>
void vec_dot_float_nx(int64_t n, const uint8_t *w, const uint8_t *x, size_t x_stride, float *out) {
    constexpr int64_t step = 16;
    __m256 acc[NX][2];
    const uint8_t *xr[NX];
    for (int r = 0; r < NX; ++r) {
        acc[r][0] = acc[r][1] = _mm256_setzero_ps();
        xr[r] = x + r * x_stride;
    }
    int64_t i = 0;
    for (; i + step <= n; i += step) {
        const uint8_t *xi[NX];
        for (int r = 0; r < NX; ++r) xi[r] = xr[r] + 4 * i;
        float_step<Load, NX>(w + i * Load::size, xi, acc);
    }
    if (i < n) {
        // Zero padding adds exact zeros, so the tail needs no separate code path.
        uint8_t w_tail[step * Load::size] = {};
        float x_tail[NX][step] = {};
        const uint8_t *xi[NX];
        std::memcpy(w_tail, w + i * Load::size, size_t(n - i) * Load::size);
        for (int r = 0; r < NX; ++r) {
            std::memcpy(x_tail[r], xr[r] + 4 * i, size_t(n - i) * 4);
            xi[r] = reinterpret_cast<const uint8_t *>(x_tail[r]);
        }
        float_step<Load, NX>(w_tail, xi, acc);
    }
    for (int r = 0; r < NX; ++r) out[r] = hsum_ps(_mm256_add_ps(acc[r][0], acc[r][1]));
}

template <class Load>
void vec_dot_float(int64_t n, const void *w, const void *x, size_t x_stride, int n_x, float *out) {
    const auto *wp = static_cast<const uint8_t *>(w);
    const auto *xp = static_cast<const uint8_t *>(x);
    assert(n_x >= 1 && n_x <= VEC_DOT_MAX_X);
    switch (n_x) {
        case 1: vec_dot_float_nx<Load, 1>(n, wp, xp, x_stride, out); break;
        case 2: vec_dot_float_nx<Load, 2>(n, wp, xp, x_stride, out); break;
        case 3: vec_dot_float_nx<Load, 3>(n, wp, xp, x_stride, out); break;
        case 4: vec_dot_float_nx<Load, 4>(n, wp, xp, x_stride, out); break;
        default:  // 5..8: two passes; each row still sees exactly its n_x = 1 operations
            vec_dot_float_nx<Load, 4>(n, wp, xp, x_stride, out);
            vec_dot_float<Load>(n, w, xp + 4 * x_stride, x_stride, n_x - 4, out + 4);
            break;
    }
}

}  // namespace

void kernel_table_fill_avx2(KernelTable &table) {
    set_vec_dot<vec_dot_float<LoadF32>>(table, DTYPE_F32);
    set_vec_dot<vec_dot_float<LoadF16>>(table, DTYPE_F16);
    set_vec_dot<vec_dot_float<LoadBF16>>(table, DTYPE_BF16);
    fill_block_dots<IntDotAvx2>(table);
}

}  // namespace flashmtp
