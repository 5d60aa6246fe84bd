// Memory read probes: the roofline that benchmarks compare GEMV against, since a matrix-vector product reads
// every weight byte exactly once. read_seconds times a plain read of the very buffer a kernel reads (the fair
// roofline on a shared machine); read_bandwidth_gbps is the machine-level figure over a fresh large buffer.
#pragma once

#include <cstddef>

#include "core/thread_pool.h"

namespace flashmtp {

// Sums a freshly written buffer of n_bytes with every thread of the pool (one contiguous slice each) and
// returns the read bandwidth in GB/s (1e9 bytes per second), the median of `repeats` passes. The buffer must
// be far larger than the last-level cache (benchmarks use >= 1 GiB) or the figure measures the cache.
// Throws std::invalid_argument if n_bytes < 4096 or repeats < 1.
double read_bandwidth_gbps(ThreadPool &pool, size_t n_bytes, int repeats);

// Seconds to read data[0, n_bytes) once, split into one contiguous slice per thread: a plain read of a weight
// matrix on the same threads, the GEMV's own roofline.
double read_seconds(ThreadPool &pool, const void *data, size_t n_bytes);

}  // namespace flashmtp
