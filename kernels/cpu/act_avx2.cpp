// AVX2 activation kernels (SwiGLU, softmax's exp), bit-identical to kernels/ref/act_ref.cpp: the same
// operations per element in the same order, fused multiply-adds included; 8 elements a step, the reference
// for the tail.
#include <immintrin.h>

#include "../kernel_fill.h"
#include "../ref/act_consts.h"

namespace flashmtp {

namespace {

using namespace act;

inline __m256 pow2i(__m256 k) {  // k: whole numbers in [-126, 127]
    const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    return _mm256_castsi256_ps(bits);
}

inline __m256 exp8(__m256 x) {
    const __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
    __m256 c = _mm256_max_ps(_mm256_set1_ps(kExpMin), x);  // kExpMin > x ? kExpMin : x, as the reference
    c = _mm256_min_ps(_mm256_set1_ps(kExpMax), c);
    const __m256 k = _mm256_round_ps(_mm256_mul_ps(c, _mm256_set1_ps(kLog2e)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fmadd_ps(k, _mm256_set1_ps(-kLn2Hi), c);
    r = _mm256_fmadd_ps(k, _mm256_set1_ps(-kLn2Lo), r);
    __m256 p = _mm256_set1_ps(kExpPoly[0]);
    for (int i = 1; i < kExpPolyLen; ++i) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpPoly[i]));
    const __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
    const __m256 k1 = _mm256_round_ps(_mm256_mul_ps(k, _mm256_set1_ps(0.5f)), _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 k2 = _mm256_sub_ps(k, k1);
    return _mm256_blendv_ps(_mm256_mul_ps(_mm256_mul_ps(y, pow2i(k1)), pow2i(k2)), x, nan);
}

void swiglu_avx2(int64_t n, float *gate, const float *up, float limit) {
    const __m256 hi = _mm256_set1_ps(limit), lo = _mm256_set1_ps(-limit);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        // MINPS/MAXPS return their second operand when either is NaN: written this way round, NaN passes.
        const __m256 g = _mm256_min_ps(hi, _mm256_loadu_ps(gate + i));
        const __m256 u = _mm256_min_ps(hi, _mm256_max_ps(lo, _mm256_loadu_ps(up + i)));
        const __m256 e = exp8(_mm256_xor_ps(g, _mm256_set1_ps(-0.0f)));
        _mm256_storeu_ps(gate + i, _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e)), u));
    }
    swiglu_ref(n - i, gate + i, up + i, limit);
}

void exp_row_avx2(int64_t n, const float *x, float shift, float *out) {
    const auto s = _mm256_set1_ps(shift);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), s)));
    exp_row_ref(n - i, x + i, shift, out + i);
}

}  // namespace

void kernel_table_fill_avx2_act(KernelTable &table) {
    table.swiglu = swiglu_avx2;
    table.exp_row = exp_row_avx2;
}

}  // namespace flashmtp
