// Token sampling: turns one position's logits [n_vocab] and the recent token history into a token id.
// Owns: the settings and their validation, the transform chain, the per-position random numbers.
// Does not own: the logits (the session computes them) or the history (the caller keeps it).
//
// The chain, in llama.cpp's common default order (common/sampling.cpp; the samplers it has that we lack,
// DRY, top-n-sigma, typical-p and XTC, sit between these steps and are off by default there):
//   1. penalties   over the last penalty_last_n tokens of the history, on float32 logits as llama.cpp does:
//                  a token seen c > 0 times gets  logit = logit <= 0 ? logit * repetition_penalty
//                                                                   : logit / repetition_penalty
//                  then                          logit -= c * frequency_penalty + presence_penalty
//   2. top_k       keep the k highest logits (0: keep all)
//   3. top_p       softmax at temperature 1 over what is left; keep the shortest prefix, highest first, whose
//                  probabilities sum to >= top_p (1: keep all)
//   4. min_p       keep tokens whose logit >= max logit + log(min_p), i.e. p >= min_p * p_max (0: keep all)
//   5. temperature softmax of logit / temperature over the survivors; temperature 0 is greedy: the argmax of
//                  the penalised logits, lowest id on ties (steps 2-4 always keep the argmax, so they are moot)
//   6. sample      inverse CDF of that distribution at one uniform number
// Candidates are ordered by logit, highest first, lowest id on ties, so every cut and the inverse CDF are
// deterministic. After the float32 penalties everything runs in double. Steps 3 and 4 each keep a prefix of
// that order and min_p's threshold depends only on the max logit, so the two are computed together and, when
// top_k keeps everything, only the head they can keep is sorted (no full sort of a 150k vocabulary).
//
// Random numbers are a pure function of (seed, position): a counter-based generator (splitmix64 mixing),
// not a stream. Sampling the token at position p uses the same uniform number whatever was sampled, drafted
// or rewound before, which speculative decoding relies on: a rewound and re-sampled position gets the token
// it would have got without speculation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace flashmtp {

// Defaults are llama.cpp's common defaults (penalties off).
struct SamplerParams {
    float temperature = 0.8f;         // >= 0; 0 is greedy
    int32_t top_k = 40;               // >= 0; 0 disables
    float top_p = 0.95f;              // in (0, 1]; 1 disables
    float min_p = 0.05f;              // in [0, 1]; 0 disables
    float repetition_penalty = 1.0f;  // > 0 (multiplicative); 1 disables
    float presence_penalty = 0.0f;    // finite, subtracted once per token present in the window; 0 disables
    float frequency_penalty = 0.0f;   // finite, subtracted once per occurrence in the window; 0 disables
    int32_t penalty_last_n = 64;      // window of the history the penalties see; -1 the whole history, 0 none
    uint64_t seed = 0;

    // Throws std::invalid_argument naming the first invalid setting, its value and the valid range.
    void validate() const;
};

// The distribution the sampler draws from, after every transform: only tokens with a chance to be drawn,
// ordered by probability, highest first (lowest id on ties). probs sum to 1 up to rounding.
struct TokenDistribution {
    std::vector<int32_t> ids;  // [n_kept]
    std::vector<float> probs;  // [n_kept]
};

// One sampler per sequence: it keeps scratch buffers between calls, so calls on one object must not overlap.
class Sampler {
public:
    explicit Sampler(const SamplerParams &params);  // validates params

    const SamplerParams &params() const { return params_; }

    // logits [n_vocab] (finite or -inf, at least one finite); history [n_history], ids in [0, n_vocab), oldest
    // first. Throws std::invalid_argument on bad input.
    TokenDistribution distribution(const float *logits, int64_t n_vocab, const int32_t *history,
                                   size_t n_history);

    // The token at sequence position `position`: the inverse CDF of distribution() at uniform(position).
    int32_t sample(const float *logits, int64_t n_vocab, const int32_t *history, size_t n_history,
                   uint64_t position);

    // The uniform number in [0, 1) of (seed, position, stream). sample() uses stream 0; speculative
    // verification draws its acceptance tests and residual samples from further streams of the same position.
    double uniform(uint64_t position, uint64_t stream = 0) const;

private:
    struct Candidate {
        float logit;  // penalised
        int32_t id;
    };

    // Runs steps 1-5 into candidates_ (sorted, truncated) and probs_ (the same length, sums to 1).
    void transform(const float *logits, int64_t n_vocab, const int32_t *history, size_t n_history);

    SamplerParams params_;
    std::vector<float> penalised_;         // [n_vocab] logits after step 1
    std::vector<int32_t> counts_;          // [n_vocab] occurrences in the penalty window; zero between calls
    std::vector<Candidate> candidates_;    // [n_kept] survivors of the current step, in chain order
    std::vector<double> probs_;            // [n_kept] final probabilities, same order
};

}  // namespace flashmtp
