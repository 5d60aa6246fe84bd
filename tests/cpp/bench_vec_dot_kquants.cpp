// Microbenchmark (not a test): K-quant GEMV through every ISA table, streaming a weight
// matrix larger than the caches, for n_x = 1, 2, 4, 8 activation rows per weight row. Prints GB/s of weights
// read and the time of n_x rows relative to one row (the cost of batching drafted tokens); a plain sum over the
// same buffer ("read") gives the bandwidth they compare to.
// With threads > 1 the rows are split between that many threads and a pass takes the CPU time of the slowest:
// what the GEMV would take on an otherwise idle machine, while still sharing memory bandwidth between them.
// Usage: bench_vec_dot_kquants [megabytes=96] [repeats=5] [type, e.g. q4_K, or all] [threads=1]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <random>
#include <thread>
#include <vector>

#include "kernels.h"
#include "quant_blocks.h"

using namespace flashmtp;

namespace {

// This thread's CPU seconds: the machines are shared, and wall time would count other processes' slices.
double thread_seconds() {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

// Median over `repeats` passes of the largest CPU time any of `threads` threads spends in work(t, threads).
template <class Work>
double time_threads(int threads, int repeats, const Work &work) {
    std::vector<double> times;
    std::vector<double> seconds(threads);
    for (int rep = 0; rep < repeats; ++rep) {
        std::vector<std::thread> pool;
        for (int t = 0; t < threads; ++t) {
            pool.emplace_back([&, t] {
                const double start = thread_seconds();
                work(t, threads);
                seconds[t] = thread_seconds() - start;
            });
        }
        for (auto &th : pool) th.join();
        times.push_back(*std::max_element(seconds.begin(), seconds.end()));
    }
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
}

// Seconds of y[row] = dot(w[row], x[0..n_x)) over all rows, rows split evenly between the threads.
double time_gemv(VecDotFn dot, int64_t n, const uint8_t *w, size_t row_bytes, int64_t rows, const uint8_t *x,
                 size_t x_stride, int n_x, int threads, int repeats) {
    std::vector<float> y(size_t(rows) * VEC_DOT_MAX_X);
    return time_threads(threads, repeats, [&](int t, int n_threads) {
        for (int64_t r = rows * t / n_threads; r < rows * (t + 1) / n_threads; ++r) {
            dot(n, w + r * row_bytes, x, x_stride, n_x, &y[r * VEC_DOT_MAX_X]);
        }
    });
}

// Seconds to stream `bytes` through a plain sum, split between the threads: the read bandwidth the kernels
// are measured against, in the same run (on a shared machine it moves from minute to minute).
double time_read(const uint8_t *p, size_t bytes, int threads, int repeats) {
    std::vector<uint64_t> totals(threads);
    const size_t lines = bytes / 64;
    const double sec = time_threads(threads, repeats, [&](int t, int n_threads) {
        uint64_t s[8] = {};
        for (size_t i = 64 * (lines * t / n_threads); i < 64 * (lines * (t + 1) / n_threads); i += 64) {
            for (int j = 0; j < 8; ++j) {
                uint64_t v;
                std::memcpy(&v, p + i + 8 * j, 8);
                s[j] += v;
            }
        }
        for (uint64_t v : s) totals[t] += v;
    });
    if (std::find(totals.begin(), totals.end(), 42) != totals.end()) std::printf(" ");  // keeps the sums alive
    return sec;
}

}  // namespace

int main(int argc, char **argv) {
    const double megabytes = argc > 1 ? std::atof(argv[1]) : 96.0;
    const int repeats = argc > 2 ? std::atoi(argv[2]) : 5;
    const char *only = argc > 3 && std::strcmp(argv[3], "all") != 0 ? argv[3] : nullptr;
    const int threads = argc > 4 ? std::max(1, std::atoi(argv[4])) : 1;
    const int64_t n = 4096;  // a typical embedding width; 16 blocks per row
    std::mt19937 rng(1);

    std::vector<float> xf(n);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    const size_t x_stride = dtype_row_size(*dtype_traits(DTYPE_Q8_K), n);
    std::vector<uint8_t> x(x_stride * VEC_DOT_MAX_X);
    for (int r = 0; r < VEC_DOT_MAX_X; ++r) {
        for (float &v : xf) v = normal(rng);
        quantize_row_q8_K(xf.data(), x.data() + r * x_stride, n);
    }

    std::printf("%-5s %-7s %9s %9s %9s %9s %8s %8s %8s\n", "type", "isa", "GB/s x1", "GB/s x2", "GB/s x4",
                "GB/s x8", "t2/t1", "t4/t1", "t8/t1");
    for (DType type : {DTYPE_Q2_K, DTYPE_Q3_K, DTYPE_Q4_K, DTYPE_Q5_K, DTYPE_Q6_K}) {
        const DTypeTraits &t = *dtype_traits(type);
        if (only && std::strcmp(only, t.name) != 0) continue;
        const size_t row_bytes = dtype_row_size(t, n);
        const int64_t rows = int64_t(megabytes * 1e6 / double(row_bytes));
        // Random bytes with a small fp16 d and dmin in every block (field offsets differ per type, so write
        // them everywhere a block could keep them: the value of the other bytes does not change the speed).
        std::vector<uint8_t> w(row_bytes * rows);
        for (auto &b : w) b = uint8_t(rng());
        const uint16_t small = fp32_to_fp16(0.01f);
        for (size_t b = 0; b < w.size() / t.type_size; ++b) {
            uint8_t *blk = &w[b * t.type_size];
            std::memcpy(blk, &small, 2);
            std::memcpy(blk + 2, &small, 2);
            std::memcpy(blk + t.type_size - 2, &small, 2);
            std::memcpy(blk + t.type_size - 4, &small, 2);
        }
        const double read_seconds = time_read(w.data(), w.size(), threads, repeats);
        std::printf("%-5s %-7s %9.2f\n", t.name, "read", double(w.size()) / 1e9 / read_seconds);
        for (int isa = 0; isa < ISA_COUNT; ++isa) {
            const KernelTable *table = kernels_for(Isa(isa));
            if (!table || !table->vec_dot[type]) continue;
            const int reps = isa == ISA_SCALAR ? 1 : repeats;
            double sec[4];
            const int n_xs[4] = {1, 2, 4, 8};
            for (int i = 0; i < 4; ++i) {
                sec[i] = time_gemv(table->vec_dot[type], n, w.data(), row_bytes, rows, x.data(), x_stride, n_xs[i],
                                   threads, reps);
            }
            const double gb = double(w.size()) / 1e9;
            std::printf("%-5s %-7s %9.2f %9.2f %9.2f %9.2f %8.2f %8.2f %8.2f\n", t.name, isa_name(Isa(isa)),
                        gb / sec[0], gb / sec[1], gb / sec[2], gb / sec[3], sec[1] / sec[0], sec[2] / sec[0],
                        sec[3] / sec[0]);
        }
    }
    return 0;
}
