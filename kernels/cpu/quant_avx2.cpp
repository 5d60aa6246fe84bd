// AVX2 (+FMA, F16C) activation quantizers: Q8_0X (for the 32-element weight types; Q8_0 weights share its
// block code) and Q8_K (for the K-quants).
// They run once per token per matmul input, on the decode path; the scalar references spend most of their time
// in std::roundf / nearbyintf, which GCC does not vectorise (21 us for a row of 4096 in Q8_0). Each is
// bit-identical to its reference in kernels/ref/quant_ref.cpp (same float operations on each element, same
// rounding), as the AVX-512 ones in quant_avx512.cpp are. Inputs are assumed NaN-free, like the references'.
#include <immintrin.h>

#include <cstring>

#include "../kernel_fill.h"
#include "../quant_blocks.h"

namespace flashmtp {

namespace {

inline __m256 abs_ps(__m256 v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }

// Largest lane. max is exact and, without NaNs, independent of the order the lanes are compared in.
inline float hmax_ps(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

inline int hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 1));
    return _mm_cvtsi128_si32(s);
}

// roundf (half away from zero) for |v| < 2^23: truncate, then step away from zero when the dropped fraction,
// computed exactly as v - trunc(v), is at least one half. (floor(|v| + 0.5) would double-round near 0.5.)
inline __m256 round_half_away(__m256 v) {
    const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 up = _mm256_cmp_ps(abs_ps(_mm256_sub_ps(v, t)), _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    const __m256 one = _mm256_or_ps(_mm256_set1_ps(1.0f), _mm256_and_ps(v, _mm256_set1_ps(-0.0f)));  // +-1
    return _mm256_add_ps(t, _mm256_and_ps(up, one));
}

// 32 int32 values in [-128, 127], four vectors in element order -> 32 int8 in element order. The packs work
// within 128-bit lanes, which leaves 4-byte groups in the order 0 2 4 6 1 3 5 7; the permute restores it.
inline __m256i pack_epi32_epi8(__m256i q0, __m256i q1, __m256i q2, __m256i q3) {
    const __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(q0, q1), _mm256_packs_epi32(q2, q3));
    return _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

// One Q8_0 block: the 32 codes in element order and the fp16 scale.
inline __m256i quantize_block_q8_0(const float *x, uint16_t &d_half) {
    __m256 v[4];  // [4][8]: the block's 32 values
    for (int k = 0; k < 4; ++k) v[k] = _mm256_loadu_ps(x + 8 * k);
    __m256 nan = _mm256_setzero_ps();
    for (int k = 0; k < 4; ++k) nan = _mm256_or_ps(nan, _mm256_cmp_ps(v[k], v[k], _CMP_UNORD_Q));
    if (_mm256_movemask_ps(nan)) {  // a NaN activation: NaN scale, zero codes, as the reference
        d_half = FP16_QUIET_NAN;
        return _mm256_setzero_si256();
    }
    const float amax = hmax_ps(_mm256_max_ps(_mm256_max_ps(abs_ps(v[0]), abs_ps(v[1])),
                                             _mm256_max_ps(abs_ps(v[2]), abs_ps(v[3]))));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    d_half = uint16_t(_cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT));  // = fp32_to_fp16 for every non-NaN d
    const __m256 vid = _mm256_set1_ps(id);
    __m256i q[4];
    for (int k = 0; k < 4; ++k) {
        const __m256 s = _mm256_mul_ps(v[k], vid);
        // Codes are 0 where |v| >= 127.5, which only an overflowed 1/d produces (as in the reference).
        const __m256 ok = _mm256_cmp_ps(abs_ps(s), _mm256_set1_ps(127.5f), _CMP_LT_OQ);
        q[k] = _mm256_cvtps_epi32(_mm256_and_ps(ok, round_half_away(s)));  // integral: exact
    }
    return pack_epi32_epi8(q[0], q[1], q[2], q[3]);
}

void quantize_row_q8_0_avx2(const float *src, void *dst, int64_t n) {
    auto *y = static_cast<block_q8_0 *>(dst);
    for (int64_t b = 0; b < n / QK8_0; ++b) {
        const __m256i q = quantize_block_q8_0(src + b * QK8_0, y[b].d);
        _mm256_storeu_si256(reinterpret_cast<__m256i *>(y[b].qs), q);
    }
}

void quantize_row_q8_0x_avx2(const float *src, void *dst, int64_t n) {
    auto *row = static_cast<uint8_t *>(dst);
    for (int64_t b = 0; b < n / QK8_0X; ++b) {
        uint16_t d_half;
        const __m256i q = quantize_block_q8_0(src + b * QK8_0X, d_half);
        _mm256_storeu_si256(reinterpret_cast<__m256i *>(row + b * QK8_0X), q);
        const float d = _cvtsh_ss(d_half);
        const auto sum = int16_t(hsum_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), q),
                                                              _mm256_set1_epi16(1))));
        std::memcpy(row + q8_0x_scales_offset(n) + sizeof(float) * b, &d, sizeof(float));
        std::memcpy(row + q8_0x_sums_offset(n) + sizeof(int16_t) * b, &sum, sizeof(int16_t));
    }
}

void quantize_row_q8_K_avx2(const float *src, void *dst, int64_t n) {
    auto *y = static_cast<block_q8_K *>(dst);
    constexpr int kVecs = QK_K / 8;
    for (int64_t b = 0; b < n / QK_K; ++b) {
        const float *x = src + b * QK_K;
        __m256 vmax = _mm256_setzero_ps(), nan = _mm256_setzero_ps();
        for (int k = 0; k < kVecs; ++k) {
            const __m256 xv = _mm256_loadu_ps(x + 8 * k);
            vmax = _mm256_max_ps(vmax, abs_ps(xv));
            nan = _mm256_or_ps(nan, _mm256_cmp_ps(xv, xv, _CMP_UNORD_Q));
        }
        if (_mm256_movemask_ps(nan)) {  // a NaN activation: NaN scale, zero codes and sums, as the reference
            std::memset(&y[b], 0, sizeof(block_q8_K));
            y[b].d = fp32_quiet_nan();
            continue;
        }
        const __m256 amax = _mm256_set1_ps(hmax_ps(vmax));
        // The reference scales by the first element of largest magnitude, with its sign.
        float max = 0.0f;
        for (int k = 0; k < kVecs; ++k) {
            const int hit = _mm256_movemask_ps(_mm256_cmp_ps(abs_ps(_mm256_loadu_ps(x + 8 * k)), amax, _CMP_EQ_OQ));
            if (hit) {
                max = x[8 * k + __builtin_ctz(unsigned(hit))];
                break;
            }
        }
        if (max == 0.0f) {
            std::memset(&y[b], 0, sizeof(block_q8_K));
            continue;
        }
        const float iscale = -127.0f / max;
        const __m256 vscale = _mm256_set1_ps(iscale);
        const __m256 lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
        for (int k = 0; k < kVecs; k += 4) {
            __m256i q[4];
            for (int j = 0; j < 4; ++j) {
                const __m256 v = _mm256_mul_ps(vscale, _mm256_loadu_ps(x + 8 * (k + j)));
                // Round half to even, clamp to [-127, 127]; NaN (inf * 0 when max is subnormal) gives 0: max_ps
                // returns its second operand for a NaN, and the ordered mask then clears the lane.
                const __m256 r = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                const __m256 ordered = _mm256_cmp_ps(v, v, _CMP_ORD_Q);
                q[j] = _mm256_cvtps_epi32(_mm256_and_ps(ordered, _mm256_min_ps(_mm256_max_ps(r, lo), hi)));
            }
            const __m256i packed = pack_epi32_epi8(q[0], q[1], q[2], q[3]);
            _mm256_storeu_si256(reinterpret_cast<__m256i *>(y[b].qs + 8 * k), packed);
            y[b].bsums[k / 2] = int16_t(hsum_epi32(_mm256_add_epi32(q[0], q[1])));
            y[b].bsums[k / 2 + 1] = int16_t(hsum_epi32(_mm256_add_epi32(q[2], q[3])));
        }
        y[b].d = 1.0f / iscale;
    }
}

}  // namespace

void kernel_table_fill_avx2_quant(KernelTable &table) {
    table.quantize_row[DTYPE_Q8_0] = quantize_row_q8_0_avx2;
    table.quantize_row[DTYPE_Q8_K] = quantize_row_q8_K_avx2;
    table.quantize_row[DTYPE_Q8_0X] = quantize_row_q8_0x_avx2;
}

}  // namespace flashmtp
