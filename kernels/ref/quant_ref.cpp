// Scalar reference quantizers and dequantizers: the specification every SIMD variant is checked against.
// Layouts and rounding follow llama.cpp's ggml-quants.c and the `gguf` package's numpy code, bit for bit
// where those define a result (tests/python/test_quants.py is the oracle check).
#include <cmath>
#include <cstring>

#include "../kernel_fill.h"
#include "../quant_blocks.h"

namespace flashmtp {

// ---- plain floats -------------------------------------------------------------------------------------------

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

// ---- Q8_0 (weights and the activation format of the 32-element types) ---------------------------------------

void quantize_row_q8_0(const float *src, void *dst, int64_t n) {
    auto *y = static_cast<block_q8_0 *>(dst);
    for (int64_t b = 0; b < n / QK8_0; ++b) {
        const float *x = src + b * QK8_0;
        float amax = 0.0f;
        for (int j = 0; j < QK8_0; ++j) amax = std::fmax(amax, std::fabs(x[j]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = fp32_to_fp16(d);
        for (int j = 0; j < QK8_0; ++j) y[b].qs[j] = int8_t(std::roundf(x[j] * id));  // half away from zero
    }
}

void dequantize_row_q8_0(const void *src, float *dst, int64_t n) {
    const auto *x = static_cast<const block_q8_0 *>(src);
    for (int64_t b = 0; b < n / QK8_0; ++b) {
        const float d = fp16_to_fp32(x[b].d);
        for (int j = 0; j < QK8_0; ++j) dst[b * QK8_0 + j] = d * float(x[b].qs[j]);
    }
}

// ---- Q8_K (activation format of the K-quants) ----------------------------------------------------------------

void quantize_row_q8_K(const float *src, void *dst, int64_t n) {
    auto *y = static_cast<block_q8_K *>(dst);
    for (int64_t b = 0; b < n / QK_K; ++b) {
        const float *x = src + b * QK_K;
        float amax = 0.0f, max = 0.0f;  // max: the signed value of largest magnitude (first one on ties)
        for (int j = 0; j < QK_K; ++j) {
            const float ax = std::fabs(x[j]);
            if (ax > amax) { amax = ax; max = x[j]; }
        }
        if (amax == 0.0f) {
            std::memset(&y[b], 0, sizeof(block_q8_K));
            continue;
        }
        // -127 (not -128): quants stay in [-127, 127], so SIMD kernels may take |q| and sign tricks safely.
        const float iscale = -127.0f / max;
        for (int j = 0; j < QK_K; ++j) {
            const int v = int(std::nearbyintf(iscale * x[j]));  // round half to even
            y[b].qs[j] = int8_t(v > 127 ? 127 : (v < -127 ? -127 : v));
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
    table.dequantize_row[DTYPE_F32] = dequantize_row_f32;
    table.dequantize_row[DTYPE_F16] = dequantize_row_f16;
    table.dequantize_row[DTYPE_BF16] = dequantize_row_bf16;
    table.dequantize_row[DTYPE_Q8_0] = dequantize_row_q8_0;
    table.dequantize_row[DTYPE_Q8_K] = dequantize_row_q8_K;
    table.quantize_row[DTYPE_F32] = quantize_row_f32;
    table.quantize_row[DTYPE_F16] = quantize_row_f16;
    table.quantize_row[DTYPE_BF16] = quantize_row_bf16;
    table.quantize_row[DTYPE_Q8_0] = quantize_row_q8_0;
    table.quantize_row[DTYPE_Q8_K] = quantize_row_q8_K;
}

}  // namespace flashmtp
