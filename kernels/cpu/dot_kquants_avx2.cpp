// AVX2 dot products of K-quant weight rows with Q8_K activation rows.
// Owns: unpacking one 256-element weight block (once, shared by up to VEC_DOT_MAX_X activation rows) and the
// per-row integer dot. Results are bit-identical to kernels/ref/dot_kquants_ref.cpp: the block's integer sums
// are exact in any order, and the float part is the reference's scalar sequence per row.
//
// Per block and activation row: vpmaddubsw (unsigned quant x signed activation -> int16 pairs, which cannot
// saturate: 2 * 63 * 127 < 2^15), vpmaddwd with the int16 scale of each pair's group, vpaddd; mins (or the
// quants' offset, for Q3_K / Q6_K) meet the activations' 16-element sums through one more vpmaddwd.
#include <immintrin.h>

#include <cstddef>
#include <cstring>

#include "../kernel_fill.h"
#include "../quant_blocks.h"

namespace flashmtp {

namespace {

// One weight block, ready for every activation row.
struct UnpackedBlock {
    __m256i quant[8];  // [8][32] u8: element 32k + i is byte i of quant[k], without its type's offset
    __m256i scale[8];  // [8][16] int16: lane i of scale[k] = scale of elements 32k + 2i, 32k + 2i + 1
    __m256i min;       // [16] int16: coefficient of the activations' bsums for each group of 16
    float d;
    float dmin;  // Q2_K, Q4_K, Q5_K
};

// Weights stream from memory once; the hardware prefetcher alone leaves the core waiting, most of all when
// four activation rows lengthen the work per block. 2 KiB ahead, as in the AVX-512 file.
constexpr size_t kPrefetchBytes = 2048;

inline float load_fp16(const uint8_t *p) {
    uint16_t h;
    std::memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

inline uint32_t load_u32(const uint8_t *p) {
    uint32_t v;
    std::memcpy(&v, p, 4);
    return v;
}

inline __m256i load_256(const uint8_t *p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i *>(p)); }

// vpshufb controls (bytes, per 128-bit lane) that spread int16 per-group values over a register's lanes.
struct SpreadControl {
    alignas(32) int8_t per16[4][32];  // from 8 int16 in both lanes: lane 0 takes value 2k, lane 1 value 2k + 1
    alignas(32) int8_t per32[8][32];  // from 8 int16 in both lanes: every int16 takes value k
    alignas(32) int8_t pairs[32];     // from 8 int16 in both lanes: int16 j of lane L takes value 4L + j / 2
};
constexpr SpreadControl make_spread_control() {
    SpreadControl t{};
    for (int i = 0; i < 32; ++i) {
        const int lane = i / 16, byte = i % 2;
        for (int k = 0; k < 4; ++k) t.per16[k][i] = int8_t(2 * (2 * k + lane) + byte);
        for (int k = 0; k < 8; ++k) t.per32[k][i] = int8_t(2 * k + byte);
        t.pairs[i] = int8_t(2 * (4 * lane + (i % 16) / 4) + byte);
    }
    return t;
}
constexpr SpreadControl kSpread = make_spread_control();

inline __m256i load_control(const int8_t *p) { return _mm256_load_si256(reinterpret_cast<const __m256i *>(p)); }

// 16 per-group int16 scales -> scale[k] = [scale 2k x 8, scale 2k + 1 x 8].
inline void spread_scales_per16(__m256i scales16, UnpackedBlock &u) {
    const __m256i low = _mm256_broadcastsi128_si256(_mm256_castsi256_si128(scales16));
    const __m256i high = _mm256_broadcastsi128_si256(_mm256_extracti128_si256(scales16, 1));
    for (int k = 0; k < 4; ++k) {
        const __m256i control = load_control(kSpread.per16[k]);
        u.scale[k] = _mm256_shuffle_epi8(low, control);
        u.scale[k + 4] = _mm256_shuffle_epi8(high, control);
    }
}

// Bytes of `bits` where the bit `mask` is set become `value`, the others 0.
inline __m256i select_bit(__m256i bits, uint8_t mask, uint8_t value) {
    const __m256i m = _mm256_set1_epi8(char(mask));
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(bits, m), m), _mm256_set1_epi8(char(value)));
}

struct Q2K {
    static constexpr size_t block_bytes = sizeof(block_q2_K);
    static constexpr bool has_min = true;
    static void unpack(const uint8_t *b, UnpackedBlock &u) {
        const __m256i three = _mm256_set1_epi8(3);
        for (int n = 0; n < 2; ++n) {
            const __m256i qs = load_256(b + offsetof(block_q2_K, qs) + 32 * n);
            for (int j = 0; j < 4; ++j) u.quant[4 * n + j] = _mm256_and_si256(_mm256_srli_epi16(qs, 2 * j), three);
        }
        const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i *>(b + offsetof(block_q2_K, scales)));
        const __m128i nibble = _mm_set1_epi8(0x0F);
        spread_scales_per16(_mm256_cvtepu8_epi16(_mm_and_si128(packed, nibble)), u);
        u.min = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(packed, 4), nibble));
        u.d = load_fp16(b + offsetof(block_q2_K, d));
        u.dmin = load_fp16(b + offsetof(block_q2_K, dmin));
    }
};

struct Q3K {
    static constexpr size_t block_bytes = sizeof(block_q3_K);
    static constexpr bool has_min = false;
    static void unpack(const uint8_t *b, UnpackedBlock &u) {
        // Quants stay unsigned (0..7); the offset 4 is paid through the bsums: min = 4 * scale.
        const __m256i three = _mm256_set1_epi8(3);
        const __m256i hmask = load_256(b + offsetof(block_q3_K, hmask));
        for (int n = 0; n < 2; ++n) {
            const __m256i qs = load_256(b + offsetof(block_q3_K, qs) + 32 * n);
            for (int j = 0; j < 4; ++j) {
                const __m256i low = _mm256_and_si256(_mm256_srli_epi16(qs, 2 * j), three);
                u.quant[4 * n + j] = _mm256_or_si256(low, select_bit(hmask, uint8_t(1 << (4 * n + j)), 4));
            }
        }
        // 16 six-bit scales: low nibbles of bytes 0-7 (groups 0-7, then high nibbles for 8-15), top bits in
        // bytes 8-11, two per group, field g / 4 of byte 8 + g % 4.
        const uint8_t *s = b + offsetof(block_q3_K, scales);
        const uint32_t s0 = load_u32(s), s1 = load_u32(s + 4), s2 = load_u32(s + 8);
        const uint32_t m4 = 0x0f0f0f0f, m2 = 0x03030303;
        const __m128i packed = _mm_setr_epi32(int((s0 & m4) | ((s2 & m2) << 4)),
                                              int((s1 & m4) | (((s2 >> 2) & m2) << 4)),
                                              int(((s0 >> 4) & m4) | (((s2 >> 4) & m2) << 4)),
                                              int(((s1 >> 4) & m4) | (((s2 >> 6) & m2) << 4)));
        const __m256i scales = _mm256_sub_epi16(_mm256_cvtepu8_epi16(packed), _mm256_set1_epi16(32));
        spread_scales_per16(scales, u);
        u.min = _mm256_slli_epi16(scales, 2);
        u.d = load_fp16(b + offsetof(block_q3_K, d));
        u.dmin = 0.0f;
    }
};

// Q4_K / Q5_K: 8 (scale, min) pairs of 6 bits in 12 bytes -> scale[k] = scale k everywhere, min[g] = min g / 2.
inline void unpack_scale_min_k4(const uint8_t *s, UnpackedBlock &u) {
    const uint32_t s0 = load_u32(s), s1 = load_u32(s + 4), s2 = load_u32(s + 8);
    const uint32_t m6 = 0x3f3f3f3f, m4 = 0x0f0f0f0f, m2 = 0x03030303;
    const __m128i packed = _mm_setr_epi32(int(s0 & m6), int((s2 & m4) | (((s0 >> 6) & m2) << 4)),
                                          int(s1 & m6), int(((s2 >> 4) & m4) | (((s1 >> 6) & m2) << 4)));
    const __m256i scale_min = _mm256_cvtepu8_epi16(packed);  // int16 [scales 0-7, mins 0-7]
    const __m256i scales = _mm256_broadcastsi128_si256(_mm256_castsi256_si128(scale_min));
    for (int k = 0; k < 8; ++k) u.scale[k] = _mm256_shuffle_epi8(scales, load_control(kSpread.per32[k]));
    const __m256i mins = _mm256_broadcastsi128_si256(_mm256_extracti128_si256(scale_min, 1));
    u.min = _mm256_shuffle_epi8(mins, load_control(kSpread.pairs));
}

// Q4_K / Q5_K: chunk c of 32 bytes holds elements 64c + [0, 32) in its low nibbles, 64c + [32, 64) in its high.
inline void split_nibbles(const uint8_t *qs, UnpackedBlock &u) {
    const __m256i nibble = _mm256_set1_epi8(0x0F);
    for (int c = 0; c < 4; ++c) {
        const __m256i q = load_256(qs + 32 * c);
        u.quant[2 * c] = _mm256_and_si256(q, nibble);
        u.quant[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(q, 4), nibble);
    }
}

struct Q4K {
    static constexpr size_t block_bytes = sizeof(block_q4_K);
    static constexpr bool has_min = true;
    static void unpack(const uint8_t *b, UnpackedBlock &u) {
        split_nibbles(b + offsetof(block_q4_K, qs), u);
        unpack_scale_min_k4(b + offsetof(block_q4_K, scales), u);
        u.d = load_fp16(b + offsetof(block_q4_K, d));
        u.dmin = load_fp16(b + offsetof(block_q4_K, dmin));
    }
};

struct Q5K {
    static constexpr size_t block_bytes = sizeof(block_q5_K);
    static constexpr bool has_min = true;
    static void unpack(const uint8_t *b, UnpackedBlock &u) {
        split_nibbles(b + offsetof(block_q5_K, qs), u);
        const __m256i qh = load_256(b + offsetof(block_q5_K, qh));
        for (int k = 0; k < 8; ++k) u.quant[k] = _mm256_or_si256(u.quant[k], select_bit(qh, uint8_t(1 << k), 16));
        unpack_scale_min_k4(b + offsetof(block_q5_K, scales), u);
        u.d = load_fp16(b + offsetof(block_q5_K, d));
        u.dmin = load_fp16(b + offsetof(block_q5_K, dmin));
    }
};

struct Q6K {
    static constexpr size_t block_bytes = sizeof(block_q6_K);
    static constexpr bool has_min = false;
    static void unpack(const uint8_t *b, UnpackedBlock &u) {
        // Quants stay unsigned (0..63); the offset 32 is paid through the bsums: min = 32 * scale.
        // Element 128n + 32j + l: nibble j / 2 of ql[64n + 32(j % 2) + l], top bits 2j of qh[32n + l], here
        // moved to bits 4-5 (16-bit shifts are safe: the mask keeps only bits that stay within their byte).
        const __m256i nibble = _mm256_set1_epi8(0x0F), top = _mm256_set1_epi8(0x30);
        for (int n = 0; n < 2; ++n) {
            const __m256i ql0 = load_256(b + offsetof(block_q6_K, ql) + 64 * n);
            const __m256i ql1 = load_256(b + offsetof(block_q6_K, ql) + 64 * n + 32);
            const __m256i qh = load_256(b + offsetof(block_q6_K, qh) + 32 * n);
            u.quant[4 * n + 0] = _mm256_or_si256(_mm256_and_si256(ql0, nibble),
                                                 _mm256_and_si256(_mm256_slli_epi16(qh, 4), top));
            u.quant[4 * n + 1] = _mm256_or_si256(_mm256_and_si256(ql1, nibble),
                                                 _mm256_and_si256(_mm256_slli_epi16(qh, 2), top));
            u.quant[4 * n + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), nibble),
                                                 _mm256_and_si256(qh, top));
            u.quant[4 * n + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), nibble),
                                                 _mm256_and_si256(_mm256_srli_epi16(qh, 2), top));
        }
        const __m256i scales = _mm256_cvtepi8_epi16(
            _mm_loadu_si128(reinterpret_cast<const __m128i *>(b + offsetof(block_q6_K, scales))));
        spread_scales_per16(scales, u);
        u.min = _mm256_slli_epi16(scales, 5);
        u.d = load_fp16(b + offsetof(block_q6_K, d));
        u.dmin = 0.0f;
    }
};

// Integer sums of one block with one activation row, still spread over lanes: the sum of acc's lanes is
// sum_i scale * quant * x, the sum of min's lanes is sum_g min_g * bsums_g (both exact int32).
inline void block_sums(const UnpackedBlock &u, const uint8_t *xb, __m256i &acc, __m256i &min) {
    const uint8_t *qs = xb + offsetof(block_q8_K, qs);
    __m256i a = _mm256_setzero_si256();
    for (int k = 0; k < 8; ++k) {
        const __m256i pairs = _mm256_maddubs_epi16(u.quant[k], load_256(qs + 32 * k));
        a = _mm256_add_epi32(a, _mm256_madd_epi16(pairs, u.scale[k]));
    }
    acc = a;
    min = _mm256_madd_epi16(load_256(xb + offsetof(block_q8_K, bsums)), u.min);
}

// Lane sums of four 8-lane vectors: [sum v0, sum v1, sum v2, sum v3].
inline __m128i sum_lanes4(__m256i v0, __m256i v1, __m256i v2, __m256i v3) {
    const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(v0, v1), _mm256_hadd_epi32(v2, v3));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

// The term block b adds to the sums of activation rows first .. first + 3 (those below n_x), rows as lanes of a
// 4-wide float vector: lane r performs exactly the reference's scalar operations for row first + r, so neither
// n_x nor the slot changes its bits. Integer sums are reduced across the four rows together (exact, so the
// grouping cannot matter).
template <class Type, int n_x, int first>
inline __m128 block_term(const UnpackedBlock &u, const uint8_t *x, size_t x_stride, int64_t b) {
    constexpr int rows = n_x - first < 4 ? n_x - first : 4;
    __m256i acc[4], min[4];
    float row_d[4] = {};
    for (int r = 0; r < 4; ++r) {
        if (r < rows) {
            const uint8_t *xb = x + (first + r) * x_stride + b * sizeof(block_q8_K);
            block_sums(u, xb, acc[r], min[r]);
            std::memcpy(&row_d[r], xb + offsetof(block_q8_K, d), 4);
        } else {
            acc[r] = min[r] = _mm256_setzero_si256();
        }
    }
    // Built from scalars, not loaded from row_d: a 16-byte load of separately stored floats would miss
    // store-to-load forwarding.
    const __m128 xd = _mm_setr_ps(row_d[0], row_d[1], row_d[2], row_d[3]);
    const __m128 d = _mm_mul_ps(xd, _mm_set1_ps(u.d));
    if constexpr (Type::has_min) {
        __m128i isum, msum;
        if constexpr (rows <= 2) {  // one reduction for both: [isum 0, isum 1, msum 0, msum 1]
            isum = sum_lanes4(acc[0], acc[1], min[0], min[1]);
            msum = _mm_unpackhi_epi64(isum, isum);
        } else {
            isum = sum_lanes4(acc[0], acc[1], acc[2], acc[3]);
            msum = sum_lanes4(min[0], min[1], min[2], min[3]);
        }
        const __m128 dmin = _mm_mul_ps(xd, _mm_set1_ps(u.dmin));
        const __m128 scaled = _mm_mul_ps(d, _mm_cvtepi32_ps(isum));
        return _mm_sub_ps(scaled, _mm_mul_ps(dmin, _mm_cvtepi32_ps(msum)));
    } else {
        for (int r = 0; r < rows; ++r) acc[r] = _mm256_sub_epi32(acc[r], min[r]);
        const __m128i isum = sum_lanes4(acc[0], acc[1], acc[2], acc[3]);
        return _mm_mul_ps(d, _mm_cvtepi32_ps(isum));
    }
}

// Rows 0-3 and 4-7 (if n_x > 4) of every block share one unpacking of the weights.
template <class Type, int n_x>
void vec_dot_rows(int64_t n, const uint8_t *w, const uint8_t *x, size_t x_stride, float *out) {
    __m128 sum_lo = _mm_setzero_ps(), sum_hi = _mm_setzero_ps();
    UnpackedBlock u;
    for (int64_t b = 0; b < n / QK_K; ++b) {
        const uint8_t *block = w + b * Type::block_bytes;
        for (size_t line = 0; line < Type::block_bytes; line += 64) {
            _mm_prefetch(reinterpret_cast<const char *>(block + kPrefetchBytes + line), _MM_HINT_T0);
        }
        Type::unpack(block, u);
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
        case 1: vec_dot_rows<Type, 1>(n, wb, xb, x_stride, out); break;
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

void kernel_table_fill_avx2_kquants(KernelTable &table) {
    set_vec_dot<vec_dot<Q2K>>(table, DTYPE_Q2_K);
    set_vec_dot<vec_dot<Q3K>>(table, DTYPE_Q3_K);
    set_vec_dot<vec_dot<Q4K>>(table, DTYPE_Q4_K);
    set_vec_dot<vec_dot<Q5K>>(table, DTYPE_Q5_K);
    set_vec_dot<vec_dot<Q6K>>(table, DTYPE_Q6_K);
}

}  // namespace flashmtp
