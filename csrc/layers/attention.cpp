#include "layers/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels.h"

namespace flashmtp {

namespace {

// The reductions below run in kLanes interleaved partial sums, added pairwise at the end: a fixed order (the
// same bits for a query whatever its batch) that the compiler keeps in vector registers, which a single
// running sum, without -ffast-math, forbids.
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
// in a portable build). A float[kLanes] accumulator is not vectorized by GCC: it keeps one scalar per lane.
typedef float FloatLanes __attribute__((vector_size(kLanes * sizeof(float))));

FloatLanes load_lanes(const float *p) {
    FloatLanes v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// out[i] [n] = sum_j weights[i][j] * v[j * stride .. + n] for NQ heads sharing the values, keys in position
// order. kLanes output columns at a time, held in registers over all keys (instead of a load and a store per
// key), each value load serving every head. A head's sums are the same whatever NQ is.
template <int NQ>
void weighted_sums(const float *weights, int64_t weights_stride, const float *v, int64_t stride, int64_t n_keys,
                   int64_t n, float *out) {
    int64_t d = 0;
    for (; d + kLanes <= n; d += kLanes) {
        FloatLanes acc[NQ] = {};
        for (int64_t j = 0; j < n_keys; ++j) {
            const FloatLanes vj = load_lanes(v + j * stride + d);
            for (int i = 0; i < NQ; ++i) acc[i] += weights[i * weights_stride + j] * vj;
        }
        for (int i = 0; i < NQ; ++i) std::memcpy(out + i * n + d, &acc[i], sizeof acc[i]);
    }
    for (; d < n; ++d) {
        for (int i = 0; i < NQ; ++i) {
            float acc = 0.0f;
            for (int64_t j = 0; j < n_keys; ++j) acc += weights[i * weights_stride + j] * v[j * stride + d];
            out[i * n + d] = acc;
        }
    }
}

// scores [NQ, scores_stride] columns 0..n_keys: the NQ queries q [NQ, head_dim] against keys 0..n_keys of one
// head of the transposed cache k_t [head_dim, k_stride] (key j's element d at d * k_stride + j), times scale. A key's
// score is the dot product in element order, one multiply and one add per element, whether its lane is
// part of a kLanes block or of the scalar tail: the same bits wherever a key falls. Lanes run over keys, so
// there is no horizontal sum, and each load of kLanes keys serves every query.
template <int NQ>
void scores_for(const float *q, int64_t head_dim, const float *k_t, int64_t k_stride, int64_t n_keys, float scale,
                float *scores, int64_t scores_stride) {
    int64_t j0 = 0;
    for (; j0 + kLanes <= n_keys; j0 += kLanes) {
        FloatLanes acc[NQ] = {};
        for (int64_t d = 0; d < head_dim; ++d) {
            const FloatLanes kd = load_lanes(k_t + d * k_stride + j0);
            for (int i = 0; i < NQ; ++i) acc[i] += q[i * head_dim + d] * kd;
        }
        for (int i = 0; i < NQ; ++i) {
            const FloatLanes scaled = acc[i] * scale;
            std::memcpy(scores + i * scores_stride + j0, &scaled, sizeof scaled);
        }
    }
    for (int64_t j = j0; j < n_keys; ++j) {
        for (int i = 0; i < NQ; ++i) {
            float acc = 0.0f;
            for (int64_t d = 0; d < head_dim; ++d) acc += q[i * head_dim + d] * k_t[d * k_stride + j];
            scores[i * scores_stride + j] = acc * scale;
        }
    }
}

// The two loops of a task, instantiated for each number of heads (accumulators in registers).
struct HeadGroupFns {
    void (*scores)(const float *, int64_t, const float *, int64_t, int64_t, float, float *, int64_t);
    void (*weighted_sums)(const float *, int64_t, const float *, int64_t, int64_t, int64_t, float *);
};
template <int NQ>
constexpr HeadGroupFns kHeadGroupFns{scores_for<NQ>, weighted_sums<NQ>};
constexpr HeadGroupFns kForHeads[VEC_DOT_MAX_X + 1] = {
    {nullptr, nullptr}, kHeadGroupFns<1>, kHeadGroupFns<2>, kHeadGroupFns<3>, kHeadGroupFns<4>,
    kHeadGroupFns<5>,   kHeadGroupFns<6>, kHeadGroupFns<7>, kHeadGroupFns<8>};

}  // namespace

void attention_reserve(AttentionScratch &scratch, int n_threads, int64_t n_ctx) {
    scratch.scores.assign(size_t(n_threads) * VEC_DOT_MAX_X * size_t(n_ctx), 0.0f);
    scratch.n_ctx = n_ctx;
}

void attention(const AttentionShape &shape, const float *q, const float *k_t, int64_t k_stride, const float *v_cache,
               int64_t n_past, int64_t n_tokens, float *out, ThreadPool &pool, AttentionScratch &scratch) {
    const int64_t head_dim = shape.head_dim;
    const int64_t group = shape.n_head / shape.n_head_kv;
    const int64_t kv_stride = shape.n_head_kv * head_dim;  // floats from one value row to the next
    const float scale = 1.0f / std::sqrt(float(head_dim));
    const ExpRowFn exp_row = kernels().exp_row;

    // A task takes up to VEC_DOT_MAX_X query heads of one KV group, which share every key load. Fewer heads
    // per task when there would be too few tasks to keep the threads busy (decode of a model with few KV
    // heads). Each head's scores are computed the same way in any grouping, so this never changes the output.
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
        const float *v = v_cache + kv_head * head_dim;
        // [n_q, n_ctx] of this thread
        float *scores = scratch.scores.data() + size_t(thread) * VEC_DOT_MAX_X * size_t(scratch.n_ctx);

        const HeadGroupFns &fns = kForHeads[n_q];
        fns.scores(q0, head_dim, k_t + kv_head * head_dim * k_stride, k_stride, n_keys, scale, scores, scratch.n_ctx);
        float inv_sum[VEC_DOT_MAX_X];
        for (int i = 0; i < n_q; ++i) {
            float *si = scores + i * scratch.n_ctx;
            float max_score = -INFINITY;
            for (int64_t j = 0; j < n_keys; ++j) max_score = std::max(max_score, si[j]);
            exp_row(n_keys, si, max_score, si);
            // One division per output instead of one per key: normalise after the sum.
            inv_sum[i] = 1.0f / sum_floats(si, n_keys);
        }
        float *o0 = out + (t * shape.n_head + h0) * head_dim;  // [n_q, head_dim]
        fns.weighted_sums(scores, scratch.n_ctx, v, kv_stride, n_keys, head_dim, o0);
        for (int i = 0; i < n_q; ++i) {
            for (int64_t d = 0; d < head_dim; ++d) o0[i * head_dim + d] *= inv_sum[i];
        }
    });
}

}  // namespace flashmtp
