// Batched matrix multiplication of a weight matrix (any tensor type) with a batch of float32 token rows:
//     y[t, r] = dot(w[r], x[t])      w [n_rows, n_cols] (type w.type), x [n_tokens, n_cols], y [n_tokens, n_rows]
// Owns: activation quantization, the split of rows over the thread pool and the loop order around the kernel
// table's vec_dot. Does not own: the arithmetic (kernels/), the threads (core/thread_pool.h).
//
// Batch invariance (DESIGN.md): y[t, :] is bit-identical for any n_tokens, any position of the token in the
// batch and any thread count. Each token row is quantized alone, every y[t, r] comes from exactly one vec_dot
// call in one task, and vec_dot guarantees the same bits whatever its n_x and slot.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/thread_pool.h"
#include "kernels.h"

namespace flashmtp {

// A read-only view of a weight matrix as GGUF stores it: n_rows rows of n_cols elements each.
struct WeightMatrix {
    DType type;
    const void *data;    // [n_rows, row_stride bytes]
    int64_t n_rows;
    int64_t n_cols;      // a multiple of the type's block size
    size_t row_stride;   // bytes from one row to the next, >= dtype_row_size(type, n_cols)
};

// Holds the quantized activations between calls. It grows to the largest batch it has seen and never
// shrinks, so steady-state decoding allocates nothing. One scratch per concurrent caller.
class MatmulScratch {
public:
    // A 64-byte aligned buffer of at least n_bytes; contents are not preserved across calls.
    uint8_t *reserve(size_t n_bytes);

private:
    std::vector<uint8_t> storage_;  // over-allocated by the alignment so an aligned start always fits
};

// y [n_tokens, w.n_rows] = x [n_tokens, w.n_cols] times w transposed, both float32 and contiguous.
// Kernels come from `table` (kernels() unless a test or benchmark picks an ISA).
// Throws std::invalid_argument on a type without a dot kernel or activation quantizer in `table`, a column
// count that is not a multiple of the block size, a row stride shorter than a row, or negative sizes.
void matmul(const WeightMatrix &w, const float *x, int64_t n_tokens, float *y, ThreadPool &pool,
            MatmulScratch &scratch, const KernelTable &table = kernels());

// One product of matmul_shared_input: y [n_tokens, w->n_rows] = x times w transposed.
struct MatmulOutput {
    const WeightMatrix *w;
    float *y;
};
constexpr int kMaxSharedOutputs = 16;  // and the most products of matmul_grouped (MoE decode: 12 gate/up)

// matmul of one input with several matrices of equal column count (q, k and v; ffn gate and up), bit-identical
// to separate matmul calls: the input is quantized once per activation format and the rows of all matrices
// are shared out to the threads as one job, so a single-token step hands work to the pool once, not once per
// matrix. Throws as matmul does, and on n_outputs outside [1, kMaxSharedOutputs] or unequal column counts.
void matmul_shared_input(const MatmulOutput *outputs, int n_outputs, const float *x, int64_t n_tokens,
                         ThreadPool &pool, MatmulScratch &scratch, const KernelTable &table = kernels());

// One product of matmul_grouped: y [n_tokens, w->n_rows] = x [n_tokens, w->n_cols] times w transposed.
struct MatmulProblem {
    const WeightMatrix *w;
    const float *x;
    int64_t n_tokens;
    float *y;
};

// Several independent products in one job, bit-identical to separate matmul calls: products that read the
// same x (same pointer, token and column counts) and activation format share its quantization, and the rows
// of all matrices are shared out to the threads together (a decode step's MoE experts: 12 gate/up matrices
// in one hand-off, then 6 down projections of different inputs in another). Throws as matmul does, and on
// n_problems outside [1, kMaxSharedOutputs].
void matmul_grouped(const MatmulProblem *problems, int n_problems, ThreadPool &pool, MatmulScratch &scratch,
                    const KernelTable &table = kernels());

// y [w.n_rows] = w x [w.n_cols]: matmul of a single token.
void matvec(const WeightMatrix &w, const float *x, float *y, ThreadPool &pool, MatmulScratch &scratch,
            const KernelTable &table = kernels());

}  // namespace flashmtp
