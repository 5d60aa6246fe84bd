// Plain C++ that the compiler vectorises (-O3): an integer sum has no rounding, so no fast-math is needed
// for the loop to use full-width loads, and one vector add per load is far below what the memory delivers.
#include "tools/read_bandwidth.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace flashmtp {

namespace {

// Keeps the sums observable so the compiler cannot drop the reads.
volatile uint64_t g_bandwidth_sink;

uint64_t sum_bytes(const uint8_t *p, size_t n) {
    uint64_t s = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t word;
        std::memcpy(&word, p + i, 8);  // the compiler turns this into plain (vector) loads
        s += word;
    }
    for (; i < n; ++i) s += p[i];
    return s;
}

}  // namespace

double read_bandwidth_gbps(ThreadPool &pool, size_t n_bytes, int repeats) {
    if (n_bytes < 4096 || repeats < 1) {
        throw std::invalid_argument("read_bandwidth: need n_bytes >= 4096 and repeats >= 1 (got " +
                                    std::to_string(n_bytes) + ", " + std::to_string(repeats) + ")");
    }
    const size_t n_words = n_bytes / sizeof(uint64_t);
    const std::unique_ptr<uint64_t[]> buffer(new uint64_t[n_words]);  // [n_words]
    // Writing every page first maps it: untouched pages would all read the one shared zero page.
    const int n_threads = pool.n_threads();
    pool.parallel_for(n_threads, [&](int64_t task, int) {
        const size_t begin = n_words * size_t(task) / size_t(n_threads);
        const size_t end = n_words * size_t(task + 1) / size_t(n_threads);
        for (size_t i = begin; i < end; ++i) buffer[i] = i;
    });
    std::vector<double> gbps;  // [repeats]
    for (int r = 0; r < repeats; ++r) {
        gbps.push_back(double(n_words * sizeof(uint64_t)) / read_seconds(pool, buffer.get(), n_words * 8) * 1e-9);
    }
    std::sort(gbps.begin(), gbps.end());
    const size_t mid = gbps.size() / 2;
    return gbps.size() % 2 ? gbps[mid] : 0.5 * (gbps[mid - 1] + gbps[mid]);
}

double read_seconds(ThreadPool &pool, const void *data, size_t n_bytes) {
    const int n_threads = pool.n_threads();
    const auto *bytes = static_cast<const uint8_t *>(data);
    std::vector<uint64_t> sums(size_t(n_threads), 0);  // [n_threads]
    const auto start = std::chrono::steady_clock::now();
    pool.parallel_for(n_threads, [&](int64_t task, int) {
        const size_t begin = n_bytes * size_t(task) / size_t(n_threads);
        const size_t end = n_bytes * size_t(task + 1) / size_t(n_threads);
        sums[size_t(task)] = sum_bytes(bytes + begin, end - begin);
    });
    const std::chrono::duration<double> seconds = std::chrono::steady_clock::now() - start;
    uint64_t total = 0;
    for (uint64_t s : sums) total += s;
    g_bandwidth_sink = total;
    return seconds.count();
}

}  // namespace flashmtp
