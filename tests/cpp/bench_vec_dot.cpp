// Microbenchmark of the vec_dot kernels: one GEMV pass over a weight matrix larger than the last-level cache
// (default 64 MiB, rows of 4096), for every weight type in the scalar table and every ISA this CPU has, with
// 1, 2, 4 and 8 activation rows per weight row. Prints weight GB/s (median of the passes), the n_x = 1 figure as a
// share of a plain read of the same matrix in the same run (the machine is shared, its bandwidth varies), and
// the time of n_x rows relative to n_x = 1 (the memory-bound ideal is 1.00).
//     bench_vec_dot [--threads T] [--kib K] [--n N] [--passes P] [type ...]
// Rows are split in contiguous ranges over T threads, as the matmul does. With one thread a pass is timed in
// thread CPU time, which leaves out the time this shared machine's other processes hold the core; with more,
// in wall time. Not a test: timings are noisy.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kernels.h"
#include "vec_dot_data.h"

using namespace flashmtp;

namespace {

struct Options {
    int threads = 1;
    int64_t kib = 64 << 10;
    int64_t n = 4096;
    int passes = 7;
    std::vector<std::string> types;
};

double thread_seconds() {
    timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}

// Median seconds of a pass of work(begin, end) over rows [0, rows), split over `threads`.
double time_passes(const std::function<void(int64_t, int64_t)> &work, int64_t rows, int threads, int passes) {
    std::vector<double> seconds;
    for (int p = 0; p < passes; ++p) {
        const double cpu_start = thread_seconds();
        const auto start = std::chrono::steady_clock::now();
        std::vector<std::thread> pool;
        for (int t = 1; t < threads; ++t) pool.emplace_back(work, rows * t / threads, rows * (t + 1) / threads);
        work(0, rows / threads);
        for (std::thread &th : pool) th.join();
        const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        seconds.push_back(threads == 1 ? thread_seconds() - cpu_start : wall);
    }
    std::sort(seconds.begin(), seconds.end());
    return seconds[seconds.size() / 2];
}

// GB/s of summing the matrix's 64-bit words: the bandwidth a GEMV pass could reach in this run.
double read_bandwidth(const std::vector<uint8_t> &m, size_t row_bytes, int64_t rows, const Options &opt) {
    std::atomic<uint64_t> sink{0};  // keeps the sums, so the reads are not optimized away
    auto work = [&](int64_t begin, int64_t end) {
        const size_t words = (size_t(end - begin) * row_bytes) / 8;
        const uint8_t *p = m.data() + size_t(begin) * row_bytes;
        uint64_t s[4] = {0, 0, 0, 0};
        for (size_t i = 0; i + 4 <= words; i += 4) {
            for (int k = 0; k < 4; ++k) {
                uint64_t v;
                std::memcpy(&v, p + 8 * (i + k), 8);
                s[k] += v;
            }
        }
        sink.fetch_add(s[0] + s[1] + s[2] + s[3], std::memory_order_relaxed);
    };
    return double(m.size()) * 1e-9 / time_passes(work, rows, opt.threads, opt.passes);
}

}  // namespace

int main(int argc, char **argv) {
    Options opt;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--threads" && i + 1 < argc) opt.threads = std::atoi(argv[++i]);
        else if (a == "--kib" && i + 1 < argc) opt.kib = std::atoll(argv[++i]);
        else if (a == "--n" && i + 1 < argc) opt.n = std::atoll(argv[++i]);
        else if (a == "--passes" && i + 1 < argc) opt.passes = std::atoi(argv[++i]);
        else if (a[0] != '-') opt.types.push_back(a);
        else {
            std::fprintf(stderr, "usage: %s [--threads T] [--kib K] [--n N] [--passes P] [type ...]\n", argv[0]);
            return 2;
        }
    }
    std::printf("%d thread(s), %lld KiB weights, rows of %lld, median of %d passes\n", opt.threads,
                (long long)opt.kib, (long long)opt.n, opt.passes);
    std::printf("%-6s %-7s %9s %9s %9s %9s %7s %7s %7s %7s\n", "type", "isa", "GB/s x1", "GB/s x2", "GB/s x4",
                "GB/s x8", "x1/read", "t2/t1", "t4/t1", "t8/t1");
    std::mt19937_64 rng(1);
    const KernelTable &scalar = *kernels_for(ISA_SCALAR);
    for (uint32_t t = 0; t < DTYPE_COUNT; ++t) {
        if (!scalar.vec_dot[t]) continue;
        const DTypeTraits &tr = *dtype_traits(t);
        const auto &types = opt.types;
        if (!types.empty() && std::find(types.begin(), types.end(), tr.name) == types.end()) continue;
        if (opt.n % tr.block_size != 0) continue;
        const size_t row_bytes = dtype_row_size(tr, opt.n);
        const int64_t rows = (opt.kib << 10) / int64_t(row_bytes);
        std::vector<uint8_t> w(row_bytes * size_t(rows));                         // [rows, row_bytes]
        // Distinct rows are costly to draw at this size; repeating a few hundred caches no better.
        const int64_t distinct = std::min<int64_t>(rows, 256);
        for (int64_t r = 0; r < distinct; ++r) test::random_weight_row(DType(t), opt.n, rng, &w[r * row_bytes]);
        for (int64_t r = distinct; r < rows; ++r) {
            std::memcpy(&w[r * row_bytes], &w[(r % distinct) * row_bytes], row_bytes);
        }
        // Activation rows 64-byte aligned, as the matmul lays them out.
        const size_t x_stride = (dtype_row_size(*dtype_traits(tr.vec_dot_type), opt.n) + 63) / 64 * 64;
        std::vector<uint8_t> x_storage(x_stride * VEC_DOT_MAX_X + 64);
        uint8_t *x = x_storage.data() + (64 - reinterpret_cast<uintptr_t>(x_storage.data()) % 64) % 64;
        for (int i = 0; i < VEC_DOT_MAX_X; ++i) {                               // [VEC_DOT_MAX_X, x_stride]
            test::random_activation_row(DType(t), opt.n, rng, x + i * x_stride);
        }
        std::vector<float> out(size_t(rows) * VEC_DOT_MAX_X);                    // [rows, n_x]
        const double gb = double(w.size()) * 1e-9;
        const double read = read_bandwidth(w, row_bytes, rows, opt);
        for (int isa = 0; isa < ISA_COUNT; ++isa) {
            const KernelTable *table = kernels_for(Isa(isa));
            if (!table) continue;
            const VecDotFn dot = table->vec_dot[t];
            constexpr int kBatches = 4;
            const int n_xs[kBatches] = {1, 2, 4, 8};
            double sec[kBatches];
            for (int k = 0; k < kBatches; ++k) {
                auto work = [&](int64_t begin, int64_t end) {
                    for (int64_t r = begin; r < end; ++r) {
                        dot(opt.n, &w[r * row_bytes], x, x_stride, n_xs[k], &out[r * n_xs[k]]);
                    }
                };
                sec[k] = time_passes(work, rows, opt.threads, isa == ISA_SCALAR ? 1 : opt.passes);
            }
            std::printf("%-6s %-7s %9.2f %9.2f %9.2f %9.2f %6.0f%% %7.2f %7.2f %7.2f\n", tr.name,
                        isa_name(Isa(isa)), gb / sec[0], gb / sec[1], gb / sec[2], gb / sec[3],
                        100.0 * gb / sec[0] / read, sec[1] / sec[0], sec[2] / sec[0], sec[3] / sec[0]);
            std::fflush(stdout);
        }
    }
    return 0;
}
