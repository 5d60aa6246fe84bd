// The kernel contract: tensor types, their block traits, and the row kernels every ISA variant provides.
// Owns: type ids (ggml's numbering, as stored in GGUF), the per-type traits table, kernel signatures and the
// dispatch table chosen once at start-up. Does not own: threads, allocation, models (see csrc/layers).
#pragma once

#include <cstddef>
#include <cstdint>

namespace flashmtp {

// Tensor element types, numbered as ggml numbers them (these ids are stored in GGUF files), then our internal
// activation formats from DTYPE_INTERNAL_FIRST on, which files can never name (DTypeTraits::is_internal).
enum DType : uint32_t {
    DTYPE_F32 = 0,
    DTYPE_F16 = 1,
    DTYPE_Q4_0 = 2,
    DTYPE_Q4_1 = 3,
    DTYPE_Q5_0 = 6,
    DTYPE_Q5_1 = 7,
    DTYPE_Q8_0 = 8,
    DTYPE_Q8_1 = 9,
    DTYPE_Q2_K = 10,
    DTYPE_Q3_K = 11,
    DTYPE_Q4_K = 12,
    DTYPE_Q5_K = 13,
    DTYPE_Q6_K = 14,
    DTYPE_Q8_K = 15,
    DTYPE_I8 = 24,
    DTYPE_I16 = 25,
    DTYPE_I32 = 26,
    DTYPE_I64 = 27,
    DTYPE_F64 = 28,
    DTYPE_BF16 = 30,
    DTYPE_MXFP4 = 39,
    DTYPE_INTERNAL_FIRST = 64,  // far above ggml's ids, so that new ggml types never collide with ours
    // Activations of the 32-element weight types. A row of n elements (n a multiple of 32, nb = n / 32 blocks)
    // is not a sequence of blocks but three arrays, so that each block's 32 quants are one aligned 32-byte
    // load when the row starts 64-byte aligned (matmul aligns its rows; Q8_0's 34-byte blocks split cache
    // lines), scales load 8 at a time without conversion, and kernels get each block's quant sum for free:
    //     int8_t qs[n] | float d[nb] | int16_t sum[nb]           (sum[b] = sum of qs[32b .. 32b + 31])
    // Quants and scales are Q8_0's exactly: d is Q8_0's fp16 scale, widened to float.
    DTYPE_Q8_0X = 64,
    DTYPE_COUNT = 65,  // ids are < DTYPE_COUNT; gaps are types we do not read
};

struct DTypeTraits {
    const char *name;       // ggml's name: "q4_K", "f32", ...
    int64_t block_size;     // elements per block (1 for plain types)
    size_t type_size;       // bytes per block
    bool is_quantized;
    DType vec_dot_type;     // activation format a weight row of this type is dotted against
    bool is_internal;       // our own activation format: never valid in a file
};

// nullptr for ids we do not know (unknown types are a load-time error, never a crash).
const DTypeTraits *dtype_traits(uint32_t type);

// Bytes of a row of n elements; n must be a multiple of the block size. (Q8_0X rows are not block sequences,
// but their size is still 38 bytes per 32 elements.)
inline size_t dtype_row_size(const DTypeTraits &t, int64_t n) { return size_t(n / t.block_size) * t.type_size; }

// ---- row kernels -------------------------------------------------------------------------------------------
// All kernels are pure: pointers, sizes, strides; no allocation, threads, logging or global state.
// n is the number of elements in the row and is a multiple of the type's block size. Quantized rows start at
// addresses aligned for their block's fields (2 bytes; 4 for Q8_K), which GGUF's alignment and matmul's
// scratch guarantee; dot kernels also accept weight rows at any address.

// dst[0..n) = the values that the blocks at src encode.
using DequantizeRowFn = void (*)(const void *src, float *dst, int64_t n);
// dst = blocks encoding src[0..n).
using QuantizeRowFn = void (*)(const float *src, void *dst, int64_t n);

// Dot products of one weight row w (n elements, its own type) with n_x activation rows, each already in the
// weight type's vec_dot_type, the i-th starting x_stride bytes after the previous one (rows may sit at any
// address; they are fastest 64-byte aligned):
//     out[i] = dot(w, x + i * x_stride)          for i < n_x, 1 <= n_x <= VEC_DOT_MAX_X.
// Contract (batch invariance): out[i] is bit-identical whatever n_x is and whichever slot i the row sits in.
// A variant may share work across the n_x rows (unpacking w once) but performs, for every row, the same
// floating-point operations in the same order as it does for n_x = 1.
constexpr int VEC_DOT_MAX_X = 8;
using VecDotFn = void (*)(int64_t n, const void *w, const void *x, size_t x_stride, int n_x, float *out);

// vec_dot over consecutive weight rows in one call:
//     y[i * y_stride + r] = dot(w + r * w_stride, x + i * x_stride)   for r < n_rows, i < n_x <= VEC_DOT_MAX_X,
// each exactly vec_dot's result (the same bits: a token decoded alone matches it decoded in a batch). One call
// per chunk of rows instead of one per row: the row kernel is inlined into the loop for each n_x, its results
// never leave registers through memory, nothing is spilled around a call. On short rows (256 columns) the call
// per row cost as much as the row itself (a 4096 x 256 Q4_K product of 2 tokens took 1.98x one token's time).
using DotRowsFn = void (*)(int64_t n, const void *w, size_t w_stride, int64_t n_rows, const void *x,
                           size_t x_stride, int n_x, float *y, size_t y_stride);

// Clamped SwiGLU in place: gate[i] = silu(min(gate[i], limit)) * clamp(up[i], -limit, limit), limit = +inf for
// the plain one (DeepSeek-V4 clamps at 10). NaN propagates. Every ISA gives the same bits (kernels/ref/act_ref.cpp
// is the specification); about 2 ulp from the exact value.
using SwigluFn = void (*)(int64_t n, float *gate, const float *up, float limit);
// out[i] = exp(x[i] - shift) (softmax numerators; out may be x). The same exp and the same bits on every ISA.
using ExpRowFn = void (*)(int64_t n, const float *x, float shift, float *out);

enum Isa : int {
    ISA_SCALAR = 0,  // kernels/ref: the specification
    ISA_AVX2 = 1,    // AVX2 + FMA + F16C
    ISA_AVX512 = 2,  // AVX-512 F/BW/VL/DQ + VNNI
    ISA_COUNT = 3,
};
const char *isa_name(Isa isa);

struct KernelTable {
    Isa isa;
    VecDotFn vec_dot[DTYPE_COUNT];                // by weight type; nullptr if not a weight type
    DotRowsFn dot_rows[DTYPE_COUNT];              // with every vec_dot, the same kernel over rows (set_vec_dot)
    QuantizeRowFn quantize_row[DTYPE_COUNT];      // activation formats at least (Q8_0X, Q8_K, F32 copy)
    DequantizeRowFn dequantize_row[DTYPE_COUNT];  // every readable type
    SwigluFn swiglu;
    ExpRowFn exp_row;
};

// The best ISA this CPU supports, unless FLASHMTP_ISA=scalar|avx2|avx512 asks for a lower one (debugging).
// Chosen once, on first use.
const KernelTable &kernels();
// A specific variant, for tests and benchmarks; nullptr if this build or this CPU lacks it.
const KernelTable *kernels_for(Isa isa);
bool cpu_supports(Isa isa);

// ---- scalar references (kernels/ref) -----------------------------------------------------------------------
void dequantize_row_f32(const void *src, float *dst, int64_t n);
void dequantize_row_f16(const void *src, float *dst, int64_t n);
void dequantize_row_bf16(const void *src, float *dst, int64_t n);
void dequantize_row_q4_0(const void *src, float *dst, int64_t n);
void dequantize_row_q4_1(const void *src, float *dst, int64_t n);
void dequantize_row_q5_0(const void *src, float *dst, int64_t n);
void dequantize_row_q5_1(const void *src, float *dst, int64_t n);
void dequantize_row_q8_0(const void *src, float *dst, int64_t n);
void dequantize_row_mxfp4(const void *src, float *dst, int64_t n);
void dequantize_row_q2_K(const void *src, float *dst, int64_t n);
void dequantize_row_q3_K(const void *src, float *dst, int64_t n);
void dequantize_row_q4_K(const void *src, float *dst, int64_t n);
void dequantize_row_q5_K(const void *src, float *dst, int64_t n);
void dequantize_row_q6_K(const void *src, float *dst, int64_t n);
void dequantize_row_q8_K(const void *src, float *dst, int64_t n);
void dequantize_row_q8_0x(const void *src, float *dst, int64_t n);

void quantize_row_f32(const float *src, void *dst, int64_t n);
void quantize_row_f16(const float *src, void *dst, int64_t n);
void quantize_row_bf16(const float *src, void *dst, int64_t n);
void quantize_row_q4_0(const float *src, void *dst, int64_t n);
void quantize_row_q4_1(const float *src, void *dst, int64_t n);
void quantize_row_q5_0(const float *src, void *dst, int64_t n);
void quantize_row_q5_1(const float *src, void *dst, int64_t n);
void quantize_row_q8_0(const float *src, void *dst, int64_t n);
void quantize_row_mxfp4(const float *src, void *dst, int64_t n);
void quantize_row_q2_K(const float *src, void *dst, int64_t n);
void quantize_row_q3_K(const float *src, void *dst, int64_t n);
void quantize_row_q4_K(const float *src, void *dst, int64_t n);
void quantize_row_q5_K(const float *src, void *dst, int64_t n);
void quantize_row_q6_K(const float *src, void *dst, int64_t n);
void quantize_row_q8_K(const float *src, void *dst, int64_t n);
void quantize_row_q8_0x(const float *src, void *dst, int64_t n);

float exp_ref(float x);  // e^x, the approximation every ISA's activation kernels use (act_ref.cpp)
void swiglu_ref(int64_t n, float *gate, const float *up, float limit);
void exp_row_ref(int64_t n, const float *x, float shift, float *out);

}  // namespace flashmtp
