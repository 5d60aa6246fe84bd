// vec_dot kernels of every weight type in the scalar table, on every ISA this CPU has, three checks each:
//  1. oracle: the scalar reference against a float64 dot of the dequantized operands (skipped, with a printed
//     reason, for a type whose dequantizer is not in the table yet);
//  2. each ISA against the scalar reference;
//  3. batch invariance, bitwise: each activation row gives the same bits for n_x = 1..VEC_DOT_MAX_X in every slot.
// Tolerance of 1 and 2: integer parts are exact, so results differ only in how float terms are rounded and
// summed. A float sum of m terms in any order is within (m - 1) u sum|t| of the exact value (u = 2^-24,
// Higham); each term adds a few roundings of its own. With m the number of blocks (elements for the float
// types) and mass = sum_i |w_i x_i|, we allow |result - exact| <= C (m + 4) u mass per side and twice that
// between two kernels. C = 1, except 4 for types that add a scale part and a min part per block (Q4_1, Q5_1
// and the K-quants): the parts can be larger than the element products they sum to.
// Operands: random weight bytes with sane scales, random activations quantized by the scalar quantizer;
// sizes from 1 to 8192 with ragged block counts; rows at odd addresses with odd strides.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "check.h"
#include "kernels.h"
#include "quant_blocks.h"
#include "vec_dot_data.h"

using namespace flashmtp;

namespace {

constexpr double kUnitRoundoff = 1.0 / (1 << 24);

double tolerance_factor(DType t) {
    switch (t) {
        case DTYPE_Q4_1: case DTYPE_Q5_1: case DTYPE_Q2_K: case DTYPE_Q3_K: case DTYPE_Q4_K: case DTYPE_Q5_K:
        case DTYPE_Q6_K: return 4.0;
        default: return 1.0;
    }
}

struct Rows {
    int64_t n;
    std::vector<uint8_t> w_storage, x_storage;
    const uint8_t *w;  // one weight row at an odd address
    const uint8_t *x;  // [VEC_DOT_MAX_X] activation rows, x_stride bytes apart, at an odd address
    size_t x_stride;
};

Rows make_rows(DType t, int64_t n, std::mt19937_64 &rng) {
    const DTypeTraits &tr = *dtype_traits(t);
    const size_t w_bytes = dtype_row_size(tr, n);
    const size_t x_bytes = dtype_row_size(*dtype_traits(tr.vec_dot_type), n);
    Rows r;
    r.n = n;
    r.x_stride = x_bytes + 3;
    r.w_storage.resize(w_bytes + 1);
    r.x_storage.resize(1 + VEC_DOT_MAX_X * r.x_stride);
    test::random_weight_row(t, n, rng, r.w_storage.data() + 1);
    for (int i = 0; i < VEC_DOT_MAX_X; ++i) {
        test::random_activation_row(t, n, rng, r.x_storage.data() + 1 + i * r.x_stride);
    }
    r.w = r.w_storage.data() + 1;
    r.x = r.x_storage.data() + 1;
    return r;
}

// Block b of an activation row x of n elements, as a one-block row with every element but j zeroed (the
// activation formats are F32, Q8_0X and Q8_K).
void one_hot_block(DType xt, const uint8_t *x, int64_t n, int64_t b, int j, uint8_t *dst) {
    const DTypeTraits &tr = *dtype_traits(xt);
    const uint8_t *xb = x + dtype_row_size(tr, b * tr.block_size);
    if (xt == DTYPE_F32) {
        std::memcpy(dst, xb, tr.type_size);
    } else if (xt == DTYPE_Q8_0X) {
        // A row of one block: 32 codes, the scale, the code sum.
        const auto q = int8_t(x[b * QK8_0X + j]);
        const auto sum = int16_t(q);
        std::memset(dst, 0, QK8_0X);
        dst[j] = uint8_t(q);
        std::memcpy(dst + q8_0x_scales_offset(QK8_0X), x + q8_0x_scales_offset(n) + sizeof(float) * b, sizeof(float));
        std::memcpy(dst + q8_0x_sums_offset(QK8_0X), &sum, sizeof(sum));
    } else {
        block_q8_K blk;
        std::memcpy(&blk, xb, tr.type_size);
        for (int k = 0; k < QK_K; ++k) blk.qs[k] = k == j ? blk.qs[k] : 0;
        for (int g = 0; g < QK_K / 16; ++g) blk.bsums[g] = g == j / 16 ? blk.qs[j] : 0;
        std::memcpy(dst, &blk, tr.type_size);
    }
}

// sum_i |w_i x_i|, each product computed by the reference on a one-hot activation block: the scale of the
// rounding errors of any summation order, without needing the type's dequantizer.
double product_mass(DType t, const Rows &r, int row) {
    const DTypeTraits &tr = *dtype_traits(t);
    const DTypeTraits &xt = *dtype_traits(tr.vec_dot_type);
    const VecDotFn ref = kernels_for(ISA_SCALAR)->vec_dot[t];
    std::vector<uint8_t> one_hot(xt.type_size);
    double mass = 0.0;
    for (int64_t b = 0; b < r.n / tr.block_size; ++b) {
        const uint8_t *wb = r.w + b * tr.type_size;
        for (int j = 0; j < tr.block_size; ++j) {
            one_hot_block(tr.vec_dot_type, r.x + row * r.x_stride, r.n, b, j, one_hot.data());
            float product;
            ref(tr.block_size, wb, one_hot.data(), 0, 1, &product);
            mass += std::fabs(double(product));
        }
    }
    return mass;
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, 4) == 0; }

void check_type(DType t, std::mt19937_64 &rng) {
    const DTypeTraits &tr = *dtype_traits(t);
    const KernelTable &scalar = *kernels_for(ISA_SCALAR);
    const DequantizeRowFn dq_w = scalar.dequantize_row[t], dq_x = scalar.dequantize_row[tr.vec_dot_type];
    if (!dq_w || !dq_x) {
        std::printf("  %s: no dequantizer for %s in the table: oracle check skipped\n", tr.name,
                    dq_w ? dtype_traits(tr.vec_dot_type)->name : tr.name);
    }
    const int64_t sizes[] = {1,   3,   15,  16,  17,   31,   32,   33,   64,  96,
                             100, 224, 256, 288, 768, 1056, 4128, 4352, 8192};
    int cases = 0;
    double worst = 0.0;  // largest |ISA - reference| as a fraction of its bound
    for (const int64_t n : sizes) {
        if (n % tr.block_size != 0) continue;
        for (int rep = 0; rep < 3; ++rep, ++cases) {
            const Rows r = make_rows(t, n, rng);
            float ref[VEC_DOT_MAX_X];
            double mass[VEC_DOT_MAX_X];
            for (int i = 0; i < VEC_DOT_MAX_X; ++i) {
                scalar.vec_dot[t](n, r.w, r.x + i * r.x_stride, r.x_stride, 1, &ref[i]);
                mass[i] = product_mass(t, r, i);
            }
            const double nb = double(n / tr.block_size);
            const double tol = tolerance_factor(t) * (nb + 4) * kUnitRoundoff;

            if (dq_w && dq_x) {
                // Dequantized from aligned copies: only vec_dot promises to read rows at any address.
                std::vector<float> wf(static_cast<size_t>(n)), xf(static_cast<size_t>(n));
                std::vector<uint8_t> aligned(r.w, r.w + dtype_row_size(tr, n));
                dq_w(aligned.data(), wf.data(), n);
                for (int i = 0; i < VEC_DOT_MAX_X; ++i) {
                    const uint8_t *xi = r.x + i * r.x_stride;
                    aligned.assign(xi, xi + dtype_row_size(*dtype_traits(tr.vec_dot_type), n));
                    dq_x(aligned.data(), xf.data(), n);
                    double exact = 0.0;
                    for (int64_t j = 0; j < n; ++j) exact += double(wf[j]) * double(xf[j]);
                    CHECK_MSG(std::fabs(double(ref[i]) - exact) <= tol * mass[i],
                              "%s n=%lld: reference %.9g, float64 %.9g", tr.name, (long long)n, double(ref[i]),
                              exact);
                }
            }

            for (int isa = 0; isa < ISA_COUNT; ++isa) {
                const KernelTable *table = kernels_for(Isa(isa));
                if (!table) continue;
                const VecDotFn dot = table->vec_dot[t];
                CHECK_MSG(dot != nullptr, "%s: no vec_dot in the %s table", tr.name, isa_name(Isa(isa)));
                if (!dot) continue;
                float single[VEC_DOT_MAX_X];
                for (int i = 0; i < VEC_DOT_MAX_X; ++i) {
                    dot(n, r.w, r.x + i * r.x_stride, r.x_stride, 1, &single[i]);
                    const double diff = std::fabs(double(single[i]) - double(ref[i]));
                    if (mass[i] > 0) worst = std::max(worst, diff / (2 * tol * mass[i]));
                    CHECK_MSG(diff <= 2 * tol * mass[i],
                              "%s %s n=%lld: %.9g vs reference %.9g (mass %.6g)", tr.name, isa_name(Isa(isa)),
                              (long long)n, double(single[i]), double(ref[i]), mass[i]);
                }
                // Every rotation of the rows puts each row in every slot; every n_x then takes a prefix.
                std::vector<uint8_t> rotated(r.x_storage.size());
                uint8_t *xr = rotated.data() + 1;
                for (int s = 0; s < VEC_DOT_MAX_X; ++s) {
                    for (int i = 0; i < VEC_DOT_MAX_X; ++i) {
                        std::memcpy(xr + i * r.x_stride, r.x + ((s + i) % VEC_DOT_MAX_X) * r.x_stride, r.x_stride);
                    }
                    for (int n_x = 1; n_x <= VEC_DOT_MAX_X; ++n_x) {
                        float out[VEC_DOT_MAX_X];
                        dot(n, r.w, xr, r.x_stride, n_x, out);
                        for (int i = 0; i < n_x; ++i) {
                            CHECK_MSG(same_bits(out[i], single[(s + i) % VEC_DOT_MAX_X]),
                                      "%s %s n=%lld n_x=%d slot %d: %.9g vs %.9g alone", tr.name,
                                      isa_name(Isa(isa)), (long long)n, n_x, i, double(out[i]),
                                      double(single[(s + i) % VEC_DOT_MAX_X]));
                        }
                    }
                }
            }
        }
    }
    std::printf("  %s: %d cases, largest ISA difference %.3g of its bound\n", tr.name, cases, worst);
}

}  // namespace

int main() {
    std::printf("ISAs:");
    for (int isa = 0; isa < ISA_COUNT; ++isa) {
        if (kernels_for(Isa(isa))) std::printf(" %s", isa_name(Isa(isa)));
    }
    std::printf("\n");
    std::mt19937_64 rng(20261128);
    const KernelTable &scalar = *kernels_for(ISA_SCALAR);
    for (uint32_t t = 0; t < DTYPE_COUNT; ++t) {
        if (scalar.vec_dot[t]) check_type(DType(t), rng);
    }
    return test::exit_code("test_vec_dot");
}
