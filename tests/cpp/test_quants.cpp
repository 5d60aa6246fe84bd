// Quantizer round trips without Python. Oracle: llama.cpp's test-quantize-fns thresholds on its synthetic data
// x_i = 0.1 + 2 cos(i), i < 4096, with its error measure sqrt(sum (x - y)^2) / n (the true RMSE / 64):
// below 0.002 for Q4_0..Q8_0, MXFP4, Q4_K..Q6_K and Q8_K, 0.004 for Q3_K, 0.0075 for Q2_K (llama.cpp's
// 0.003 FP4 bound is for NVFP4; MXFP4 gets the general 0.002).
// Also: all-zero rows decode to zeros, quantizing is deterministic, and every ISA's quantizer gives the
// scalar reference's bytes (the bit-exact comparison with the gguf package is in tests/python). The Q8_0X
// activation format holds Q8_0's codes and (widened) scales plus exact code sums.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "check.h"
#include "kernels.h"
#include "quant_blocks.h"

using namespace flashmtp;

namespace {

constexpr int64_t kN = 32 * 128;

std::vector<float> synthetic_data(float offset) {
    std::vector<float> x(kN);
    for (int64_t i = 0; i < kN; ++i) x[size_t(i)] = float(0.1 + 2.0f * std::cos(float(i) + offset));
    return x;
}

std::vector<float> round_trip(const KernelTable &k, DType t, const std::vector<float> &x) {
    const DTypeTraits &traits = *dtype_traits(t);
    std::vector<uint8_t> q(dtype_row_size(traits, int64_t(x.size())));
    std::vector<float> y(x.size());
    k.quantize_row[t](x.data(), q.data(), int64_t(x.size()));
    k.dequantize_row[t](q.data(), y.data(), int64_t(x.size()));
    return y;
}

float llama_cpp_rmse(const std::vector<float> &a, const std::vector<float> &b) {
    double sum = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        const double d = double(a[i]) - double(b[i]);
        sum += d * d;
    }
    return float(std::sqrt(sum) / double(a.size()));
}

}  // namespace

int main() {
    struct Case { DType type; float max_error; };
    const Case cases[] = {
        {DTYPE_Q4_0, 0.002f}, {DTYPE_Q4_1, 0.002f}, {DTYPE_Q5_0, 0.002f}, {DTYPE_Q5_1, 0.002f},
        {DTYPE_Q8_0, 0.002f}, {DTYPE_MXFP4, 0.002f}, {DTYPE_Q2_K, 0.0075f}, {DTYPE_Q3_K, 0.004f},
        {DTYPE_Q4_K, 0.002f}, {DTYPE_Q5_K, 0.002f}, {DTYPE_Q6_K, 0.002f}, {DTYPE_Q8_K, 0.002f},
        {DTYPE_Q8_0X, 0.002f},
    };
    const KernelTable &scalar = *kernels_for(ISA_SCALAR);
    const std::vector<float> x = synthetic_data(0.0f);
    const std::vector<float> zeros(kN, 0.0f);
    for (const Case &c : cases) {
        const char *name = dtype_traits(c.type)->name;
        CHECK_MSG(scalar.quantize_row[c.type] && scalar.dequantize_row[c.type], "%s: missing kernel", name);
        if (!scalar.quantize_row[c.type] || !scalar.dequantize_row[c.type]) continue;

        const float err = llama_cpp_rmse(x, round_trip(scalar, c.type, x));
        std::printf("%-6s error %.6f (threshold %.4f)\n", name, double(err), double(c.max_error));
        CHECK_MSG(err < c.max_error, "%s: error %f >= %f", name, double(err), double(c.max_error));

        for (float v : round_trip(scalar, c.type, zeros)) {
            CHECK_MSG(v == 0.0f, "%s: zero row decodes to %g", name, double(v));
        }

        // Determinism, and every ISA's quantizer writes the scalar reference's bytes.
        const size_t bytes = dtype_row_size(*dtype_traits(c.type), kN);
        std::vector<uint8_t> ref(bytes), again(bytes);
        scalar.quantize_row[c.type](x.data(), ref.data(), kN);
        scalar.quantize_row[c.type](x.data(), again.data(), kN);
        CHECK_MSG(ref == again, "%s: quantizing twice differs", name);
        for (int isa = ISA_AVX2; isa < ISA_COUNT; ++isa) {
            const KernelTable *k = kernels_for(Isa(isa));
            if (!k) continue;
            std::vector<uint8_t> got(bytes);
            k->quantize_row[c.type](x.data(), got.data(), kN);
            CHECK_MSG(got == ref, "%s: %s quantizer differs from scalar", name, isa_name(Isa(isa)));
        }
    }

    // Q8_0X = Q8_0 rearranged: same codes, the fp16 scale as a float, and each block's code sum.
    std::vector<uint8_t> q8_0(dtype_row_size(*dtype_traits(DTYPE_Q8_0), kN));
    std::vector<uint8_t> q8_0x(dtype_row_size(*dtype_traits(DTYPE_Q8_0X), kN));
    scalar.quantize_row[DTYPE_Q8_0](x.data(), q8_0.data(), kN);
    scalar.quantize_row[DTYPE_Q8_0X](x.data(), q8_0x.data(), kN);
    for (int64_t b = 0; b < kN / QK8_0; ++b) {
        block_q8_0 blk;
        std::memcpy(&blk, q8_0.data() + b * sizeof(blk), sizeof(blk));
        float d;
        int16_t sum;
        std::memcpy(&d, q8_0x.data() + q8_0x_scales_offset(kN) + sizeof(float) * b, sizeof(d));
        std::memcpy(&sum, q8_0x.data() + q8_0x_sums_offset(kN) + sizeof(int16_t) * b, sizeof(sum));
        int expect_sum = 0;
        for (int j = 0; j < QK8_0; ++j) expect_sum += blk.qs[j];
        CHECK_MSG(std::memcmp(blk.qs, q8_0x.data() + b * QK8_0X, QK8_0) == 0, "q8_0x block %lld: codes", (long long)b);
        CHECK_MSG(d == fp16_to_fp32(blk.d), "q8_0x block %lld: scale %g", (long long)b, double(d));
        CHECK_MSG(sum == expect_sum, "q8_0x block %lld: sum %d, codes sum to %d", (long long)b, sum, expect_sum);
    }
    return test::exit_code("test_quants");
}
