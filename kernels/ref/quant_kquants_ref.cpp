// K-quant reference quantizers and dequantizers (Q2_K .. Q6_K): 256-element super-blocks split into 16 or 32
// element sub-blocks whose scales (and mins) are quantized again against fp16 super-block scales.
// Dequantization is bit-exact to the `gguf` package's numpy code: (d * sc) * q - (dmin * m), each product
// rounded to float32 in that order. The package does not quantize these formats, so the quantizers follow
// llama.cpp's reference quantizers (quantize_row_qN_K_ref: same searches, same float operation order):
// per sub-block a weighted least-squares search over a few candidate scales, then the sub-block scales are
// quantized, then every element is rounded again against the scale it will actually be decoded with.
// tests/python/test_quants.py and tests/cpp/test_quants.cpp hold them to llama.cpp's error thresholds.
#include <cmath>
#include <cstring>

#include "../kernels.h"
#include "../quant_blocks.h"

namespace flashmtp {

namespace {

constexpr float kGroupMaxEps = 1e-15f;  // a sub-block whose largest |x| is below this is quantized as zeros

// Round half to even, as llama.cpp's nearest_int (the 1.5 * 2^23 trick) rounds for |v| < 2^22. Saturates so
// that the inf / NaN ratios of degenerate scales (fp16 overflow, zero sub-blocks) stay defined; NaN gives 0.
inline int nearest_int(float v) {
    if (!(std::fabs(v) < 4194304.0f)) return std::isnan(v) ? 0 : (v > 0.0f ? 4194303 : -4194303);
    return int(std::nearbyintf(v));
}

inline int clamp_int(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

// The first element of largest magnitude, with its sign.
float signed_absmax(const float *x, int n) {
    float amax = std::fabs(x[0]), max = x[0];
    for (int i = 1; i < n; ++i) {
        if (std::fabs(x[i]) > amax) {
            amax = std::fabs(x[i]);
            max = x[i];
        }
    }
    return max;
}

// Symmetric codes l in [-nmax, nmax) with x ~ scale * l, minimising sum w (x - scale l)^2: the least-squares
// scale for the rounding at inverse scale -nmax / max and at 18 nearby inverse scales, the best one kept.
// Writes L = l + nmax and returns the scale (negative when the largest |x| is positive).
float fit_symmetric(int n, int nmax, const float *x, const float *w, int8_t *L) {
    const float max = signed_absmax(x, n);
    if (std::fabs(max) < kGroupMaxEps) {
        std::memset(L, 0, size_t(n));
        return 0.0f;
    }
    auto code = [nmax](float iscale, float v) { return clamp_int(nearest_int(iscale * v), -nmax, nmax - 1); };
    float iscale = -nmax / max;
    float sumlx = 0.0f, suml2 = 0.0f;
    for (int i = 0; i < n; ++i) {
        const int l = code(iscale, x[i]);
        L[i] = int8_t(l + nmax);
        sumlx += w[i] * x[i] * float(l);
        suml2 += w[i] * float(l) * float(l);
    }
    float scale = suml2 != 0.0f ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;  // the error reduction sumlx^2 / suml2 that this scale achieves
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        iscale = -(float(nmax) + 0.1f * float(is)) / max;
        sumlx = suml2 = 0.0f;
        for (int i = 0; i < n; ++i) {
            const int l = code(iscale, x[i]);
            sumlx += w[i] * x[i] * float(l);
            suml2 += w[i] * float(l) * float(l);
        }
        if (suml2 > 0.0f && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; ++i) L[i] = int8_t(code(iscale, x[i]) + nmax);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

// Q3_K's sub-block search: symmetric codes in [-nmax, nmax) weighted by x^2, then up to 5 sweeps that move one
// code at a time to its optimum for the current least-squares scale while that lowers the error. As in
// llama.cpp the sweeps only run when the largest-magnitude element is negative (otherwise sum w x l < 0 and
// no move qualifies). Writes L = l + nmax and returns the scale.
float fit_symmetric_refined(int n, int nmax, const float *x, int8_t *L) {
    const float max = signed_absmax(x, n);
    if (std::fabs(max) < kGroupMaxEps) {
        std::memset(L, 0, size_t(n));
        return 0.0f;
    }
    const float iscale = -nmax / max;
    float sumlx = 0.0f, suml2 = 0.0f;
    for (int i = 0; i < n; ++i) {
        const int l = clamp_int(nearest_int(iscale * x[i]), -nmax, nmax - 1);
        L[i] = int8_t(l);
        const float w = x[i] * x[i];
        sumlx += w * x[i] * float(l);
        suml2 += w * float(l) * float(l);
    }
    for (int sweep = 0; sweep < 5; ++sweep) {
        int changed = 0;
        for (int i = 0; i < n; ++i) {
            const float w = x[i] * x[i];
            float slx = sumlx - w * x[i] * float(L[i]);
            if (!(slx > 0.0f)) continue;
            float sl2 = suml2 - w * float(L[i]) * float(L[i]);
            const int l = clamp_int(nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1);
            if (l == L[i]) continue;
            slx += w * x[i] * float(l);
            sl2 += w * float(l) * float(l);
            if (sl2 > 0.0f && slx * slx * suml2 > sumlx * sumlx * sl2) {
                L[i] = int8_t(l);
                sumlx = slx;
                suml2 = sl2;
                ++changed;
            }
        }
        if (!changed) break;
    }
    for (int i = 0; i < n; ++i) L[i] = int8_t(L[i] + nmax);
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

// Asymmetric codes l in [0, nmax] with x ~ scale * l - neg_min (neg_min >= 0), minimising the w-weighted squared
// (or, with use_mad, absolute) error: start from the range, then for nstep + 1 candidate inverse scales
// (rmin + rdelta * is + nmax) / range solve the weighted least-squares scale and min for that rounding and
// keep the best. Later candidates round against the best min found so far. Returns the scale.
float fit_scale_min(int n, int nmax, const float *x, const float *w, uint8_t *L, float *neg_min, float rmin,
                    float rdelta, int nstep, bool use_mad) {
    float min = x[0], max = x[0];
    float sum_w = w[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (min > 0.0f) min = 0.0f;
    if (max == min) {
        std::memset(L, 0, size_t(n));
        *neg_min = -min;
        return 0.0f;
    }
    auto error = [&](float scale, float offset, const uint8_t *codes) {
        float err = 0.0f;
        for (int i = 0; i < n; ++i) {
            float diff = scale * float(codes[i]) + offset - x[i];
            diff = use_mad ? std::fabs(diff) : diff * diff;
            err += w[i] * diff;
        }
        return err;
    };
    float iscale = float(nmax) / (max - min);
    float scale = 1.0f / iscale;
    for (int i = 0; i < n; ++i) L[i] = uint8_t(clamp_int(nearest_int(iscale * (x[i] - min)), 0, nmax));
    float best_error = error(scale, min, L);
    uint8_t Laux[32];  // [n <= 32]
    for (int is = 0; is <= nstep; ++is) {
        iscale = (rmin + rdelta * float(is) + float(nmax)) / (max - min);
        float sum_l = 0.0f, sum_l2 = 0.0f, sum_xl = 0.0f;
        for (int i = 0; i < n; ++i) {
            const int l = clamp_int(nearest_int(iscale * (x[i] - min)), 0, nmax);
            Laux[i] = uint8_t(l);
            sum_l += w[i] * float(l);
            sum_l2 += w[i] * float(l) * float(l);
            sum_xl += w[i] * float(l) * x[i];
        }
        const float D = sum_w * sum_l2 - sum_l * sum_l;
        if (!(D > 0.0f)) continue;
        float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
        float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
        if (this_min > 0.0f) {  // the format subtracts a non-negative min: refit the scale alone
            this_min = 0.0f;
            this_scale = sum_xl / sum_l2;
        }
        const float cur_error = error(this_scale, this_min, Laux);
        if (cur_error < best_error) {
            std::memcpy(L, Laux, size_t(n));
            best_error = cur_error;
            scale = this_scale;
            min = this_min;
        }
    }
    *neg_min = -min;
    return scale;
}

// Q4_K / Q5_K scales[12]: eight 6-bit scales and eight 6-bit mins. Sub-blocks 0-3 keep theirs in the low six
// bits of bytes 0-3 (scales) and 4-7 (mins); sub-blocks 4-7 split theirs into a nibble of bytes 8-11 and two
// high bits parked in the top bits of bytes 0-7.
void pack_scale_min_k4(const uint8_t ls[8], const uint8_t lm[8], uint8_t scales[K_SCALE_SIZE]) {
    for (int j = 0; j < 4; ++j) {
        scales[j] = ls[j];
        scales[j + 4] = lm[j];
    }
    for (int j = 4; j < 8; ++j) {
        scales[j + 4] = uint8_t((ls[j] & 0x0f) | ((lm[j] & 0x0f) << 4));
        scales[j - 4] |= uint8_t((ls[j] >> 4) << 6);
        scales[j] |= uint8_t((lm[j] >> 4) << 6);
    }
}

void unpack_scale_min_k4(int j, const uint8_t scales[K_SCALE_SIZE], int &sc, int &m) {
    if (j < 4) {
        sc = scales[j] & 63;
        m = scales[j + 4] & 63;
    } else {
        sc = (scales[j + 4] & 0x0f) | ((scales[j - 4] >> 6) << 4);
        m = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
    }
}

// Q3_K scales[12]: sixteen 6-bit scales stored with offset 32. Low nibbles: bytes 0-7 (sub-blocks 0-7 low,
// 8-15 high nibble); high two bits: bytes 8-11, sub-block j at bit 2 * (j / 4) of byte 8 + j % 4.
void pack_scales_q3_K(const int ls[16], uint8_t scales[K_SCALE_SIZE]) {
    std::memset(scales, 0, K_SCALE_SIZE);
    for (int j = 0; j < 16; ++j) {
        if (j < 8) {
            scales[j] = uint8_t(ls[j] & 0x0f);
        } else {
            scales[j - 8] |= uint8_t((ls[j] & 0x0f) << 4);
        }
        scales[8 + j % 4] |= uint8_t((ls[j] >> 4) << (2 * (j / 4)));
    }
}

// Signed scale of sub-block j (-32 .. 31).
int unpack_scale_q3_K(int j, const uint8_t scales[K_SCALE_SIZE]) {
    const int lo = j < 8 ? scales[j] & 0x0f : scales[j - 8] >> 4;
    const int hi = (scales[8 + j % 4] >> (2 * (j / 4))) & 3;
    return (lo | (hi << 4)) - 32;
}

// Q2_K / Q3_K 2-bit codes: byte l of each 32-byte group holds elements l, l+32, l+64, l+96 of its 128.
void pack_2bit(const uint8_t L[QK_K], uint8_t qs[QK_K / 4]) {
    for (int j = 0; j < QK_K; j += 128) {
        for (int l = 0; l < 32; ++l) {
            qs[j / 4 + l] =
                uint8_t(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
        }
    }
}

inline int unpack_2bit(const uint8_t qs[QK_K / 4], int e) {
    return (qs[(e / 128) * 32 + e % 32] >> (2 * ((e % 128) / 32))) & 3;
}

}  // namespace

// ---- Q2_K: 16 sub-blocks of 16; 2-bit codes; 4-bit scale and min per sub-block ---------------------------------

void quantize_row_q2_K(const float *src, void *dst, int64_t n) {
    auto *y = static_cast<block_q2_K *>(dst);
    for (int64_t b = 0; b < n / QK_K; ++b) {
        const float *x = src + b * QK_K;
        uint8_t L[QK_K];
        float scales[QK_K / 16], mins[QK_K / 16];
        float max_scale = 0.0f, max_min = 0.0f;  // scales are positive: the min is subtracted separately
        for (int j = 0; j < QK_K / 16; ++j) {
            float w[16];
            for (int l = 0; l < 16; ++l) w[l] = std::fabs(x[16 * j + l]);
            scales[j] = fit_scale_min(16, 3, x + 16 * j, w, L + 16 * j, &mins[j], -0.5f, 0.1f, 15, true);
            if (scales[j] > max_scale) max_scale = scales[j];
            if (mins[j] > max_min) max_min = mins[j];
        }
        std::memset(y[b].scales, 0, sizeof(y[b].scales));
        if (max_scale > 0.0f) {
            const float iscale = 15.0f / max_scale;
            for (int j = 0; j < QK_K / 16; ++j) y[b].scales[j] = uint8_t(nearest_int(iscale * scales[j]));
        }
        y[b].d = fp32_to_fp16(max_scale > 0.0f ? max_scale / 15.0f : 0.0f);
        if (max_min > 0.0f) {
            const float iscale = 15.0f / max_min;
            for (int j = 0; j < QK_K / 16; ++j) y[b].scales[j] |= uint8_t(nearest_int(iscale * mins[j]) << 4);
        }
        y[b].dmin = fp32_to_fp16(max_min > 0.0f ? max_min / 15.0f : 0.0f);
        // Round again against the scale and min the decoder will use.
        for (int j = 0; j < QK_K / 16; ++j) {
            const float d = fp16_to_fp32(y[b].d) * float(y[b].scales[j] & 0x0f);
            if (d == 0.0f) continue;
            const float dm = fp16_to_fp32(y[b].dmin) * float(y[b].scales[j] >> 4);
            for (int l = 0; l < 16; ++l) {
                L[16 * j + l] = uint8_t(clamp_int(nearest_int((x[16 * j + l] + dm) / d), 0, 3));
            }
        }
        pack_2bit(L, y[b].qs);
    }
}

void dequantize_row_q2_K(const void *src, float *dst, int64_t n) {
    const auto *x = static_cast<const block_q2_K *>(src);
    for (int64_t b = 0; b < n / QK_K; ++b) {
        const float d = fp16_to_fp32(x[b].d);
        const float dmin = fp16_to_fp32(x[b].dmin);
        float *y = dst + b * QK_K;
        for (int j = 0; j < QK_K / 16; ++j) {
            const float dl = d * float(x[b].scales[j] & 0x0f);
            const float ml = dmin * float(x[b].scales[j] >> 4);
            for (int l = 0; l < 16; ++l) y[16 * j + l] = dl * float(unpack_2bit(x[b].qs, 16 * j + l)) - ml;
        }
    }
}

// ---- Q3_K: 16 sub-blocks of 16; 3-bit codes (2 low bits in qs, the high bit in hmask); 6-bit signed scales ----

void quantize_row_q3_K(const float *src, void *dst, int64_t n) {
    auto *y = static_cast<block_q3_K *>(dst);
    for (int64_t b = 0; b < n / QK_K; ++b) {
        const float *x = src + b * QK_K;
        int8_t L[QK_K];
        float scales[QK_K / 16];
        float amax = 0.0f, max_scale = 0.0f;  // the sub-block scale of largest magnitude, with its sign
        for (int j = 0; j < QK_K / 16; ++j) {
            scales[j] = fit_symmetric_refined(16, 4, x + 16 * j, L + 16 * j);
            if (std::fabs(scales[j]) > amax) {
                amax = std::fabs(scales[j]);
                max_scale = scales[j];
            }
        }
        if (max_scale != 0.0f) {
            const float iscale = -32.0f / max_scale;
            int ls[16];
            for (int j = 0; j < QK_K / 16; ++j) ls[j] = clamp_int(nearest_int(iscale * scales[j]), -32, 31) + 32;
            pack_scales_q3_K(ls, y[b].scales);
            y[b].d = fp32_to_fp16(1.0f / iscale);
        } else {
            std::memset(y[b].scales, 0, sizeof(y[b].scales));
            y[b].d = fp32_to_fp16(0.0f);
        }
        for (int j = 0; j < QK_K / 16; ++j) {
            const float d = fp16_to_fp32(y[b].d) * float(unpack_scale_q3_K(j, y[b].scales));
            if (d == 0.0f) continue;
            for (int l = 0; l < 16; ++l) {
                L[16 * j + l] = int8_t(clamp_int(nearest_int(x[16 * j + l] / d), -4, 3) + 4);
            }
        }
        // Codes 0..7: bit 2 goes to hmask (element e: bit e / 32 of byte e % 32), the low two bits to qs.
        uint8_t low[QK_K];
        std::memset(y[b].hmask, 0, sizeof(y[b].hmask));
        for (int e = 0; e < QK_K; ++e) {
            if (L[e] > 3) y[b].hmask[e % 32] |= uint8_t(1u << (e / 32));
            low[e] = uint8_t(L[e] & 3);
        }
        pack_2bit(low, y[b].qs);
    }
}

void dequantize_row_q3_K(const void *src, float *dst, int64_t n) {
    const auto *x = static_cast<const block_q3_K *>(src);
    for (int64_t b = 0; b < n / QK_K; ++b) {
        const float d = fp16_to_fp32(x[b].d);
        float *y = dst + b * QK_K;
        for (int j = 0; j < QK_K / 16; ++j) {
            const float dl = d * float(unpack_scale_q3_K(j, x[b].scales));
            for (int l = 0; l < 16; ++l) {
                const int e = 16 * j + l;
                const int high = (x[b].hmask[e % 32] >> (e / 32)) & 1;  // a clear high bit means "minus 4"
                y[e] = dl * float(unpack_2bit(x[b].qs, e) - (high ? 0 : 4));
            }
        }
    }
}

// ---- Q4_K, Q5_K: 8 sub-blocks of 32; 6-bit scale and min per sub-block -----------------------------------------

namespace {

// The shared part of Q4_K and Q5_K quantization: codes L[256] in [0, nmax], packed scales, d and dmin.
void quantize_scale_min_k4(const float *x, int nmax, float rmin, int nstep, uint8_t L[QK_K],
                           uint8_t scales_out[K_SCALE_SIZE], uint16_t &d_out, uint16_t &dmin_out) {
    float scales[QK_K / 32], mins[QK_K / 32];
    float max_scale = 0.0f, max_min = 0.0f;
    for (int j = 0; j < QK_K / 32; ++j) {
        // Weight each element by the sub-block's RMS plus its own magnitude: large values matter more, but
        // small ones are not ignored.
        float sum_x2 = 0.0f;
        for (int l = 0; l < 32; ++l) sum_x2 += x[32 * j + l] * x[32 * j + l];
        const float av_x = std::sqrt(sum_x2 / 32.0f);
        float w[32];
        for (int l = 0; l < 32; ++l) w[l] = av_x + std::fabs(x[32 * j + l]);
        scales[j] = fit_scale_min(32, nmax, x + 32 * j, w, L + 32 * j, &mins[j], rmin, 0.1f, nstep, false);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    const float inv_scale = max_scale > 0.0f ? 63.0f / max_scale : 0.0f;
    const float inv_min = max_min > 0.0f ? 63.0f / max_min : 0.0f;
    uint8_t ls[QK_K / 32], lm[QK_K / 32];
    for (int j = 0; j < QK_K / 32; ++j) {
        ls[j] = uint8_t(clamp_int(nearest_int(inv_scale * scales[j]), 0, 63));
        lm[j] = uint8_t(clamp_int(nearest_int(inv_min * mins[j]), 0, 63));
    }
    pack_scale_min_k4(ls, lm, scales_out);
    d_out = fp32_to_fp16(max_scale / 63.0f);
    dmin_out = fp32_to_fp16(max_min / 63.0f);
    for (int j = 0; j < QK_K / 32; ++j) {
        int sc, m;
        unpack_scale_min_k4(j, scales_out, sc, m);
        const float d = fp16_to_fp32(d_out) * float(sc);
        if (d == 0.0f) continue;
        const float dm = fp16_to_fp32(dmin_out) * float(m);
        for (int l = 0; l < 32; ++l) {
            L[32 * j + l] = uint8_t(clamp_int(nearest_int((x[32 * j + l] + dm) / d), 0, nmax));
        }
    }
}

}  // namespace

void quantize_row_q4_K(const float *src, void *dst, int64_t n) {
    auto *y = static_cast<block_q4_K *>(dst);
    for (int64_t b = 0; b < n / QK_K; ++b) {
        uint8_t L[QK_K];
        quantize_scale_min_k4(src + b * QK_K, 15, -1.0f, 20, L, y[b].scales, y[b].d, y[b].dmin);
        // Each 64-element chunk: 32 bytes, elements 0-31 in the low nibbles, 32-63 in the high ones.
        for (int c = 0; c < QK_K / 64; ++c) {
            for (int l = 0; l < 32; ++l) y[b].qs[32 * c + l] = uint8_t(L[64 * c + l] | (L[64 * c + l + 32] << 4));
        }
    }
}

void dequantize_row_q4_K(const void *src, float *dst, int64_t n) {
    const auto *x = static_cast<const block_q4_K *>(src);
    for (int64_t b = 0; b < n / QK_K; ++b) {
        const float d = fp16_to_fp32(x[b].d);
        const float dmin = fp16_to_fp32(x[b].dmin);
        float *y = dst + b * QK_K;
        for (int j = 0; j < QK_K / 32; ++j) {
            int sc, m;
            unpack_scale_min_k4(j, x[b].scales, sc, m);
            const float dl = d * float(sc);
            const float ml = dmin * float(m);
            const uint8_t *q = x[b].qs + 32 * (j / 2);
            const int shift = 4 * (j % 2);
            for (int l = 0; l < 32; ++l) y[32 * j + l] = dl * float((q[l] >> shift) & 0x0f) - ml;
        }
    }
}

void quantize_row_q5_K(const float *src, void *dst, int64_t n) {
    auto *y = static_cast<block_q5_K *>(dst);
    for (int64_t b = 0; b < n / QK_K; ++b) {
        uint8_t L[QK_K];
        quantize_scale_min_k4(src + b * QK_K, 31, -0.5f, 15, L, y[b].scales, y[b].d, y[b].dmin);
        // Low nibbles as Q4_K; the fifth bit of element e goes to bit e / 32 of qh[e % 32].
        std::memset(y[b].qh, 0, sizeof(y[b].qh));
        for (int e = 0; e < QK_K; ++e) {
            if (L[e] > 15) y[b].qh[e % 32] |= uint8_t(1u << (e / 32));
        }
        for (int c = 0; c < QK_K / 64; ++c) {
            for (int l = 0; l < 32; ++l) {
                y[b].qs[32 * c + l] = uint8_t((L[64 * c + l] & 0x0f) | ((L[64 * c + l + 32] & 0x0f) << 4));
            }
        }
    }
}

void dequantize_row_q5_K(const void *src, float *dst, int64_t n) {
    const auto *x = static_cast<const block_q5_K *>(src);
    for (int64_t b = 0; b < n / QK_K; ++b) {
        const float d = fp16_to_fp32(x[b].d);
        const float dmin = fp16_to_fp32(x[b].dmin);
        float *y = dst + b * QK_K;
        for (int j = 0; j < QK_K / 32; ++j) {
            int sc, m;
            unpack_scale_min_k4(j, x[b].scales, sc, m);
            const float dl = d * float(sc);
            const float ml = dmin * float(m);
            const uint8_t *q = x[b].qs + 32 * (j / 2);
            const int shift = 4 * (j % 2);
            for (int l = 0; l < 32; ++l) {
                const int code = ((q[l] >> shift) & 0x0f) | (((x[b].qh[l] >> j) & 1) << 4);
                y[32 * j + l] = dl * float(code) - ml;
            }
        }
    }
}

// ---- Q6_K: 16 sub-blocks of 16; 6-bit codes (4 low bits in ql, 2 high in qh); int8 scales ------------------

void quantize_row_q6_K(const float *src, void *dst, int64_t n) {
    auto *y = static_cast<block_q6_K *>(dst);
    for (int64_t b = 0; b < n / QK_K; ++b) {
        const float *x = src + b * QK_K;
        int8_t L[QK_K];
        float scales[QK_K / 16];
        float amax = 0.0f, max_scale = 0.0f;
        for (int j = 0; j < QK_K / 16; ++j) {
            float w[16];
            for (int l = 0; l < 16; ++l) w[l] = x[16 * j + l] * x[16 * j + l];
            scales[j] = fit_symmetric(16, 32, x + 16 * j, w, L + 16 * j);
            if (std::fabs(scales[j]) > amax) {
                amax = std::fabs(scales[j]);
                max_scale = scales[j];
            }
        }
        if (amax < kGroupMaxEps) {
            std::memset(&y[b], 0, sizeof(block_q6_K));
            continue;
        }
        // -128: the largest scale maps to int8 -128 and the others into [-128, 127].
        const float iscale = -128.0f / max_scale;
        y[b].d = fp32_to_fp16(1.0f / iscale);
        for (int j = 0; j < QK_K / 16; ++j) {
            y[b].scales[j] = int8_t(clamp_int(nearest_int(iscale * scales[j]), -128, 127));
        }
        for (int j = 0; j < QK_K / 16; ++j) {
            const float d = fp16_to_fp32(y[b].d) * float(y[b].scales[j]);
            if (d == 0.0f) continue;
            for (int l = 0; l < 16; ++l) {
                L[16 * j + l] = int8_t(clamp_int(nearest_int(x[16 * j + l] / d), -32, 31) + 32);
            }
        }
        // Element e = 128 h + 32 k + l (k = 0..3): low nibble in ql[64 h + l + 32 (k & 1)] (high half when
        // k >= 2), high two bits at bit 2 k of qh[32 h + l].
        std::memset(y[b].ql, 0, sizeof(y[b].ql));
        std::memset(y[b].qh, 0, sizeof(y[b].qh));
        for (int e = 0; e < QK_K; ++e) {
            const int h = e / 128, k = (e % 128) / 32, l = e % 32;
            y[b].ql[64 * h + l + 32 * (k & 1)] |= uint8_t((L[e] & 0x0f) << (4 * (k >> 1)));
            y[b].qh[32 * h + l] |= uint8_t((L[e] >> 4) << (2 * k));
        }
    }
}

void dequantize_row_q6_K(const void *src, float *dst, int64_t n) {
    const auto *x = static_cast<const block_q6_K *>(src);
    for (int64_t b = 0; b < n / QK_K; ++b) {
        const float d = fp16_to_fp32(x[b].d);
        float *y = dst + b * QK_K;
        for (int e = 0; e < QK_K; ++e) {
            const int h = e / 128, k = (e % 128) / 32, l = e % 32;
            const int low = (x[b].ql[64 * h + l + 32 * (k & 1)] >> (4 * (k >> 1))) & 0x0f;
            const int high = (x[b].qh[32 * h + l] >> (2 * k)) & 3;
            const float dl = d * float(x[b].scales[e / 16]);
            y[e] = dl * float((low | (high << 4)) - 32);
        }
    }
}

}  // namespace flashmtp
