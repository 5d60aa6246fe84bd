// Type traits match ggml's block sizes (spec/gguf.md table); fp16/bf16 conversions round to nearest even
// and round-trip every half value exactly (oracle: exhaustive over all 65536 bit patterns).
#include <cmath>
#include <cstring>

#include "check.h"
#include "kernels.h"
#include "quant_blocks.h"

using namespace flashmtp;

int main() {
    struct Expect { DType t; int64_t block; size_t size; };
    const Expect expect[] = {
        {DTYPE_F32, 1, 4}, {DTYPE_F16, 1, 2}, {DTYPE_BF16, 1, 2}, {DTYPE_Q4_0, 32, 18}, {DTYPE_Q4_1, 32, 20},
        {DTYPE_Q5_0, 32, 22}, {DTYPE_Q5_1, 32, 24}, {DTYPE_Q8_0, 32, 34}, {DTYPE_Q2_K, 256, 84},
        {DTYPE_Q3_K, 256, 110}, {DTYPE_Q4_K, 256, 144}, {DTYPE_Q5_K, 256, 176}, {DTYPE_Q6_K, 256, 210},
        {DTYPE_Q8_K, 256, 292}, {DTYPE_MXFP4, 32, 17}, {DTYPE_I32, 1, 4}, {DTYPE_Q8_0X, 32, 38},
    };
    for (const Expect &e : expect) {
        const DTypeTraits *t = dtype_traits(e.t);
        CHECK(t != nullptr);
        if (t) CHECK_MSG(t->block_size == e.block && t->type_size == e.size, "type %u", unsigned(e.t));
        if (t) CHECK_MSG(t->is_internal == (e.t == DTYPE_Q8_0X), "type %u", unsigned(e.t));
    }
    CHECK(dtype_traits(4) == nullptr);    // removed Q4_2
    CHECK(dtype_traits(16) == nullptr);   // IQ types: not read
    CHECK(dtype_traits(1000) == nullptr);

    // Every half round-trips (nan stays nan).
    for (uint32_t h = 0; h < 65536; ++h) {
        const float f = fp16_to_fp32(uint16_t(h));
        if (std::isnan(f)) { CHECK(std::isnan(fp16_to_fp32(fp32_to_fp16(f)))); continue; }
        CHECK_MSG(fp32_to_fp16(f) == h, "half 0x%04x", h);
    }
    // Ties go to even; overflow goes to inf; tiny values to zero or the smallest subnormal.
    CHECK(fp32_to_fp16(1.0f + 1.0f / 2048) == 0x3c00);              // tie between 1 and 1+2^-10 -> 1
    CHECK(fp32_to_fp16(1.0f + 3.0f / 2048) == 0x3c02);              // tie -> even mantissa 2
    CHECK(fp32_to_fp16(65520.0f) == 0x7c00);
    CHECK(fp32_to_fp16(65519.0f) == 0x7bff);
    CHECK(fp32_to_fp16(std::ldexp(1.0f, -25)) == 0x0000);          // exactly half the smallest: tie -> 0
    CHECK(fp32_to_fp16(std::ldexp(1.5f, -25)) == 0x0001);
    CHECK(fp32_to_fp16(std::ldexp(3.0f, -25)) == 0x0002);          // 1.5 subnormal ulps: tie -> 2
    CHECK(fp32_to_bf16(1.0f + 1.0f / 256) == 0x3f80);               // tie -> even
    CHECK(bf16_to_fp32(fp32_to_bf16(3.0f)) == 3.0f);
    return test::exit_code("test_dtype");
}
