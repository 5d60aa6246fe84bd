// AVX-512 (F/BW/VL/DQ + VNNI) dot products of the 32-element block types against Q8_0: the code of dot_x86.h
// with int8 products summed by one vpdpbusd.
// The float types keep the AVX2 kernels, filled into this table first (dispatch.cpp).
#include <immintrin.h>

#include "../kernel_fill.h"
#include "dot_x86.h"

namespace flashmtp {

namespace {

struct IntDotVnni {
    static constexpr int accumulators = 4;  // 32 registers: enough for n_x = 4 without spills
    static __m256i dot(__m256i u, __m256i s) { return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s); }
};

}  // namespace

void kernel_table_fill_avx512(KernelTable &table) { fill_block_dots<IntDotVnni>(table); }

}  // namespace flashmtp
