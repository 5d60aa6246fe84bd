// AVX-512 activation kernels (SwiGLU, softmax's exp), bit-identical to kernels/ref/act_ref.cpp: the same
// operations per element in the same order, fused multiply-adds included; 16 elements a step, the reference
// for the tail.
#if defined(__GNUC__) && !defined(__clang__)
// GCC bug 105593: false -Wmaybe-uninitialized in the AVX-512 headers (see quant_avx512.cpp).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include "../kernel_fill.h"
#include "../ref/act_consts.h"

namespace flashmtp {

namespace {

using namespace act;

inline __m512 pow2i(__m512 k) {  // k: whole numbers in [-126, 127]
    const __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(k), _mm512_set1_epi32(127)), 23);
    return _mm512_castsi512_ps(bits);
}

inline __m512 exp16(__m512 x) {
    const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    __m512 c = _mm512_max_ps(_mm512_set1_ps(kExpMin), x);  // kExpMin > x ? kExpMin : x, as the reference
    c = _mm512_min_ps(_mm512_set1_ps(kExpMax), c);
    const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(c, _mm512_set1_ps(kLog2e)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fmadd_ps(k, _mm512_set1_ps(-kLn2Hi), c);
    r = _mm512_fmadd_ps(k, _mm512_set1_ps(-kLn2Lo), r);
    __m512 p = _mm512_set1_ps(kExpPoly[0]);
    for (int i = 1; i < kExpPolyLen; ++i) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpPoly[i]));
    const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
    const __m512 k1 = _mm512_roundscale_ps(_mm512_mul_ps(k, _mm512_set1_ps(0.5f)), _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m512 k2 = _mm512_sub_ps(k, k1);
    return _mm512_mask_mov_ps(_mm512_mul_ps(_mm512_mul_ps(y, pow2i(k1)), pow2i(k2)), nan, x);
}

void swiglu_avx512(int64_t n, float *gate, const float *up, float limit) {
    const __m512 hi = _mm512_set1_ps(limit), lo = _mm512_set1_ps(-limit);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        // MINPS/MAXPS return their second operand when either is NaN: written this way round, NaN passes.
        const __m512 g = _mm512_min_ps(hi, _mm512_loadu_ps(gate + i));
        const __m512 u = _mm512_min_ps(hi, _mm512_max_ps(lo, _mm512_loadu_ps(up + i)));
        const __m512 e = exp16(_mm512_xor_ps(g, _mm512_set1_ps(-0.0f)));
        _mm512_storeu_ps(gate + i, _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), e)), u));
    }
    swiglu_ref(n - i, gate + i, up + i, limit);
}

void exp_row_avx512(int64_t n, const float *x, float shift, float *out) {
    const auto s = _mm512_set1_ps(shift);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(out + i, exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), s)));
    exp_row_ref(n - i, x + i, shift, out + i);
}

}  // namespace

void kernel_table_fill_avx512_act(KernelTable &table) {
    table.swiglu = swiglu_avx512;
    table.exp_row = exp_row_avx512;
}

}  // namespace flashmtp
