// Random operands for the vec_dot test and benchmark: weight rows of any type with sane scale fields, and
// activation rows quantized to the weight type's vec_dot_type by the scalar table's quantizer.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "kernels.h"
#include "quant_blocks.h"

namespace test {

// Byte offsets of the fp16 scale fields in one block of a weight type; random bytes elsewhere are valid quants.
inline std::vector<size_t> fp16_scale_offsets(flashmtp::DType t) {
    using namespace flashmtp;
    switch (t) {
        case DTYPE_Q4_0: return {offsetof(block_q4_0, d)};
        case DTYPE_Q4_1: return {offsetof(block_q4_1, d), offsetof(block_q4_1, m)};
        case DTYPE_Q5_0: return {offsetof(block_q5_0, d)};
        case DTYPE_Q5_1: return {offsetof(block_q5_1, d), offsetof(block_q5_1, m)};
        case DTYPE_Q8_0: return {offsetof(block_q8_0, d)};
        case DTYPE_Q2_K: return {offsetof(block_q2_K, d), offsetof(block_q2_K, dmin)};
        case DTYPE_Q3_K: return {offsetof(block_q3_K, d)};
        case DTYPE_Q4_K: return {offsetof(block_q4_K, d), offsetof(block_q4_K, dmin)};
        case DTYPE_Q5_K: return {offsetof(block_q5_K, d), offsetof(block_q5_K, dmin)};
        case DTYPE_Q6_K: return {offsetof(block_q6_K, d)};
        default: return {};
    }
}

// One weight row of n elements of type t: floats uniform in [-1, 1]; blocks of random bytes whose fp16 scales
// are +-[2^-10, 2^-4) (so no field is inf or nan and products stay far from overflow) and whose MXFP4 exponents
// lie in [118, 136] (block scales 2^-10 .. 2^8).
inline void random_weight_row(flashmtp::DType t, int64_t n, std::mt19937_64 &rng, uint8_t *dst) {
    using namespace flashmtp;
    const DTypeTraits &tr = *dtype_traits(t);
    std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
    if (!tr.is_quantized) {
        for (int64_t i = 0; i < n; ++i) {
            const float v = unit(rng);
            if (t == DTYPE_F32) std::memcpy(dst + 4 * i, &v, 4);
            const uint16_t h = t == DTYPE_F16 ? fp32_to_fp16(v) : fp32_to_bf16(v);
            if (t != DTYPE_F32) std::memcpy(dst + 2 * i, &h, 2);
        }
        return;
    }
    const size_t bytes = dtype_row_size(tr, n);
    for (size_t i = 0; i < bytes; ++i) dst[i] = uint8_t(rng());
    std::uniform_real_distribution<float> log2_scale(-10.0f, -4.0f);
    for (int64_t b = 0; b < n / tr.block_size; ++b) {
        uint8_t *block = dst + b * tr.type_size;
        if (t == DTYPE_MXFP4) block[0] = uint8_t(118 + rng() % 19);
        for (size_t off : fp16_scale_offsets(t)) {
            const float s = std::exp2(log2_scale(rng)) * (rng() & 1 ? 1.0f : -1.0f);
            const uint16_t h = fp32_to_fp16(s);
            std::memcpy(block + off, &h, 2);
        }
    }
}

// One activation row: n floats uniform in [-1, 1] in the weight type's vec_dot_type.
inline void random_activation_row(flashmtp::DType weight_type, int64_t n, std::mt19937_64 &rng, uint8_t *dst) {
    using namespace flashmtp;
    std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
    std::vector<float> v(static_cast<size_t>(n));
    for (float &f : v) f = unit(rng);
    const DType xt = dtype_traits(weight_type)->vec_dot_type;
    // Quantized into an aligned buffer first: dst may sit at an odd address, which only vec_dot must accept.
    std::vector<uint8_t> row(dtype_row_size(*dtype_traits(xt), n));
    kernels_for(ISA_SCALAR)->quantize_row[xt](v.data(), row.data(), n);
    std::memcpy(dst, row.data(), row.size());
}

}  // namespace test
