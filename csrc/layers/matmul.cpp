// Loop order. GEMV and small batches are bound by reading the weights, so each weight row must come from
// memory once per call however many tokens there are: the innermost loop passes the tokens, VEC_DOT_MAX_X at
// a time, over one row while it sits in L1. Threads own contiguous chunks of rows (about kChunkBytes of
// weights), so they stream disjoint regions that the hardware prefetchers follow.
// Large batches (prefill) would push the quantized activations out of L2 (64 tokens x 4096 columns of Q8_0
// is 280 KB), so tokens go in blocks of kTokenBlock: a chunk's rows, still in L1/L2, serve every block.
// The loop order never changes which kernel call computes an output, so it has no effect on the result bits.
#include "layers/matmul.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace flashmtp {

namespace {

constexpr size_t kAlign = 64;             // cache line: quantized activation rows start on one
constexpr size_t kChunkBytes = 16 << 10;  // weights per task: half of L1, leaving room for activations
constexpr int64_t kTokenBlock = 64;       // tokens per pass over a chunk (see above)

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

struct MatmulPlan {
    VecDotFn dot;
    QuantizeRowFn quantize;     // f32 row -> the weight type's vec_dot_type
    size_t activation_stride;   // bytes per quantized token row, rounded up to kAlign
};

MatmulPlan plan_or_throw(const WeightMatrix &w, int64_t n_tokens, const KernelTable &table) {
    const DTypeTraits *traits = dtype_traits(w.type);
    if (!traits) throw std::invalid_argument("matmul: unknown weight type id " + std::to_string(w.type));
    const std::string name = traits->name;
    const VecDotFn dot = table.vec_dot[w.type];
    if (!dot) {
        throw std::invalid_argument("matmul: no " + std::string(isa_name(table.isa)) +
                                    " dot kernel for weight type " + name);
    }
    const QuantizeRowFn quantize = table.quantize_row[traits->vec_dot_type];
    const DTypeTraits *activation = dtype_traits(traits->vec_dot_type);
    if (!quantize || !activation) {
        throw std::invalid_argument("matmul: no activation quantizer for weight type " + name);
    }
    if (w.n_cols <= 0 || w.n_cols % traits->block_size != 0) {
        throw std::invalid_argument("matmul: " + name + " rows of " + std::to_string(w.n_cols) +
                                    " columns: need a positive multiple of the block size " +
                                    std::to_string(traits->block_size));
    }
    if (w.n_rows < 0 || n_tokens < 0) {
        throw std::invalid_argument("matmul: negative size (n_rows " + std::to_string(w.n_rows) +
                                    ", n_tokens " + std::to_string(n_tokens) + ")");
    }
    const size_t row_bytes = dtype_row_size(*traits, w.n_cols);
    if (w.row_stride < row_bytes) {
        throw std::invalid_argument("matmul: row stride " + std::to_string(w.row_stride) +
                                    " bytes is shorter than a " + name + " row of " + std::to_string(w.n_cols) +
                                    " columns (" + std::to_string(row_bytes) + " bytes)");
    }
    return {dot, quantize, round_up(dtype_row_size(*activation, w.n_cols), kAlign)};
}

}  // namespace

uint8_t *MatmulScratch::reserve(size_t n_bytes) {
    if (storage_.size() < n_bytes + kAlign) storage_.resize(n_bytes + kAlign);
    const auto address = reinterpret_cast<uintptr_t>(storage_.data());
    return storage_.data() + (round_up(address, kAlign) - address);
}

void matmul(const WeightMatrix &w, const float *x, int64_t n_tokens, float *y, ThreadPool &pool,
            MatmulScratch &scratch, const KernelTable &table) {
    const MatmulPlan plan = plan_or_throw(w, n_tokens, table);
    if (w.n_rows == 0 || n_tokens == 0) return;
    if (!w.data || !x || !y) throw std::invalid_argument("matmul: null data pointer");

    const int64_t n_rows = w.n_rows, n_cols = w.n_cols;
    const size_t x_stride = plan.activation_stride;
    uint8_t *xq = scratch.reserve(size_t(n_tokens) * x_stride);  // [n_tokens, x_stride bytes]
    pool.parallel_for(n_tokens, [&](int64_t t, int) {
        plan.quantize(x + t * n_cols, xq + size_t(t) * x_stride, n_cols);
    });

    const int64_t rows_per_chunk = std::max<int64_t>(1, int64_t(kChunkBytes / w.row_stride));
    const int64_t n_chunks = (n_rows + rows_per_chunk - 1) / rows_per_chunk;
    const auto *w_bytes = static_cast<const uint8_t *>(w.data);
    pool.parallel_for(n_chunks, [&](int64_t chunk, int) {
        const int64_t r_begin = chunk * rows_per_chunk;
        const int64_t r_end = std::min(n_rows, r_begin + rows_per_chunk);
        for (int64_t t_block = 0; t_block < n_tokens; t_block += kTokenBlock) {
            const int64_t t_block_end = std::min(n_tokens, t_block + kTokenBlock);
            for (int64_t r = r_begin; r < r_end; ++r) {
                const uint8_t *w_row = w_bytes + size_t(r) * w.row_stride;
                for (int64_t t = t_block; t < t_block_end; t += VEC_DOT_MAX_X) {
                    const int n_x = int(std::min<int64_t>(VEC_DOT_MAX_X, t_block_end - t));
                    float out[VEC_DOT_MAX_X];
                    plan.dot(n_cols, w_row, xq + size_t(t) * x_stride, x_stride, n_x, out);
                    for (int i = 0; i < n_x; ++i) y[(t + i) * n_rows + r] = out[i];
                }
            }
        }
    });
}

void matvec(const WeightMatrix &w, const float *x, float *y, ThreadPool &pool, MatmulScratch &scratch,
            const KernelTable &table) {
    matmul(w, x, 1, y, pool, scratch, table);
}

}  // namespace flashmtp
