// K-quant dot products (Q2_K .. Q6_K weights x Q8_K activations), every ISA table this CPU has.
// Oracles and tolerances:
//  - the scalar reference against a float64 dot of independently decoded weights (written here from the
//    llama.cpp dequantize_row_* loops, not from the reference's formulas) and dequantized Q8_K activations:
//    |ref - exact| <= (n_blocks + 4) * 2^-23 * M, M = sum_i (|d*scale*q_i| + |dmin*min_i|) * |x_i|, since the
//    reference rounds a handful of float ops per block and one running-sum add per block;
//  - every SIMD table against the scalar reference: bitwise equal (the reference fixes the reduction order
//    and the SIMD kernels reproduce it; see kernels/ref/dot_kquants_ref.cpp);
//  - batch invariance: out[i] bitwise equal for n_x = 1..VEC_DOT_MAX_X and every slot, every table.
// Weights are random bytes with sane fp16 d/dmin (covering every quant and scale value), plus all-0xFF and
// all-0x80 blocks for the extreme integer sums; rows of 1, 3, 16 and 17 blocks at odd byte offsets.
#include <cmath>
#include <cstddef>
#include <cstring>
#include <random>
#include <vector>

#include "check.h"
#include "kernels.h"
#include "quant_blocks.h"

using namespace flashmtp;

namespace {

// Weight element i of a block as (a_i, b_i) with value a_i - b_i: a = d * scale * q, b = dmin * min.
struct Decoded {
    std::vector<double> a, b;
};

void decode_q2_K(const uint8_t *raw, double *a, double *b) {
    block_q2_K x;
    std::memcpy(&x, raw, sizeof x);
    const double d = fp16_to_fp32(x.d), dmin = fp16_to_fp32(x.dmin);
    const uint8_t *q = x.qs;
    int is = 0;
    for (int n = 0; n < QK_K; n += 128) {
        for (int shift = 0; shift < 8; shift += 2) {
            for (int half = 0; half < 2; ++half) {
                const uint8_t sc = x.scales[is++];
                for (int l = 0; l < 16; ++l) {
                    *a++ = d * (sc & 0xF) * ((q[l + 16 * half] >> shift) & 3);
                    *b++ = dmin * (sc >> 4);
                }
            }
        }
        q += 32;
    }
}

void decode_q3_K(const uint8_t *raw, double *a, double *b) {
    block_q3_K x;
    std::memcpy(&x, raw, sizeof x);
    const double d = fp16_to_fp32(x.d);
    // 16 six-bit scales: low nibbles from bytes 0..7 (then their high nibbles), top bits from bytes 8..11.
    int scales[16];
    for (int i = 0; i < 16; ++i) {
        const int low = i < 8 ? (x.scales[i] & 0xF) : (x.scales[i - 8] >> 4);
        const int high = (x.scales[8 + (i & 3)] >> (2 * (i >> 2))) & 3;
        scales[i] = (low | (high << 4)) - 32;
    }
    const uint8_t *q = x.qs;
    uint8_t m = 1;
    int is = 0;
    for (int n = 0; n < QK_K; n += 128) {
        for (int shift = 0; shift < 8; shift += 2) {
            for (int half = 0; half < 2; ++half) {
                const double dl = d * scales[is++];
                for (int l = 16 * half; l < 16 * half + 16; ++l) {
                    *a++ = dl * (((q[l] >> shift) & 3) - ((x.hmask[l] & m) ? 0 : 4));
                    *b++ = 0.0;
                }
            }
            m <<= 1;
        }
        q += 32;
    }
}

void scale_min_k4(int j, const uint8_t *s, int &sc, int &mn) {
    if (j < 4) {
        sc = s[j] & 63;
        mn = s[j + 4] & 63;
    } else {
        sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

template <bool five_bits>
void decode_q45_K(const uint8_t *raw, double *a, double *b) {
    // Q4_K and Q5_K share d, dmin, scales at offsets 0, 2, 4; Q5_K puts qh[32] before qs.
    uint16_t dh, mh;
    std::memcpy(&dh, raw, 2);
    std::memcpy(&mh, raw + 2, 2);
    const uint8_t *scales = raw + 4;
    const uint8_t *qh = raw + 16;
    const uint8_t *ql = raw + 16 + (five_bits ? 32 : 0);
    const double d = fp16_to_fp32(dh), dmin = fp16_to_fp32(mh);
    int is = 0;
    uint8_t u1 = 1, u2 = 2;
    for (int j = 0; j < QK_K; j += 64) {
        int sc, mn;
        scale_min_k4(is, scales, sc, mn);
        for (int l = 0; l < 32; ++l) {
            const int hb = five_bits && (qh[l] & u1) ? 16 : 0;
            *a++ = d * sc * ((ql[l] & 0xF) + hb);
            *b++ = dmin * mn;
        }
        scale_min_k4(is + 1, scales, sc, mn);
        for (int l = 0; l < 32; ++l) {
            const int hb = five_bits && (qh[l] & u2) ? 16 : 0;
            *a++ = d * sc * ((ql[l] >> 4) + hb);
            *b++ = dmin * mn;
        }
        ql += 32;
        is += 2;
        u1 <<= 2;
        u2 <<= 2;
    }
}

void decode_q6_K(const uint8_t *raw, double *a, double *b) {
    block_q6_K x;
    std::memcpy(&x, raw, sizeof x);
    const double d = fp16_to_fp32(x.d);
    const uint8_t *ql = x.ql, *qh = x.qh;
    const int8_t *sc = x.scales;
    for (int n = 0; n < QK_K; n += 128) {
        for (int l = 0; l < 32; ++l) {
            const int is = l / 16;
            const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
            const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
            const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            a[l] = d * sc[is] * q1;
            a[l + 32] = d * sc[is + 2] * q2;
            a[l + 64] = d * sc[is + 4] * q3;
            a[l + 96] = d * sc[is + 6] * q4;
            b[l] = b[l + 32] = b[l + 64] = b[l + 96] = 0.0;
        }
        a += 128;
        b += 128;
        ql += 64;
        qh += 32;
        sc += 8;
    }
}

struct TypeCase {
    DType type;
    void (*decode)(const uint8_t *, double *, double *);
    size_t d_offset;     // byte offset of fp16 d in the block
    long dmin_offset;    // byte offset of fp16 dmin, -1 if none
};

const TypeCase kTypes[] = {
    {DTYPE_Q2_K, decode_q2_K, offsetof(block_q2_K, d), long(offsetof(block_q2_K, dmin))},
    {DTYPE_Q3_K, decode_q3_K, offsetof(block_q3_K, d), -1},
    {DTYPE_Q4_K, decode_q45_K<false>, offsetof(block_q4_K, d), long(offsetof(block_q4_K, dmin))},
    {DTYPE_Q5_K, decode_q45_K<true>, offsetof(block_q5_K, d), long(offsetof(block_q5_K, dmin))},
    {DTYPE_Q6_K, decode_q6_K, offsetof(block_q6_K, d), -1},
};

enum class Fill { random, all_ff, all_80 };

// n_blocks weight blocks at an odd offset inside `storage` (returns the row start).
const uint8_t *make_weights(const TypeCase &tc, int n_blocks, Fill fill, std::mt19937 &rng,
                            std::vector<uint8_t> &storage) {
    const size_t block = dtype_traits(tc.type)->type_size;
    storage.assign(block * n_blocks + 1, 0);
    uint8_t *row = storage.data() + 1;
    std::uniform_int_distribution<int> byte(0, 255);
    std::uniform_real_distribution<float> scale(0.001f, 0.05f);
    for (int b = 0; b < n_blocks; ++b) {
        uint8_t *blk = row + b * block;
        for (size_t i = 0; i < block; ++i) {
            blk[i] = fill == Fill::random ? uint8_t(byte(rng)) : fill == Fill::all_ff ? 0xFF : 0x80;
        }
        const uint16_t d = fp32_to_fp16(scale(rng)), dmin = fp32_to_fp16(scale(rng));
        std::memcpy(blk + tc.d_offset, &d, 2);
        if (tc.dmin_offset >= 0) std::memcpy(blk + tc.dmin_offset, &dmin, 2);
    }
    return row;
}

// Four Q8_K activation rows, row r at xs + r * stride; stride leaves a gap so rows are not contiguous.
size_t make_activations(int n_blocks, int pattern, std::mt19937 &rng, std::vector<uint8_t> &xs) {
    const int64_t n = int64_t(n_blocks) * QK_K;
    const size_t stride = n_blocks * sizeof(block_q8_K) + 8;  // keeps rows 4-byte aligned (fp32 d)
    xs.assign(stride * VEC_DOT_MAX_X, 0xAB);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> f(n);
    for (int r = 0; r < VEC_DOT_MAX_X; ++r) {
        for (int64_t i = 0; i < n; ++i) {
            if (pattern == 0) f[i] = normal(rng) * (1.0f + float(r));
            else if (pattern == 1) f[i] = 1.0f;                     // every quant +127
            else f[i] = (i + r) % 2 ? -3.0f : 3.0f;                 // +-127 alternating
        }
        quantize_row_q8_K(f.data(), xs.data() + r * stride, n);
    }
    return stride;
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, 4) == 0; }

void check_case(const TypeCase &tc, int n_blocks, Fill fill, int pattern, std::mt19937 &rng) {
    const int64_t n = int64_t(n_blocks) * QK_K;
    const char *name = dtype_traits(tc.type)->name;
    std::vector<uint8_t> wstore, xs;
    const uint8_t *w = make_weights(tc, n_blocks, fill, rng, wstore);
    const size_t stride = make_activations(n_blocks, pattern, rng, xs);

    // float64 oracle and the magnitude M that scales the reference's tolerance.
    std::vector<double> a(n), b(n), xf(n);
    const size_t block = dtype_traits(tc.type)->type_size;
    for (int bl = 0; bl < n_blocks; ++bl) tc.decode(w + bl * block, &a[bl * QK_K], &b[bl * QK_K]);

    const KernelTable *ref = kernels_for(ISA_SCALAR);
    float ref_out[VEC_DOT_MAX_X];
    ref->vec_dot[tc.type](n, w, xs.data(), stride, VEC_DOT_MAX_X, ref_out);
    for (int r = 0; r < VEC_DOT_MAX_X; ++r) {
        std::vector<float> xrow(n);
        dequantize_row_q8_K(xs.data() + r * stride, xrow.data(), n);
        double exact = 0.0, mag = 0.0;
        for (int64_t i = 0; i < n; ++i) {
            exact += (a[i] - b[i]) * double(xrow[i]);
            mag += (std::fabs(a[i]) + std::fabs(b[i])) * std::fabs(double(xrow[i]));
        }
        const double tol = (n_blocks + 4) * std::ldexp(1.0, -23) * mag;
        CHECK_MSG(std::fabs(double(ref_out[r]) - exact) <= tol,
                  "%s blocks=%d fill=%d pattern=%d row=%d: ref %.9g exact %.9g tol %.3g", name, n_blocks,
                  int(fill), pattern, r, double(ref_out[r]), exact, tol);
    }

    for (int isa = 0; isa < ISA_COUNT; ++isa) {
        const KernelTable *table = kernels_for(Isa(isa));
        if (!table) continue;
        const VecDotFn dot = table->vec_dot[tc.type];
        CHECK_MSG(dot != nullptr, "%s: no %s kernel", isa_name(Isa(isa)), name);
        if (!dot) continue;
        // Row r alone, then rows rotated through every slot for every n_x.
        float single[VEC_DOT_MAX_X];
        for (int r = 0; r < VEC_DOT_MAX_X; ++r) {
            dot(n, w, xs.data() + r * stride, stride, 1, &single[r]);
            CHECK_MSG(same_bits(single[r], ref_out[r]), "%s %s blocks=%d fill=%d row=%d: %.9g vs ref %.9g",
                      isa_name(Isa(isa)), name, n_blocks, int(fill), r, double(single[r]), double(ref_out[r]));
        }
        std::vector<uint8_t> rotated(xs.size());
        for (int rot = 0; rot < VEC_DOT_MAX_X; ++rot) {
            for (int s = 0; s < VEC_DOT_MAX_X; ++s) {
                std::memcpy(rotated.data() + s * stride, xs.data() + ((s + rot) % VEC_DOT_MAX_X) * stride, stride);
            }
            for (int n_x = 1; n_x <= VEC_DOT_MAX_X; ++n_x) {
                float out[VEC_DOT_MAX_X];
                dot(n, w, rotated.data(), stride, n_x, out);
                for (int s = 0; s < n_x; ++s) {
                    CHECK_MSG(same_bits(out[s], single[(s + rot) % VEC_DOT_MAX_X]),
                              "%s %s blocks=%d n_x=%d slot=%d: %.9g vs alone %.9g", isa_name(Isa(isa)), name,
                              n_blocks, n_x, s, double(out[s]), double(single[(s + rot) % VEC_DOT_MAX_X]));
                }
            }
        }
    }
}

}  // namespace

int main() {
    std::mt19937 rng(1234);
    for (const TypeCase &tc : kTypes) {
        for (int n_blocks : {1, 3, 16, 17}) {
            for (int rep = 0; rep < 3; ++rep) check_case(tc, n_blocks, Fill::random, 0, rng);
        }
        for (Fill fill : {Fill::all_ff, Fill::all_80}) {
            for (int pattern : {1, 2}) check_case(tc, 3, fill, pattern, rng);
        }
    }
    return test::exit_code("test_vec_dot_kquants");
}
