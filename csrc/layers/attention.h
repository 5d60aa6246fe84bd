// Causal grouped-query attention of a batch of queries over one layer's KV cache.
// Owns: scores, the fp32 softmax and the weighted sum of values, split over the thread pool by (token, KV head,
// up to VEC_DOT_MAX_X of its query heads).
// Does not own: the cache (the session's) or writing the batch's own keys and values into it (the model does
// that first, so a query sees its own key and the keys of earlier tokens of its batch).
//
// Batch invariance: the output of query t depends only on its position and the cache rows 0..position, and
// is reduced over keys in position order by one task, whatever n_tokens and the thread count are.
#pragma once

#include <cstdint>
#include <vector>

#include "core/thread_pool.h"

namespace flashmtp {

struct AttentionShape {
    int64_t n_head;     // query heads
    int64_t n_head_kv;  // key/value heads; query head h reads kv head h / (n_head / n_head_kv)
    int64_t head_dim;
};

// Scores of one query over the keys, one row per pool thread. Sized once per session (attention_reserve).
struct AttentionScratch {
    std::vector<float> scores;  // [n_threads, VEC_DOT_MAX_X, n_ctx]
    int64_t n_ctx = 0;
};

// Sizes `scratch` for a pool of n_threads and queries at positions below n_ctx (call before attention()).
void attention_reserve(AttentionScratch &scratch, int n_threads, int64_t n_ctx);

// out [n_tokens, n_head, head_dim] = softmax(q k^T * scale) v, query t at position n_past + t attending to
// cache positions 0..n_past + t.
//   q       [n_tokens, n_head, head_dim]
//   k_t     [n_head_kv, head_dim, k_stride]: the keys transposed, position innermost (k_stride >= n_past +
//           n_tokens), so that a vector load takes one element of consecutive keys
//   v_cache [>= n_past + n_tokens, n_head_kv, head_dim]
void attention(const AttentionShape &shape, const float *q, const float *k_t, int64_t k_stride, const float *v_cache,
               int64_t n_past, int64_t n_tokens, float *out, ThreadPool &pool, AttentionScratch &scratch);

}  // namespace flashmtp
