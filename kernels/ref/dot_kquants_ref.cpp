// Scalar reference dot products of the K-quant weight rows (Q2_K .. Q6_K) with Q8_K activation rows: the
// specification every SIMD variant (kernels/cpu/dot_kquants_*.cpp) reproduces bit for bit.
// Owns: the decoding of each 256-element block into integer quants and integer per-16 scales and mins, and
// the reduction order. Does not own: quantizers / dequantizers (quant_ref.cpp), threading (csrc/layers).
//
// Reduction order (the contract the SIMD kernels follow, so all ISAs and all n_x give identical bits):
//   for each block b in order, with integers that are exact whatever order they are summed in:
//       isum = sum_g scale_g * sum_{i in group g} q_i * x.qs_i          (16 groups of 16 elements)
//       msum = sum_g min_g * x.bsums_g                                  (types with a min only)
//   then, in float, for the row's running sum s (starting at +0.0f):
//       Q2_K, Q4_K, Q5_K:  s = s + ((x.d * d_w) * float(isum) - (x.d * dmin_w) * float(msum))
//       Q3_K, Q6_K:        s = s + (x.d * d_w) * float(isum)
//   (each product and sum rounded separately: no fused multiply-add).
// The bounds below keep every isum, msum in int32: |q| <= 63, |x| <= 127, |scale| <= 128, 256 elements.
#include <cstring>

#include "../kernel_fill.h"
#include "../quant_blocks.h"

namespace flashmtp {

namespace {

// One weight block as integers: value_i = d * scale[i / 16] * q[i] - dmin * min[i / 16].
struct DecodedBlockK {
    int8_t q[QK_K];
    int16_t scale[QK_K / 16];
    int16_t min[QK_K / 16];  // zero for Q3_K and Q6_K, whose offsets are folded into q
    float d;
    float dmin;  // zero for Q3_K and Q6_K
};

// Q4_K / Q5_K: 8 (scale, min) pairs of 6 bits packed in 12 bytes. Pairs 0-3 sit in the low 6 bits of bytes
// 0-3 (scales) and 4-7 (mins); pairs 4-7 take their low 4 bits from the nibbles of bytes 8-11 (scale: low,
// min: high) and their top 2 bits from the top bits of bytes 0-3 (scales) and 4-7 (mins).
void unpack_scale_min_k4(const uint8_t *packed, int j, int *scale, int *min) {
    if (j < 4) {
        *scale = packed[j] & 63;
        *min = packed[j + 4] & 63;
    } else {
        *scale = (packed[j + 4] & 0xF) | ((packed[j - 4] >> 6) << 4);
        *min = (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4);
    }
}

// Q2_K: 2-bit quants, element 128n + 32j + l is bits 2j..2j+1 of qs[32n + l]; one byte per 16-group:
// low nibble scale, high nibble min.
void decode_q2_K(const void *block, DecodedBlockK &out) {
    block_q2_K b;
    std::memcpy(&b, block, sizeof b);
    for (int i = 0; i < QK_K; ++i) {
        const int n = i / 128, j = (i % 128) / 32, l = i % 32;
        out.q[i] = int8_t((b.qs[32 * n + l] >> (2 * j)) & 3);
    }
    for (int g = 0; g < QK_K / 16; ++g) {
        out.scale[g] = int16_t(b.scales[g] & 0xF);
        out.min[g] = int16_t(b.scales[g] >> 4);
    }
    out.d = fp16_to_fp32(b.d);
    out.dmin = fp16_to_fp32(b.dmin);
}

// Q3_K: 2 low bits as Q2_K's qs, the third bit of element 128n + 32j + l is bit 4n + j of hmask[l], and the
// quant is (low | third << 2) - 4. 16 scales of 6 bits, offset 32: low 4 bits are the nibbles of bytes 0-7
// (groups 0-7 low, 8-15 high), top 2 bits of group g are bits 2(g/4)..2(g/4)+1 of byte 8 + g%4.
void decode_q3_K(const void *block, DecodedBlockK &out) {
    block_q3_K b;
    std::memcpy(&b, block, sizeof b);  // rows of 110- and 210-byte blocks are not aligned
    for (int i = 0; i < QK_K; ++i) {
        const int n = i / 128, j = (i % 128) / 32, l = i % 32;
        const int low = (b.qs[32 * n + l] >> (2 * j)) & 3;
        const int high = (b.hmask[l] >> (4 * n + j)) & 1;
        out.q[i] = int8_t((low | (high << 2)) - 4);
    }
    for (int g = 0; g < QK_K / 16; ++g) {
        const int low = (g < 8 ? b.scales[g] : b.scales[g - 8] >> 4) & 0xF;
        const int high = (b.scales[8 + g % 4] >> (2 * (g / 4))) & 3;
        out.scale[g] = int16_t((low | (high << 4)) - 32);
        out.min[g] = 0;
    }
    out.d = fp16_to_fp32(b.d);
    out.dmin = 0.0f;
}

// Q4_K: 4 chunks of 64 elements, each 32 bytes of qs: low nibbles are the chunk's first 32 elements (sub-block
// 2c), high nibbles the next 32 (sub-block 2c + 1). One (scale, min) pair per 32 elements = 2 groups of 16.
void decode_q4_K(const void *block, DecodedBlockK &out) {
    block_q4_K b;
    std::memcpy(&b, block, sizeof b);
    for (int i = 0; i < QK_K; ++i) {
        const int c = i / 64, high = (i % 64) / 32, l = i % 32;
        out.q[i] = int8_t((b.qs[32 * c + l] >> (4 * high)) & 0xF);
    }
    for (int j = 0; j < QK_K / 32; ++j) {
        int scale, min;
        unpack_scale_min_k4(b.scales, j, &scale, &min);
        out.scale[2 * j] = out.scale[2 * j + 1] = int16_t(scale);
        out.min[2 * j] = out.min[2 * j + 1] = int16_t(min);
    }
    out.d = fp16_to_fp32(b.d);
    out.dmin = fp16_to_fp32(b.dmin);
}

// Q5_K: Q4_K plus a fifth bit: element 64c + 32h + l has bit 2c + h of qh[l] as its value 16.
void decode_q5_K(const void *block, DecodedBlockK &out) {
    block_q5_K b;
    std::memcpy(&b, block, sizeof b);
    for (int i = 0; i < QK_K; ++i) {
        const int c = i / 64, high = (i % 64) / 32, l = i % 32;
        const int low = (b.qs[32 * c + l] >> (4 * high)) & 0xF;
        const int fifth = (b.qh[l] >> (2 * c + high)) & 1;
        out.q[i] = int8_t(low | (fifth << 4));
    }
    for (int j = 0; j < QK_K / 32; ++j) {
        int scale, min;
        unpack_scale_min_k4(b.scales, j, &scale, &min);
        out.scale[2 * j] = out.scale[2 * j + 1] = int16_t(scale);
        out.min[2 * j] = out.min[2 * j + 1] = int16_t(min);
    }
    out.d = fp16_to_fp32(b.d);
    out.dmin = fp16_to_fp32(b.dmin);
}

// Q6_K: element 128n + 32j + l: low 4 bits are the low (j = 0, 1) or high (j = 2, 3) nibble of
// ql[64n + 32(j % 2) + l], top 2 bits are bits 2j..2j+1 of qh[32n + l]; quant = that - 32. int8 scale per 16.
void decode_q6_K(const void *block, DecodedBlockK &out) {
    block_q6_K b;
    std::memcpy(&b, block, sizeof b);  // rows of 110- and 210-byte blocks are not aligned
    for (int i = 0; i < QK_K; ++i) {
        const int n = i / 128, j = (i % 128) / 32, l = i % 32;
        const int low = (b.ql[64 * n + 32 * (j % 2) + l] >> (4 * (j / 2))) & 0xF;
        const int high = (b.qh[32 * n + l] >> (2 * j)) & 3;
        out.q[i] = int8_t((low | (high << 4)) - 32);
    }
    for (int g = 0; g < QK_K / 16; ++g) {
        out.scale[g] = b.scales[g];
        out.min[g] = 0;
    }
    out.d = fp16_to_fp32(b.d);
    out.dmin = 0.0f;
}

// The reduction stated at the top of the file; each activation row is independent of the others.
template <class Block, void (*decode)(const void *, DecodedBlockK &), bool has_min>
void vec_dot_k_ref(int64_t n, const void *w, const void *x, size_t x_stride, int n_x, float *out) {
    const auto *wb = static_cast<const uint8_t *>(w);
    const auto *xbytes = static_cast<const uint8_t *>(x);
    float sum[VEC_DOT_MAX_X] = {};
    DecodedBlockK dec;
    for (int64_t b = 0; b < n / QK_K; ++b) {
        decode(wb + b * sizeof(Block), dec);
        for (int r = 0; r < n_x; ++r) {
            const auto &xb = reinterpret_cast<const block_q8_K *>(xbytes + r * x_stride)[b];
            int32_t isum = 0, msum = 0;
            for (int g = 0; g < QK_K / 16; ++g) {
                int32_t group = 0;
                for (int i = 16 * g; i < 16 * g + 16; ++i) group += dec.q[i] * xb.qs[i];
                isum += dec.scale[g] * group;
                msum += dec.min[g] * xb.bsums[g];
            }
            const float d = xb.d * dec.d;
            if (has_min) {
                const float dmin = xb.d * dec.dmin;
                sum[r] += d * float(isum) - dmin * float(msum);
            } else {
                sum[r] += d * float(isum);
            }
        }
    }
    for (int r = 0; r < n_x; ++r) out[r] = sum[r];
}

}  // namespace

void kernel_table_fill_dot_kquants_ref(KernelTable &table) {
    set_vec_dot<vec_dot_k_ref<block_q2_K, decode_q2_K, true>>(table, DTYPE_Q2_K);
    set_vec_dot<vec_dot_k_ref<block_q3_K, decode_q3_K, false>>(table, DTYPE_Q3_K);
    set_vec_dot<vec_dot_k_ref<block_q4_K, decode_q4_K, true>>(table, DTYPE_Q4_K);
    set_vec_dot<vec_dot_k_ref<block_q5_K, decode_q5_K, true>>(table, DTYPE_Q5_K);
    set_vec_dot<vec_dot_k_ref<block_q6_K, decode_q6_K, false>>(table, DTYPE_Q6_K);
}

}  // namespace flashmtp
