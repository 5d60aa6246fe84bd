// x86 dot products of 32-element weight blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, MXFP4) against Q8_0 activations,
// shared by dot_avx2.cpp and dot_avx512.cpp, which differ only in how 32 int8 products are summed (IntDot).
// Everything here has internal linkage on purpose: each including file compiles its own copy with its own -m
// flags, and the linker must never merge the AVX-512 copy into the AVX2 table (ODR).
// Does not own: the float types (per ISA file), the K-quants, the scalar specification (kernels/ref/dot_ref.cpp).
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "../kernels.h"

namespace flashmtp {
namespace {

inline uint16_t load_u16(const uint8_t *p) {
    uint16_t v;
    std::memcpy(&v, p, 2);
    return v;
}

inline uint32_t load_u32(const uint8_t *p) {
    uint32_t v;
    std::memcpy(&v, p, 4);
    return v;
}

inline float load_fp16(const uint8_t *p) { return _cvtsh_ss(load_u16(p)); }

// Sum of the 8 lanes in one fixed order (halves, then pairs): every row of every call reduces the same way.
inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// 16 bytes of packed nibbles -> 32 bytes in element order: low nibbles are elements 0..15, high ones 16..31.
inline __m256i unpack_nibbles(const uint8_t *qs) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i *>(qs));
    const __m128i mask = _mm_set1_epi8(0x0f);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), mask), _mm_and_si128(v, mask));
}

// Bit j of the little-endian 32-bit qh -> byte j = 0xff if set, 0 if not.
inline __m256i unpack_bits(const uint8_t *qh) {
    const __m256i v = _mm256_set1_epi32(int(load_u32(qh)));
    // Byte j picks the qh byte holding bit j (j / 8), then tests bit j % 8 of it.
    const __m256i pick = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
    const __m256i bit = _mm256_set1_epi64x(int64_t(0x8040201008040201));
    return _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(v, pick), bit), bit);
}

// ---- weight blocks --------------------------------------------------------------------------------------------
// unpack() gives the block's 32 integer weights in element order and its scales; element j = d * q[j] + m.
// Signed types feed q to the sign trick (|q| as the unsigned operand); unsigned ones (those with a min) use q
// directly as the unsigned operand and also need the activation block's plain sum.

struct WeightBlock {
    __m256i q;  // [32] int8 (signed types) or uint8 (types with a min)
    float d;
    float m;
};

struct BlockQ4_0 {
    static constexpr size_t size = 18;
    static constexpr bool has_min = false;
    static WeightBlock unpack(const uint8_t *b) {
        return {_mm256_sub_epi8(unpack_nibbles(b + 2), _mm256_set1_epi8(8)), load_fp16(b), 0.0f};
    }
};

struct BlockQ4_1 {
    static constexpr size_t size = 20;
    static constexpr bool has_min = true;
    static WeightBlock unpack(const uint8_t *b) { return {unpack_nibbles(b + 4), load_fp16(b), load_fp16(b + 2)}; }
};

struct BlockQ5_0 {
    static constexpr size_t size = 22;
    static constexpr bool has_min = false;
    static WeightBlock unpack(const uint8_t *b) {
        // q - 16 = nibble - 16 when the fifth bit is clear, which in int8 is the nibble with 0xf0 or-ed in.
        const __m256i high_clear = _mm256_andnot_si256(unpack_bits(b + 2), _mm256_set1_epi8(int8_t(0xf0)));
        return {_mm256_or_si256(unpack_nibbles(b + 6), high_clear), load_fp16(b), 0.0f};
    }
};

struct BlockQ5_1 {
    static constexpr size_t size = 24;
    static constexpr bool has_min = true;
    static WeightBlock unpack(const uint8_t *b) {
        const __m256i high = _mm256_and_si256(unpack_bits(b + 4), _mm256_set1_epi8(0x10));
        return {_mm256_or_si256(unpack_nibbles(b + 8), high), load_fp16(b), load_fp16(b + 2)};
    }
};

struct BlockQ8_0 {
    static constexpr size_t size = 34;
    static constexpr bool has_min = false;
    static WeightBlock unpack(const uint8_t *b) {
        return {_mm256_loadu_si256(reinterpret_cast<const __m256i *>(b + 2)), load_fp16(b), 0.0f};
    }
};

// 2^(e-128): the E8M0 scale halved, matching the doubled E2M1 table (exact for every e, see dot_ref.cpp).
inline float mxfp4_half_scale(uint8_t e) {
    const uint32_t bits = e < 2 ? 0x00200000u << e : uint32_t(e - 1) << 23;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

struct BlockMxfp4 {
    static constexpr size_t size = 17;
    static constexpr bool has_min = false;
    static WeightBlock unpack(const uint8_t *b) {
        const __m256i doubled = _mm256_setr_epi8(0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12,  //
                                                 0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12);
        return {_mm256_shuffle_epi8(doubled, unpack_nibbles(b + 1)), mxfp4_half_scale(b[0]), 0.0f};
    }
};

// ---- the row kernel -------------------------------------------------------------------------------------------
// Per activation row: two accumulators of 8 float lanes (even blocks into acc[0], odd ones into acc[1], a last
// odd block into acc[0]) so that consecutive blocks' FMAs do not wait on each other; each block adds
//     acc = fma(broadcast(d_w * d_x), float(8 lane partial sums of q_w * q_x), acc)      [+ the min term]
// and the row ends with hsum_ps(acc[0] + acc[1]). Rows share the unpacked weight block and nothing else, and
// each row's sequence of float operations does not depend on NX or on the row's slot: batch invariant.
// Activation values must lie in [-127, 127] (the Q8_0 quantizer guarantees it) for the sign trick.

constexpr size_t kQ8_0Size = 34;

template <class IntDot, class Block>
inline void accumulate_block(const WeightBlock &wb, const __m256i &wabs, const uint8_t *xb, __m256 &acc) {
    const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(xb + 2));
    const float dx = load_fp16(xb);
    if constexpr (Block::has_min) {
        const __m256 prod = _mm256_cvtepi32_ps(IntDot::dot(wb.q, xq));
        const __m256 xsum = _mm256_cvtepi32_ps(IntDot::dot(_mm256_set1_epi8(1), xq));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(wb.d * dx), prod, acc);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(wb.m * dx), xsum, acc);
    } else {
        // q_w * q_x = |q_w| * (q_x with q_w's sign): unsigned times signed, which is what the int8 dots take.
        const __m256 prod = _mm256_cvtepi32_ps(IntDot::dot(wabs, _mm256_sign_epi8(xq, wb.q)));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(wb.d * dx), prod, acc);
    }
}

// Unpacks weight block b once and adds it into accumulator `slot` of every row.
template <class IntDot, class Block, int NX>
inline void accumulate_rows(const uint8_t *w, const uint8_t *x, size_t x_stride, int64_t b, __m256 (&acc)[NX][2],
                            int slot) {
    const uint8_t *wp = w + b * Block::size;
    // Eight cache lines ahead: the hardware prefetcher alone leaves single-thread GEMV short of bandwidth.
    _mm_prefetch(reinterpret_cast<const char *>(wp) + 512, _MM_HINT_T0);
    const WeightBlock wb = Block::unpack(wp);
    const __m256i wabs = _mm256_sign_epi8(wb.q, wb.q);
    for (int r = 0; r < NX; ++r) {
        accumulate_block<IntDot, Block>(wb, wabs, x + r * x_stride + b * kQ8_0Size, acc[r][slot]);
    }
}

template <class IntDot, class Block, int NX>
void vec_dot_blocks_nx(int64_t n, const uint8_t *w, const uint8_t *x, size_t x_stride, float *out) {
    const int64_t nb = n / 32;
    __m256 acc[NX][2];
    for (int r = 0; r < NX; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 1 < nb; b += 2) {
        accumulate_rows<IntDot, Block, NX>(w, x, x_stride, b, acc, 0);
        accumulate_rows<IntDot, Block, NX>(w, x, x_stride, b + 1, acc, 1);
    }
    if (b < nb) accumulate_rows<IntDot, Block, NX>(w, x, x_stride, b, acc, 0);
    for (int r = 0; r < NX; ++r) out[r] = hsum_ps(_mm256_add_ps(acc[r][0], acc[r][1]));
}

template <class IntDot, class Block>
void vec_dot_blocks(int64_t n, const void *w, const void *x, size_t x_stride, int n_x, float *out) {
    const auto *wp = static_cast<const uint8_t *>(w);
    const auto *xp = static_cast<const uint8_t *>(x);
    switch (n_x) {
        case 1: vec_dot_blocks_nx<IntDot, Block, 1>(n, wp, xp, x_stride, out); break;
        case 2: vec_dot_blocks_nx<IntDot, Block, 2>(n, wp, xp, x_stride, out); break;
        case 3: vec_dot_blocks_nx<IntDot, Block, 3>(n, wp, xp, x_stride, out); break;
        default: vec_dot_blocks_nx<IntDot, Block, 4>(n, wp, xp, x_stride, out); break;
    }
}

template <class IntDot>
void fill_block_dots(KernelTable &table) {
    table.vec_dot[DTYPE_Q4_0] = vec_dot_blocks<IntDot, BlockQ4_0>;
    table.vec_dot[DTYPE_Q4_1] = vec_dot_blocks<IntDot, BlockQ4_1>;
    table.vec_dot[DTYPE_Q5_0] = vec_dot_blocks<IntDot, BlockQ5_0>;
    table.vec_dot[DTYPE_Q5_1] = vec_dot_blocks<IntDot, BlockQ5_1>;
    table.vec_dot[DTYPE_Q8_0] = vec_dot_blocks<IntDot, BlockQ8_0>;
    table.vec_dot[DTYPE_MXFP4] = vec_dot_blocks<IntDot, BlockMxfp4>;
}

}  // namespace
}  // namespace flashmtp
