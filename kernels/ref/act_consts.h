// Constants of the exp approximation shared by the scalar and SIMD activation kernels (kernels/ref/act_ref.cpp
// is the specification).
#pragma once

#include <cstdint>
#include <cstring>

namespace flashmtp::act {

// exp's argument is clamped to [kExpMin, kExpMax] first: wide enough that the result still over- or
// underflows in the final scaling (e^89 > FLT_MAX, e^-104 < half the smallest subnormal), narrow enough that
// k = round(x / ln 2) fits the two-factor 2^k below.
constexpr float kExpMax = 89.0f;
constexpr float kExpMin = -104.0f;
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f;     // ln 2 in 10 significant bits: k * kLn2Hi is exact for |k| < 2^14
constexpr float kLn2Lo = -2.12194440e-4f;  // ln 2 - kLn2Hi
// e^r = 1 + r + r^2 p(r) on |r| <= ln(2) / 2, p in Horner order from the highest degree (Cephes' expf
// coefficients: about 1 ulp).
constexpr int kExpPolyLen = 6;
constexpr float kExpPoly[kExpPolyLen] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                                         4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};

// 2^k for -126 <= k <= 127, by building the exponent field.
inline float pow2i(int k) {
    const uint32_t bits = uint32_t(k + 127) << 23;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

}  // namespace flashmtp::act
