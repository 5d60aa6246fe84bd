#include "layers/ffn.h"

#include <algorithm>

#include "kernels.h"

namespace flashmtp {

namespace {
// Elements per task: a decode step's few thousand stay on the calling thread (about a microsecond of work,
// less than a hand-off); a prefill batch's hundreds of thousands are shared.
constexpr int64_t kSwigluChunk = 16384;
}  // namespace

void swiglu(float *gate, const float *up, int64_t n, ThreadPool &pool, float limit) {
    const SwigluFn fn = kernels().swiglu;
    pool.parallel_for((n + kSwigluChunk - 1) / kSwigluChunk, [&](int64_t chunk, int) {
        const int64_t begin = chunk * kSwigluChunk;
        fn(std::min(kSwigluChunk, n - begin), gate + begin, up + begin, limit);
    });
}

}  // namespace flashmtp
