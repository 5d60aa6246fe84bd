#include "layers/attention.h"

#include <algorithm>
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
    scratch.scores.assign(size_t(n_threads) * VEC_DOT_MAX_X * size_t(n_ctx), 0.0f);
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

    // A task takes up to VEC_DOT_MAX_X query heads of one KV group: each key row is loaded once for all of
    // them (one dot call, n_x heads). Fewer heads per task when there would be too few tasks to keep the
    // threads busy (decode of a model with few KV heads). The dot kernel gives each head the same bits
    // whatever n_x is, so this split never changes the output.
    int64_t per_task = std::min<int64_t>(group, VEC_DOT_MAX_X);
    const auto ceil_div = [](int64_t a, int64_t b) { return (a + b - 1) / b; };
    while (per_task > 1 && n_tokens * shape.n_head_kv * ceil_div(group, per_task) < 2 * pool.n_threads()) {
        per_task = ceil_div(per_task, 2);
    }
    const int64_t tasks_per_group = ceil_div(group, per_task);

    pool.parallel_for(n_tokens * shape.n_head_kv * tasks_per_group, [&](int64_t task, int thread) {
        const int64_t t = task / (shape.n_head_kv * tasks_per_group);
        const int64_t kv_head = task / tasks_per_group % shape.n_head_kv;
        const int64_t h0 = kv_head * group + task % tasks_per_group * per_task;  // first query head
        const int n_q = int(std::min(per_task, (kv_head + 1) * group - h0));
        const int64_t n_keys = n_past + t + 1;  // causal: every position up to and including its own
        const float *q0 = q + (t * shape.n_head + h0) * head_dim;  // [n_q, head_dim]
        const float *k = k_cache + kv_head * head_dim;
        const float *v = v_cache + kv_head * head_dim;
        // [n_q, n_ctx] of this thread
        float *scores = scratch.scores.data() + size_t(thread) * VEC_DOT_MAX_X * size_t(scratch.n_ctx);

        float max_score[VEC_DOT_MAX_X];
        for (int i = 0; i < n_q; ++i) max_score[i] = -INFINITY;
        for (int64_t j = 0; j < n_keys; ++j) {
            float s[VEC_DOT_MAX_X];
            dot(head_dim, k + j * kv_stride, q0, size_t(head_dim) * sizeof(float), n_q, s);
            for (int i = 0; i < n_q; ++i) {
                s[i] *= scale;
                scores[i * scratch.n_ctx + j] = s[i];
                if (s[i] > max_score[i]) max_score[i] = s[i];
            }
        }
        for (int i = 0; i < n_q; ++i) {
            float *si = scores + i * scratch.n_ctx;
            exp_row(n_keys, si, max_score[i], si);
            // One division per output instead of one per key: normalise after the sum.
            const float inv_sum = 1.0f / sum_floats(si, n_keys);
            float *oh = out + (t * shape.n_head + h0 + i) * head_dim;
            weighted_sum(si, v, kv_stride, n_keys, head_dim, oh);
            for (int64_t d = 0; d < head_dim; ++d) oh[d] *= inv_sum;
        }
    });
}

}  // namespace flashmtp
