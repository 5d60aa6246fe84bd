// AVX-512 (F/BW/VL/DQ + VNNI) dot products of K-quant weight rows with Q8_K activation rows.
// Owns: unpacking one 256-element weight block into registers (once, shared by up to VEC_DOT_MAX_X activation
// rows) and the per-row integer dot. Results are bit-identical to kernels/ref/dot_kquants_ref.cpp: the block's
// integer sums are exact in any order, and the float part is the reference's scalar sequence per row.
//
// Per block and activation row: vpdpbusd (unsigned quant x signed activation, 4 products per int32 lane: at
// most 4 * 63 * 127 < 2^15 in magnitude), vpackssdw of two such registers into int16 (exact for that reason),
// then vpdpwssd with the int16 scale of each lane's group: 6 multiplies per 256 elements instead of the 8 of
// vpmaddubsw + vpdpwssd. Mins (or the quants' offset, for Q3_K / Q6_K) meet the activations' 16-element sums
// through one vpmaddwd. With several rows, vpackssdw pairs the same register of two rows instead of two
// registers of one row: the scaled sums come out with rows already interleaved, which saves most of the
// cross-lane reduction (unpacking the scales into that layout costs two more vpermw per block, so a single
// row keeps the first layout). 512-bit registers: Zen 4 splits them into 256-bit halves, yet a 256-bit VNNI variant
// (twice the instructions, registers spilled) measured about 12% slower (tests/cpp/bench_vec_dot_kquants.cpp).
#include <immintrin.h>

#include <cstddef>
#include <cstring>

#include "../kernel_fill.h"
#include "../quant_blocks.h"

// GCC 12's own avx512fintrin.h (_mm512_broadcast_i64x4, _mm512_inserti64x4, ...) trips this warning on its
// deliberately undefined temporaries.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace flashmtp {

namespace {

// One weight block, ready for every activation row.
struct UnpackedBlock {
    __m512i quant[4];  // [4][64] u8: element 64k + i is byte i of quant[k], without its type's offset
    // int16 scales for the vpackssdw results of block_sums: one row: [2][32], layout of (dots 2p, dots 2p + 1)
    // of the row; several rows: [4][32], layout of (dots k of row r, dots k of row r + 1).
    __m512i scale[4];
    __m256i min;       // [16] int16: coefficient of the activations' bsums for each group of 16
    __m128 d_dmin;     // [d, dmin, 0, 0]; dmin only in Q2_K, Q4_K, Q5_K
};

// Weights stream from memory once; the hardware prefetcher alone leaves the core waiting, most of all when
// four activation rows lengthen the work per block. 2 KiB ahead measured best on Zen 4 (1 KiB to 4 KiB tried).
constexpr size_t kPrefetchBytes = 2048;

// [d, 0, 0, 0] from one fp16 d.
inline __m128 load_d(const uint8_t *p) {
    uint16_t h;
    std::memcpy(&h, p, 2);
    return _mm_cvtph_ps(_mm_cvtsi32_si128(h));
}

// [d, dmin, 0, 0] from the adjacent fp16 pair d, dmin: one conversion for both.
inline __m128 load_d_dmin(const uint8_t *p) {
    uint32_t h;
    std::memcpy(&h, p, 4);
    return _mm_cvtph_ps(_mm_cvtsi32_si128(int(h)));
}

inline uint32_t load_u32(const uint8_t *p) {
    uint32_t v;
    std::memcpy(&v, p, 4);
    return v;
}

// vpermw indices spreading per-group int16 values over the int16 lanes of each 64-element register (a
// constant table, not registers built at start-up: static initialisers run on CPUs without AVX-512 too).
struct ScaleIndex {
    alignas(64) int16_t per16[2][32];  // groups of 16 elements, in the one-row layout of UnpackedBlock::scale
    alignas(64) int16_t per32[2][32];  // the same from groups of 32 (Q4_K, Q5_K)
    alignas(64) int16_t pair16[4][32];  // groups of 16, row-pair layout: 128-bit lane L of register k: 4k + L
    alignas(64) int16_t pair32[4][32];  // the same from groups of 32
    alignas(32) int16_t min_per32[16];  // 8 mins of 32-element groups -> 16 bsums groups: lane i takes 8 + i / 2
};
constexpr ScaleIndex make_scale_index() {
    ScaleIndex t{};
    for (int p = 0; p < 2; ++p) {
        for (int i = 0; i < 32; ++i) {
            const int group = 4 * (2 * p + (i % 8) / 4) + i / 8;
            t.per16[p][i] = int16_t(group);
            t.per32[p][i] = int16_t(group / 2);
        }
    }
    for (int k = 0; k < 4; ++k) {
        for (int i = 0; i < 32; ++i) {
            t.pair16[k][i] = int16_t(4 * k + i / 8);
            t.pair32[k][i] = int16_t((4 * k + i / 8) / 2);
        }
    }
    for (int i = 0; i < 16; ++i) t.min_per32[i] = int16_t(8 + i / 2);
    return t;
}
constexpr ScaleIndex kIndex = make_scale_index();

// Spreads 16 int16 values (per16: one per group of 16; per32: from the first 8, one per group of 32) into
// the scale layout for one row or for row pairs.
template <bool pairs>
inline void spread_scales(__m256i values, const int16_t (&per16)[2][32], const int16_t (&pair16)[4][32],
                          UnpackedBlock &u) {
    const __m512i s = _mm512_castsi256_si512(values);
    if constexpr (pairs) {
        for (int k = 0; k < 4; ++k) u.scale[k] = _mm512_permutexvar_epi16(_mm512_load_si512(pair16[k]), s);
    } else {
        for (int p = 0; p < 2; ++p) u.scale[p] = _mm512_permutexvar_epi16(_mm512_load_si512(per16[p]), s);
    }
}

template <bool pairs>
inline void spread_scales_per16(__m256i scales16, UnpackedBlock &u) {
    spread_scales<pairs>(scales16, kIndex.per16, kIndex.pair16, u);
}

// Byte masks selecting, for register k, bit 2k in its first 32 bytes and bit 2k + 1 in its last 32: the
// extra high bit of Q3_K (hmask) and Q5_K (qh) elements 64k .. 64k + 63.
inline __m512i high_bit_select(int k) {
    const __m512i base = _mm512_inserti64x4(_mm512_set1_epi8(1), _mm256_set1_epi8(2), 1);
    return _mm512_slli_epi16(base, 2 * k);  // stays inside each byte: at most 2 << 6
}

// 16-bit shift counts that bring the 2-bit field of register k's elements down to bits 0-1 of each byte in a
// Q2_K / Q3_K qs register holding the same 32 bytes twice: fields 2j0 and 2j0 + 1, j0 = 2 (k % 2).
inline __m512i two_bit_shift(int k) {
    const int s = 4 * (k % 2);
    return _mm512_inserti64x4(_mm512_set1_epi16(int16_t(s)), _mm256_set1_epi16(int16_t(s + 2)), 1);
}

inline __m512i broadcast_32_bytes(const uint8_t *p) {
    return _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(p)));
}

struct Q2K {
    static constexpr size_t block_bytes = sizeof(block_q2_K);
    static constexpr bool has_min = true;
    template <bool pairs>
    static void unpack(const uint8_t *b, UnpackedBlock &u) {
        const __m512i three = _mm512_set1_epi8(3);
        for (int k = 0; k < 4; ++k) {
            const __m512i qs = broadcast_32_bytes(b + offsetof(block_q2_K, qs) + 32 * (k / 2));
            u.quant[k] = _mm512_and_si512(_mm512_srlv_epi16(qs, two_bit_shift(k)), three);
        }
        const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i *>(b + offsetof(block_q2_K, scales)));
        const __m128i nibble = _mm_set1_epi8(0x0F);
        spread_scales_per16<pairs>(_mm256_cvtepu8_epi16(_mm_and_si128(packed, nibble)), u);
        u.min = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(packed, 4), nibble));
        u.d_dmin = load_d_dmin(b + offsetof(block_q2_K, d));
    }
};

struct Q3K {
    static constexpr size_t block_bytes = sizeof(block_q3_K);
    static constexpr bool has_min = false;
    template <bool pairs>
    static void unpack(const uint8_t *b, UnpackedBlock &u) {
        // Quants stay unsigned (0..7); the offset 4 is paid through the bsums: min = 4 * scale.
        const __m512i three = _mm512_set1_epi8(3), four = _mm512_set1_epi8(4);
        const __m512i hmask = broadcast_32_bytes(b + offsetof(block_q3_K, hmask));
        for (int k = 0; k < 4; ++k) {
            const __m512i qs = broadcast_32_bytes(b + offsetof(block_q3_K, qs) + 32 * (k / 2));
            const __m512i low = _mm512_and_si512(_mm512_srlv_epi16(qs, two_bit_shift(k)), three);
            u.quant[k] = _mm512_mask_add_epi8(low, _mm512_test_epi8_mask(hmask, high_bit_select(k)), low, four);
        }
        // 16 six-bit scales: low nibbles of bytes 0-7 (groups 0-7, then high nibbles for 8-15), top bits in
        // bytes 8-11, two per group, field g / 4 of byte 8 + g % 4.
        const uint8_t *s = b + offsetof(block_q3_K, scales);
        const uint32_t s0 = load_u32(s), s1 = load_u32(s + 4), s2 = load_u32(s + 8);
        const uint32_t m4 = 0x0f0f0f0f, m2 = 0x03030303;
        // Paired into 64-bit words in general registers: two transfers to the vector unit instead of four
        // (measured 5% faster here; the same change made Q4_K slower).
        const uint64_t g0_7 = uint64_t((s0 & m4) | ((s2 & m2) << 4)) |
                              uint64_t((s1 & m4) | (((s2 >> 2) & m2) << 4)) << 32;
        const uint64_t g8_15 = uint64_t(((s0 >> 4) & m4) | (((s2 >> 4) & m2) << 4)) |
                               uint64_t(((s1 >> 4) & m4) | (((s2 >> 6) & m2) << 4)) << 32;
        const __m128i packed = _mm_set_epi64x(int64_t(g8_15), int64_t(g0_7));
        const __m256i scales = _mm256_sub_epi16(_mm256_cvtepu8_epi16(packed), _mm256_set1_epi16(32));
        spread_scales_per16<pairs>(scales, u);
        u.min = _mm256_slli_epi16(scales, 2);
        u.d_dmin = load_d(b + offsetof(block_q3_K, d));
    }
};

// Q4_K / Q5_K: 8 (scale, min) pairs of 6 bits in 12 bytes -> int16 [scales 0-7, mins 0-7].
inline __m256i unpack_scale_min_k4(const uint8_t *s) {
    const uint32_t s0 = load_u32(s), s1 = load_u32(s + 4), s2 = load_u32(s + 8);
    const uint32_t m6 = 0x3f3f3f3f, m4 = 0x0f0f0f0f, m2 = 0x03030303;
    const __m128i packed = _mm_setr_epi32(int(s0 & m6), int((s2 & m4) | (((s0 >> 6) & m2) << 4)),
                                          int(s1 & m6), int(((s2 >> 4) & m4) | (((s1 >> 6) & m2) << 4)));
    return _mm256_cvtepu8_epi16(packed);
}

// Q4_K / Q5_K low nibbles: 64-byte load = chunks 2p, 2p + 1 of 32 bytes; register 2p + c is [low | high] of
// chunk c, i.e. elements 64(2p + c) .. + 63 in order.
inline void split_nibbles(const uint8_t *qs, UnpackedBlock &u) {
    const __m512i nibble = _mm512_set1_epi8(0x0F);
    for (int p = 0; p < 2; ++p) {
        const __m512i q = _mm512_loadu_si512(qs + 64 * p);
        const __m512i low = _mm512_and_si512(q, nibble);
        const __m512i high = _mm512_and_si512(_mm512_srli_epi16(q, 4), nibble);
        u.quant[2 * p] = _mm512_shuffle_i64x2(low, high, 0x44);
        u.quant[2 * p + 1] = _mm512_shuffle_i64x2(low, high, 0xEE);
    }
}

template <bool pairs>
inline void spread_scale_min_k4(__m256i scale_min, UnpackedBlock &u) {
    spread_scales<pairs>(scale_min, kIndex.per32, kIndex.pair32, u);
    u.min = _mm256_permutexvar_epi16(
        _mm256_load_si256(reinterpret_cast<const __m256i *>(kIndex.min_per32)), scale_min);
}

struct Q4K {
    static constexpr size_t block_bytes = sizeof(block_q4_K);
    static constexpr bool has_min = true;
    template <bool pairs>
    static void unpack(const uint8_t *b, UnpackedBlock &u) {
        split_nibbles(b + offsetof(block_q4_K, qs), u);
        spread_scale_min_k4<pairs>(unpack_scale_min_k4(b + offsetof(block_q4_K, scales)), u);
        u.d_dmin = load_d_dmin(b + offsetof(block_q4_K, d));
    }
};

struct Q5K {
    static constexpr size_t block_bytes = sizeof(block_q5_K);
    static constexpr bool has_min = true;
    template <bool pairs>
    static void unpack(const uint8_t *b, UnpackedBlock &u) {
        split_nibbles(b + offsetof(block_q5_K, qs), u);
        const __m512i qh = broadcast_32_bytes(b + offsetof(block_q5_K, qh));
        const __m512i sixteen = _mm512_set1_epi8(16);
        for (int k = 0; k < 4; ++k) {
            u.quant[k] = _mm512_mask_add_epi8(u.quant[k], _mm512_test_epi8_mask(qh, high_bit_select(k)),
                                              u.quant[k], sixteen);
        }
        spread_scale_min_k4<pairs>(unpack_scale_min_k4(b + offsetof(block_q5_K, scales)), u);
        u.d_dmin = load_d_dmin(b + offsetof(block_q5_K, d));
    }
};

struct Q6K {
    static constexpr size_t block_bytes = sizeof(block_q6_K);
    static constexpr bool has_min = false;
    template <bool pairs>
    static void unpack(const uint8_t *b, UnpackedBlock &u) {
        // Quants stay unsigned (0..63); the offset 32 is paid through the bsums: min = 32 * scale.
        // Half h: 64 bytes of ql hold elements 128h + [0, 64) in their low nibbles and 128h + [64, 128) in
        // their high ones; qh byte l carries the top 2 bits of 4 elements 32 apart, moved here to bits 4-5.
        const __m512i nibble = _mm512_set1_epi8(0x0F), top = _mm512_set1_epi8(0x30);
        const __m512i shift_low = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);   // left
        const __m512i shift_high = _mm512_inserti64x4(_mm512_set1_epi16(0), _mm256_set1_epi16(2), 1);  // right
        for (int h = 0; h < 2; ++h) {
            const __m512i ql = _mm512_loadu_si512(b + offsetof(block_q6_K, ql) + 64 * h);
            const __m512i qh = broadcast_32_bytes(b + offsetof(block_q6_K, qh) + 32 * h);
            u.quant[2 * h] = _mm512_or_si512(_mm512_and_si512(ql, nibble),
                                             _mm512_and_si512(_mm512_sllv_epi16(qh, shift_low), top));
            u.quant[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), nibble),
                                                 _mm512_and_si512(_mm512_srlv_epi16(qh, shift_high), top));
        }
        const __m256i scales = _mm256_cvtepi8_epi16(
            _mm_loadu_si128(reinterpret_cast<const __m128i *>(b + offsetof(block_q6_K, scales))));
        spread_scales_per16<pairs>(scales, u);
        u.min = _mm256_slli_epi16(scales, 5);
        u.d_dmin = load_d(b + offsetof(block_q6_K, d));
    }
};

// vpdpbusd of the block's four registers with one activation row: dots[k] lane l covers elements 64k + 4l
// .. + 3, all in group 4k + l / 4. Each lane is at most 4 * 63 * 127 < 2^15 in magnitude.
inline void block_dots(const UnpackedBlock &u, const uint8_t *xb, __m512i dots[4]) {
    const uint8_t *qs = xb + offsetof(block_q8_K, qs);
    for (int k = 0; k < 4; ++k) {
        dots[k] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u.quant[k], _mm512_loadu_si512(qs + 64 * k));
    }
}

// Integer sums of one block with one activation row (one-row scale layout), still spread over lanes: the
// sum of acc's lanes is sum_i scale * quant * x, the sum of min's lanes is sum_g min_g * bsums_g (both exact
// int32). vpackssdw interleaves two registers per 128-bit lane L as [dots[2p] lanes 4L..4L+3, dots[2p+1]
// lanes 4L..4L+3], the order of u.scale[p].
inline void block_sums(const UnpackedBlock &u, const uint8_t *xb, __m256i &acc, __m256i &min) {
    __m512i dots[4];
    block_dots(u, xb, dots);
    __m512i a = _mm512_madd_epi16(_mm512_packs_epi32(dots[0], dots[1]), u.scale[0]);
    a = _mm512_dpwssd_epi32(a, _mm512_packs_epi32(dots[2], dots[3]), u.scale[1]);
    acc = _mm256_add_epi32(_mm512_castsi512_si256(a), _mm512_extracti64x4_epi64(a, 1));
    const __m256i bsums = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(xb + offsetof(block_q8_K, bsums)));
    min = _mm256_madd_epi16(bsums, u.min);
}

// Lane sums of four 8-lane vectors: [sum v0, sum v1, sum v2, sum v3].
inline __m128i sum_lanes4(__m256i v0, __m256i v1, __m256i v2, __m256i v3) {
    const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(v0, v1), _mm256_hadd_epi32(v2, v3));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

// Scaled integer sums of two activation rows r, s (s absent: zeros) in one register: vpackssdw of dots k of
// r and of s puts, per 128-bit lane L, four int16 of r then four of s, all of group 4k + L (the row-pair scale
// layout); vpmaddwd / vpdpwssd then leave int32 lanes [r, r, s, s] in every 128-bit lane.
template <bool has_s>
inline __m512i pair_sums(const UnpackedBlock &u, const uint8_t *xr, const uint8_t *xs) {
    __m512i dr[4], ds[4];
    block_dots(u, xr, dr);
    if constexpr (has_s) {
        block_dots(u, xs, ds);
    } else {
        for (int k = 0; k < 4; ++k) ds[k] = _mm512_setzero_si512();
    }
    __m512i a = _mm512_madd_epi16(_mm512_packs_epi32(dr[0], ds[0]), u.scale[0]);
    for (int k = 1; k < 4; ++k) a = _mm512_dpwssd_epi32(a, _mm512_packs_epi32(dr[k], ds[k]), u.scale[k]);
    return a;
}

// The term block b adds to the sums of activation rows first .. first + 3 (those below n_x), rows as lanes of a
// 4-wide float vector: lane r performs exactly the reference's scalar operations for row first + r, so neither
// n_x nor the slot changes its bits. Integer sums are reduced across the four rows together (exact, so the
// grouping cannot matter). Eight rows take two calls: the float part is a small share of their work.
template <class Type, int n_x, int first>
inline __m128 block_term(const UnpackedBlock &u, const uint8_t *x, size_t x_stride, int64_t b) {
    constexpr int rows = n_x - first < 4 ? n_x - first : 4;
    const uint8_t *xb[4];
    for (int r = 0; r < 4; ++r) xb[r] = x + (first + (r < rows ? r : 0)) * x_stride + b * sizeof(block_q8_K);
    // msum: the activations' 16-element sums against the block's mins (or offsets).
    __m256i min[4];
    float row_d[4] = {};
    for (int r = 0; r < 4; ++r) {
        if (r < rows) {
            const __m256i bsums =
                _mm256_loadu_si256(reinterpret_cast<const __m256i *>(xb[r] + offsetof(block_q8_K, bsums)));
            min[r] = _mm256_madd_epi16(bsums, u.min);
            std::memcpy(&row_d[r], xb[r] + offsetof(block_q8_K, d), 4);
        } else {
            min[r] = _mm256_setzero_si256();
        }
    }
    // isum: pairs (0, 1), (2, 3) -> per 128-bit lane [0, 1, 2, 3] -> folded over the four lanes. Up to two
    // rows: folded as [0, 0, 1, 1], then reduced together with msum.
    const __m512i a01 = pair_sums<(rows > 1)>(u, xb[0], xb[1]);
    __m512i a = a01;
    if constexpr (rows > 2) {
        const __m512 f01 = _mm512_castsi512_ps(a01);
        const __m512 f23 = _mm512_castsi512_ps(pair_sums<(rows > 3)>(u, xb[2], xb[3]));
        a = _mm512_add_epi32(_mm512_castps_si512(_mm512_shuffle_ps(f01, f23, 0x88)),
                             _mm512_castps_si512(_mm512_shuffle_ps(f01, f23, 0xDD)));
    }
    const __m256i a256 = _mm256_add_epi32(_mm512_castsi512_si256(a), _mm512_extracti64x4_epi64(a, 1));
    __m128i isum = _mm_add_epi32(_mm256_castsi256_si128(a256), _mm256_extracti128_si256(a256, 1));
    __m128i msum;
    if constexpr (rows <= 2) {  // [isum 0, isum 1, msum 0, msum 1]
        const __m256i m = _mm256_hadd_epi32(min[0], min[1]);
        isum = _mm_hadd_epi32(isum, _mm_add_epi32(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1)));
        msum = _mm_unpackhi_epi64(isum, isum);
    } else {
        msum = sum_lanes4(min[0], min[1], min[2], min[3]);
    }
    // Built from scalars, not loaded from row_d: a 16-byte load of separately stored floats would miss
    // store-to-load forwarding.
    const __m128 xd = _mm_setr_ps(row_d[0], row_d[1], row_d[2], row_d[3]);
    const __m128 d = _mm_mul_ps(xd, _mm_shuffle_ps(u.d_dmin, u.d_dmin, 0x00));
    if constexpr (Type::has_min) {
        const __m128 dmin = _mm_mul_ps(xd, _mm_shuffle_ps(u.d_dmin, u.d_dmin, 0x55));
        const __m128 scaled = _mm_mul_ps(d, _mm_cvtepi32_ps(isum));
        return _mm_sub_ps(scaled, _mm_mul_ps(dmin, _mm_cvtepi32_ps(msum)));
    } else {
        isum = _mm_sub_epi32(isum, msum);
        return _mm_mul_ps(d, _mm_cvtepi32_ps(isum));
    }
}

// The term block b adds to the sum of a single activation row (n_x = 1, a GEMV): the same float operations as
// block_term for lane 0, with isum and msum side by side in one vector instead of rows as lanes.
template <class Type>
inline float block_term1(const UnpackedBlock &u, const uint8_t *xb) {
    __m256i acc, min;
    block_sums(u, xb, acc, min);
    const __m128 xd = _mm_broadcast_ss(reinterpret_cast<const float *>(xb + offsetof(block_q8_K, d)));
    const __m128 scale = _mm_mul_ps(xd, u.d_dmin);  // [x.d * d, x.d * dmin, 0, 0]
    if constexpr (Type::has_min) {
        const __m256i h = _mm256_hadd_epi32(acc, min);  // [isum, isum, msum, msum | isum, isum, msum, msum]
        const __m128i q = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
        const __m128 terms = _mm_mul_ps(scale, _mm_cvtepi32_ps(_mm_hadd_epi32(q, q)));  // [isum, msum, ...]
        return _mm_cvtss_f32(_mm_sub_ss(terms, _mm_movehdup_ps(terms)));
    } else {
        const __m256i v = _mm256_sub_epi32(acc, min);
        __m128i q = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        q = _mm_add_epi32(q, _mm_unpackhi_epi64(q, q));
        q = _mm_add_epi32(q, _mm_shuffle_epi32(q, 0x55));
        return _mm_cvtss_f32(_mm_mul_ss(scale, _mm_cvtepi32_ps(q)));
    }
}

inline void prefetch_block(const uint8_t *block, size_t block_bytes) {
    for (size_t line = 0; line < block_bytes; line += 64) {
        _mm_prefetch(reinterpret_cast<const char *>(block + kPrefetchBytes + line), _MM_HINT_T0);
    }
}

// One activation row: two blocks per iteration, both unpacked before either is used, so that the second
// block's work is in the scheduler while the first one's long dependency chain (dot, scale, reduce,
// convert) completes. The float sum still adds the blocks' terms one by one, in order.
template <class Type>
void vec_dot_row(int64_t n, const uint8_t *w, const uint8_t *x, float *out) {
    const int64_t n_blocks = n / QK_K;
    float sum = 0.0f;
    UnpackedBlock u0, u1;
    int64_t b = 0;
    for (; b + 2 <= n_blocks; b += 2) {
        const uint8_t *block = w + b * Type::block_bytes;
        prefetch_block(block, 2 * Type::block_bytes);
        Type::template unpack<false>(block, u0);
        Type::template unpack<false>(block + Type::block_bytes, u1);
        const float t0 = block_term1<Type>(u0, x + b * sizeof(block_q8_K));
        const float t1 = block_term1<Type>(u1, x + (b + 1) * sizeof(block_q8_K));
        sum += t0;
        sum += t1;
    }
    if (b < n_blocks) {
        Type::template unpack<false>(w + b * Type::block_bytes, u0);
        sum += block_term1<Type>(u0, x + b * sizeof(block_q8_K));
    }
    *out = sum;
}

// Rows 0-3 and 4-7 (if n_x > 4) of every block share one unpacking of the weights.
template <class Type, int n_x>
void vec_dot_rows(int64_t n, const uint8_t *w, const uint8_t *x, size_t x_stride, float *out) {
    __m128 sum_lo = _mm_setzero_ps(), sum_hi = _mm_setzero_ps();
    UnpackedBlock u;
    for (int64_t b = 0; b < n / QK_K; ++b) {
        const uint8_t *block = w + b * Type::block_bytes;
        prefetch_block(block, Type::block_bytes);
        Type::template unpack<true>(block, u);
        sum_lo = _mm_add_ps(sum_lo, block_term<Type, n_x, 0>(u, x, x_stride, b));
        if constexpr (n_x > 4) sum_hi = _mm_add_ps(sum_hi, block_term<Type, n_x, 4>(u, x, x_stride, b));
    }
    alignas(16) float result[8];
    _mm_store_ps(result, sum_lo);
    _mm_store_ps(result + 4, sum_hi);
    for (int r = 0; r < n_x; ++r) out[r] = result[r];
}

template <class Type>
void vec_dot(int64_t n, const void *w, const void *x, size_t x_stride, int n_x, float *out) {
    static_assert(VEC_DOT_MAX_X == 8, "one case per row count below");
    const auto *wb = static_cast<const uint8_t *>(w);
    const auto *xb = static_cast<const uint8_t *>(x);
    switch (n_x) {
        case 1: vec_dot_row<Type>(n, wb, xb, out); break;
        case 2: vec_dot_rows<Type, 2>(n, wb, xb, x_stride, out); break;
        case 3: vec_dot_rows<Type, 3>(n, wb, xb, x_stride, out); break;
        case 4: vec_dot_rows<Type, 4>(n, wb, xb, x_stride, out); break;
        case 5: vec_dot_rows<Type, 5>(n, wb, xb, x_stride, out); break;
        case 6: vec_dot_rows<Type, 6>(n, wb, xb, x_stride, out); break;
        case 7: vec_dot_rows<Type, 7>(n, wb, xb, x_stride, out); break;
        default: vec_dot_rows<Type, 8>(n, wb, xb, x_stride, out); break;
    }
}

}  // namespace

void kernel_table_fill_avx512_kquants(KernelTable &table) {
    set_vec_dot<vec_dot<Q2K>>(table, DTYPE_Q2_K);
    set_vec_dot<vec_dot<Q3K>>(table, DTYPE_Q3_K);
    set_vec_dot<vec_dot<Q4K>>(table, DTYPE_Q4_K);
    set_vec_dot<vec_dot<Q5K>>(table, DTYPE_Q5_K);
    set_vec_dot<vec_dot<Q6K>>(table, DTYPE_Q6_K);
}

}  // namespace flashmtp
