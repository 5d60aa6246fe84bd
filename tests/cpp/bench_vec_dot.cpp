// Microbenchmark of the vec_dot kernels: one GEMV pass over a weight matrix larger than the last-level cache
// (default 64 MiB, rows of 4096), for every weight type in the scalar table and every ISA this CPU has, with
// 1, 2 and 4 activation rows per weight row. Prints weight GB/s (median of the passes) and the time of n_x
// rows relative to n_x = 1: the memory-bound ideal is 1.00.
//     bench_vec_dot [--threads T] [--kib K] [--n N] [--passes P] [type ...]
// Rows are split in contiguous ranges over T threads, as the matmul does. With one thread a pass is timed in
// thread CPU time, which leaves out the time this shared machine's other processes hold the core; with more,
// in wall time. Not a test: timings are noisy.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <ctime>
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

// Median seconds of one pass of out[r][i] = dot(w[r], x[i]) over all rows r.
double time_gemv(VecDotFn dot, int64_t n, const uint8_t *w, size_t row_bytes, int64_t rows, const uint8_t *x,
                 size_t x_stride, int n_x, int threads, int passes, float *out) {
    std::vector<double> seconds;
    for (int p = 0; p < passes; ++p) {
        timespec cpu_start, cpu_end;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu_start);
        const auto start = std::chrono::steady_clock::now();
        auto work = [&](int64_t begin, int64_t end) {
            for (int64_t r = begin; r < end; ++r) dot(n, w + r * row_bytes, x, x_stride, n_x, out + r * n_x);
        };
        std::vector<std::thread> pool;
        for (int t = 1; t < threads; ++t) pool.emplace_back(work, rows * t / threads, rows * (t + 1) / threads);
        work(0, rows / threads);
        for (std::thread &th : pool) th.join();
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu_end);
        const double cpu = double(cpu_end.tv_sec - cpu_start.tv_sec) + 1e-9 * double(cpu_end.tv_nsec - cpu_start.tv_nsec);
        const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        seconds.push_back(threads == 1 ? cpu : wall);
    }
    std::sort(seconds.begin(), seconds.end());
    return seconds[seconds.size() / 2];
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
    std::printf("%-6s %-7s %9s %9s %9s %7s %7s\n", "type", "isa", "GB/s x1", "GB/s x2", "GB/s x4", "t2/t1", "t4/t1");
    std::mt19937_64 rng(1);
    const KernelTable &scalar = *kernels_for(ISA_SCALAR);
    for (uint32_t t = 0; t < DTYPE_COUNT; ++t) {
        if (!scalar.vec_dot[t]) continue;
        const DTypeTraits &tr = *dtype_traits(t);
        if (!opt.types.empty() && std::find(opt.types.begin(), opt.types.end(), tr.name) == opt.types.end()) continue;
        if (opt.n % tr.block_size != 0) continue;
        const size_t row_bytes = dtype_row_size(tr, opt.n);
        const int64_t rows = (opt.kib << 10) / int64_t(row_bytes);
        std::vector<uint8_t> w(row_bytes * size_t(rows));                         // [rows, row_bytes]
        // Distinct rows are costly to draw at this size; a few hundred repeated ones cache no better.
        const int64_t distinct = std::min<int64_t>(rows, 256);
        for (int64_t r = 0; r < distinct; ++r) test::random_weight_row(DType(t), opt.n, rng, &w[r * row_bytes]);
        for (int64_t r = distinct; r < rows; ++r) {
            std::memcpy(&w[r * row_bytes], &w[(r % distinct) * row_bytes], row_bytes);
        }
        const size_t x_stride = dtype_row_size(*dtype_traits(tr.vec_dot_type), opt.n);
        std::vector<uint8_t> x(x_stride * VEC_DOT_MAX_X);                        // [4, x_stride]
        for (int i = 0; i < VEC_DOT_MAX_X; ++i) test::random_activation_row(DType(t), opt.n, rng, &x[i * x_stride]);
        std::vector<float> out(size_t(rows) * VEC_DOT_MAX_X);                    // [rows, n_x]
        const double gb = double(w.size()) * 1e-9;
        for (int isa = 0; isa < ISA_COUNT; ++isa) {
            const KernelTable *table = kernels_for(Isa(isa));
            if (!table) continue;
            double sec[3];
            const int n_xs[3] = {1, 2, 4};
            for (int k = 0; k < 3; ++k) {
                sec[k] = time_gemv(table->vec_dot[t], opt.n, w.data(), row_bytes, rows, x.data(), x_stride, n_xs[k],
                                   opt.threads, isa == ISA_SCALAR ? 1 : opt.passes, out.data());
            }
            std::printf("%-6s %-7s %9.2f %9.2f %9.2f %7.2f %7.2f\n", tr.name, isa_name(Isa(isa)), gb / sec[0],
                        gb / sec[1], gb / sec[2], sec[1] / sec[0], sec[2] / sec[0]);
            std::fflush(stdout);
        }
    }
    return 0;
}
