// AVX-512 activation quantizers: Q8_0X (for the 32-element weight types; Q8_0 weights share its block code)
// and Q8_K (for the K-quants). They run once per token per matmul input, so they sit on the decode path. Each
// is bit-identical to its scalar reference in kernels/ref/quant_ref.cpp (same float operations on each
// element, same rounding), so scalar and SIMD runs quantize activations identically. Inputs are assumed
// NaN-free, like the references'.
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's AVX-512 headers fill unused lanes from self-initialised _mm512_undefined_*() values, which
// -Wmaybe-uninitialized (or -Wuninitialized, when inlined through a helper) reports at every inlined intrinsic
// (a known false positive, GCC bug 105593). Set before the include: GCC looks the warning state up at the
// header's lines.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cstring>

#include "../kernel_fill.h"
#include "../quant_blocks.h"

namespace flashmtp {

namespace {

// roundf (half away from zero) for |v| < 2^23: truncate, then step away from zero when the dropped fraction,
// computed exactly as v - trunc(v), is at least one half. (floor(|v| + 0.5) would double-round near 0.5.)
inline __m512 round_half_away(__m512 v) {
    const __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __mmask16 up = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_sub_ps(v, t)), _mm512_set1_ps(0.5f), _CMP_GE_OQ);
    const __m512 one = _mm512_or_ps(_mm512_set1_ps(1.0f), _mm512_and_ps(v, _mm512_set1_ps(-0.0f)));  // +-1
    return _mm512_mask_add_ps(t, up, t, one);
}

// One Q8_0 block: the 32 codes in element order into qs, the fp16 scale returned; *sum = the codes' sum.
inline uint16_t quantize_block_q8_0(const float *x, int8_t *qs, int *sum) {
    const __m512 x0 = _mm512_loadu_ps(x), x1 = _mm512_loadu_ps(x + 16);
    if (_mm512_cmp_ps_mask(x0, x0, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(x1, x1, _CMP_UNORD_Q)) {
        std::memset(qs, 0, QK8_0);  // a NaN activation: NaN scale, zero codes, as the reference
        if (sum) *sum = 0;
        return FP16_QUIET_NAN;
    }
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const __m512 vid = _mm512_set1_ps(id);
    const __m512 v[2] = {_mm512_mul_ps(x0, vid), _mm512_mul_ps(x1, vid)};
    __m512i q[2];
    for (int h = 0; h < 2; ++h) {
        // Codes are 0 where |v| >= 127.5, which only an overflowed 1/d produces (as in the reference).
        const __mmask16 ok = _mm512_cmp_ps_mask(_mm512_abs_ps(v[h]), _mm512_set1_ps(127.5f), _CMP_LT_OQ);
        q[h] = _mm512_maskz_cvtps_epi32(ok, round_half_away(v[h]));  // integral: exact
        _mm_storeu_si128(reinterpret_cast<__m128i *>(qs + 16 * h), _mm512_cvtsepi32_epi8(q[h]));
    }
    if (sum) *sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q[0], q[1]));
    return uint16_t(_cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT));  // = fp32_to_fp16 for every non-NaN d
}

void quantize_row_q8_0_avx512(const float *src, void *dst, int64_t n) {
    auto *y = static_cast<block_q8_0 *>(dst);
    for (int64_t b = 0; b < n / QK8_0; ++b) y[b].d = quantize_block_q8_0(src + b * QK8_0, y[b].qs, nullptr);
}

void quantize_row_q8_0x_avx512(const float *src, void *dst, int64_t n) {
    auto *row = static_cast<uint8_t *>(dst);
    for (int64_t b = 0; b < n / QK8_0X; ++b) {
        int sum;
        const float d = _cvtsh_ss(quantize_block_q8_0(src + b * QK8_0X, reinterpret_cast<int8_t *>(row) + b * QK8_0X,
                                                      &sum));
        const auto sum16 = int16_t(sum);
        std::memcpy(row + q8_0x_scales_offset(n) + sizeof(float) * b, &d, sizeof(float));
        std::memcpy(row + q8_0x_sums_offset(n) + sizeof(int16_t) * b, &sum16, sizeof(int16_t));
    }
}

void quantize_row_q8_K_avx512(const float *src, void *dst, int64_t n) {
    auto *y = static_cast<block_q8_K *>(dst);
    constexpr int kVecs = QK_K / 16;
    for (int64_t b = 0; b < n / QK_K; ++b) {
        const float *x = src + b * QK_K;
        __m512 vmax = _mm512_setzero_ps();
        __mmask16 nan = 0;
        for (int k = 0; k < kVecs; ++k) {
            const __m512 xv = _mm512_loadu_ps(x + 16 * k);
            vmax = _mm512_max_ps(vmax, _mm512_abs_ps(xv));
            nan |= _mm512_cmp_ps_mask(xv, xv, _CMP_UNORD_Q);
        }
        if (nan) {  // a NaN activation: NaN scale, zero codes and sums, as the reference
            std::memset(&y[b], 0, sizeof(block_q8_K));
            y[b].d = fp32_quiet_nan();
            continue;
        }
        const float amax = _mm512_reduce_max_ps(vmax);
        // The reference scales by the first element of largest magnitude, with its sign.
        float max = 0.0f;
        for (int k = 0; k < kVecs; ++k) {
            const __m512 ax = _mm512_abs_ps(_mm512_loadu_ps(x + 16 * k));
            const __mmask16 hit = _mm512_cmp_ps_mask(ax, _mm512_set1_ps(amax), _CMP_EQ_OQ);
            if (hit) {
                max = x[16 * k + __builtin_ctz(hit)];
                break;
            }
        }
        if (max == 0.0f) {
            std::memset(&y[b], 0, sizeof(block_q8_K));
            continue;
        }
        const float iscale = -127.0f / max;
        const __m512 vscale = _mm512_set1_ps(iscale);
        const __m512 lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
        for (int k = 0; k < kVecs; ++k) {
            const __m512 v = _mm512_mul_ps(vscale, _mm512_loadu_ps(x + 16 * k));
            // Round half to even, clamp to [-127, 127]; NaN (inf * 0 when max is subnormal) gives 0.
            const __m512 r = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            const __mmask16 ordered = _mm512_cmp_ps_mask(v, v, _CMP_ORD_Q);
            const __m512i q = _mm512_maskz_cvtps_epi32(ordered, _mm512_min_ps(_mm512_max_ps(r, lo), hi));
            _mm_storeu_si128(reinterpret_cast<__m128i *>(y[b].qs + 16 * k), _mm512_cvtsepi32_epi8(q));
            y[b].bsums[k] = int16_t(_mm512_reduce_add_epi32(q));
        }
        y[b].d = 1.0f / iscale;
    }
}

}  // namespace

void kernel_table_fill_avx512_quant(KernelTable &table) {
    table.quantize_row[DTYPE_Q8_0] = quantize_row_q8_0_avx512;
    table.quantize_row[DTYPE_Q8_K] = quantize_row_q8_K_avx512;
    table.quantize_row[DTYPE_Q8_0X] = quantize_row_q8_0x_avx512;
}

}  // namespace flashmtp
