// Scalar reference quantizers and dequantizers for the plain, legacy (32-element) and MXFP4 formats, and the
// Q8_0X and Q8_K activation formats; the K-quant weight formats live in quant_kquants_ref.cpp. These are the
// specification every SIMD variant is checked against.
// Rounding follows the `gguf` package's numpy code bit for bit wherever it defines a result (it quantizes
// F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and MXFP4 and dequantizes every format here but Q8_K), which is
// also llama.cpp's reference rounding: float32 operations in numpy's order, never fused (-ffp-contract=off).
// tests/python/test_quants.py checks this against the package.
#include <cmath>
#include <cstring>

#include "../kernel_fill.h"
#include "../quant_blocks.h"

namespace flashmtp {

namespace {

// The first element of largest magnitude, with its sign: numpy's x[argmax(|x|)] (-0.0 for a block of -0.0).
float signed_absmax(const float *x, int n) {
    float amax = std::fabs(x[0]), max = x[0];
    for (int j = 1; j < n; ++j) {
        if (std::fabs(x[j]) > amax) {
            amax = std::fabs(x[j]);
            max = x[j];
        }
    }
    return max;
}

// trunc(v) clipped to [0, hi], as numpy's trunc(v).astype(uint8).clip(0, hi). v lies in [0, hi + 1.5] whenever
// the block's 1/d is finite. When 1/d overflows (d < 2^-128, stored as fp16 zero: the block decodes to zeros)
// v is inf or NaN, and the code is 0 as numpy's cast gives on x86, not a conversion C++ leaves undefined.
inline int trunc_clip(float v, int hi) {
    if (!(v > 0.0f) || std::isinf(v)) return 0;
    return v >= float(hi) ? hi : int(v);
}

// Smallest and largest element (llama.cpp's scan; blocks are assumed NaN-free).
inline void min_max(const float *x, int n, float &min, float &max) {
    min = max = x[0];
    for (int j = 1; j < n; ++j) {
        if (x[j] < min) min = x[j];
        if (x[j] > max) max = x[j];
    }
}

// Bit j of qh (32 bits, little-endian) is the fifth bit of element j.
inline uint32_t load_u32(const uint8_t *p) {
    uint32_t v;
    std::memcpy(&v, p, 4);
    return v;
}

inline void store_u32(uint8_t *p, uint32_t v) { std::memcpy(p, &v, 4); }

// MXFP4: E2M1 code -> twice its value (the doubled table keeps it integer; the block scale is halved instead).
constexpr int8_t kMxfp4Doubled[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

// E8M0 exponent e -> 2^(e-127) / 2, exactly (e < 2 gives the float32 subnormals 2^-128 and 2^-127).
inline float e8m0_to_fp32_half(uint8_t e) {
    const uint32_t bits = e < 2 ? 0x00200000u << e : uint32_t(e - 1) << 23;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

}  // namespace

// ---- plain floats ---------------------------------------------------------------------------------------------

void dequantize_row_f32(const void *src, float *dst, int64_t n) { std::memcpy(dst, src, size_t(n) * 4); }

void dequantize_row_f16(const void *src, float *dst, int64_t n) {
    const auto *h = static_cast<const uint8_t *>(src);
    for (int64_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, h + 2 * i, 2);
        dst[i] = fp16_to_fp32(v);
    }
}

void dequantize_row_bf16(const void *src, float *dst, int64_t n) {
    const auto *h = static_cast<const uint8_t *>(src);
    for (int64_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, h + 2 * i, 2);
        dst[i] = bf16_to_fp32(v);
    }
}

void quantize_row_f32(const float *src, void *dst, int64_t n) { std::memcpy(dst, src, size_t(n) * 4); }

void quantize_row_f16(const float *src, void *dst, int64_t n) {
    auto *h = static_cast<uint8_t *>(dst);
    for (int64_t i = 0; i < n; ++i) {
        const uint16_t v = fp32_to_fp16(src[i]);
        std::memcpy(h + 2 * i, &v, 2);
    }
}

void quantize_row_bf16(const float *src, void *dst, int64_t n) {
    auto *h = static_cast<uint8_t *>(dst);
    for (int64_t i = 0; i < n; ++i) {
        const uint16_t v = fp32_to_bf16(src[i]);
        std::memcpy(h + 2 * i, &v, 2);
    }
}

// ---- Q4_0, Q4_1: 4-bit, element j in the low nibble of qs[j], element j+16 in the high nibble ------------------

// d = max / -8 maps the largest-magnitude element to code 0 (-8) and keeps 15 codes for the rest.
void quantize_row_q4_0(const float *src, void *dst, int64_t n) {
    auto *y = static_cast<block_q4_0 *>(dst);
    for (int64_t b = 0; b < n / QK4_0; ++b) {
        const float *x = src + b * QK4_0;
        const float d = signed_absmax(x, QK4_0) / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = fp32_to_fp16(d);
        for (int j = 0; j < QK4_0 / 2; ++j) {
            const int lo = trunc_clip(x[j] * id + 8.5f, 15);
            const int hi = trunc_clip(x[j + QK4_0 / 2] * id + 8.5f, 15);
            y[b].qs[j] = uint8_t(lo | (hi << 4));
        }
    }
}

void dequantize_row_q4_0(const void *src, float *dst, int64_t n) {
    const auto *x = static_cast<const block_q4_0 *>(src);
    for (int64_t b = 0; b < n / QK4_0; ++b) {
        const float d = fp16_to_fp32(x[b].d);
        float *y = dst + b * QK4_0;
        for (int j = 0; j < QK4_0 / 2; ++j) {
            y[j] = d * float((x[b].qs[j] & 0x0f) - 8);
            y[j + QK4_0 / 2] = d * float((x[b].qs[j] >> 4) - 8);
        }
    }
}

void quantize_row_q4_1(const float *src, void *dst, int64_t n) {
    auto *y = static_cast<block_q4_1 *>(dst);
    for (int64_t b = 0; b < n / QK4_1; ++b) {
        const float *x = src + b * QK4_1;
        float min, max;
        min_max(x, QK4_1, min, max);
        const float d = (max - min) / 15.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = fp32_to_fp16(d);
        y[b].m = fp32_to_fp16(min);
        for (int j = 0; j < QK4_1 / 2; ++j) {
            const int lo = trunc_clip((x[j] - min) * id + 0.5f, 15);
            const int hi = trunc_clip((x[j + QK4_1 / 2] - min) * id + 0.5f, 15);
            y[b].qs[j] = uint8_t(lo | (hi << 4));
        }
    }
}

void dequantize_row_q4_1(const void *src, float *dst, int64_t n) {
    const auto *x = static_cast<const block_q4_1 *>(src);
    for (int64_t b = 0; b < n / QK4_1; ++b) {
        const float d = fp16_to_fp32(x[b].d);
        const float m = fp16_to_fp32(x[b].m);
        float *y = dst + b * QK4_1;
        for (int j = 0; j < QK4_1 / 2; ++j) {
            y[j] = d * float(x[b].qs[j] & 0x0f) + m;
            y[j + QK4_1 / 2] = d * float(x[b].qs[j] >> 4) + m;
        }
    }
}

// ---- Q5_0, Q5_1: Q4_x nibbles plus the fifth bit of element j in bit j of qh ---------------------------------

void quantize_row_q5_0(const float *src, void *dst, int64_t n) {
    auto *y = static_cast<block_q5_0 *>(dst);
    for (int64_t b = 0; b < n / QK5_0; ++b) {
        const float *x = src + b * QK5_0;
        const float d = signed_absmax(x, QK5_0) / -16.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = fp32_to_fp16(d);
        uint32_t qh = 0;
        for (int j = 0; j < QK5_0 / 2; ++j) {
            const int lo = trunc_clip(x[j] * id + 16.5f, 31);
            const int hi = trunc_clip(x[j + QK5_0 / 2] * id + 16.5f, 31);
            y[b].qs[j] = uint8_t((lo & 0x0f) | ((hi & 0x0f) << 4));
            qh |= uint32_t(lo >> 4) << j;
            qh |= uint32_t(hi >> 4) << (j + QK5_0 / 2);
        }
        store_u32(y[b].qh, qh);
    }
}

void dequantize_row_q5_0(const void *src, float *dst, int64_t n) {
    const auto *x = static_cast<const block_q5_0 *>(src);
    for (int64_t b = 0; b < n / QK5_0; ++b) {
        const float d = fp16_to_fp32(x[b].d);
        const uint32_t qh = load_u32(x[b].qh);
        float *y = dst + b * QK5_0;
        for (int j = 0; j < QK5_0 / 2; ++j) {
            const int lo = (x[b].qs[j] & 0x0f) | int(((qh >> j) & 1) << 4);
            const int hi = (x[b].qs[j] >> 4) | int(((qh >> (j + QK5_0 / 2)) & 1) << 4);
            y[j] = d * float(lo - 16);
            y[j + QK5_0 / 2] = d * float(hi - 16);
        }
    }
}

void quantize_row_q5_1(const float *src, void *dst, int64_t n) {
    auto *y = static_cast<block_q5_1 *>(dst);
    for (int64_t b = 0; b < n / QK5_1; ++b) {
        const float *x = src + b * QK5_1;
        float min, max;
        min_max(x, QK5_1, min, max);
        const float d = (max - min) / 31.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = fp32_to_fp16(d);
        y[b].m = fp32_to_fp16(min);
        uint32_t qh = 0;
        for (int j = 0; j < QK5_1 / 2; ++j) {
            const int lo = trunc_clip((x[j] - min) * id + 0.5f, 31);
            const int hi = trunc_clip((x[j + QK5_1 / 2] - min) * id + 0.5f, 31);
            y[b].qs[j] = uint8_t((lo & 0x0f) | ((hi & 0x0f) << 4));
            qh |= uint32_t(lo >> 4) << j;
            qh |= uint32_t(hi >> 4) << (j + QK5_1 / 2);
        }
        store_u32(y[b].qh, qh);
    }
}

void dequantize_row_q5_1(const void *src, float *dst, int64_t n) {
    const auto *x = static_cast<const block_q5_1 *>(src);
    for (int64_t b = 0; b < n / QK5_1; ++b) {
        const float d = fp16_to_fp32(x[b].d);
        const float m = fp16_to_fp32(x[b].m);
        const uint32_t qh = load_u32(x[b].qh);
        float *y = dst + b * QK5_1;
        for (int j = 0; j < QK5_1 / 2; ++j) {
            const int lo = (x[b].qs[j] & 0x0f) | int(((qh >> j) & 1) << 4);
            const int hi = (x[b].qs[j] >> 4) | int(((qh >> (j + QK5_1 / 2)) & 1) << 4);
            y[j] = d * float(lo) + m;
            y[j + QK5_1 / 2] = d * float(hi) + m;
        }
    }
}

// ---- Q8_0 (weights) and Q8_0X (the activation format of the 32-element types) ----------------------------------

namespace {

// One Q8_0 block: writes the 32 codes, returns the fp16 scale.
uint16_t quantize_block_q8_0(const float *x, int8_t qs[QK8_0]) {
    for (int j = 0; j < QK8_0; ++j) {
        if (std::isnan(x[j])) {  // a NaN activation: NaN scale, zero codes (quant_blocks.h)
            std::memset(qs, 0, QK8_0);
            return FP16_QUIET_NAN;
        }
    }
    float amax = 0.0f;
    for (int j = 0; j < QK8_0; ++j) amax = std::fmax(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < QK8_0; ++j) {
        // Half away from zero. |v| <= 127 (+ rounding) for a finite 1/d; when 1/d overflowed (see
        // trunc_clip) v is inf or NaN and the code is 0, as numpy's cast gives.
        const float v = x[j] * id;
        qs[j] = std::fabs(v) < 127.5f ? int8_t(std::roundf(v)) : int8_t(0);
    }
    return fp32_to_fp16(d);
}

}  // namespace

void quantize_row_q8_0(const float *src, void *dst, int64_t n) {
    auto *y = static_cast<block_q8_0 *>(dst);
    for (int64_t b = 0; b < n / QK8_0; ++b) y[b].d = quantize_block_q8_0(src + b * QK8_0, y[b].qs);
}

void dequantize_row_q8_0(const void *src, float *dst, int64_t n) {
    const auto *x = static_cast<const block_q8_0 *>(src);
    for (int64_t b = 0; b < n / QK8_0; ++b) {
        const float d = fp16_to_fp32(x[b].d);
        for (int j = 0; j < QK8_0; ++j) dst[b * QK8_0 + j] = d * float(x[b].qs[j]);
    }
}

// Q8_0's codes and scale (widened from fp16), laid out as kernels.h describes, plus each block's code sum.
void quantize_row_q8_0x(const float *src, void *dst, int64_t n) {
    auto *row = static_cast<uint8_t *>(dst);
    auto *qs = reinterpret_cast<int8_t *>(row);
    for (int64_t b = 0; b < n / QK8_0X; ++b) {
        int8_t *q = qs + b * QK8_0X;
        const float d = fp16_to_fp32(quantize_block_q8_0(src + b * QK8_0X, q));
        int sum = 0;
        for (int j = 0; j < QK8_0X; ++j) sum += q[j];
        const auto sum16 = int16_t(sum);  // |sum| <= 32 * 127
        std::memcpy(row + q8_0x_scales_offset(n) + sizeof(float) * b, &d, sizeof(float));
        std::memcpy(row + q8_0x_sums_offset(n) + sizeof(int16_t) * b, &sum16, sizeof(int16_t));
    }
}

void dequantize_row_q8_0x(const void *src, float *dst, int64_t n) {
    const auto *row = static_cast<const uint8_t *>(src);
    for (int64_t b = 0; b < n / QK8_0X; ++b) {
        float d;
        std::memcpy(&d, row + q8_0x_scales_offset(n) + sizeof(float) * b, sizeof(float));
        for (int j = 0; j < QK8_0X; ++j) dst[b * QK8_0X + j] = d * float(int8_t(row[b * QK8_0X + j]));
    }
}

// ---- MXFP4: one E8M0 scale per 32 E2M1 values, nibbles laid out as Q4_0 ---------------------------------------

// The scale 2^(floor(log2 amax) - 2) puts amax in [4, 8) scale units, inside E2M1's largest value 6 or rounded
// onto it. The exponent is computed as log2f -> floor, not from the float's bits, because that is the oracle's
// rule: log2f rounds values a few ulps below a power of two up to it. Exponents below 0 (amax < 2^-125) wrap
// modulo 256 like the oracle's float -> uint8 cast; such blocks decode to zeros. An infinite amax gives e = 0,
// the oracle's cast of inf.
void quantize_row_mxfp4(const float *src, void *dst, int64_t n) {
    auto *y = static_cast<block_mxfp4 *>(dst);
    for (int64_t b = 0; b < n / QK_MXFP4; ++b) {
        const float *x = src + b * QK_MXFP4;
        float amax = 0.0f;
        for (int j = 0; j < QK_MXFP4; ++j) amax = std::fmax(amax, std::fabs(x[j]));
        const bool scalable = amax > 0.0f && !std::isinf(amax);
        const uint8_t e = scalable ? uint8_t(int(std::floor(std::log2(amax)) - 2.0f + 127.0f)) : 0;
        const float d = e8m0_to_fp32_half(e);
        y[b].e = e;
        // Nearest code by absolute error; the first code wins ties (so +0 beats -0, and 1 beats 2 at 1.5).
        auto best_code = [d](float v) {
            int best = 0;
            float best_err = std::fabs(d * float(kMxfp4Doubled[0]) - v);
            for (int k = 1; k < 16; ++k) {
                const float err = std::fabs(d * float(kMxfp4Doubled[k]) - v);
                if (err < best_err) {
                    best_err = err;
                    best = k;
                }
            }
            return best;
        };
        for (int j = 0; j < QK_MXFP4 / 2; ++j) {
            y[b].qs[j] = uint8_t(best_code(x[j]) | (best_code(x[j + QK_MXFP4 / 2]) << 4));
        }
    }
}

void dequantize_row_mxfp4(const void *src, float *dst, int64_t n) {
    const auto *x = static_cast<const block_mxfp4 *>(src);
    for (int64_t b = 0; b < n / QK_MXFP4; ++b) {
        const float d = e8m0_to_fp32_half(x[b].e);
        float *y = dst + b * QK_MXFP4;
        for (int j = 0; j < QK_MXFP4 / 2; ++j) {
            y[j] = d * float(kMxfp4Doubled[x[b].qs[j] & 0x0f]);
            y[j + QK_MXFP4 / 2] = d * float(kMxfp4Doubled[x[b].qs[j] >> 4]);
        }
    }
}

// ---- Q8_K (activation format of the K-quants) ----------------------------------------------------------------

void quantize_row_q8_K(const float *src, void *dst, int64_t n) {
    auto *y = static_cast<block_q8_K *>(dst);
    for (int64_t b = 0; b < n / QK_K; ++b) {
        const float *x = src + b * QK_K;
        bool has_nan = false;
        for (int j = 0; j < QK_K; ++j) has_nan |= std::isnan(x[j]);
        if (has_nan) {  // a NaN activation: NaN scale, zero codes and sums (quant_blocks.h)
            std::memset(&y[b], 0, sizeof(block_q8_K));
            y[b].d = fp32_quiet_nan();
            continue;
        }
        const float max = signed_absmax(x, QK_K);
        if (max == 0.0f) {
            std::memset(&y[b], 0, sizeof(block_q8_K));
            continue;
        }
        // -127 (not -128): quants stay in [-127, 127], so SIMD kernels may take |q| and sign tricks safely.
        const float iscale = -127.0f / max;
        for (int j = 0; j < QK_K; ++j) {
            // Round half to even. Clamped as floats: a subnormal max makes iscale inf (then d = 0 and the
            // block decodes to zeros), and inf / NaN must not reach a float -> int conversion.
            const float v = iscale * x[j];
            const int q = v >= 127.0f ? 127 : (v <= -127.0f ? -127 : (v == v ? int(std::nearbyintf(v)) : 0));
            y[b].qs[j] = int8_t(q);
        }
        for (int g = 0; g < QK_K / 16; ++g) {
            int sum = 0;
            for (int j = 0; j < 16; ++j) sum += y[b].qs[g * 16 + j];
            y[b].bsums[g] = int16_t(sum);
        }
        y[b].d = 1.0f / iscale;
    }
}

void dequantize_row_q8_K(const void *src, float *dst, int64_t n) {
    const auto *x = static_cast<const block_q8_K *>(src);
    for (int64_t b = 0; b < n / QK_K; ++b) {
        for (int j = 0; j < QK_K; ++j) dst[b * QK_K + j] = x[b].d * float(x[b].qs[j]);
    }
}

// ---- table -----------------------------------------------------------------------------------------------------

void kernel_table_fill_quant_ref(KernelTable &table) {
    struct Entry { DType type; QuantizeRowFn quantize; DequantizeRowFn dequantize; };
    const Entry entries[] = {
        {DTYPE_F32, quantize_row_f32, dequantize_row_f32},
        {DTYPE_F16, quantize_row_f16, dequantize_row_f16},
        {DTYPE_BF16, quantize_row_bf16, dequantize_row_bf16},
        {DTYPE_Q4_0, quantize_row_q4_0, dequantize_row_q4_0},
        {DTYPE_Q4_1, quantize_row_q4_1, dequantize_row_q4_1},
        {DTYPE_Q5_0, quantize_row_q5_0, dequantize_row_q5_0},
        {DTYPE_Q5_1, quantize_row_q5_1, dequantize_row_q5_1},
        {DTYPE_Q8_0, quantize_row_q8_0, dequantize_row_q8_0},
        {DTYPE_MXFP4, quantize_row_mxfp4, dequantize_row_mxfp4},
        {DTYPE_Q2_K, quantize_row_q2_K, dequantize_row_q2_K},  // K-quants: quant_kquants_ref.cpp
        {DTYPE_Q3_K, quantize_row_q3_K, dequantize_row_q3_K},
        {DTYPE_Q4_K, quantize_row_q4_K, dequantize_row_q4_K},
        {DTYPE_Q5_K, quantize_row_q5_K, dequantize_row_q5_K},
        {DTYPE_Q6_K, quantize_row_q6_K, dequantize_row_q6_K},
        {DTYPE_Q8_K, quantize_row_q8_K, dequantize_row_q8_K},
        {DTYPE_Q8_0X, quantize_row_q8_0x, dequantize_row_q8_0x},
    };
    for (const Entry &e : entries) {
        table.quantize_row[e.type] = e.quantize;
        table.dequantize_row[e.type] = e.dequantize;
    }
}

}  // namespace flashmtp
