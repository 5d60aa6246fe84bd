// The per-type traits table (block sizes as llama.cpp defines them) and ISA names.
#include "kernels.h"
#include "quant_blocks.h"

namespace flashmtp {

namespace {

struct TraitsTable {
    DTypeTraits entries[DTYPE_COUNT] = {};
    TraitsTable() {
        auto set = [&](DType t, const char *name, int64_t block, size_t size, bool quantized, DType dot) {
            entries[t] = DTypeTraits{name, block, size, quantized, dot, t >= DTYPE_INTERNAL_FIRST};
        };
        set(DTYPE_F32, "f32", 1, 4, false, DTYPE_F32);
        set(DTYPE_F16, "f16", 1, 2, false, DTYPE_F32);
        set(DTYPE_BF16, "bf16", 1, 2, false, DTYPE_F32);
        set(DTYPE_Q4_0, "q4_0", QK4_0, sizeof(block_q4_0), true, DTYPE_Q8_0X);
        set(DTYPE_Q4_1, "q4_1", QK4_1, sizeof(block_q4_1), true, DTYPE_Q8_0X);
        set(DTYPE_Q5_0, "q5_0", QK5_0, sizeof(block_q5_0), true, DTYPE_Q8_0X);
        set(DTYPE_Q5_1, "q5_1", QK5_1, sizeof(block_q5_1), true, DTYPE_Q8_0X);
        set(DTYPE_Q8_0, "q8_0", QK8_0, sizeof(block_q8_0), true, DTYPE_Q8_0X);
        set(DTYPE_Q8_1, "q8_1", 32, 36, true, DTYPE_Q8_1);
        set(DTYPE_MXFP4, "mxfp4", QK_MXFP4, sizeof(block_mxfp4), true, DTYPE_Q8_0X);
        set(DTYPE_Q2_K, "q2_K", QK_K, sizeof(block_q2_K), true, DTYPE_Q8_K);
        set(DTYPE_Q3_K, "q3_K", QK_K, sizeof(block_q3_K), true, DTYPE_Q8_K);
        set(DTYPE_Q4_K, "q4_K", QK_K, sizeof(block_q4_K), true, DTYPE_Q8_K);
        set(DTYPE_Q5_K, "q5_K", QK_K, sizeof(block_q5_K), true, DTYPE_Q8_K);
        set(DTYPE_Q6_K, "q6_K", QK_K, sizeof(block_q6_K), true, DTYPE_Q8_K);
        set(DTYPE_Q8_K, "q8_K", QK_K, sizeof(block_q8_K), true, DTYPE_Q8_K);
        set(DTYPE_I8, "i8", 1, 1, false, DTYPE_I8);
        set(DTYPE_I16, "i16", 1, 2, false, DTYPE_I16);
        set(DTYPE_I32, "i32", 1, 4, false, DTYPE_I32);
        set(DTYPE_I64, "i64", 1, 8, false, DTYPE_I64);
        set(DTYPE_F64, "f64", 1, 8, false, DTYPE_F64);
        set(DTYPE_Q8_0X, "q8_0x", QK8_0X, kQ8_0XBlockBytes, true, DTYPE_Q8_0X);
    }
};

const TraitsTable kTraits;

}  // namespace

const DTypeTraits *dtype_traits(uint32_t type) {
    if (type >= DTYPE_COUNT || kTraits.entries[type].name == nullptr) return nullptr;
    return &kTraits.entries[type];
}

const char *isa_name(Isa isa) {
    switch (isa) {
        case ISA_SCALAR: return "scalar";
        case ISA_AVX2: return "avx2";
        case ISA_AVX512: return "avx512";
        default: return "unknown";
    }
}

}  // namespace flashmtp
