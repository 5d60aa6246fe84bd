// Scalar reference dot products for the float types (F32/F16/BF16 weights against F32 activations) and the
// 32-element block types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, MXFP4 weights against Q8_0X activations).
// These are the specification that every SIMD variant is tested against (tests/cpp/test_vec_dot.cpp).
// Does not own: the K-quants (dot_kquants_ref.cpp), quantizers (quant_ref.cpp), threading (csrc/layers).
//
// Reduction order, per output row:
//   float types: sum = 0; for i in 0..n: sum += float(w[i]) * x[i]          (one rounding per product and add)
//   block types: sum = 0; for each block b in order, with exact integer sums over the block's 32 elements
//                    isum = sum_j q_w[j] * q_x[j]            and, for the types with a min, xsum = sum_j q_x[j]:
//                  Q4_0, Q5_0, Q8_0:  sum += (d_w * d_x) * float(isum)
//                  Q4_1, Q5_1:        sum += (d_w * d_x) * float(isum) + (m_w * d_x) * float(xsum)
//                  MXFP4:             sum += (s_w * d_x) * float(isum)
//                                     with q_w the doubled E2M1 value and s_w = 2^(e-128)
// with d_x the activation block's scale (Q8_0's, widened from fp16). Integer sums are exact (|isum| < 2^19),
// so a SIMD variant differs from this only in how it orders and fuses the float additions. llama.cpp pairs
// Q4_1/Q5_1 with Q8_1 activations that carry a precomputed d_x * xsum; our single activation format (Q8_0X)
// stores the exact integer xsum instead, which the reference recomputes from the quants.
#include <cstring>

#include "../kernel_fill.h"
#include "../quant_blocks.h"

namespace flashmtp {

namespace {

// ---- float weights against float activations ----------------------------------------------------------------

float dot_f32(int64_t n, const void *vw, const uint8_t *x) {
    const auto *w = static_cast<const uint8_t *>(vw);
    float sum = 0.0f;
    for (int64_t i = 0; i < n; ++i) {
        float wi, xi;
        std::memcpy(&wi, w + 4 * i, 4);
        std::memcpy(&xi, x + 4 * i, 4);
        sum += wi * xi;
    }
    return sum;
}

template <float (*to_fp32)(uint16_t)>
float dot_half(int64_t n, const void *vw, const uint8_t *x) {
    const auto *w = static_cast<const uint8_t *>(vw);
    float sum = 0.0f;
    for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, w + 2 * i, 2);
        float xi;
        std::memcpy(&xi, x + 4 * i, 4);
        sum += to_fp32(h) * xi;
    }
    return sum;
}

// ---- 32-element blocks against Q8_0X ----------------------------------------------------------------------------
// Each decode_* writes the block's 32 integer weights q[j] (element order) and returns the block's scales;
// the value of element j is d * q[j] + m.

struct BlockScales {
    float d;
    float m;
};

BlockScales decode_q4_0(const void *v, int q[32]) {
    const auto *b = static_cast<const block_q4_0 *>(v);
    for (int j = 0; j < 16; ++j) {
        q[j] = (b->qs[j] & 0x0f) - 8;
        q[j + 16] = (b->qs[j] >> 4) - 8;
    }
    return {fp16_to_fp32(b->d), 0.0f};
}

BlockScales decode_q4_1(const void *v, int q[32]) {
    const auto *b = static_cast<const block_q4_1 *>(v);
    for (int j = 0; j < 16; ++j) {
        q[j] = b->qs[j] & 0x0f;
        q[j + 16] = b->qs[j] >> 4;
    }
    return {fp16_to_fp32(b->d), fp16_to_fp32(b->m)};
}

// Q5: bit j of the little-endian 32-bit qh is the fifth bit of element j.
uint32_t load_qh(const uint8_t qh[4]) {
    return uint32_t(qh[0]) | uint32_t(qh[1]) << 8 | uint32_t(qh[2]) << 16 | uint32_t(qh[3]) << 24;
}

BlockScales decode_q5_0(const void *v, int q[32]) {
    const auto *b = static_cast<const block_q5_0 *>(v);
    const uint32_t qh = load_qh(b->qh);
    for (int j = 0; j < 16; ++j) {
        q[j] = int((b->qs[j] & 0x0f) | ((qh >> j & 1) << 4)) - 16;
        q[j + 16] = int((b->qs[j] >> 4) | ((qh >> (j + 16) & 1) << 4)) - 16;
    }
    return {fp16_to_fp32(b->d), 0.0f};
}

BlockScales decode_q5_1(const void *v, int q[32]) {
    const auto *b = static_cast<const block_q5_1 *>(v);
    const uint32_t qh = load_qh(b->qh);
    for (int j = 0; j < 16; ++j) {
        q[j] = int((b->qs[j] & 0x0f) | ((qh >> j & 1) << 4));
        q[j + 16] = int((b->qs[j] >> 4) | ((qh >> (j + 16) & 1) << 4));
    }
    return {fp16_to_fp32(b->d), fp16_to_fp32(b->m)};
}

BlockScales decode_q8_0(const void *v, int q[32]) {
    const auto *b = static_cast<const block_q8_0 *>(v);
    for (int j = 0; j < 32; ++j) q[j] = b->qs[j];
    return {fp16_to_fp32(b->d), 0.0f};
}

// E2M1 code -> twice its value, so the table is integral; the block scale is halved to match (2^(e-127) / 2).
constexpr int kMxfp4Doubled[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

// 2^(e-128) as a float, exact for every e (e = 0 and 1 give the subnormals 2^-128 and 2^-127), as ggml's
// ggml_e8m0_to_fp32_half and the gguf package compute it.
float mxfp4_half_scale(uint8_t e) {
    const uint32_t bits = e < 2 ? 0x00200000u << e : uint32_t(e - 1) << 23;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

BlockScales decode_mxfp4(const void *v, int q[32]) {
    const auto *b = static_cast<const block_mxfp4 *>(v);
    for (int j = 0; j < 16; ++j) {
        q[j] = kMxfp4Doubled[b->qs[j] & 0x0f];
        q[j + 16] = kMxfp4Doubled[b->qs[j] >> 4];
    }
    return {mxfp4_half_scale(b->e), 0.0f};
}

template <class Block, BlockScales (*decode)(const void *, int[32]), bool has_min>
float dot_blocks_q8_0x(int64_t n, const void *vw, const uint8_t *x) {
    const auto *w = static_cast<const uint8_t *>(vw);
    const auto *xq = reinterpret_cast<const int8_t *>(x);  // [n] codes, then [n / 32] float scales
    float sum = 0.0f;
    for (int64_t b = 0; b < n / 32; ++b) {
        // Copies: rows need not be aligned to the blocks' 2-byte fields (MXFP4 blocks are 17 bytes).
        Block wb;
        std::memcpy(&wb, w + b * sizeof(Block), sizeof(Block));
        float dx;
        std::memcpy(&dx, x + q8_0x_scales_offset(n) + sizeof(float) * b, sizeof(float));
        int q[32];
        const BlockScales s = decode(&wb, q);
        int isum = 0, xsum = 0;
        for (int j = 0; j < 32; ++j) {
            isum += q[j] * xq[b * 32 + j];
            xsum += xq[b * 32 + j];
        }
        if (has_min) {
            sum += (s.d * dx) * float(isum) + (s.m * dx) * float(xsum);
        } else {
            sum += (s.d * dx) * float(isum);
        }
    }
    return sum;
}

// The reference computes every activation row on its own: batch invariance holds by construction.
template <float (*dot)(int64_t, const void *, const uint8_t *)>
void vec_dot_rows(int64_t n, const void *w, const void *x, size_t x_stride, int n_x, float *out) {
    for (int i = 0; i < n_x; ++i) out[i] = dot(n, w, static_cast<const uint8_t *>(x) + i * x_stride);
}

}  // namespace

void kernel_table_fill_dot_ref(KernelTable &table) {
    set_vec_dot<vec_dot_rows<dot_f32>>(table, DTYPE_F32);
    set_vec_dot<vec_dot_rows<dot_half<fp16_to_fp32>>>(table, DTYPE_F16);
    set_vec_dot<vec_dot_rows<dot_half<bf16_to_fp32>>>(table, DTYPE_BF16);
    set_vec_dot<vec_dot_rows<dot_blocks_q8_0x<block_q4_0, decode_q4_0, false>>>(table, DTYPE_Q4_0);
    set_vec_dot<vec_dot_rows<dot_blocks_q8_0x<block_q4_1, decode_q4_1, true>>>(table, DTYPE_Q4_1);
    set_vec_dot<vec_dot_rows<dot_blocks_q8_0x<block_q5_0, decode_q5_0, false>>>(table, DTYPE_Q5_0);
    set_vec_dot<vec_dot_rows<dot_blocks_q8_0x<block_q5_1, decode_q5_1, true>>>(table, DTYPE_Q5_1);
    set_vec_dot<vec_dot_rows<dot_blocks_q8_0x<block_q8_0, decode_q8_0, false>>>(table, DTYPE_Q8_0);
    set_vec_dot<vec_dot_rows<dot_blocks_q8_0x<block_mxfp4, decode_mxfp4, false>>>(table, DTYPE_MXFP4);
}

}  // namespace flashmtp
