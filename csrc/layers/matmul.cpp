// Loop order. GEMV and small batches are bound by reading the weights, so each weight row must come from
// memory once per call however many tokens there are: the innermost loop passes the tokens, VEC_DOT_MAX_X at
// a time, over one row while it sits in L1. Threads claim contiguous chunks of rows from a shared counter.
// Up to kTokenBlock tokens (decode, draft verification) the weights are streamed once, and chunks are large:
// about 1/(4 n_threads) of the job, between 16 KB and 256 KB. Small chunks cost bandwidth there: with two
// threads claiming alternate 16 KB chunks of a 145 MB matrix, two threads read it slower than one (14.5 vs
// 16.5 GB/s; 256 KB chunks: 28.6 GB/s, measured on Zen 4). Four chunks per thread keep the load balanced
// when a thread is descheduled on a shared machine.
// Larger batches (prefill) would push the quantized activations out of L2 (64 tokens x 4096 columns of Q8_0
// is 280 KB), so tokens go in blocks of kTokenBlock, and chunks are kChunkBytes small: a chunk's rows, still
// in L1/L2, serve every block.
// The loop order never changes which kernel call computes an output, so it has no effect on the result bits.
#include "layers/matmul.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace flashmtp {

namespace {

constexpr size_t kAlign = 64;             // cache line: quantized activation rows start on one
constexpr size_t kChunkBytes = 16 << 10;  // weights per task: half of L1, leaving room for activations
constexpr size_t kStreamChunkBytes = 256 << 10;  // the largest chunk when weights are streamed once (above)
constexpr int64_t kChunksPerThread = 4;
constexpr int64_t kTokenBlock = 64;       // tokens per pass over a chunk (see above)
// Activations quantized on the calling thread up to this many elements (a decode step's few rows: about a
// microsecond, less than a hand-off to the threads); more are shared out a row per task.
constexpr int64_t kInlineQuantizeElements = 16384;

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

struct MatmulPlan {
    VecDotFn dot;
    DotRowsFn dot_rows;         // dot over a range of rows, for up to VEC_DOT_MAX_X tokens
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
    return {dot, table.dot_rows[w.type], quantize, round_up(dtype_row_size(*activation, w.n_cols), kAlign)};
}

}  // namespace

uint8_t *MatmulScratch::reserve(size_t n_bytes) {
    if (storage_.size() < n_bytes + kAlign) storage_.resize(n_bytes + kAlign);
    const auto address = reinterpret_cast<uintptr_t>(storage_.data());
    return storage_.data() + (round_up(address, kAlign) - address);
}

void matmul(const WeightMatrix &w, const float *x, int64_t n_tokens, float *y, ThreadPool &pool,
            MatmulScratch &scratch, const KernelTable &table) {
    const MatmulProblem problem{&w, x, n_tokens, y};
    matmul_grouped(&problem, 1, pool, scratch, table);
}

void matmul_shared_input(const MatmulOutput *outputs, int n_outputs, const float *x, int64_t n_tokens,
                         ThreadPool &pool, MatmulScratch &scratch, const KernelTable &table) {
    if (n_outputs < 1 || n_outputs > kMaxSharedOutputs) {
        throw std::invalid_argument("matmul: " + std::to_string(n_outputs) + " outputs, expected 1 to " +
                                    std::to_string(kMaxSharedOutputs));
    }
    MatmulProblem problems[kMaxSharedOutputs];
    for (int i = 0; i < n_outputs; ++i) {
        if (outputs[i].w->n_cols != outputs[0].w->n_cols) {
            throw std::invalid_argument("matmul: matrices sharing an input need equal column counts, got " +
                                        std::to_string(outputs[0].w->n_cols) + " and " +
                                        std::to_string(outputs[i].w->n_cols));
        }
        problems[i] = {outputs[i].w, x, n_tokens, outputs[i].y};
    }
    matmul_grouped(problems, n_outputs, pool, scratch, table);
}

void matmul_grouped(const MatmulProblem *problems, int n_problems, ThreadPool &pool, MatmulScratch &scratch,
                    const KernelTable &table) {
    if (n_problems < 1 || n_problems > kMaxSharedOutputs) {
        throw std::invalid_argument("matmul: " + std::to_string(n_problems) + " products, expected 1 to " +
                                    std::to_string(kMaxSharedOutputs));
    }
    struct Part {
        MatmulPlan plan;
        int64_t rows_per_chunk;
        int64_t first_chunk;      // index of this product's first chunk in the shared job
        uint8_t *xq;              // [n_tokens, plan.activation_stride bytes]
    };
    Part parts[kMaxSharedOutputs];
    size_t job_bytes = 0;
    bool null = false;
    for (int i = 0; i < n_problems; ++i) {
        const MatmulProblem &p = problems[i];
        parts[i].plan = plan_or_throw(*p.w, p.n_tokens, table);
        if (p.n_tokens > 0) {
            job_bytes += size_t(p.w->n_rows) * p.w->row_stride;
            null |= !p.x || (p.w->n_rows > 0 && (!p.w->data || !p.y));
        }
    }
    if (job_bytes == 0) return;
    if (null) throw std::invalid_argument("matmul: null data pointer");
    // Chunk sizes (top of file): streamed once when the product's tokens fit one block, else L1-sized.
    const size_t stream_chunk_bytes =
        std::clamp(job_bytes / size_t(kChunksPerThread * pool.n_threads()), kChunkBytes, kStreamChunkBytes);
    int64_t n_chunks = 0;
    for (int i = 0; i < n_problems; ++i) {
        const MatmulProblem &p = problems[i];
        const size_t chunk_bytes = p.n_tokens <= kTokenBlock ? stream_chunk_bytes : kChunkBytes;
        parts[i].rows_per_chunk = std::max<int64_t>(1, int64_t(chunk_bytes / p.w->row_stride));
        parts[i].first_chunk = n_chunks;
        if (p.n_tokens > 0) n_chunks += (p.w->n_rows + parts[i].rows_per_chunk - 1) / parts[i].rows_per_chunk;
    }

    // Each distinct input is quantized once per activation format (q, k and v share one buffer), not once per
    // matrix. Buffers of the distinct (input, format) pairs lie one after the other in the scratch.
    int owner[kMaxSharedOutputs];  // the product whose buffer product i reads
    size_t offset[kMaxSharedOutputs], total_bytes = 0;
    int quantizers[kMaxSharedOutputs], n_quantizers = 0;  // the owners
    int64_t first_task[kMaxSharedOutputs], n_quantize_tasks = 0;  // one task per token row of each owner
    int64_t quantize_elements = 0;
    for (int i = 0; i < n_problems; ++i) {
        const MatmulProblem &p = problems[i];
        owner[i] = i;
        for (int j = 0; j < i && owner[i] == i; ++j) {
            const MatmulProblem &q = problems[j];
            const bool same_input = q.x == p.x && q.n_tokens == p.n_tokens && q.w->n_cols == p.w->n_cols;
            if (owner[j] == j && same_input && parts[j].plan.quantize == parts[i].plan.quantize) owner[i] = j;
        }
        if (owner[i] == i) {
            offset[i] = total_bytes;
            total_bytes += size_t(p.n_tokens) * parts[i].plan.activation_stride;
            first_task[n_quantizers] = n_quantize_tasks;
            quantizers[n_quantizers++] = i;
            n_quantize_tasks += p.n_tokens;
            quantize_elements += p.n_tokens * p.w->n_cols;
        }
    }
    uint8_t *xq_base = scratch.reserve(total_bytes);
    for (int i = 0; i < n_problems; ++i) parts[i].xq = xq_base + offset[owner[i]];
    const auto quantize = [&](int64_t task, int) {
        int q = n_quantizers - 1;
        while (task < first_task[q]) --q;
        const int i = quantizers[q];
        const int64_t t = task - first_task[q], n_cols = problems[i].w->n_cols;
        const size_t x_stride = parts[i].plan.activation_stride;
        parts[i].plan.quantize(problems[i].x + t * n_cols, parts[i].xq + size_t(t) * x_stride, n_cols);
    };
    if (quantize_elements <= kInlineQuantizeElements) {
        for (int64_t task = 0; task < n_quantize_tasks; ++task) quantize(task, 0);
    } else {
        pool.parallel_for(n_quantize_tasks, quantize);
    }

    // One job over the chunks of every matrix: one hand-off to the threads instead of one per matrix.
    pool.parallel_for(n_chunks, [&](int64_t chunk, int) {
        int i = n_problems - 1;
        while (chunk < parts[i].first_chunk) --i;  // products without chunks share the next one's first
        const Part &part = parts[i];
        const MatmulProblem &p = problems[i];
        const WeightMatrix &w = *p.w;
        float *y = p.y;
        const int64_t n_rows = w.n_rows, n_cols = w.n_cols, n_tokens = p.n_tokens;
        const size_t x_stride = part.plan.activation_stride;
        const auto *w_bytes = static_cast<const uint8_t *>(w.data);
        const int64_t r_begin = (chunk - part.first_chunk) * part.rows_per_chunk;
        const int64_t r_end = std::min(n_rows, r_begin + part.rows_per_chunk);
        if (n_tokens <= VEC_DOT_MAX_X) {  // decode, verify: the same bits as the loop below (kernels.h)
            part.plan.dot_rows(n_cols, w_bytes + size_t(r_begin) * w.row_stride, w.row_stride, r_end - r_begin,
                               part.xq, x_stride, int(n_tokens), y + r_begin, size_t(n_rows));
            return;
        }
        for (int64_t t_block = 0; t_block < n_tokens; t_block += kTokenBlock) {
            const int64_t t_block_end = std::min(n_tokens, t_block + kTokenBlock);
            for (int64_t r = r_begin; r < r_end; ++r) {
                const uint8_t *w_row = w_bytes + size_t(r) * w.row_stride;
                for (int64_t t = t_block; t < t_block_end; t += VEC_DOT_MAX_X) {
                    const int n_x = int(std::min<int64_t>(VEC_DOT_MAX_X, t_block_end - t));
                    float out[VEC_DOT_MAX_X];
                    part.plan.dot(n_cols, w_row, part.xq + size_t(t) * x_stride, x_stride, n_x, out);
                    for (int k = 0; k < n_x; ++k) y[(t + k) * n_rows + r] = out[k];
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
