#include "layers/attention.h"

#include <cmath>

namespace flashmtp {

namespace {

// dot(a, b) over n floats in kLanes interleaved partial sums, added pairwise at the end: a fixed order (so
// the same bits for a query whatever its batch) that the compiler can keep in vector registers, which a
// single running sum, without -ffast-math, forbids.
constexpr int64_t kLanes = 8;

float dot_lanes(const float *a, const float *b, int64_t n) {
    float lanes[kLanes] = {};
    int64_t d = 0;
    for (; d + kLanes <= n; d += kLanes) {
        for (int64_t l = 0; l < kLanes; ++l) lanes[l] += a[d + l] * b[d + l];
    }
    for (; d < n; ++d) lanes[d % kLanes] += a[d] * b[d];
    for (int64_t width = kLanes / 2; width > 0; width /= 2) {
        for (int64_t l = 0; l < width; ++l) lanes[l] += lanes[l + width];
    }
    return lanes[0];
}

}  // namespace

void attention_reserve(AttentionScratch &scratch, int n_threads, int64_t n_ctx) {
    scratch.scores.assign(size_t(n_threads) * size_t(n_ctx), 0.0f);
    scratch.n_ctx = n_ctx;
}

void attention(const AttentionShape &shape, const float *q, const float *k_cache, const float *v_cache,
               int64_t n_past, int64_t n_tokens, float *out, ThreadPool &pool, AttentionScratch &scratch) {
    const int64_t head_dim = shape.head_dim;
    const int64_t group = shape.n_head / shape.n_head_kv;
    const int64_t kv_stride = shape.n_head_kv * head_dim;  // floats from one cache position to the next
    const float scale = 1.0f / std::sqrt(float(head_dim));

    pool.parallel_for(n_tokens * shape.n_head, [&](int64_t task, int thread) {
        const int64_t t = task / shape.n_head, h = task % shape.n_head;
        const int64_t n_keys = n_past + t + 1;  // causal: every position up to and including its own
        const float *qh = q + (t * shape.n_head + h) * head_dim;
        const float *k = k_cache + (h / group) * head_dim;
        const float *v = v_cache + (h / group) * head_dim;
        float *scores = scratch.scores.data() + thread * scratch.n_ctx;  // [n_keys]

        float max_score = -INFINITY;
        for (int64_t j = 0; j < n_keys; ++j) {
            scores[j] = dot_lanes(qh, k + j * kv_stride, head_dim) * scale;
            if (scores[j] > max_score) max_score = scores[j];
        }
        float sum = 0.0f;
        for (int64_t j = 0; j < n_keys; ++j) {
            scores[j] = std::exp(scores[j] - max_score);
            sum += scores[j];
        }

        float *oh = out + (t * shape.n_head + h) * head_dim;
        for (int64_t d = 0; d < head_dim; ++d) oh[d] = 0.0f;
        for (int64_t j = 0; j < n_keys; ++j) {
            const float *vj = v + j * kv_stride;
            const float weight = scores[j];
            for (int64_t d = 0; d < head_dim; ++d) oh[d] += weight * vj[d];
        }
        // One division per output instead of one per key: normalise after the sum.
        const float inv_sum = 1.0f / sum;
        for (int64_t d = 0; d < head_dim; ++d) oh[d] *= inv_sum;
    });
}

}  // namespace flashmtp
