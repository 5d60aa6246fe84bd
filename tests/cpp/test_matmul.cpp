// matmul / matvec, checked three ways:
//  1. Loop structure, against the test's own F32 kernel (a left-to-right float sum, so outputs are known
//     exactly): every output written, strides and ragged shapes honoured, each weight row passed to vec_dot
//     ceil(n_tokens / VEC_DOT_MAX_X) times for batches up to 64 (read from memory once per batch).
//  2. Every weight type the kernel tables support, every ISA this CPU has: against a float64 oracle on the
//     dequantized weights and dequantized (quantized) activations, |error| <= 1e-4 * sum_j |w_j x_j|. The
//     kernels sum in float32 (relative rounding ~6e-8 per step over at most a few hundred blocks), so 1e-4
//     leaves a wide margin while catching any wrong block, scale or sign.
//  3. Batch invariance, bitwise: a token's outputs are identical for batches of 1..64 tokens (one token
//     up to VEC_DOT_MAX_X take the rows kernel, more vec_dot row by row), at any position, with 1 and 2 threads.
// And matmul_grouped, bitwise against separate matmul calls.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "check.h"
#include "core/thread_pool.h"
#include "kernels.h"
#include "layers/matmul.h"

using namespace flashmtp;

namespace {

std::vector<float> random_floats(size_t n, std::mt19937 &rng) {
    std::normal_distribution<float> dist(0.0f, 1.0f);
    std::vector<float> v(n);
    for (float &f : v) f = dist(rng);
    return v;
}

// ---- 1. loop structure ------------------------------------------------------------------------------------

// Where the probe kernel counts its calls per weight row.
struct ProbeState {
    const uint8_t *w_base = nullptr;
    size_t w_stride = 0;
    std::unique_ptr<std::atomic<int>[]> calls_per_row;
    std::atomic<int> bad_n_x{0};
};
ProbeState g_probe;

void probe_dot_f32(int64_t n, const void *w, const void *x, size_t x_stride, int n_x, float *out) {
    if (n_x < 1 || n_x > VEC_DOT_MAX_X) g_probe.bad_n_x.fetch_add(1);
    const size_t row = size_t(static_cast<const uint8_t *>(w) - g_probe.w_base) / g_probe.w_stride;
    g_probe.calls_per_row[row].fetch_add(1);
    const auto *wf = static_cast<const float *>(w);
    for (int i = 0; i < n_x; ++i) {
        const auto *xf = reinterpret_cast<const float *>(static_cast<const uint8_t *>(x) + size_t(i) * x_stride);
        float sum = 0.0f;
        for (int64_t j = 0; j < n; ++j) sum += wf[j] * xf[j];
        out[i] = sum;
    }
}

// Up to VEC_DOT_MAX_X tokens take the rows entry: the same probe, one call per row.
void probe_dot_rows_f32(int64_t n, const void *w, size_t w_stride, int64_t n_rows, const void *x, size_t x_stride,
                        int n_x, float *y, size_t y_stride) {
    for (int64_t r = 0; r < n_rows; ++r) {
        float out[VEC_DOT_MAX_X];
        probe_dot_f32(n, static_cast<const uint8_t *>(w) + size_t(r) * w_stride, x, x_stride, n_x, out);
        for (int i = 0; i < n_x; ++i) y[size_t(i) * y_stride + size_t(r)] = out[i];
    }
}

void never_called_dot(int64_t, const void *, const void *, size_t, int, float *) {
    CHECK_MSG(false, "a dot kernel ran although matmul should have rejected its arguments");
}

void never_called_dot_rows(int64_t, const void *, size_t, int64_t, const void *, size_t, int, float *, size_t) {
    CHECK_MSG(false, "a rows kernel ran although matmul should have rejected its arguments");
}

KernelTable probe_table() {
    KernelTable table = kernels();
    table.vec_dot[DTYPE_F32] = probe_dot_f32;
    table.dot_rows[DTYPE_F32] = probe_dot_rows_f32;
    table.vec_dot[DTYPE_Q8_0] = never_called_dot;  // for the block-size error path only
    table.dot_rows[DTYPE_Q8_0] = never_called_dot_rows;
    return table;
}

void test_loop_structure() {
    const KernelTable table = probe_table();
    std::mt19937 rng(1);
    ThreadPool pools[2] = {ThreadPool(1), ThreadPool(2)};
    MatmulScratch scratch;
    struct Shape { int64_t n_rows, n_cols, n_tokens; size_t pad; };
    // Rows of 16 KiB or more make one-row chunks; 200 tokens cross the 64-token blocks; pad tests the stride.
    const Shape shapes[] = {{1, 1, 1, 0}, {7, 13, 5, 4}, {300, 64, 64, 0}, {33, 4096, 9, 64}, {5, 40, 200, 12}};
    for (const Shape &s : shapes) {
        const size_t stride = size_t(s.n_cols) * 4 + s.pad;
        std::vector<uint8_t> w_bytes(stride * size_t(s.n_rows));  // [n_rows, stride bytes]
        const std::vector<float> w_values = random_floats(size_t(s.n_rows * s.n_cols), rng);
        for (int64_t r = 0; r < s.n_rows; ++r) {
            std::memcpy(&w_bytes[size_t(r) * stride], &w_values[size_t(r * s.n_cols)], size_t(s.n_cols) * 4);
        }
        const std::vector<float> x = random_floats(size_t(s.n_tokens * s.n_cols), rng);  // [n_tokens, n_cols]
        const WeightMatrix w{DTYPE_F32, w_bytes.data(), s.n_rows, s.n_cols, stride};
        for (ThreadPool &pool : pools) {
            g_probe.w_base = w_bytes.data();
            g_probe.w_stride = stride;
            g_probe.calls_per_row.reset(new std::atomic<int>[size_t(s.n_rows)]());
            std::vector<float> y(size_t(s.n_tokens * s.n_rows), NAN);  // [n_tokens, n_rows]
            matmul(w, x.data(), s.n_tokens, y.data(), pool, scratch, table);
            int mismatches = 0;
            for (int64_t t = 0; t < s.n_tokens; ++t) {
                for (int64_t r = 0; r < s.n_rows; ++r) {
                    float sum = 0.0f;
                    for (int64_t j = 0; j < s.n_cols; ++j) {
                        sum += w_values[size_t(r * s.n_cols + j)] * x[size_t(t * s.n_cols + j)];
                    }
                    mismatches += std::memcmp(&sum, &y[size_t(t * s.n_rows + r)], 4) != 0;
                }
            }
            CHECK_MSG(mismatches == 0, "%lldx%lld, %lld tokens, %d threads: %d outputs differ",
                      (long long)s.n_rows, (long long)s.n_cols, (long long)s.n_tokens, pool.n_threads(),
                      mismatches);
            int want_calls = 0;  // per block of 64 tokens, one call per VEC_DOT_MAX_X of them
            for (int64_t t = 0; t < s.n_tokens; t += 64) {
                want_calls += int((std::min<int64_t>(64, s.n_tokens - t) + VEC_DOT_MAX_X - 1) / VEC_DOT_MAX_X);
            }
            for (int64_t r = 0; r < s.n_rows; ++r) {
                CHECK_MSG(g_probe.calls_per_row[size_t(r)].load() == want_calls, "row %lld: %d dot calls, want %d",
                          (long long)r, g_probe.calls_per_row[size_t(r)].load(), want_calls);
            }
        }
    }
    CHECK(g_probe.bad_n_x.load() == 0);

    // matvec is matmul of one token.
    std::vector<float> w_values = random_floats(6 * 8, rng), x = random_floats(8, rng), y1(6), y2(6);
    const WeightMatrix w{DTYPE_F32, w_values.data(), 6, 8, 8 * 4};
    g_probe.w_base = reinterpret_cast<const uint8_t *>(w_values.data());
    g_probe.w_stride = 8 * 4;
    g_probe.calls_per_row.reset(new std::atomic<int>[6]());
    matvec(w, x.data(), y1.data(), pools[1], scratch, table);
    matmul(w, x.data(), 1, y2.data(), pools[1], scratch, table);
    CHECK(std::memcmp(y1.data(), y2.data(), 6 * 4) == 0);
}

void test_errors() {
    const KernelTable table = probe_table();
    ThreadPool pool(2);
    MatmulScratch scratch;
    std::vector<uint8_t> w_bytes(4096);
    std::vector<float> x(1024), y(1024);
    auto run = [&](DType type, int64_t n_rows, int64_t n_cols, size_t stride, int64_t n_tokens) {
        matmul(WeightMatrix{type, w_bytes.data(), n_rows, n_cols, stride}, x.data(), n_tokens, y.data(), pool,
               scratch, table);
    };
    CHECK_THROWS(std::invalid_argument, run(DType(5), 1, 32, 64, 1), "unknown weight type id 5");
    CHECK_THROWS(std::invalid_argument, run(DTYPE_I32, 1, 4, 16, 1), "dot kernel for weight type i32");
    CHECK_THROWS(std::invalid_argument, run(DTYPE_Q8_0, 1, 33, 64, 1), "multiple of the block size 32");
    CHECK_THROWS(std::invalid_argument, run(DTYPE_Q8_0, 1, 0, 64, 1), "multiple of the block size 32");
    CHECK_THROWS(std::invalid_argument, run(DTYPE_Q8_0, 2, 64, 67, 1), "row stride 67 bytes is shorter");
    CHECK_THROWS(std::invalid_argument, run(DTYPE_F32, 2, 8, 31, 1), "(32 bytes)");
    CHECK_THROWS(std::invalid_argument, run(DTYPE_F32, -1, 8, 32, 1), "negative size");
    CHECK_THROWS(std::invalid_argument, run(DTYPE_F32, 1, 8, 32, -2), "negative size");
    CHECK_THROWS(std::invalid_argument,
                 matmul(WeightMatrix{DTYPE_F32, nullptr, 2, 8, 32}, x.data(), 1, y.data(), pool, scratch, table),
                 "null data pointer");
    // Empty products are valid and touch nothing.
    run(DTYPE_F32, 0, 8, 32, 3);
    run(DTYPE_F32, 3, 8, 32, 0);
}

// ---- 2 and 3. every supported type and ISA -------------------------------------------------------------------

struct TypedWeights {
    std::vector<uint8_t> raw;      // [n_rows, row_bytes]
    std::vector<double> values;    // [n_rows, n_cols], dequantized
    size_t row_bytes;
};

// Quantized random weights, made with the scalar reference so every ISA sees the same bytes.
TypedWeights make_weights(DType type, int64_t n_rows, int64_t n_cols, std::mt19937 &rng) {
    const KernelTable &ref = *kernels_for(ISA_SCALAR);
    TypedWeights w;
    w.row_bytes = dtype_row_size(*dtype_traits(type), n_cols);
    w.raw.resize(w.row_bytes * size_t(n_rows));
    w.values.resize(size_t(n_rows * n_cols));
    std::vector<float> row(static_cast<size_t>(n_cols));
    for (int64_t r = 0; r < n_rows; ++r) {
        const std::vector<float> src = random_floats(size_t(n_cols), rng);
        ref.quantize_row[type](src.data(), &w.raw[size_t(r) * w.row_bytes], n_cols);
        ref.dequantize_row[type](&w.raw[size_t(r) * w.row_bytes], row.data(), n_cols);
        std::copy(row.begin(), row.end(), w.values.begin() + r * n_cols);
    }
    return w;
}

// The activations as the kernels see them: quantized to the activation type, then dequantized.
std::vector<double> activation_values(DType act, const std::vector<float> &x, int64_t n_cols) {
    const KernelTable &ref = *kernels_for(ISA_SCALAR);
    const size_t row_bytes = dtype_row_size(*dtype_traits(act), n_cols);
    std::vector<uint8_t> q(row_bytes);
    std::vector<float> row(static_cast<size_t>(n_cols));
    std::vector<double> out(x.size());
    for (size_t t = 0; t < x.size() / size_t(n_cols); ++t) {
        ref.quantize_row[act](&x[t * size_t(n_cols)], q.data(), n_cols);
        ref.dequantize_row[act](q.data(), row.data(), n_cols);
        std::copy(row.begin(), row.end(), out.begin() + ptrdiff_t(t) * n_cols);
    }
    return out;
}

// Scalar quantizer and dequantizer for the type and its activation type: what the oracle needs.
bool oracle_available(DType type) {
    const KernelTable &ref = *kernels_for(ISA_SCALAR);
    const DType act = dtype_traits(type)->vec_dot_type;
    return ref.quantize_row[type] && ref.dequantize_row[type] && ref.quantize_row[act] && ref.dequantize_row[act];
}

void check_against_oracle(DType type, const KernelTable &table, std::mt19937 &rng, double &worst) {
    const DTypeTraits &traits = *dtype_traits(type);
    const int64_t block = std::max<int64_t>(traits.block_size, 32);
    ThreadPool pool(2);
    MatmulScratch scratch;
    struct Shape { int64_t n_rows, n_blocks, n_tokens; };
    const Shape shapes[] = {{1, 1, 1}, {5, 1, 3}, {37, 3, 9}, {130, 2, 6}};
    for (const Shape &s : shapes) {
        const int64_t n_cols = s.n_blocks * block;
        const TypedWeights w = make_weights(type, s.n_rows, n_cols, rng);
        const std::vector<float> x = random_floats(size_t(s.n_tokens * n_cols), rng);
        const std::vector<double> xa = activation_values(traits.vec_dot_type, x, n_cols);
        std::vector<float> y(size_t(s.n_tokens * s.n_rows));
        const WeightMatrix wm{type, w.raw.data(), s.n_rows, n_cols, w.row_bytes};
        matmul(wm, x.data(), s.n_tokens, y.data(), pool, scratch, table);
        int bad = 0;
        for (int64_t t = 0; t < s.n_tokens; ++t) {
            for (int64_t r = 0; r < s.n_rows; ++r) {
                double want = 0.0, magnitude = 0.0;
                for (int64_t j = 0; j < n_cols; ++j) {
                    const double p = w.values[size_t(r * n_cols + j)] * xa[size_t(t * n_cols + j)];
                    want += p;
                    magnitude += std::fabs(p);
                }
                const double error = std::fabs(double(y[size_t(t * s.n_rows + r)]) - want);
                const double relative = magnitude > 0 ? error / magnitude : error;
                worst = std::max(worst, relative);
                bad += !(relative <= 1e-4);
            }
        }
        CHECK_MSG(bad == 0, "%s %s %lldx%lld, %lld tokens: %d outputs off the float64 oracle", traits.name,
                  isa_name(table.isa), (long long)s.n_rows, (long long)n_cols, (long long)s.n_tokens, bad);
    }
}

void check_batch_invariance(DType type, const KernelTable &table, std::mt19937 &rng) {
    const DTypeTraits &traits = *dtype_traits(type);
    const int64_t n_cols = 2 * std::max<int64_t>(traits.block_size, 32);
    const int64_t n_rows = 19, n_all = 64;
    const TypedWeights w = make_weights(type, n_rows, n_cols, rng);
    const WeightMatrix wm{type, w.raw.data(), n_rows, n_cols, w.row_bytes};
    const std::vector<float> x_all = random_floats(size_t(n_all * n_cols), rng);  // [64, n_cols]
    ThreadPool pools[2] = {ThreadPool(1), ThreadPool(2)};
    MatmulScratch scratch;
    std::vector<float> y_all(size_t(n_all * n_rows));  // [64, n_rows]
    matmul(wm, x_all.data(), n_all, y_all.data(), pools[0], scratch, table);

    int bad = 0;
    std::uniform_int_distribution<int64_t> pick(0, n_all - 1);
    for (int64_t n_tokens = 1; n_tokens <= n_all; ++n_tokens) {
        // batch slot -> row of x_all, repeats allowed
        std::vector<int64_t> source(static_cast<size_t>(n_tokens));
        for (int64_t &s : source) s = pick(rng);
        std::vector<float> x(size_t(n_tokens * n_cols)), y(size_t(n_tokens * n_rows));
        for (int64_t i = 0; i < n_tokens; ++i) {
            std::copy_n(&x_all[size_t(source[size_t(i)] * n_cols)], n_cols, &x[size_t(i * n_cols)]);
        }
        matmul(wm, x.data(), n_tokens, y.data(), pools[n_tokens % 2], scratch, table);
        for (int64_t i = 0; i < n_tokens; ++i) {
            bad += std::memcmp(&y[size_t(i * n_rows)], &y_all[size_t(source[size_t(i)] * n_rows)],
                               size_t(n_rows) * 4) != 0;
        }
    }
    // The full batch again with 2 threads.
    std::vector<float> y2(y_all.size());
    matmul(wm, x_all.data(), n_all, y2.data(), pools[1], scratch, table);
    bad += std::memcmp(y2.data(), y_all.data(), y_all.size() * 4) != 0;
    CHECK_MSG(bad == 0, "%s %s: %d token rows differ across batch sizes, positions or thread counts", traits.name,
              isa_name(table.isa), bad);
}

// ---- matmul_grouped ---------------------------------------------------------------------------------------

// Independent products in one job: bitwise what separate matmul calls give, whether products share an input
// (one quantization) or not, with different token counts (few take the rows kernel), empty products among them, on 1 and 2
// threads; too many products is an error.
void test_grouped() {
    std::mt19937 rng(11);
    struct Spec {
        DType type;
        int64_t n_rows, n_cols, n_tokens;
        int input;  // products with the same input index read the same x
    };
    const Spec specs[] = {{DTYPE_Q8_0, 40, 64, 5, 0}, {DTYPE_Q8_0, 24, 64, 5, 0}, {DTYPE_Q4_K, 9, 256, 3, 1},
                          {DTYPE_F32, 7, 32, 1, 2},   {DTYPE_Q8_0, 0, 64, 5, 0},  {DTYPE_Q4_K, 5, 256, 0, 3}};
    const size_t n_specs = sizeof specs / sizeof specs[0];
    const int n = int(n_specs);
    std::vector<TypedWeights> weights;
    std::vector<WeightMatrix> matrices;
    std::vector<std::vector<float>> inputs(4), separate(n_specs);
    for (const Spec &sp : specs) {
        weights.push_back(make_weights(sp.type, sp.n_rows, sp.n_cols, rng));
        if (inputs[size_t(sp.input)].empty()) {
            inputs[size_t(sp.input)] = random_floats(size_t(std::max<int64_t>(sp.n_tokens, 1) * sp.n_cols), rng);
        }
    }
    for (int i = 0; i < n; ++i) {
        matrices.push_back({specs[i].type, weights[size_t(i)].raw.data(), specs[i].n_rows, specs[i].n_cols,
                            weights[size_t(i)].row_bytes});
    }
    ThreadPool one(1);
    MatmulScratch scratch;
    for (int i = 0; i < n; ++i) {
        separate[size_t(i)].assign(size_t(specs[i].n_tokens * specs[i].n_rows), 0.0f);
        matmul(matrices[size_t(i)], inputs[size_t(specs[i].input)].data(), specs[i].n_tokens,
               separate[size_t(i)].data(), one, scratch);
    }
    for (int n_threads : {1, 2}) {
        ThreadPool pool(n_threads);
        std::vector<std::vector<float>> grouped(n_specs);
        std::vector<MatmulProblem> problems;
        for (int i = 0; i < n; ++i) {
            grouped[size_t(i)].assign(separate[size_t(i)].size(), NAN);
            problems.push_back({&matrices[size_t(i)], inputs[size_t(specs[i].input)].data(), specs[i].n_tokens,
                                grouped[size_t(i)].data()});
        }
        matmul_grouped(problems.data(), n, pool, scratch);
        for (int i = 0; i < n; ++i) {
            const size_t bytes = separate[size_t(i)].size() * sizeof(float);
            CHECK_MSG(std::memcmp(grouped[size_t(i)].data(), separate[size_t(i)].data(), bytes) == 0,
                      "product %d of the group differs from its own matmul (%d threads)", i, n_threads);
        }
    }
    std::vector<MatmulProblem> too_many(size_t(kMaxSharedOutputs + 1), MatmulProblem{&matrices[0], nullptr, 0,
                                                                                     nullptr});
    CHECK_THROWS(std::invalid_argument, matmul_grouped(too_many.data(), int(too_many.size()), one, scratch),
                 "17 products, expected 1 to 16");
}

void test_all_types() {
    std::mt19937 rng(7);
    std::string covered, skipped;
    for (uint32_t id = 0; id < DTYPE_COUNT; ++id) {
        const DTypeTraits *traits = dtype_traits(id);
        if (!traits) continue;
        const DType type = DType(id);
        std::string isas;
        double worst = 0.0;
        for (int i = 0; i < ISA_COUNT; ++i) {
            const KernelTable *table = kernels_for(Isa(i));
            if (!table || !table->vec_dot[type] || !table->quantize_row[traits->vec_dot_type]) continue;
            if (!oracle_available(type)) {
                skipped += std::string(" ") + traits->name + " (no scalar quantizer/dequantizer for the oracle)";
                break;
            }
            check_against_oracle(type, *table, rng, worst);
            check_batch_invariance(type, *table, rng);
            isas += std::string(isas.empty() ? "" : ",") + isa_name(Isa(i));
        }
        if (!isas.empty()) {
            char line[160];
            std::snprintf(line, sizeof line, "\n  %-6s %-19s worst |error| / sum|w x| = %.2e", traits->name,
                          isas.c_str(), worst);
            covered += line;
        }
    }
    std::printf("matmul covered:%s\n", covered.empty() ? " nothing: no dot kernels in the tables" : covered.c_str());
    if (!skipped.empty()) std::printf("matmul skipped:%s\n", skipped.c_str());
}

}  // namespace

int main() {
    test_loop_structure();
    test_errors();
    test_grouped();
    test_all_types();
    return test::exit_code("test_matmul");
}
