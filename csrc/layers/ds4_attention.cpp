#include "layers/ds4_attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels.h"
#include "layers/norm.h"

namespace flashmtp {

namespace {

constexpr double kPi = 3.14159265358979323846;
// The indexer's scores: entries per task, and the most scores held at once (16 MB).
constexpr int64_t kIndexChunk = 256;
constexpr int64_t kIndexScoreFloats = int64_t(4) << 20;

// ---- rotary embedding -------------------------------------------------------------------------------------

// cos, sin [n_rot / 2] of the angles position * freqs[i], in float32 as transformers computes them.
void rope_angles(const float *freqs, int64_t n_rot, int64_t position, float *cos, float *sin) {
    for (int64_t i = 0; i < n_rot / 2; ++i) {
        const float angle = float(position) * freqs[i];
        cos[i] = std::cos(angle);
        sin[i] = std::sin(angle);
    }
}

// Rotates pairs (2i, 2i+1) of the last n_rot channels of each of n_heads heads of x [n_heads, head_dim] by
// the angles of cos, sin [n_rot / 2]; `inverse` rotates by minus those angles.
void rope_rotate(float *x, int64_t n_heads, int64_t head_dim, int64_t n_rot, const float *cos, const float *sin,
                 bool inverse) {
    const float sign = inverse ? -1.0f : 1.0f;
    for (int64_t h = 0; h < n_heads; ++h) {
        float *rot = x + h * head_dim + (head_dim - n_rot);
        for (int64_t i = 0; i < n_rot / 2; ++i) {
            const float a = rot[2 * i], b = rot[2 * i + 1], sin_i = sign * sin[i];
            rot[2 * i] = a * cos[i] - b * sin_i;
            rot[2 * i + 1] = b * cos[i] + a * sin_i;
        }
    }
}

// For each of n_heads heads h: outs[h] [n] = sum_j weights[h * weight_stride + j] * rows[j][0..n), rows in
// order. 16 output columns at a time in one vector register (GCC/Clang vector extension) over all rows: a fixed
// order, the same bits for a query whatever its batch. The heads of a task attend to the same keys (one kv
// head), so each row's 16 columns are loaded once for all heads: one pass over the keys instead of one per head
// (V4-Flash: 8 passes over ~190 keys of 2 KB, from L2, were 6% of a 4-token verify step; now under 2%).
constexpr int64_t kLanes = 16;
typedef float FloatLanes __attribute__((vector_size(kLanes * sizeof(float))));

template <int kHeads>
void weighted_rows_heads(const float *weights, int64_t weight_stride, const float *const *rows, int64_t n_rows,
                         int64_t n, float *const *outs) {
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes) {
        FloatLanes acc[kHeads] = {};
        for (int64_t j = 0; j < n_rows; ++j) {
            FloatLanes v;
            std::memcpy(&v, rows[j] + i, sizeof v);
            for (int h = 0; h < kHeads; ++h) acc[h] += weights[h * weight_stride + j] * v;
        }
        for (int h = 0; h < kHeads; ++h) std::memcpy(outs[h] + i, &acc[h], sizeof acc[h]);
    }
    for (; i < n; ++i) {
        for (int h = 0; h < kHeads; ++h) {
            float acc = 0.0f;
            for (int64_t j = 0; j < n_rows; ++j) acc += weights[h * weight_stride + j] * rows[j][i];
            outs[h][i] = acc;
        }
    }
}

// weighted_rows_heads for 1 <= n_heads <= VEC_DOT_MAX_X heads.
void weighted_rows(const float *weights, int64_t weight_stride, int n_heads, const float *const *rows,
                   int64_t n_rows, int64_t n, float *const *outs) {
    static_assert(VEC_DOT_MAX_X == 8, "one case per head count below");
    switch (n_heads) {
        case 1: return weighted_rows_heads<1>(weights, weight_stride, rows, n_rows, n, outs);
        case 2: return weighted_rows_heads<2>(weights, weight_stride, rows, n_rows, n, outs);
        case 3: return weighted_rows_heads<3>(weights, weight_stride, rows, n_rows, n, outs);
        case 4: return weighted_rows_heads<4>(weights, weight_stride, rows, n_rows, n, outs);
        case 5: return weighted_rows_heads<5>(weights, weight_stride, rows, n_rows, n, outs);
        case 6: return weighted_rows_heads<6>(weights, weight_stride, rows, n_rows, n, outs);
        case 7: return weighted_rows_heads<7>(weights, weight_stride, rows, n_rows, n, outs);
        default: return weighted_rows_heads<8>(weights, weight_stride, rows, n_rows, n, outs);
    }
}

// ---- compressor ---------------------------------------------------------------------------------------------

int64_t series_count(Ds4AttentionKind kind) { return kind == DS4_ATTN_CSA ? 2 : 1; }

// Pools window w of the compressor whose ring holds its rows, and appends the entry to state.entries.
// HCA (c = 1): channel j of the entry is the softmax over the window's m tokens of score[., j] weighting kv[., j].
// CSA (c = 2): over 2m slots, window w - 1's tokens on channels [0, dim) then window w's on [dim, 2 dim)
// (window 0 has no previous slots: they would weigh exp(-inf) = 0). Then RMS_w and RoPE at position w * m.
void compressor_pool(int64_t w, int64_t m, int64_t c, int64_t dim, const float *norm, float eps, int64_t n_rot,
                     const float *freqs, Ds4CompressorState &state, float *weights /* [2 m + n_rot] */) {
    const int64_t ring = state.rows, row = c * dim;
    const int64_t n_previous = c == 2 && w > 0 ? m : 0, n_slots = n_previous + m;
    // Slot s's offset into the ring for channel 0 of its series: previous window's first series, then this one's
    // last series.
    const auto slot_offset = [&](int64_t s) {
        if (s < n_previous) return (((w - 1) * m + s) % ring) * row;
        return ((w * m + s - n_previous) % ring) * row + (row - dim);
    };
    const ExpRowFn exp_row = kernels().exp_row;
    state.entries.resize(state.entries.size() + size_t(dim));
    float *entry = state.entries.data() + w * dim;  // [dim]
    for (int64_t j = 0; j < dim; ++j) {
        float max_score = -INFINITY;
        for (int64_t s = 0; s < n_slots; ++s) {
            weights[s] = state.score[slot_offset(s) + j];
            max_score = std::max(max_score, weights[s]);
        }
        exp_row(n_slots, weights, max_score, weights);
        float sum = 0.0f;
        for (int64_t s = 0; s < n_slots; ++s) sum += weights[s];
        float pooled = 0.0f;
        for (int64_t s = 0; s < n_slots; ++s) pooled += state.kv[slot_offset(s) + j] * (weights[s] / sum);
        entry[j] = pooled;
    }
    rms_norm(entry, norm, 1, dim, eps, entry);
    float *cos = weights + 2 * m, *sin = cos + n_rot / 2;  // [n_rot / 2] each
    rope_angles(freqs, n_rot, w * m, cos, sin);
    rope_rotate(entry, 1, dim, n_rot, cos, sin, false);
}

// Feeds the batch's projections kv, gate [n_tokens, c * dim] (positions n_past..) into the compressor: each
// token's row goes into the ring with its ape offset added to the gate, and each window its token completes
// is pooled into a new entry before the next token overwrites a row that window needs.
void compressor_update(const Ds4CompressorWeights &weights, int64_t m, int64_t c, int64_t dim, float eps,
                       int64_t n_rot, const float *freqs, const float *kv, const float *gate, int64_t n_past,
                       int64_t n_tokens, Ds4CompressorState &state, std::vector<float> &pool_weights) {
    const int64_t row = c * dim;
    if (pool_weights.size() < size_t(2 * m + n_rot)) pool_weights.resize(size_t(2 * m + n_rot));
    for (int64_t t = 0; t < n_tokens; ++t) {
        const int64_t position = n_past + t, slot = position % state.rows;
        const float *ape = weights.ape + (position % m) * row;
        std::copy(kv + t * row, kv + (t + 1) * row, state.kv.data() + slot * row);
        for (int64_t j = 0; j < row; ++j) state.score[slot * row + j] = gate[t * row + j] + ape[j];
        if ((position + 1) % m == 0) {
            compressor_pool(position / m, m, c, dim, weights.norm, eps, n_rot, freqs, state, pool_weights.data());
        }
    }
}

// Entries a query at `position` may read: those whose window is complete, w < floor((position + 1) / m).
int64_t visible_entries(int64_t position, int64_t m) { return (position + 1) / m; }

// ---- validation ---------------------------------------------------------------------------------------------

void check_matrix(const WeightMatrix &w, int64_t n_rows, int64_t n_cols, const char *name) {
    if (w.data == nullptr || w.n_rows != n_rows || w.n_cols != n_cols) {
        throw std::invalid_argument("ds4 attention: " + std::string(name) + " is [" + std::to_string(w.n_rows) +
                                    ", " + std::to_string(w.n_cols) + "], expected [" + std::to_string(n_rows) +
                                    ", " + std::to_string(n_cols) + "]" + (w.data ? "" : " (missing)"));
    }
}

void check_vector(const float *v, const char *name) {
    if (v == nullptr) throw std::invalid_argument("ds4 attention: " + std::string(name) + " is missing");
}

void check_compressor(const Ds4CompressorWeights &w, int64_t c, int64_t dim, int64_t n_embd, const char *name) {
    check_matrix(w.kv, c * dim, n_embd, (std::string(name) + " kv").c_str());
    check_matrix(w.gate, c * dim, n_embd, (std::string(name) + " gate").c_str());
    check_vector(w.ape, (std::string(name) + " ape").c_str());
    check_vector(w.norm, (std::string(name) + " norm").c_str());
}

void require(bool ok, const std::string &what) {
    if (!ok) throw std::invalid_argument("ds4 attention: " + what);
}

}  // namespace

std::vector<float> ds4_rope_freqs(int64_t n_rot, double theta) {
    std::vector<float> freqs(size_t(n_rot / 2));
    for (int64_t i = 0; i < n_rot / 2; ++i) {
        freqs[i] = 1.0f / std::pow(float(theta), float(2 * i) / float(n_rot));
    }
    return freqs;
}

std::vector<float> ds4_rope_freqs_yarn(int64_t n_rot, double theta, double factor, double original_context,
                                       double beta_fast, double beta_slow) {
    // Channels rotating more than beta_fast times over the original context keep their frequency
    // (extrapolation), those rotating fewer than beta_slow times are divided by `factor` (interpolation), a
    // linear ramp between: transformers' _compute_yarn_parameters with truncation, in its float32 steps.
    const auto correction_dim = [&](double rotations) {
        return double(n_rot) * std::log(original_context / (rotations * 2.0 * kPi)) / (2.0 * std::log(theta));
    };
    const double low = std::max(std::floor(correction_dim(beta_fast)), 0.0);
    double high = std::min(std::ceil(correction_dim(beta_slow)), double(n_rot - 1));
    if (low == high) high += 0.001;
    std::vector<float> freqs(size_t(n_rot / 2));
    for (int64_t i = 0; i < n_rot / 2; ++i) {
        const float base_power = std::pow(float(theta), float(2 * i) / float(n_rot));
        const float extrapolated = 1.0f / base_power, interpolated = 1.0f / (float(factor) * base_power);
        const float ramp = std::clamp((float(i) - float(low)) / float(high - low), 0.0f, 1.0f);
        const float keep = 1.0f - ramp;
        freqs[i] = interpolated * (1.0f - keep) + extrapolated * keep;
    }
    return freqs;
}

void ds4_attention_validate(const Ds4AttentionShape &s, const Ds4AttentionWeights &w) {
    require(s.n_embd > 0 && s.n_head > 0 && s.head_dim > 0 && s.q_lora_rank > 0 && s.o_lora_rank > 0,
            "sizes must be positive");
    require(s.n_rot > 0 && s.n_rot % 2 == 0 && s.n_rot <= s.head_dim,
            "n_rot " + std::to_string(s.n_rot) + " must be even, in (0, head_dim]");
    require(s.window > 0, "window must be positive");
    require(s.o_groups > 0 && s.n_head % s.o_groups == 0,
            "o_groups " + std::to_string(s.o_groups) + " must divide n_head " + std::to_string(s.n_head));
    require((s.kind == DS4_ATTN_WINDOW) == (s.compress_ratio == 0),
            "compress_ratio " + std::to_string(s.compress_ratio) + " must be 0 exactly for a window layer");
    require(s.compress_ratio >= 0, "compress_ratio must not be negative");
    check_matrix(w.q_a, s.q_lora_rank, s.n_embd, "q_a");
    check_matrix(w.q_b, s.n_head * s.head_dim, s.q_lora_rank, "q_b");
    check_matrix(w.kv, s.head_dim, s.n_embd, "kv");
    check_matrix(w.o_a, s.o_groups * s.o_lora_rank, s.n_head * s.head_dim / s.o_groups, "o_a");
    check_matrix(w.o_b, s.n_embd, s.o_groups * s.o_lora_rank, "o_b");
    check_vector(w.q_a_norm, "q_a_norm");
    check_vector(w.kv_norm, "kv_norm");
    check_vector(w.sinks, "sinks");
    if (s.kind != DS4_ATTN_WINDOW) {
        check_compressor(w.compressor, series_count(s.kind), s.head_dim, s.n_embd, "compressor");
    }
    if (s.kind == DS4_ATTN_CSA) {
        require(s.index_n_head > 0 && s.index_top_k > 0 && s.index_head_dim >= s.n_rot,
                "indexer needs positive heads and top_k and index_head_dim >= n_rot");
        check_compressor(w.indexer.compressor, 2, s.index_head_dim, s.n_embd, "indexer compressor");
        check_matrix(w.indexer.q_b, s.index_n_head * s.index_head_dim, s.q_lora_rank, "indexer q_b");
        check_matrix(w.indexer.proj, s.index_n_head, s.n_embd, "indexer proj");
    }
}

void ds4_attention_state_init(const Ds4AttentionShape &s, Ds4AttentionState &state, int64_t rewind_depth) {
    require(rewind_depth >= 0, "rewind_depth " + std::to_string(rewind_depth) + " is negative");
    state.n_past = 0;
    state.first_position = 0;
    state.rewind_depth = rewind_depth;
    state.window_rows = s.window + rewind_depth;
    state.window_kv.assign(size_t(state.window_rows * s.head_dim), 0.0f);
    const auto init = [&](Ds4CompressorState &c, int64_t series, int64_t dim) {
        c.rows = series > 0 ? series * s.compress_ratio + rewind_depth : 0;
        c.kv.assign(size_t(c.rows * series * dim), 0.0f);
        c.score.assign(c.kv.size(), 0.0f);
        c.entries.clear();
    };
    init(state.compressor, s.kind == DS4_ATTN_WINDOW ? 0 : series_count(s.kind), s.head_dim);
    init(state.indexer, s.kind == DS4_ATTN_CSA ? 2 : 0, s.index_head_dim);
}

void ds4_attention_rewind(const Ds4AttentionShape &s, Ds4AttentionState &state, int64_t n_past) {
    require(n_past >= std::max(state.n_past - state.rewind_depth, state.first_position) && n_past <= state.n_past,
            "rewind to position " + std::to_string(n_past) + " from " + std::to_string(state.n_past) +
                " is outside the state's rewind depth of " + std::to_string(state.rewind_depth));
    if (s.kind != DS4_ATTN_WINDOW) {
        // entries of the windows complete before n_past, w < floor(n_past / m)
        state.compressor.entries.resize(size_t(n_past / s.compress_ratio * s.head_dim));
        if (s.kind == DS4_ATTN_CSA) state.indexer.entries.resize(size_t(n_past / s.compress_ratio * s.index_head_dim));
    }
    state.n_past = n_past;
}

void ds4_attention_seek(const Ds4AttentionShape &s, Ds4AttentionState &state, int64_t p) {
    require(s.kind == DS4_ATTN_WINDOW, "seek: only a window layer can start without its history");
    require(p >= 0, "seek: position " + std::to_string(p) + " is negative");
    state.n_past = state.first_position = p;
}

void ds4_attention_forward(const Ds4AttentionShape &s, const Ds4AttentionWeights &w, const float *rope_freqs,
                           const float *x, int64_t n_tokens, float *out, Ds4AttentionState &state,
                           ThreadPool &pool, Ds4AttentionScratch &scratch) {
    ds4_attention_validate(s, w);
    require(state.window_rows >= s.window && state.window_kv.size() == size_t(state.window_rows * s.head_dim),
            "state is not sized for this shape (ds4_attention_state_init)");
    if (n_tokens <= 0) return;
    const int64_t n_past = state.n_past, d = s.head_dim, n_head = s.n_head, m = s.compress_ratio;
    const int64_t c = s.kind == DS4_ATTN_WINDOW ? 0 : series_count(s.kind);
    const auto sized = [](std::vector<float> &v, int64_t n) {
        if (v.size() < size_t(n)) v.resize(size_t(n));
        return v.data();
    };

    // ---- projections of x: one quantization of x for everything that reads it
    float *q_lora = sized(scratch.q_lora, n_tokens * s.q_lora_rank);  // [n_tokens, q_lora_rank]
    float *kv = sized(scratch.kv, n_tokens * d);                          // [n_tokens, head_dim]
    float *comp_kv = sized(scratch.comp_kv, n_tokens * c * d);            // [n_tokens, c * head_dim]
    float *comp_gate = sized(scratch.comp_gate, n_tokens * c * d);        // [n_tokens, c * head_dim]
    {
        MatmulOutput outputs[] = {{&w.q_a, q_lora}, {&w.kv, kv}, {&w.compressor.kv, comp_kv},
                                  {&w.compressor.gate, comp_gate}};
        matmul_shared_input(outputs, c > 0 ? 4 : 2, x, n_tokens, pool, scratch.matmul);
    }
    const int64_t di = s.index_head_dim, n_index_head = s.index_n_head;
    float *index_kv = nullptr, *index_gate = nullptr, *index_weights = nullptr;
    if (s.kind == DS4_ATTN_CSA) {
        index_kv = sized(scratch.index_kv, n_tokens * 2 * di);           // [n_tokens, 2 * index_head_dim]
        index_gate = sized(scratch.index_gate, n_tokens * 2 * di);       // [n_tokens, 2 * index_head_dim]
        index_weights = sized(scratch.index_weights, n_tokens * n_index_head);  // [n_tokens, index_n_head]
        MatmulOutput outputs[] = {{&w.indexer.compressor.kv, index_kv}, {&w.indexer.compressor.gate, index_gate},
                                  {&w.indexer.proj, index_weights}};
        matmul_shared_input(outputs, 3, x, n_tokens, pool, scratch.matmul);
    }

    // ---- the batch's rotary angles, shared by its queries, keys, indexer queries and the output's undo
    const int64_t n_pairs = s.n_rot / 2;
    float *rope_cos = sized(scratch.rope_cos, n_tokens * n_pairs);  // [n_tokens, n_rot / 2]
    float *rope_sin = sized(scratch.rope_sin, n_tokens * n_pairs);  // [n_tokens, n_rot / 2]
    for (int64_t t = 0; t < n_tokens; ++t) {
        rope_angles(rope_freqs, s.n_rot, n_past + t, rope_cos + t * n_pairs, rope_sin + t * n_pairs);
    }

    // ---- queries: q = RoPE(RMS(W_qb RMS_w(W_qa x))) per head, no weight on the per-head norm
    rms_norm(q_lora, w.q_a_norm, n_tokens, s.q_lora_rank, s.eps, q_lora);
    float *q = sized(scratch.q, n_tokens * n_head * d);  // [n_tokens, n_head, head_dim]
    matmul(w.q_b, q_lora, n_tokens, q, pool, scratch.matmul);
    for (int64_t t = 0; t < n_tokens; ++t) {
        for (int64_t h = 0; h < n_head; ++h) {
            float *head = q + (t * n_head + h) * d;
            // transformers' unweighted norm: x * rsqrt(mean(x^2) + eps), the mean and root in float32
            float sum = 0.0f;
            for (int64_t i = 0; i < d; ++i) sum += head[i] * head[i];
            const float scale = 1.0f / std::sqrt(sum / float(d) + s.eps);
            for (int64_t i = 0; i < d; ++i) head[i] *= scale;
        }
        rope_rotate(q + t * n_head * d, n_head, d, s.n_rot, rope_cos + t * n_pairs, rope_sin + t * n_pairs, false);
    }

    // ---- the single kv head: RoPE(RMS_w(W_kv x))
    rms_norm(kv, w.kv_norm, n_tokens, d, s.eps, kv);
    for (int64_t t = 0; t < n_tokens; ++t) {
        rope_rotate(kv + t * d, 1, d, s.n_rot, rope_cos + t * n_pairs, rope_sin + t * n_pairs, false);
    }

    // ---- compressed entries completed by this batch, before any query reads them
    if (c > 0) {
        compressor_update(w.compressor, m, c, d, s.eps, s.n_rot, rope_freqs, comp_kv, comp_gate, n_past, n_tokens,
                          state.compressor, scratch.pool_weights);
    }

    // ---- CSA: the lightning indexer picks each query's top-k visible entries
    int64_t *selected = nullptr, *n_selected = nullptr;
    if (s.kind == DS4_ATTN_CSA) {
        compressor_update(w.indexer.compressor, m, 2, di, s.eps, s.n_rot, rope_freqs, index_kv, index_gate, n_past,
                          n_tokens, state.indexer, scratch.pool_weights);
        float *index_q = sized(scratch.index_q, n_tokens * n_index_head * di);  // [n_tokens, index_n_head, di]
        matmul(w.indexer.q_b, q_lora, n_tokens, index_q, pool, scratch.matmul);
        if (scratch.selected.size() < size_t(n_tokens * s.index_top_k)) {
            scratch.selected.resize(size_t(n_tokens * s.index_top_k));
        }
        if (scratch.n_selected.size() < size_t(n_tokens)) scratch.n_selected.resize(size_t(n_tokens));
        selected = scratch.selected.data();      // [n_tokens, index_top_k]
        n_selected = scratch.n_selected.data();  // [n_tokens]
        const int64_t max_visible = visible_entries(n_past + n_tokens - 1, m);
        if (scratch.thread_candidates.size() < size_t(pool.n_threads() * max_visible)) {
            scratch.thread_candidates.resize(size_t(pool.n_threads() * max_visible));
        }
        for (int64_t t = 0; t < n_tokens; ++t) {
            rope_rotate(index_q + t * n_index_head * di, n_index_head, di, s.n_rot, rope_cos + t * n_pairs,
                        rope_sin + t * n_pairs, false);
        }
        // Scores go to the threads in tasks of (token, kIndexChunk entries), not one task per token: a decode
        // step's single query still spreads over every thread, and its entries grow with the context (a quarter
        // of the positions). Tokens go in blocks whose scores fit in kIndexScoreFloats.
        const int64_t n_chunks = (max_visible + kIndexChunk - 1) / kIndexChunk;
        const int64_t block = std::clamp<int64_t>(kIndexScoreFloats / std::max<int64_t>(1, max_visible), 1, n_tokens);
        float *scores = sized(scratch.index_scores, block * max_visible);  // [block, max_visible]
        const VecDotFn dot = kernels().vec_dot[DTYPE_F32];
        const float score_scale = 1.0f / std::sqrt(float(di)), weight_scale = 1.0f / std::sqrt(float(n_index_head));
        const float *keys = state.indexer.entries.data();  // [n_entries, di]
        for (int64_t t0 = 0; t0 < n_tokens; t0 += block) {
            const int64_t n_block = std::min(block, n_tokens - t0);
            pool.parallel_for(n_block * n_chunks, [&](int64_t task, int) {
                const int64_t t = t0 + task / n_chunks, e_begin = (task % n_chunks) * kIndexChunk;
                const int64_t e_end = std::min(visible_entries(n_past + t, m), e_begin + kIndexChunk);
                const float *qt = index_q + t * n_index_head * di;
                const float *head_weights = index_weights + t * n_index_head;  // [index_n_head]
                for (int64_t e = e_begin; e < e_end; ++e) {
                    // sum_h w_h * ReLU(q_h . k_e) / sqrt(di), heads in order as transformers sums them; the key
                    // is the kernel's "weight" row so up to VEC_DOT_MAX_X heads share one pass over it
                    float score = 0.0f;
                    for (int64_t h0 = 0; h0 < n_index_head; h0 += VEC_DOT_MAX_X) {
                        const int n_x = int(std::min<int64_t>(VEC_DOT_MAX_X, n_index_head - h0));
                        float qk[VEC_DOT_MAX_X];
                        dot(di, keys + e * di, qt + h0 * di, size_t(di) * sizeof(float), n_x, qk);
                        for (int i = 0; i < n_x; ++i) {
                            score += std::max(qk[i], 0.0f) * score_scale * (head_weights[h0 + i] * weight_scale);
                        }
                    }
                    scores[(t - t0) * max_visible + e] = score;
                }
            });
            pool.parallel_for(n_block, [&](int64_t i, int thread) {
                // top-k by score, ties to the lower index; then back to index order, so that the attention below
                // sums the chosen entries in position order
                const int64_t t = t0 + i, n_visible = visible_entries(n_past + t, m);
                const float *token_scores = scores + i * max_visible;  // [n_visible]
                int64_t *candidates = scratch.thread_candidates.data() + thread * max_visible;  // [n_visible]
                for (int64_t e = 0; e < n_visible; ++e) candidates[e] = e;
                const int64_t k = std::min(s.index_top_k, n_visible);
                std::partial_sort(candidates, candidates + k, candidates + n_visible, [&](int64_t a, int64_t b) {
                    return token_scores[a] > token_scores[b] || (token_scores[a] == token_scores[b] && a < b);
                });
                int64_t *chosen = selected + t * s.index_top_k;
                std::copy(candidates, candidates + k, chosen);
                std::sort(chosen, chosen + k);
                n_selected[t] = k;
            });
        }
    }

    // ---- attention: window keys, then the visible (HCA) or selected (CSA) entries, one softmax with the sink.
    // All heads read the same keys (one kv head), so a task takes a block of up to VEC_DOT_MAX_X heads of one
    // token and scores each key against all of them in one kernel call.
    const int64_t heads_per_group = n_head / s.o_groups, group_width = heads_per_group * d;
    float *attn_out = sized(scratch.attn_out, n_tokens * n_head * d);  // [o_groups, n_tokens, group_width]
    const int64_t max_entries = c > 0 ? visible_entries(n_past + n_tokens - 1, m) : 0;
    const int64_t max_keys = s.window + (s.kind == DS4_ATTN_CSA ? std::min(s.index_top_k, max_entries) : max_entries);
    const int64_t scores_stride = VEC_DOT_MAX_X * max_keys;
    if (scratch.thread_scores.size() < size_t(pool.n_threads() * scores_stride)) {
        scratch.thread_scores.resize(size_t(pool.n_threads() * scores_stride));
    }
    if (scratch.thread_keys.size() < size_t(pool.n_threads() * max_keys)) {
        scratch.thread_keys.resize(size_t(pool.n_threads() * max_keys));
    }
    const float *entries = c > 0 ? state.compressor.entries.data() : nullptr;  // [n_entries, head_dim]
    const float *window_ring = state.window_kv.data();                           // [window_rows, head_dim]
    const VecDotFn dot = kernels().vec_dot[DTYPE_F32];
    const ExpRowFn exp_row = kernels().exp_row;
    const float scale = 1.0f / std::sqrt(float(d));
    const int64_t head_blocks = (n_head + VEC_DOT_MAX_X - 1) / VEC_DOT_MAX_X;
    pool.parallel_for(n_tokens * head_blocks, [&](int64_t task, int thread) {
        const int64_t t = task / head_blocks, h0 = (task % head_blocks) * VEC_DOT_MAX_X, position = n_past + t;
        const int n_heads = int(std::min<int64_t>(VEC_DOT_MAX_X, n_head - h0));

        // the query's keys in softmax order: window positions (the batch's own rows, else the ring's), then
        // entries, all visible ones (HCA) or the indexer's choice (CSA)
        const float **keys = scratch.thread_keys.data() + thread * max_keys;  // [n_keys]
        int64_t n_keys = 0;
        for (int64_t p = std::max(state.first_position, position - s.window + 1); p <= position; ++p) {
            keys[n_keys++] = p >= n_past ? kv + (p - n_past) * d : window_ring + (p % state.window_rows) * d;
        }
        if (s.kind == DS4_ATTN_HCA) {
            for (int64_t e = 0; e < visible_entries(position, m); ++e) keys[n_keys++] = entries + e * d;
        }
        if (s.kind == DS4_ATTN_CSA) {
            for (int64_t i = 0; i < n_selected[t]; ++i) keys[n_keys++] = entries + selected[t * s.index_top_k + i] * d;
        }

        float *scores = scratch.thread_scores.data() + thread * scores_stride;  // [n_heads, max_keys]
        for (int64_t j = 0; j < n_keys; ++j) {
            float qk[VEC_DOT_MAX_X];
            dot(d, keys[j], q + (t * n_head + h0) * d, size_t(d) * sizeof(float), n_heads, qk);
            for (int i = 0; i < n_heads; ++i) scores[i * max_keys + j] = qk[i] * scale;
        }
        float *outs[VEC_DOT_MAX_X];  // [n_heads] each head's output row
        for (int i = 0; i < n_heads; ++i) {
            const int64_t h = h0 + i;
            float *p = scores + i * max_keys;  // [n_keys]
            float max_score = w.sinks[h];
            for (int64_t j = 0; j < n_keys; ++j) max_score = std::max(max_score, p[j]);
            exp_row(n_keys, p, max_score, p);
            float sum;
            exp_row(1, &w.sinks[h], max_score, &sum);  // the sink only adds to the denominator
            for (int64_t j = 0; j < n_keys; ++j) sum += p[j];
            for (int64_t j = 0; j < n_keys; ++j) p[j] /= sum;
            outs[i] = attn_out + ((h / heads_per_group) * n_tokens + t) * group_width + (h % heads_per_group) * d;
        }
        weighted_rows(scores, max_keys, n_heads, keys, n_keys, d, outs);
        for (int i = 0; i < n_heads; ++i) {
            // K = V carried the keys' rotation into the output: rotate back by the query's angle
            rope_rotate(outs[i], 1, d, s.n_rot, rope_cos + t * n_pairs, rope_sin + t * n_pairs, true);
        }
    });

    // ---- the batch's keys into the ring (after the queries read the older rows they replace)
    for (int64_t t = std::max<int64_t>(0, n_tokens - state.window_rows); t < n_tokens; ++t) {
        std::copy(kv + t * d, kv + (t + 1) * d, state.window_kv.data() + ((n_past + t) % state.window_rows) * d);
    }
    state.n_past += n_tokens;

    // ---- grouped low-rank output: group g's heads through rows [g R, (g+1) R) of W_oa, then W_ob
    const int64_t r = s.o_lora_rank;
    float *lora_out = sized(scratch.lora_out, s.o_groups * n_tokens * r);  // [o_groups, n_tokens, o_lora_rank]
    // The groups' products in one job (one hand-off to the threads instead of one per group).
    WeightMatrix groups[kMaxSharedOutputs];
    MatmulProblem products[kMaxSharedOutputs];
    for (int64_t g0 = 0; g0 < s.o_groups; g0 += kMaxSharedOutputs) {
        const int n = int(std::min<int64_t>(kMaxSharedOutputs, s.o_groups - g0));
        for (int i = 0; i < n; ++i) {
            const int64_t g = g0 + i;
            groups[i] = w.o_a;
            groups[i].data = static_cast<const uint8_t *>(w.o_a.data) + size_t(g * r) * w.o_a.row_stride;
            groups[i].n_rows = r;
            products[i] = {&groups[i], attn_out + g * n_tokens * group_width, n_tokens, lora_out + g * n_tokens * r};
        }
        matmul_grouped(products, n, pool, scratch.matmul);
    }
    float *lora_by_token = sized(scratch.lora_by_token, n_tokens * s.o_groups * r);  // [n_tokens, o_groups * R]
    for (int64_t g = 0; g < s.o_groups; ++g) {
        for (int64_t t = 0; t < n_tokens; ++t) {
            std::copy(lora_out + (g * n_tokens + t) * r, lora_out + (g * n_tokens + t + 1) * r,
                      lora_by_token + (t * s.o_groups + g) * r);
        }
    }
    matmul(w.o_b, lora_by_token, n_tokens, out, pool, scratch.matmul);
}

}  // namespace flashmtp
