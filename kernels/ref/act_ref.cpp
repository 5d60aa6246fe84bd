// Scalar reference of the activation kernels (SwiGLU, softmax's exp) and of the exp approximation they share. The SIMD versions in kernels/cpu/act_*.cpp
// perform the same float operations per element in the same order, fused multiply-adds included, so every ISA
// gives the same bits (tests/python/test_activations.py checks it, and the error against float64).
#include <cmath>

#include "../kernel_fill.h"
#include "act_consts.h"

namespace flashmtp {

float exp_ref(float x) {
    using namespace act;
    if (x != x) return x;  // NaN in, NaN out
    x = x < kExpMin ? kExpMin : x;
    x = kExpMax < x ? kExpMax : x;
    const float k = std::nearbyint(x * kLog2e);  // round half to even, the default rounding mode
    float r = std::fma(k, -kLn2Hi, x);           // x - k ln 2 in two steps: k ln2_hi is exact
    r = std::fma(k, -kLn2Lo, r);
    float p = kExpPoly[0];
    for (int i = 1; i < kExpPolyLen; ++i) p = std::fma(p, r, kExpPoly[i]);
    const float y = std::fma(p, r * r, r) + 1.0f;  // e^r for |r| <= ln(2) / 2
    // 2^k in two factors, each a normal float for every k in range: the result over- or underflows (to inf,
    // or gradually to 0) like exp itself, instead of wrapping the exponent field.
    const int ki = int(k), k1 = ki / 2, k2 = ki - k1;
    return y * pow2i(k1) * pow2i(k2);
}

void swiglu_ref(int64_t n, float *gate, const float *up, float limit) {
    for (int64_t i = 0; i < n; ++i) {
        float g = gate[i], u = up[i];
        // The comparisons are written as the SIMD min/max instructions evaluate them: NaN passes through.
        g = limit < g ? limit : g;
        u = -limit > u ? -limit : u;
        u = limit < u ? limit : u;
        gate[i] = g / (1.0f + exp_ref(-g)) * u;
    }
}

void exp_row_ref(int64_t n, const float *x, float shift, float *out) {
    for (int64_t i = 0; i < n; ++i) out[i] = exp_ref(x[i] - shift);
}

void kernel_table_fill_act_ref(KernelTable &table) {
    table.swiglu = swiglu_ref;
    table.exp_row = exp_row_ref;
}

}  // namespace flashmtp
