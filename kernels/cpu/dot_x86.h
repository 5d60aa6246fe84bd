// x86 dot products of 32-element weight blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, MXFP4) against Q8_0 activations,
// shared by dot_avx2.cpp and dot_avx512.cpp, which differ only in how 32 int8 products are summed (IntDot).
// Everything here has internal linkage on purpose: each including file compiles its own copy with its own -m
// flags, and the linker must never merge the AVX-512 copy into the AVX2 table (ODR).
// Does not own: the float types (per ISA file), the K-quants, the scalar specification (kernels/ref/dot_ref.cpp).
#pragma once

#include <immintrin.h>

#include <cassert>
#include <cstdint>
#include <cstring>
#include <utility>

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

// 8 fp16 fields, `stride` bytes apart, as floats (with kFull false only the first count, the rest 0). The
// halves are assembled in general registers, idle in these vector-bound kernels, and converted by one vcvtph2ps.
// The empty asm pins them there: GCC's SLP vectorizer would otherwise turn the assembly into vector shuffles on
// the ports the dot products need (measured 8-10% slower per block).
template <size_t stride, bool kFull>
inline __m256 load_fp16x8(const uint8_t *p, int count) {
    uint64_t lo = 0, hi = 0;
    for (int j = 0; j < 4; ++j) {
        if (kFull || j < count) lo |= uint64_t(load_u16(p + j * stride)) << (16 * j);
        if (kFull || j + 4 < count) hi |= uint64_t(load_u16(p + (j + 4) * stride)) << (16 * j);
        __asm__("" : "+r"(lo), "+r"(hi));  // see above
    }
    return _mm256_cvtph_ps(_mm_set_epi64x(int64_t(hi), int64_t(lo)));
}

// Sum of the 8 lanes in one fixed order (halves, then pairs): every row of every call reduces the same way.
inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// 16 bytes of packed nibbles -> 32 bytes in element order: low nibbles are elements 0..15, high ones 16..31.
// The 16 bytes go to both halves (a broadcast load costs no ALU op), the upper half is shifted by 4.
inline __m256i unpack_nibbles(const uint8_t *qs) {
    const __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i *>(qs)));
    return _mm256_and_si256(_mm256_srlv_epi64(v, _mm256_set_epi64x(4, 4, 0, 0)), _mm256_set1_epi8(0x0f));
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
// unpack() gives the block's 32 integer weights in element order; scales() the d (and m) of up to 8 consecutive
// blocks; element j of a block = d * q[j] + m. Signed types feed q to the sign trick (|q| as the unsigned
// operand); unsigned ones (those with a min) use q directly and also need the activation block's plain sum.

template <size_t block_size, bool with_min>
struct BlockFp16Scales {
    static constexpr size_t size = block_size;
    static constexpr bool has_min = with_min;
    template <bool kFull>
    static void scales(const uint8_t *w, int count, __m256 &d, __m256 &m) {
        d = load_fp16x8<block_size, kFull>(w, count);
        m = with_min ? load_fp16x8<block_size, kFull>(w + 2, count) : _mm256_setzero_ps();
    }
};

struct BlockQ4_0 : BlockFp16Scales<18, false> {
    static __m256i unpack(const uint8_t *b) { return _mm256_sub_epi8(unpack_nibbles(b + 2), _mm256_set1_epi8(8)); }
};

struct BlockQ4_1 : BlockFp16Scales<20, true> {
    static __m256i unpack(const uint8_t *b) { return unpack_nibbles(b + 4); }
};

struct BlockQ5_0 : BlockFp16Scales<22, false> {
    static __m256i unpack(const uint8_t *b) {
        // q - 16 = nibble - 16 when the fifth bit is clear, which in int8 is the nibble with 0xf0 or-ed in.
        const __m256i high_clear = _mm256_andnot_si256(unpack_bits(b + 2), _mm256_set1_epi8(int8_t(0xf0)));
        return _mm256_or_si256(unpack_nibbles(b + 6), high_clear);
    }
};

struct BlockQ5_1 : BlockFp16Scales<24, true> {
    static __m256i unpack(const uint8_t *b) {
        const __m256i high = _mm256_and_si256(unpack_bits(b + 4), _mm256_set1_epi8(0x10));
        return _mm256_or_si256(unpack_nibbles(b + 8), high);
    }
};

struct BlockQ8_0 : BlockFp16Scales<34, false> {
    static __m256i unpack(const uint8_t *b) {
        return _mm256_loadu_si256(reinterpret_cast<const __m256i *>(b + 2));
    }
};

struct BlockMxfp4 {
    static constexpr size_t size = 17;
    static constexpr bool has_min = false;
    // 2^(e-128): the E8M0 scale halved to match the doubled E2M1 table, exact for every e (see dot_ref.cpp).
    template <bool kFull>
    static void scales(const uint8_t *w, int count, __m256 &d, __m256 &m) {
        uint64_t e8 = 0;  // the 8 exponent bytes, gathered in a general register
        for (int k = 0; k < 8; ++k) {
            if (kFull || k < count) e8 |= uint64_t(w[k * size]) << (8 * k);
        }
        const __m256i e = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(int64_t(e8)));
        const __m256i normal = _mm256_slli_epi32(_mm256_sub_epi32(e, _mm256_set1_epi32(1)), 23);
        const __m256i subnormal = _mm256_sllv_epi32(_mm256_set1_epi32(0x00200000), e);
        const __m256i is_subnormal = _mm256_cmpgt_epi32(_mm256_set1_epi32(2), e);
        d = _mm256_castsi256_ps(_mm256_blendv_epi8(normal, subnormal, is_subnormal));
        m = _mm256_setzero_ps();
    }
    static __m256i unpack(const uint8_t *b) {
        const __m256i doubled = _mm256_setr_epi8(0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12,  //
                                                 0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12);
        return _mm256_shuffle_epi8(doubled, unpack_nibbles(b + 1));
    }
};

// ---- the row kernel -------------------------------------------------------------------------------------------
// Blocks go in groups of 8: first the group's float scales d_w * d_x (and m_w * d_x) of every row, 8 at a time,
// into a small stack array, then the integer dots. Per activation row, kAccumulators accumulators of 8 float
// lanes take the blocks in turn, so that consecutive blocks' FMAs do not wait on each other; each block adds
//     acc = fma(broadcast(d_w * d_x), float(8 lane partial sums of q_w * q_x), acc)      [+ the min term]
// and the row ends with hsum_ps(acc[0] + acc[1]). Rows share the unpacked weight block and the weight scales;
// each row's float operations do not depend on NX or on the row's slot (kernels.h). All n_x rows go in one pass
// over the weights: with AVX2's 16 registers 8 rows spill accumulators, and are still 3-15% faster than two
// passes of 4 (measured).
// Activation values must lie in [-127, 127] (the Q8_0 quantizer guarantees it) for the sign trick.

constexpr size_t kQ8_0Size = 34;
constexpr int kGroup = 8;
// Two FMA chains per row: four were no faster at n_x = 1 and, at n_x = 8, spill even AVX-512's 32 registers
// (3-11% slower than two, measured).
constexpr int kAccumulators = 2;

template <class IntDot, class Block, int NX>
inline void accumulate_rows(const uint8_t *wb, const uint8_t *x, size_t x_stride, const float *d, const float *m,
                            __m256 (&acc)[NX]) {
    const __m256i q = Block::unpack(wb);
    const __m256i q_abs = _mm256_sign_epi8(q, q);
#pragma GCC unroll 8
    for (int r = 0; r < NX; ++r) {
        const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(x + r * x_stride + 2));
        if constexpr (Block::has_min) {
            const __m256 prod = _mm256_cvtepi32_ps(IntDot::dot(q, xq));
            const __m256 xsum = _mm256_cvtepi32_ps(IntDot::dot(_mm256_set1_epi8(1), xq));
            acc[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(d + r * kGroup), prod, acc[r]);
            acc[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(m + r * kGroup), xsum, acc[r]);
        } else {
            // q_w * q_x = |q_w| * (q_x with q_w's sign): unsigned times signed, which is what the int8 dots take.
            const __m256 prod = _mm256_cvtepi32_ps(IntDot::dot(q_abs, _mm256_sign_epi8(xq, q)));
            acc[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(d + r * kGroup), prod, acc[r]);
        }
    }
}

// One group of kGroup blocks (kFull) or the row's last, shorter one (count blocks, read without going past them).
// acc[j] takes the blocks whose index is j modulo kAcc: kAcc independent FMA chains per row. The slots J are
// template constants, not loop counters, so that the compiler keeps every accumulator in a register.
template <class IntDot, class Block, int NX, bool kFull, int... J>
inline void accumulate_group(const uint8_t *w, const uint8_t *x, size_t x_stride, int count,
                             __m256 (&acc)[sizeof...(J)][NX], std::integer_sequence<int, J...>) {
    constexpr int kAcc = int(sizeof...(J));
    alignas(32) float d[NX][kGroup];  // d_w * d_x
    alignas(32) float m[NX][kGroup];  // m_w * d_x (types with a min)
    __m256 dw, mw;
    Block::template scales<kFull>(w, count, dw, mw);
#pragma GCC unroll 8
    for (int r = 0; r < NX; ++r) {
        const __m256 dx = load_fp16x8<kQ8_0Size, kFull>(x + r * x_stride, count);
        _mm256_store_ps(d[r], _mm256_mul_ps(dw, dx));
        if (Block::has_min) _mm256_store_ps(m[r], _mm256_mul_ps(mw, dx));
    }
    for (int k = 0; k < kGroup; k += kAcc) {
        ((kFull || k + J < count ? accumulate_rows<IntDot, Block, NX>(w + (k + J) * Block::size,
                                                                      x + (k + J) * kQ8_0Size, x_stride,
                                                                      &d[0][k + J], &m[0][k + J], acc[J])
                                 : void()),
         ...);
    }
}

template <class IntDot, class Block, int NX>
void vec_dot_blocks_nx(int64_t n, const uint8_t *w, const uint8_t *x, size_t x_stride, float *out) {
    constexpr int kAcc = kAccumulators;
    static_assert(kGroup % kAcc == 0, "a block's accumulator must not depend on where groups start");
    static_assert(kAcc == 2, "the final sum below takes two accumulators");
    constexpr auto slots = std::make_integer_sequence<int, kAcc>();
    const int64_t nb = n / 32;
    __m256 acc[kAcc][NX] = {};
    int64_t b = 0;
    for (; b + kGroup <= nb; b += kGroup) {
        accumulate_group<IntDot, Block, NX, true>(w + b * Block::size, x + b * kQ8_0Size, x_stride, kGroup, acc,
                                                  slots);
    }
    if (b < nb) {
        accumulate_group<IntDot, Block, NX, false>(w + b * Block::size, x + b * kQ8_0Size, x_stride, int(nb - b),
                                                   acc, slots);
    }
#pragma GCC unroll 8
    for (int r = 0; r < NX; ++r) {
        out[r] = hsum_ps(_mm256_add_ps(acc[0][r], acc[1][r]));
    }
}

// Instantiated for NX = 1..VEC_DOT_MAX_X; picks the one for n_x.
template <class IntDot, class Block, int NX = 1>
void vec_dot_blocks_rows(int64_t n, const uint8_t *w, const uint8_t *x, size_t x_stride, int n_x, float *out) {
    if constexpr (NX < VEC_DOT_MAX_X) {
        if (n_x > NX) return vec_dot_blocks_rows<IntDot, Block, NX + 1>(n, w, x, x_stride, n_x, out);
    }
    vec_dot_blocks_nx<IntDot, Block, NX>(n, w, x, x_stride, out);
}

template <class IntDot, class Block>
void vec_dot_blocks(int64_t n, const void *w, const void *x, size_t x_stride, int n_x, float *out) {
    assert(n_x >= 1 && n_x <= VEC_DOT_MAX_X);
    vec_dot_blocks_rows<IntDot, Block>(n, static_cast<const uint8_t *>(w), static_cast<const uint8_t *>(x), x_stride,
                                       n_x, out);
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
