#include "layers/attention.h"

#include <cmath>
#include <cstring>

#include "kernels.h"

namespace flashmtp {

namespace {

// The reductions below run in kLanes interleaved partial sums, added pairwise at the end: a fixed order (the
// same bits for a query whatever its batch) that the compiler keeps in vector registers, which a single
// running sum, without -ffast-math, forbids. Query-key dots use the f32 dot kernel.
constexpr int64_t kLanes = 16;

float sum_lanes(float (&lanes)[kLanes]) {
    for (int64_t width = kLanes / 2; width > 0; width /= 2) {
        for (int64_t l = 0; l < width; ++l) lanes[l] += lanes[l + width];
    }
    return lanes[0];
}

float sum_floats(const float *x, int64_t n) {
    float lanes[kLanes] = {};
    int64_t j = 0;
    for (; j + kLanes <= n; j += kLanes) {
        for (int64_t l = 0; l < kLanes; ++l) lanes[l] += x[j + l];
    }
    for (int64_t l = 0; j + l < n; ++l) lanes[l] += x[j + l];
    return sum_lanes(lanes);
}

// kLanes floats as one value (GCC/Clang vector extension: one AVX-512 register, or two AVX2 or four SSE ones
// in a portable build). GCC keeps a float[kLanes] accumulator below in scalar registers, one per lane.
typedef float FloatLanes __attribute__((vector_size(kLanes * sizeof(float))));

FloatLanes load_lanes(const float *p) {
    FloatLanes v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// out [n] = sum_j weights[j] * v[j * stride .. + n], keys in position order. kLanes output columns at a time,
// held in a register over all keys instead of a load and a store per key.
void weighted_sum(const float *weights, const float *v, int64_t stride, int64_t n_keys, int64_t n, float *out) {
    int64_t d = 0;
    for (; d + kLanes <= n; d += kLanes) {
        FloatLanes acc = {};
        for (int64_t j = 0; j < n_keys; ++j) acc += weights[j] * load_lanes(v + j * stride + d);
        std::memcpy(out + d, &acc, sizeof acc);
    }
    for (; d < n; ++d) {
        float acc = 0.0f;
        for (int64_t j = 0; j < n_keys; ++j) acc += weights[j] * v[j * stride + d];
        out[d] = acc;
    }
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
    const KernelTable &table = kernels();
    const VecDotFn dot = table.vec_dot[DTYPE_F32];  // f32 x f32: the float dot kernel (kernels.h)
    const ExpRowFn exp_row = table.exp_row;

    pool.parallel_for(n_tokens * shape.n_head, [&](int64_t task, int thread) {
        const int64_t t = task / shape.n_head, h = task % shape.n_head;
        const int64_t n_keys = n_past + t + 1;  // causal: every position up to and including its own
        const float *qh = q + (t * shape.n_head + h) * head_dim;
        const float *k = k_cache + (h / group) * head_dim;
        const float *v = v_cache + (h / group) * head_dim;
        float *scores = scratch.scores.data() + thread * scratch.n_ctx;  // [n_keys]

        float max_score = -INFINITY;
        for (int64_t j = 0; j < n_keys; ++j) {
            dot(head_dim, k + j * kv_stride, qh, 0, 1, &scores[j]);
            scores[j] *= scale;
            if (scores[j] > max_score) max_score = scores[j];
        }
        exp_row(n_keys, scores, max_score, scores);
        // One division per output instead of one per key: normalise after the sum.
        const float inv_sum = 1.0f / sum_floats(scores, n_keys);

        float *oh = out + (t * shape.n_head + h) * head_dim;
        weighted_sum(scores, v, kv_stride, n_keys, head_dim, oh);
        for (int64_t d = 0; d < head_dim; ++d) oh[d] *= inv_sum;
    });
}

}  // namespace flashmtp
