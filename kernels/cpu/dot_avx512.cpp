// AVX-512 (F/BW/VL/DQ + VNNI) dot products: float weights against F32 activations on 512-bit vectors, and the
// 32-element block types against Q8_0X (dot_x86.h) with int8 products summed by one 256-bit vpdpbusd.
// Why 256-bit for the blocks: Zen 4 runs a 512-bit vpdpbusd or FMA at half the rate of a 256-bit one (measured:
// 1 vs 2 per cycle), so a zmm buys no arithmetic, and a 32-element block fills a ymm exactly. The float kernels
// are bound by FMA latency at n_x = 1 and use zmm: twice the elements per dependent FMA (4.0 vs 7.1 cycles per
// 32 F16 elements, measured).
// Every kernel unpacks or converts a weight vector once and uses it for all n_x activation rows; each row's
// float operations are those of n_x = 1 (kernels.h, batch invariance).
// GCC 12 reports the _mm*_undefined_*() pass-through operands inside its own AVX-512 intrinsics as uninitialized
// when they are inlined here (GCC bug 105593, fixed in GCC 13): those values are discarded by design.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <immintrin.h>

#include <cassert>
#include <cstring>

#include "../kernel_fill.h"
#define FLASHMTP_DOT_X86_AVX512 1  // see dot_x86.h
#include "dot_x86.h"

namespace flashmtp {

namespace {

// Sum of adjacent groups of four u8 * s8 products into 8 int32 lanes, exact.
struct IntDotVnni {
    static __m256i dot(__m256i u, __m256i s) { return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s); }
};

// ---- float weights --------------------------------------------------------------------------------------------
// Per row: two accumulators of 16 lanes over 32 elements a step (elements i and i + 16 of each step), the tail
// zero-padded to a full step, ending with hsum_ps(low half + high half of acc[0] + acc[1]).

struct LoadF32 {
    static constexpr size_t size = 4;
    static __m512 load16(const uint8_t *p) { return _mm512_loadu_ps(p); }
};
struct LoadF16 {
    static constexpr size_t size = 2;
    static __m512 load16(const uint8_t *p) {
        return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(p)));
    }
};
struct LoadBF16 {
    static constexpr size_t size = 2;
    static __m512 load16(const uint8_t *p) {
        const __m512i h = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(p)));
        return _mm512_castsi512_ps(_mm512_slli_epi32(h, 16));
    }
};

template <class Load, int NX>
inline void float_step(const uint8_t *w, const uint8_t *const (&x)[NX], __m512 (&acc)[NX][2]) {
    const __m512 w0 = Load::load16(w), w1 = Load::load16(w + 16 * Load::size);
    for (int r = 0; r < NX; ++r) {
        acc[r][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x[r]), acc[r][0]);
        acc[r][1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x[r] + 64), acc[r][1]);
    }
}

template <class Load, int NX>
void vec_dot_float_nx(int64_t n, const uint8_t *w, const uint8_t *x, size_t x_stride, float *out) {
    constexpr int64_t step = 32;
    __m512 acc[NX][2];
    const uint8_t *xr[NX];
    for (int r = 0; r < NX; ++r) {
        acc[r][0] = acc[r][1] = _mm512_setzero_ps();
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
    for (int r = 0; r < NX; ++r) {
        const __m512 s = _mm512_add_ps(acc[r][0], acc[r][1]);
        out[r] = hsum_ps(_mm256_add_ps(_mm512_castps512_ps256(s), _mm512_extractf32x8_ps(s, 1)));
    }
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

void kernel_table_fill_avx512(KernelTable &table) {
    set_vec_dot<vec_dot_float<LoadF32>>(table, DTYPE_F32);
    set_vec_dot<vec_dot_float<LoadF16>>(table, DTYPE_F16);
    set_vec_dot<vec_dot_float<LoadBF16>>(table, DTYPE_BF16);
    fill_block_dots<IntDotVnni>(table);
}

}  // namespace flashmtp
