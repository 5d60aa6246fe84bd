// x86 dot products of 32-element weight blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, MXFP4) against Q8_0X activations,
// shared by dot_avx2.cpp and dot_avx512.cpp, which differ only in how 32 int8 products are summed (IntDot).
// Everything here has internal linkage on purpose: each including file compiles its own copy with its own -m
// flags, and the linker must never merge the AVX-512 copy into the AVX2 table (ODR).
// Does not own: the float types (per ISA file), the K-quants, the scalar specification (kernels/ref/dot_ref.cpp).
// The including file sets FLASHMTP_DOT_X86_AVX512 to 1 (AVX-512 BW/VL + VNNI) or 0 (AVX2) first: a native
// build defines every __AVX512*__ macro in the AVX2 file too, so the choice cannot come from the compiler.
#pragma once

#ifndef FLASHMTP_DOT_X86_AVX512
#error "define FLASHMTP_DOT_X86_AVX512 (0 or 1) before including dot_x86.h"
#endif

#include <immintrin.h>

#include <cassert>
#include <cstdint>
#include <cstring>
#include <utility>

#include "../kernels.h"
#include "../quant_blocks.h"

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

// 8 16-bit fields, `stride` bytes apart (with kFull false only the first count, the rest 0), assembled in
// general registers, idle in these vector-bound kernels. The empty asm pins them there: GCC's SLP vectorizer
// would otherwise turn the assembly into vector shuffles on the ports the dot products need (measured 8-10%
// slower per block).
template <size_t stride, bool kFull>
inline __m128i load_u16x8(const uint8_t *p, int count) {
    uint64_t lo = 0, hi = 0;
    for (int j = 0; j < 4; ++j) {
        if (kFull || j < count) lo |= uint64_t(load_u16(p + j * stride)) << (16 * j);
        if (kFull || j + 4 < count) hi |= uint64_t(load_u16(p + (j + 4) * stride)) << (16 * j);
        __asm__("" : "+r"(lo), "+r"(hi));  // see above
    }
    return _mm_set_epi64x(int64_t(hi), int64_t(lo));
}

// 8 fp16 fields, `stride` bytes apart, as floats (see load_u16x8).
template <size_t stride, bool kFull>
inline __m256 load_fp16x8(const uint8_t *p, int count) {
    return _mm256_cvtph_ps(load_u16x8<stride, kFull>(p, count));
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
// unpack() gives the block's 32 integer weights in element order, plus kBias: q_w + kBias, which is unsigned
// (the u8 operand of the int8 dots), so that
//     sum_j q_w[j] q_x[j] = sum_j (q_w[j] + kBias) q_x[j] - kBias * xsum,     xsum = sum_j q_x[j],
// with xsum stored in the Q8_0X row: the kernel folds -kBias * xsum into the same per-group term as the min of
// Q4_1/Q5_1 (below) and needs no per-row sign step. Only Q8_0 weights (-128..127) have no unsigned form that
// keeps maddubs' pair sums from saturating; they use the sign trick (kSigned: |q_w| as the unsigned operand,
// q_x with q_w's sign). scales() gives the d (and m) of up to 8 consecutive blocks; element j = d * q[j] + m.

template <size_t block_size, bool with_min>
struct BlockFp16Scales {
    static constexpr size_t size = block_size;
    static constexpr bool has_min = with_min;
    static constexpr bool kSigned = false;
    template <bool kFull>
    static void scales(const uint8_t *w, int count, __m256 &d, __m256 &m) {
        d = load_fp16x8<block_size, kFull>(w, count);
        m = with_min ? load_fp16x8<block_size, kFull>(w + 2, count) : _mm256_setzero_ps();
    }
};

// The five-bit values of Q5_0 and Q5_1: the nibble with the fifth bit from qh.
inline __m256i unpack_q5(const uint8_t *qh, const uint8_t *qs) {
#if FLASHMTP_DOT_X86_AVX512
    // qh is a byte mask as it stands: add 16 where its bit is set (two instructions instead of five).
    const __m256i q = unpack_nibbles(qs);
    return _mm256_mask_add_epi8(q, __mmask32(load_u32(qh)), q, _mm256_set1_epi8(0x10));
#else
    return _mm256_or_si256(unpack_nibbles(qs), _mm256_and_si256(unpack_bits(qh), _mm256_set1_epi8(0x10)));
#endif
}

struct BlockQ4_0 : BlockFp16Scales<18, false> {
    static constexpr int kBias = 8;
    static __m256i unpack(const uint8_t *b) { return unpack_nibbles(b + 2); }
};

struct BlockQ4_1 : BlockFp16Scales<20, true> {
    static constexpr int kBias = 0;
    static __m256i unpack(const uint8_t *b) { return unpack_nibbles(b + 4); }
};

struct BlockQ5_0 : BlockFp16Scales<22, false> {
    static constexpr int kBias = 16;
    static __m256i unpack(const uint8_t *b) { return unpack_q5(b + 2, b + 6); }
};

struct BlockQ5_1 : BlockFp16Scales<24, true> {
    static constexpr int kBias = 0;
    static __m256i unpack(const uint8_t *b) { return unpack_q5(b + 4, b + 8); }
};

#if FLASHMTP_DOT_X86_AVX512
// vpdpbusd sums four u8 * s8 products straight into int32, so nothing saturates and q_w + 128 (a flip of the sign
// bit) is the unsigned operand: one instruction per block instead of the sign trick's two per block and one per
// row. The -128 * xsum term joins the per-group FMA like Q4_0's bias.
struct BlockQ8_0 : BlockFp16Scales<34, false> {
    static constexpr int kBias = 128;
    static __m256i unpack(const uint8_t *b) {
        return _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(b + 2)),
                                _mm256_set1_epi8(char(0x80)));
    }
};
#else
struct BlockQ8_0 : BlockFp16Scales<34, false> {
    static constexpr bool kSigned = true;
    static constexpr int kBias = 0;
    static __m256i unpack(const uint8_t *b) {
        return _mm256_loadu_si256(reinterpret_cast<const __m256i *>(b + 2));
    }
};
#endif

struct BlockMxfp4 {
    static constexpr size_t size = 17;
    static constexpr bool has_min = false;
    static constexpr bool kSigned = false;
    static constexpr int kBias = 12;  // the doubled E2M1 values are -12..12
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
        // The doubled E2M1 table (dot_ref.cpp) plus kBias.
        const __m256i biased = _mm256_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0,  //
                                                12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0);
        return _mm256_shuffle_epi8(biased, unpack_nibbles(b + 1));
    }
};

// ---- the row kernel -------------------------------------------------------------------------------------------
// Blocks go in groups of 8. Per group and activation row, first the float scales d_w * d_x of the 8 blocks, into
// a small stack array, then the integer dots: kAccumulators accumulators of 8 float lanes take the blocks in
// turn, so that consecutive blocks' FMAs do not wait on each other; each block adds
//     acc = fma(broadcast(d_w * d_x), float(8 lane partial sums of (q_w + kBias) * q_x), acc).
// The blocks' xsum terms go in one FMA per group, the 8 blocks in the 8 lanes (types with a min or a bias):
//     acc_xsum = fma(m_w * d_x - kBias * (d_w * d_x), float(xsum), acc_xsum)
// and the row ends with hsum_ps((acc[0] + acc[1]) + acc_xsum). Rows share the unpacked weight block and the
// weight scales; each row's float operations do not depend on NX or on the row's slot (kernels.h). All n_x rows
// go in one pass over the weights: with AVX2's 16 registers 8 rows spill accumulators, and are still 3-15%
// faster than two passes of 4 (measured).
// Activation codes lie in [-127, 127] (Q8_0's quantizer guarantees it), which the sign trick needs.
// Gain over the same kernel on Q8_0 activations (34-byte blocks, fp16 scales, no sums), one thread, weights in
// L2, n_x = 1: Q4_0 and MXFP4 +25%, Q5_0 +22%, Q5_1 +50%, Q4_1 +66%, Q8_0 +12% (measured, Zen 4).

constexpr int kGroup = 8;

// Weights stream from memory once, and the hardware prefetcher alone leaves the core waiting on them, the more
// so the more activation rows lengthen the work per block: perf put most of a 4-token Q8_0 product's time on
// the first load of each weight line. Lines kPrefetchBytes ahead are requested explicitly, as in the K-quant
// kernels. 64 MB Q8_0 matrix, 2 threads, time for 4 tokens / 1 token: 2.76x without, 1.69x with (1 KiB to
// 4 KiB ahead were within noise of each other; `flashmtp bench kernels --types q8_0`).
constexpr size_t kPrefetchBytes = 2048;

// Requests the lines of [p + kPrefetchBytes, p + kPrefetchBytes + n_bytes).
inline void prefetch_ahead(const uint8_t *p, size_t n_bytes) {
    for (size_t line = 0; line < n_bytes; line += 64) {
        _mm_prefetch(reinterpret_cast<const char *>(p + kPrefetchBytes + line), _MM_HINT_T0);
    }
}
// Two FMA chains per row: four were no faster at n_x = 1 and, at n_x = 8, spill even AVX-512's 32 registers
// (3-11% slower than two, measured).
constexpr int kAccumulators = 2;

// One activation row as the kernel reads it (Q8_0X, kernels.h): codes, then scales, then code sums.
struct ActivationRows {
    const uint8_t *qs;      // [n] int8 codes of row 0; row r starts stride bytes later, as do its scales, sums
    const uint8_t *scales;  // [n / 32] float
    const uint8_t *sums;    // [n / 32] int16
    size_t stride;
};

template <class Block>
constexpr bool kHasXsumTerm = Block::has_min || Block::kBias != 0;

template <class IntDot, class Block, int NX>
inline void accumulate_rows(const uint8_t *wb, const uint8_t *xq, size_t x_stride, const float *d,
                            __m256 (&acc)[NX]) {
    const __m256i q = Block::unpack(wb);
    [[maybe_unused]] const __m256i q_abs = Block::kSigned ? _mm256_sign_epi8(q, q) : q;
#pragma GCC unroll 8
    for (int r = 0; r < NX; ++r) {
        const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(xq + r * x_stride));
        // Signed weights: q_w * q_x = |q_w| * (q_x with q_w's sign), unsigned times signed as the int8 dots take.
        const __m256i prod = Block::kSigned ? IntDot::dot(q_abs, _mm256_sign_epi8(x, q)) : IntDot::dot(q, x);
        acc[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(d + r * kGroup), _mm256_cvtepi32_ps(prod), acc[r]);
    }
}

// One group of kGroup blocks (kFull) or the row's last, shorter one (count blocks, read without going past them).
// acc[j] takes the blocks whose index is j modulo kAcc: kAcc independent FMA chains per row. The slots J are
// template constants, not loop counters, so that the compiler keeps every accumulator in a register.
template <class IntDot, class Block, int NX, bool kFull, int... J>
inline void accumulate_group(const uint8_t *w, const ActivationRows &x, int64_t b, int count,
                             __m256 (&acc)[sizeof...(J)][NX], __m256 (&acc_xsum)[NX],
                             std::integer_sequence<int, J...>) {
    constexpr int kAcc = int(sizeof...(J));
    alignas(32) float d[NX][kGroup];  // d_w * d_x
    __m256 dw, mw;
    Block::template scales<kFull>(w, count, dw, mw);
    const __m256i tail = _mm256_cmpgt_epi32(_mm256_set1_epi32(count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
#pragma GCC unroll 8
    for (int r = 0; r < NX; ++r) {
        const auto *scales = reinterpret_cast<const float *>(x.scales + r * x.stride) + b;
        const __m256 dx = kFull ? _mm256_loadu_ps(scales) : _mm256_maskload_ps(scales, tail);
        const __m256 dwx = _mm256_mul_ps(dw, dx);
        _mm256_store_ps(d[r], dwx);
        if constexpr (kHasXsumTerm<Block>) {
            const uint8_t *sums = x.sums + r * x.stride + 2 * b;
            // A tail group reads its count sums only (the row may end after the last), in general registers:
            // a variable-length memcpy's narrow stores cannot be forwarded to a vector load.
            const __m128i s16 = kFull ? _mm_loadu_si128(reinterpret_cast<const __m128i *>(sums))
                                      : load_u16x8<2, false>(sums, count);
            const __m256 xsum = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(s16));
            __m256 coef = Block::has_min ? _mm256_mul_ps(mw, dx) : _mm256_setzero_ps();
            if (Block::kBias != 0) coef = _mm256_fnmadd_ps(_mm256_set1_ps(float(Block::kBias)), dwx, coef);
            acc_xsum[r] = _mm256_fmadd_ps(coef, xsum, acc_xsum[r]);
        }
    }
    for (int k = 0; k < kGroup; k += kAcc) {
        ((kFull || k + J < count ? accumulate_rows<IntDot, Block, NX>(w + (k + J) * Block::size,
                                                                      x.qs + (b + k + J) * 32, x.stride,
                                                                      &d[0][k + J], acc[J])
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
    const ActivationRows rows{x, x + q8_0x_scales_offset(n), x + q8_0x_sums_offset(n), x_stride};
    __m256 acc[kAcc][NX] = {};
    __m256 acc_xsum[NX] = {};
    int64_t b = 0;
    for (; b + kGroup <= nb; b += kGroup) {
        prefetch_ahead(w + b * Block::size, kGroup * Block::size);
        accumulate_group<IntDot, Block, NX, true>(w + b * Block::size, rows, b, kGroup, acc, acc_xsum, slots);
    }
    if (b < nb) {
        accumulate_group<IntDot, Block, NX, false>(w + b * Block::size, rows, b, int(nb - b), acc, acc_xsum,
                                                   slots);
    }
#pragma GCC unroll 8
    for (int r = 0; r < NX; ++r) {
        const __m256 sum = _mm256_add_ps(acc[0][r], acc[1][r]);
        out[r] = hsum_ps(kHasXsumTerm<Block> ? _mm256_add_ps(sum, acc_xsum[r]) : sum);
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
    set_vec_dot<vec_dot_blocks<IntDot, BlockQ4_0>>(table, DTYPE_Q4_0);
    set_vec_dot<vec_dot_blocks<IntDot, BlockQ4_1>>(table, DTYPE_Q4_1);
    set_vec_dot<vec_dot_blocks<IntDot, BlockQ5_0>>(table, DTYPE_Q5_0);
    set_vec_dot<vec_dot_blocks<IntDot, BlockQ5_1>>(table, DTYPE_Q5_1);
    set_vec_dot<vec_dot_blocks<IntDot, BlockQ8_0>>(table, DTYPE_Q8_0);
    set_vec_dot<vec_dot_blocks<IntDot, BlockMxfp4>>(table, DTYPE_MXFP4);
}

}  // namespace
}  // namespace flashmtp
