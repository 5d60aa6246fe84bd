// The batch's pass through an MoE layer:
//  1. one matmul job over the router and the shared expert's gate and up (they all read x);
//  2. routing per token, then the token slots grouped by expert: rows of x copied into expert order;
//  3. every picked expert's gate and up on its rows (the pair sharing the quantized input), in grouped jobs;
//     the SwiGLUs; every picked expert's down projection and the shared expert's, in grouped jobs;
//  4. the combine, token by token (x is no longer read: out may be x).
// Scores are computed in double and rounded once: libm's double exp / log1p / sqrt give the same bits whatever
// the batch, and the rounding error (<= 0.5 ulp) stays far below the float noise of the logits themselves.
#include "layers/moe.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "layers/ffn.h"

namespace flashmtp {

namespace {

// torch.nn.functional.softplus's threshold: above it softplus(z) is z itself (log1p(e^z) - z < 2.1e-9).
constexpr double kSoftplusThreshold = 20.0;

float gating_score(MoeGatingFunc gating, float logit) {
    const double z = logit;
    if (gating == MOE_GATING_SIGMOID) return float(1.0 / (1.0 + std::exp(-z)));
    return float(std::sqrt(z > kSoftplusThreshold ? z : std::log1p(std::exp(z))));
}

void check_router(const MoeRouter &r) {
    if (r.n_expert < 1 || r.n_expert_used < 1 || r.n_expert_used > r.n_expert) {
        throw std::invalid_argument("moe: " + std::to_string(r.n_expert_used) + " experts per token of " +
                                    std::to_string(r.n_expert) + ": need 1 <= k <= n_expert");
    }
    if (r.gating != MOE_GATING_SIGMOID && r.gating != MOE_GATING_SQRT_SOFTPLUS) {
        throw std::invalid_argument("moe: unknown expert gating function " + std::to_string(r.gating) +
                                    " (supported: 2 = sigmoid, 4 = sqrtsoftplus)");
    }
    if (r.tid2eid) {
        if (r.selection_bias) throw std::invalid_argument("moe: a hash layer (tid2eid) has no selection bias");
        if (r.n_vocab < 1) throw std::invalid_argument("moe: tid2eid has " + std::to_string(r.n_vocab) + " rows");
    }
}

// The order top-k ranks experts in: larger selection value first, equal values by lower expert id, NaN last.
// A total order, so the picks are deterministic whatever the values.
struct SelectionKey {
    float value;
    int64_t expert;
    bool operator<(const SelectionKey &o) const {  // "ranks after o"
        return value < o.value || (value == o.value && expert > o.expert);
    }
};

SelectionKey selection_key(const MoeRouter &r, const float *score, int64_t e) {
    const float value = r.selection_bias ? score[e] + r.selection_bias[e] : score[e];
    return {std::isnan(value) ? -INFINITY : value, e};
}

// ids[0..k) = the experts of the k highest ranks, highest first: each pass picks the best of those ranking
// after the previous pick, so nothing needs marking (k * n_expert compares: 6 * 256 for V4-Flash).
void top_k(const MoeRouter &r, const float *score, int32_t *ids) {
    SelectionKey last{INFINITY, -1};
    for (int64_t i = 0; i < r.n_expert_used; ++i) {
        SelectionKey best{0.0f, -1};
        for (int64_t e = 0; e < r.n_expert; ++e) {
            const SelectionKey key = selection_key(r, score, e);
            if (key < last && (best.expert < 0 || best < key)) best = key;
        }
        ids[i] = int32_t(best.expert);
        last = best;
    }
}

void check_matrix(const WeightMatrix &w, int64_t n_rows, int64_t n_cols, const char *name) {
    if (w.n_rows != n_rows || w.n_cols != n_cols) {
        throw std::invalid_argument(std::string("moe: ") + name + " is " + std::to_string(w.n_rows) + " x " +
                                    std::to_string(w.n_cols) + ", expected " + std::to_string(n_rows) + " x " +
                                    std::to_string(n_cols) + " (rows x columns)");
    }
}

// Collects matrix products and runs them kMaxSharedOutputs at a time through matmul_grouped: a job per group
// of experts instead of one per expert. Holds the views the products point to. An expert's gate and up, added
// one after the other, always fall in the same group (the group size is even), so they share the quantized x.
class GroupedMatmul {
public:
    GroupedMatmul(ThreadPool &pool, MatmulScratch &scratch) : pool_(pool), scratch_(scratch) {}

    void add(const WeightMatrix &w, const float *x, int64_t n_tokens, float *y) {
        if (n_ == kMaxSharedOutputs) flush();
        matrices_[n_] = w;
        problems_[n_] = {&matrices_[n_], x, n_tokens, y};
        ++n_;
    }

    void flush() {
        if (n_ > 0) matmul_grouped(problems_, n_, pool_, scratch_);
        n_ = 0;
    }

private:
    ThreadPool &pool_;
    MatmulScratch &scratch_;
    WeightMatrix matrices_[kMaxSharedOutputs];
    MatmulProblem problems_[kMaxSharedOutputs];
    int n_ = 0;
};
static_assert(kMaxSharedOutputs % 2 == 0, "an expert's gate and up must fit one group");

}  // namespace

void moe_check_layer(const MoeLayer &l) {
    check_router(l.router);
    const int64_t n_embd = l.gate_inp.n_cols, n_expert = l.router.n_expert;
    const int64_t n_ff = l.gate_exps.n_rows, n_ff_shared = l.gate_shexp.n_rows;
    check_matrix(l.gate_inp, n_expert, n_embd, "ffn_gate_inp");
    check_matrix(l.gate_exps, n_ff, n_embd, "ffn_gate_exps");
    check_matrix(l.up_exps, n_ff, n_embd, "ffn_up_exps");
    check_matrix(l.down_exps, n_embd, n_ff, "ffn_down_exps");
    check_matrix(l.gate_shexp, n_ff_shared, n_embd, "ffn_gate_shexp");
    check_matrix(l.up_shexp, n_ff_shared, n_embd, "ffn_up_shexp");
    check_matrix(l.down_shexp, n_embd, n_ff_shared, "ffn_down_shexp");
}

void moe_route(const MoeRouter &router, float *logits, const int32_t *token_ids, int64_t n_tokens, int32_t *ids,
               float *weights) {
    check_router(router);
    if (router.tid2eid && !token_ids) {
        throw std::invalid_argument("moe: a hash layer (tid2eid) needs the token ids");
    }
    const int64_t n_expert = router.n_expert, k = router.n_expert_used;
    for (int64_t t = 0; t < n_tokens; ++t) {
        float *score = logits + t * n_expert;
        for (int64_t e = 0; e < n_expert; ++e) score[e] = gating_score(router.gating, score[e]);
        int32_t *token_ids_out = ids + t * k;
        if (router.tid2eid) {
            const int32_t token = token_ids[t];
            if (token < 0 || token >= router.n_vocab) {
                throw std::invalid_argument("moe: token id " + std::to_string(token) + " at batch position " +
                                            std::to_string(t) + " is outside the hash table's " +
                                            std::to_string(router.n_vocab) + " rows (tid2eid)");
            }
            for (int64_t i = 0; i < k; ++i) {
                const int32_t e = router.tid2eid[int64_t(token) * k + i];
                if (e < 0 || e >= n_expert) {
                    throw std::invalid_argument("moe: tid2eid[" + std::to_string(token) + "][" +
                                                std::to_string(i) + "] = " + std::to_string(e) +
                                                " is not an expert id (0.." + std::to_string(n_expert - 1) + ")");
                }
                token_ids_out[i] = e;
            }
        } else {
            top_k(router, score, token_ids_out);
        }
        float *w = weights + t * k;
        float sum = 0.0f;  // in slot order
        for (int64_t i = 0; i < k; ++i) {
            w[i] = score[token_ids_out[i]];
            sum += w[i];
        }
        // transformers: weights / (weights.sum() + 1e-20) * routed_scaling_factor, divided then scaled.
        const float denominator = sum + 1e-20f;
        for (int64_t i = 0; i < k; ++i) {
            w[i] = router.weights_norm ? w[i] / denominator * router.weights_scale : w[i] * router.weights_scale;
        }
    }
}

WeightMatrix moe_expert_matrix(const WeightMatrix &experts, int64_t e) {
    WeightMatrix w = experts;
    w.data = static_cast<const uint8_t *>(experts.data) + size_t(e) * size_t(experts.n_rows) * experts.row_stride;
    return w;
}

void moe_forward(const MoeLayer &layer, const float *x, const int32_t *token_ids, int64_t n_tokens, float *out,
                 ThreadPool &pool, MoeScratch &s) {
    moe_check_layer(layer);
    if (n_tokens < 0) throw std::invalid_argument("moe: negative token count " + std::to_string(n_tokens));
    if (n_tokens == 0) return;
    const int64_t n_embd = layer.gate_inp.n_cols, n_expert = layer.router.n_expert, k = layer.router.n_expert_used;
    const int64_t n_ff = layer.gate_exps.n_rows, n_ff_shared = layer.gate_shexp.n_rows;
    const int64_t n_slots = n_tokens * k;

    s.logits.resize(size_t(n_tokens * n_expert));
    s.shared_gate.resize(size_t(n_tokens * n_ff_shared));
    s.shared_up.resize(size_t(n_tokens * n_ff_shared));
    const MatmulOutput x_products[3] = {{&layer.gate_inp, s.logits.data()},
                                        {&layer.gate_shexp, s.shared_gate.data()},
                                        {&layer.up_shexp, s.shared_up.data()}};
    matmul_shared_input(x_products, 3, x, n_tokens, pool, s.matmul);

    s.ids.resize(size_t(n_slots));
    s.weights.resize(size_t(n_slots));
    moe_route(layer.router, s.logits.data(), token_ids, n_tokens, s.ids.data(), s.weights.data());

    // Group the slots by expert: expert e's rows are [expert_begin[e], expert_begin[e + 1]), in (token, slot)
    // order. Which row a slot lands in never changes its bits (matmul is invariant to a row's position).
    s.expert_begin.assign(size_t(n_expert + 1), 0);
    for (int64_t i = 0; i < n_slots; ++i) ++s.expert_begin[s.ids[i] + 1];
    for (int64_t e = 0; e < n_expert; ++e) s.expert_begin[e + 1] += s.expert_begin[e];
    s.expert_cursor.assign(s.expert_begin.begin(), s.expert_begin.end() - 1);
    s.slot_row.resize(size_t(n_slots));
    s.row_token.resize(size_t(n_slots));
    s.row_weight.resize(size_t(n_slots));
    for (int64_t i = 0; i < n_slots; ++i) {
        const int64_t row = s.expert_cursor[s.ids[i]]++;
        s.slot_row[i] = row;
        s.row_token[row] = i / k;
        s.row_weight[row] = s.weights[i];
    }
    // On the calling thread: a copy of k rows per token costs well under 1% of the experts' products, less
    // than a hand-off at decode.
    s.x_grouped.resize(size_t(n_slots * n_embd));
    for (int64_t row = 0; row < n_slots; ++row) {
        std::memcpy(&s.x_grouped[row * n_embd], x + s.row_token[row] * n_embd, size_t(n_embd) * sizeof(float));
    }

    // Each picked expert once, on all its rows: its weights are read once for the batch. The products go to the
    // threads in groups (a decode step: one job for the gate and up of all 6 experts, one for the 6 down
    // projections and the shared expert's). A lone token's experts all read x itself, quantized once.
    GroupedMatmul products(pool, s.matmul);
    s.gate.resize(size_t(n_slots * n_ff));
    s.up.resize(size_t(n_slots * n_ff));
    for (int64_t e = 0; e < n_expert; ++e) {
        const int64_t begin = s.expert_begin[e], n_rows = s.expert_begin[e + 1] - begin;
        if (n_rows == 0) continue;
        const float *input = n_tokens == 1 && n_rows == 1 ? x : &s.x_grouped[begin * n_embd];
        products.add(moe_expert_matrix(layer.gate_exps, e), input, n_rows, &s.gate[begin * n_ff]);
        products.add(moe_expert_matrix(layer.up_exps, e), input, n_rows, &s.up[begin * n_ff]);
    }
    products.flush();
    swiglu(s.gate.data(), s.up.data(), n_slots * n_ff, pool, layer.swiglu_limit_exp);
    swiglu(s.shared_gate.data(), s.shared_up.data(), n_tokens * n_ff_shared, pool, layer.swiglu_limit_shexp);
    s.y_grouped.resize(size_t(n_slots * n_embd));
    for (int64_t e = 0; e < n_expert; ++e) {
        const int64_t begin = s.expert_begin[e], n_rows = s.expert_begin[e + 1] - begin;
        if (n_rows == 0) continue;
        products.add(moe_expert_matrix(layer.down_exps, e), &s.gate[begin * n_ff], n_rows,
                     &s.y_grouped[begin * n_embd]);
    }
    s.shared_out.resize(size_t(n_tokens * n_embd));
    products.add(layer.down_shexp, s.shared_gate.data(), n_tokens, s.shared_out.data());
    products.flush();

    // A token's rows in ascending order are its slots in ascending expert id (then slot): the fixed sum order.
    pool.parallel_for(n_tokens, [&](int64_t t, int) {
        int64_t *rows = &s.slot_row[t * k];
        std::sort(rows, rows + k);
        float *o = out + t * n_embd;
        const float *y = &s.y_grouped[rows[0] * n_embd];
        const float w = s.row_weight[rows[0]];
        for (int64_t d = 0; d < n_embd; ++d) o[d] = w * y[d];
        for (int64_t i = 1; i < k; ++i) {
            const float *y_i = &s.y_grouped[rows[i] * n_embd];
            const float w_i = s.row_weight[rows[i]];
            for (int64_t d = 0; d < n_embd; ++d) o[d] += w_i * y_i[d];
        }
        const float *shared = &s.shared_out[t * n_embd];
        for (int64_t d = 0; d < n_embd; ++d) o[d] += shared[d];
    });
}

}  // namespace flashmtp
