// The sampler chain of sampler.h: penalties -> top_k -> top_p -> min_p -> temperature -> inverse CDF.
#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>

namespace flashmtp {

namespace {

// Builds "SamplerParams: <name> must be <rule>, got <value>".
template <typename T>
std::invalid_argument invalid_setting(const char *name, const char *rule, T value) {
    std::ostringstream message;
    message << "SamplerParams: " << name << " must be " << rule << ", got " << value;
    return std::invalid_argument(message.str());
}

// The splitmix64 finaliser (Steele, Lea, Flood 2014): a bijection on 64-bit words whose outputs pass BigCrush
// for consecutive inputs, so hashing (seed, position, stream) through it gives independent uniforms.
uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

}  // namespace

void SamplerParams::validate() const {
    if (!(std::isfinite(temperature) && temperature >= 0.0f)) {
        throw invalid_setting("temperature", "finite and >= 0 (0 is greedy)", temperature);
    }
    if (top_k < 0) throw invalid_setting("top_k", ">= 0 (0 disables it)", top_k);
    if (!(top_p > 0.0f && top_p <= 1.0f)) throw invalid_setting("top_p", "in (0, 1] (1 disables it)", top_p);
    if (!(min_p >= 0.0f && min_p <= 1.0f)) throw invalid_setting("min_p", "in [0, 1] (0 disables it)", min_p);
    if (!(std::isfinite(repetition_penalty) && repetition_penalty > 0.0f)) {
        throw invalid_setting("repetition_penalty", "finite and > 0 (1 disables it)", repetition_penalty);
    }
    if (!std::isfinite(presence_penalty)) {
        throw invalid_setting("presence_penalty", "finite (0 disables it)", presence_penalty);
    }
    if (!std::isfinite(frequency_penalty)) {
        throw invalid_setting("frequency_penalty", "finite (0 disables it)", frequency_penalty);
    }
    if (penalty_last_n < -1) {
        throw invalid_setting("penalty_last_n", ">= -1 (-1 is the whole history, 0 disables penalties)",
                              penalty_last_n);
    }
}

Sampler::Sampler(const SamplerParams &params) : params_(params) { params_.validate(); }

double Sampler::uniform(uint64_t position, uint64_t stream) const {
    const uint64_t bits = splitmix64(splitmix64(splitmix64(params_.seed) ^ position) ^ stream);
    return double(bits >> 11) * 0x1.0p-53;  // the top 53 bits: every double in [0, 1) on a 2^-53 grid
}

void Sampler::transform(const float *logits, int64_t n_vocab, const int32_t *history, size_t n_history) {
    if (n_vocab <= 0 || n_vocab > std::numeric_limits<int32_t>::max()) {
        throw std::invalid_argument("sampler: n_vocab must be in [1, 2^31 - 1], got " + std::to_string(n_vocab));
    }
    for (int64_t id = 0; id < n_vocab; ++id) {
        if (std::isnan(logits[id]) || logits[id] == std::numeric_limits<float>::infinity()) {
            throw std::invalid_argument("sampler: logit of token " + std::to_string(id) + " is " +
                                        std::to_string(logits[id]) + "; logits must be finite or -inf");
        }
    }
    for (size_t i = 0; i < n_history; ++i) {
        if (history[i] < 0 || history[i] >= n_vocab) {
            throw std::invalid_argument("sampler: history[" + std::to_string(i) + "] = " +
                                        std::to_string(history[i]) + " is not a token id in [0, " +
                                        std::to_string(n_vocab) + ")");
        }
    }

    // 1. penalties, in float32 as llama.cpp applies them, so penalised logits match its bit for bit.
    penalised_.assign(logits, logits + n_vocab);
    const SamplerParams &p = params_;
    const bool penalise = p.repetition_penalty != 1.0f || p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f;
    if (penalise && p.penalty_last_n != 0) {
        const size_t window = p.penalty_last_n < 0 ? n_history : std::min(n_history, size_t(p.penalty_last_n));
        const int32_t *recent = history + (n_history - window);  // [window], the newest tokens
        counts_.resize(size_t(n_vocab), 0);
        for (size_t i = 0; i < window; ++i) ++counts_[size_t(recent[i])];
        // Each distinct token once: the first time it is met its count is used, then cleared for the next call.
        for (size_t i = 0; i < window; ++i) {
            const size_t id = size_t(recent[i]);
            const int32_t count = counts_[id];
            if (count == 0) continue;
            float &logit = penalised_[id];
            logit = logit <= 0.0f ? logit * p.repetition_penalty : logit / p.repetition_penalty;
            logit -= float(count) * p.frequency_penalty + p.presence_penalty;
            counts_[id] = 0;
        }
        // Checked once counts_ is clear again, so a throw leaves the sampler usable.
        for (size_t i = 0; i < window; ++i) {
            if (penalised_[size_t(recent[i])] == std::numeric_limits<float>::infinity()) {
                throw std::invalid_argument("sampler: the logit of token " + std::to_string(recent[i]) +
                                            " overflows float32 after the penalties");
            }
        }
    }

    // 5, greedy: the argmax survives every truncation, so steps 2-4 cannot change the result.
    candidates_.clear();
    probs_.clear();
    if (p.temperature == 0.0f) {
        const auto best = std::max_element(penalised_.begin(), penalised_.end());  // first of equal maxima
        if (*best == -std::numeric_limits<float>::infinity()) {
            throw std::invalid_argument("sampler: every logit is -inf; no token can be sampled");
        }
        candidates_.push_back({*best, int32_t(best - penalised_.begin())});
        probs_.push_back(1.0);
        return;
    }

    // -inf logits have probability 0 at every step: leave them out so they are never drawn.
    float max_logit_f = -std::numeric_limits<float>::infinity();
    for (int64_t id = 0; id < n_vocab; ++id) {
        if (penalised_[id] > -std::numeric_limits<float>::infinity()) {
            candidates_.push_back({penalised_[id], int32_t(id)});
            max_logit_f = std::max(max_logit_f, penalised_[id]);
        }
    }
    if (candidates_.empty()) throw std::invalid_argument("sampler: every logit is -inf; no token can be sampled");
    const double max_logit = max_logit_f;  // every step keeps it

    // 2. top_k. Order (logit down, id up) makes every later cut a prefix and breaks ties by id. Only
    // candidates_[0, n_sorted) are in that order; the rest is sorted below only as far as a cut needs.
    const auto higher = [](const Candidate &a, const Candidate &b) {
        return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
    };
    size_t n_sorted = 0;
    if (p.top_k > 0 && size_t(p.top_k) < candidates_.size()) {
        // A heap of the k best: for small k most candidates lose one comparison with the heap's top (measured
        // faster here than nth_element and a sort of the k).
        std::partial_sort(candidates_.begin(), candidates_.begin() + p.top_k, candidates_.end(), higher);
        candidates_.resize(size_t(p.top_k));
        n_sorted = candidates_.size();
    }

    // 3. top_p's normaliser: the softmax at temperature 1 (temperature comes later) over the top_k survivors,
    // summed in their current order (sorted after a top_k cut, by id otherwise).
    double top_p_sum = 0.0;
    if (p.top_p < 1.0f) {
        for (const Candidate &c : candidates_) top_p_sum += std::exp(double(c.logit) - max_logit);
    }

    // 4, first: min_p keeps logit >= max_logit + log(min_p), i.e. p >= min_p * p_max. Its threshold depends only
    // on the max, which top_p keeps, so the tokens under it can never survive: move them behind the head
    // [0, n_head) before any sorting, so usually far fewer candidates than the vocabulary are sorted.
    size_t n_head = candidates_.size();
    if (p.min_p > 0.0f) {
        const double threshold = max_logit + std::log(double(p.min_p));
        const auto above = [threshold](const Candidate &c) { return double(c.logit) >= threshold; };
        const auto head_end = n_sorted > 0 ? std::partition_point(candidates_.begin(), candidates_.end(), above)
                                           : std::partition(candidates_.begin(), candidates_.end(), above);
        n_head = size_t(head_end - candidates_.begin());
    }

    // 3, then: top_p keeps the shortest sorted prefix whose probabilities sum to >= top_p; the survivors of
    // both cuts are the shorter of the two prefixes. The head is sorted in growing chunks as the walk needs.
    size_t n_kept = n_head;
    double cumulative = 0.0;
    for (size_t i = 0; i < n_head && p.top_p < 1.0f; ++i) {
        if (i == n_sorted) {
            n_sorted = std::min(n_head, std::max<size_t>(256, 8 * n_sorted));
            std::partial_sort(candidates_.begin() + i, candidates_.begin() + n_sorted, candidates_.begin() + n_head,
                              higher);
        }
        cumulative += std::exp(double(candidates_[i].logit) - max_logit) / top_p_sum;
        if (cumulative >= double(p.top_p)) {
            n_kept = i + 1;
            break;
        }
    }
    if (n_sorted < n_kept) std::sort(candidates_.begin() + n_sorted, candidates_.begin() + n_kept, higher);
    candidates_.resize(n_kept);

    // 5. temperature and the final softmax.
    probs_.resize(candidates_.size());
    double sum = 0.0;
    for (size_t i = 0; i < candidates_.size(); ++i) {
        probs_[i] = std::exp((double(candidates_[i].logit) - max_logit) / double(p.temperature));
        sum += probs_[i];
    }
    for (double &prob : probs_) prob /= sum;
}

TokenDistribution Sampler::distribution(const float *logits, int64_t n_vocab, const int32_t *history,
                                        size_t n_history) {
    transform(logits, n_vocab, history, n_history);
    TokenDistribution result;
    result.ids.reserve(candidates_.size());
    for (const Candidate &c : candidates_) result.ids.push_back(c.id);
    result.probs.assign(probs_.begin(), probs_.end());
    return result;
}

int32_t Sampler::sample(const float *logits, int64_t n_vocab, const int32_t *history, size_t n_history,
                        uint64_t position) {
    transform(logits, n_vocab, history, n_history);
    // 6. inverse CDF: the first token whose cumulative probability exceeds u. Rounding can leave the total a
    // hair below u, hence the last token as the fallback.
    const double u = uniform(position);
    double cumulative = 0.0;
    for (size_t i = 0; i < candidates_.size(); ++i) {
        cumulative += probs_[i];
        if (u < cumulative) return candidates_[i].id;
    }
    return candidates_.back().id;
}

}  // namespace flashmtp
