// The sampler (csrc/runtime/sampler.h), checked against hand-computed cases and its own distribution:
//  - settings: every invalid value throws std::invalid_argument naming the setting;
//  - greedy: temperature 0 and top_k 1 give the argmax, lowest id on ties;
//  - penalties: llama.cpp's definition on a worked example (oracle: the formula evaluated here in float32,
//    softmax in double; tolerance 1e-6 on probabilities, far above double rounding, far below any error);
//  - randomness: uniform(position) is a pure function of (seed, position, stream), and sample() is the
//    inverse CDF of distribution() at that number;
//  - bad input: out-of-vocabulary history, NaN / +inf logits and all -inf logits throw with a clear message.
// The numpy reference of the whole chain and the chi-square test live in tests/python/test_sampler.py.
#include <cmath>
#include <random>
#include <stdexcept>
#include <vector>

#include "check.h"
#include "runtime/sampler.h"

using namespace flashmtp;

namespace {

std::vector<float> random_logits(size_t n, std::mt19937 &rng) {
    std::normal_distribution<float> dist(0.0f, 3.0f);
    std::vector<float> v(n);
    for (float &f : v) f = dist(rng);
    return v;
}

SamplerParams plain(float temperature) {  // no truncation, no penalties
    SamplerParams p;
    p.temperature = temperature;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    return p;
}

void test_validate() {
    const auto invalid = [](auto change, const char *name) {
        SamplerParams p;
        change(p);
        CHECK_THROWS(std::invalid_argument, p.validate(), name);
        CHECK_THROWS(std::invalid_argument, Sampler{p}, name);
    };
    invalid([](SamplerParams &p) { p.temperature = -0.5f; }, "temperature");
    invalid([](SamplerParams &p) { p.temperature = NAN; }, "temperature");
    invalid([](SamplerParams &p) { p.temperature = INFINITY; }, "temperature");
    invalid([](SamplerParams &p) { p.top_k = -1; }, "top_k");
    invalid([](SamplerParams &p) { p.top_p = 0.0f; }, "top_p");
    invalid([](SamplerParams &p) { p.top_p = 1.5f; }, "top_p");
    invalid([](SamplerParams &p) { p.top_p = NAN; }, "top_p");
    invalid([](SamplerParams &p) { p.min_p = -0.1f; }, "min_p");
    invalid([](SamplerParams &p) { p.min_p = 1.01f; }, "min_p");
    invalid([](SamplerParams &p) { p.repetition_penalty = 0.0f; }, "repetition_penalty");
    invalid([](SamplerParams &p) { p.repetition_penalty = -1.0f; }, "repetition_penalty");
    invalid([](SamplerParams &p) { p.presence_penalty = INFINITY; }, "presence_penalty");
    invalid([](SamplerParams &p) { p.frequency_penalty = NAN; }, "frequency_penalty");
    invalid([](SamplerParams &p) { p.penalty_last_n = -2; }, "penalty_last_n");
    SamplerParams valid;  // the defaults and the edges of each range are accepted
    valid.validate();
    valid.temperature = 0.0f;
    valid.top_p = 1.0f;
    valid.min_p = 1.0f;
    valid.penalty_last_n = -1;
    valid.presence_penalty = -2.0f;
    valid.validate();
}

void test_greedy() {
    std::mt19937 rng(1);
    for (int trial = 0; trial < 20; ++trial) {
        std::vector<float> logits = random_logits(1000, rng);
        logits[700] = logits[300] = 100.0f;  // a tie: the lower id wins
        Sampler greedy(plain(0.0f));
        CHECK(greedy.sample(logits.data(), 1000, nullptr, 0, uint64_t(trial)) == 300);
        const TokenDistribution d = greedy.distribution(logits.data(), 1000, nullptr, 0);
        CHECK(d.ids.size() == 1 && d.ids[0] == 300 && d.probs[0] == 1.0f);

        SamplerParams top1;  // top_k = 1 at any temperature is greedy
        top1.top_k = 1;
        top1.temperature = 1.5f;
        top1.seed = uint64_t(trial);
        Sampler sampler(top1);
        CHECK(sampler.sample(logits.data(), 1000, nullptr, 0, uint64_t(trial)) == 300);
    }
}

void test_penalties() {
    // Token 0 (positive logit) twice in the window, token 1 (negative) once, token 2 only outside the window.
    const std::vector<float> logits = {2.0f, -2.0f, 1.0f, 0.5f};
    const std::vector<int32_t> history = {2, 0, 1, 0};
    SamplerParams p = plain(1.0f);
    p.repetition_penalty = 2.0f;
    p.presence_penalty = 0.5f;
    p.frequency_penalty = 0.25f;
    p.penalty_last_n = 3;
    Sampler sampler(p);
    const TokenDistribution d = sampler.distribution(logits.data(), 4, history.data(), history.size());
    const float expected_logits[4] = {2.0f / 2.0f - (2.0f * 0.25f + 0.5f), -2.0f * 2.0f - (1.0f * 0.25f + 0.5f),
                                      1.0f, 0.5f};
    double sum = 0.0;
    for (float l : expected_logits) sum += std::exp(double(l) - 1.0);
    CHECK(d.ids.size() == 4);
    for (size_t i = 0; i < d.ids.size(); ++i) {
        const double expected = std::exp(double(expected_logits[d.ids[i]]) - 1.0) / sum;
        CHECK_MSG(std::fabs(d.probs[i] - expected) <= 1e-6, "token %d: %g vs %g", d.ids[i], d.probs[i], expected);
    }
    CHECK(d.ids[0] == 2 && d.ids[1] == 3 && d.ids[2] == 0 && d.ids[3] == 1);  // penalised 1, 0.5, 0, -4.75

    // A window of 0 disables the penalties; -1 takes the whole history (token 2 penalised too).
    p.penalty_last_n = 0;
    Sampler off(p);
    CHECK(off.distribution(logits.data(), 4, history.data(), history.size()).ids[0] == 0);
    p.penalty_last_n = -1;
    p.presence_penalty = 0.0f;
    p.frequency_penalty = 0.0f;
    Sampler all(p);
    const TokenDistribution whole = all.distribution(logits.data(), 4, history.data(), history.size());
    // Penalised logits 1, -4, 0.5, 0.5: tokens 2 and 3 tie, the lower id first.
    CHECK(whole.ids[0] == 0 && whole.ids[1] == 2 && whole.ids[2] == 3 && whole.ids[3] == 1);
}

void test_position_tied_randomness() {
    SamplerParams p;
    p.seed = 42;
    Sampler a(p), b(p);
    std::mt19937 rng(2);
    const std::vector<float> logits = random_logits(500, rng);
    // b samples many other positions first; position 1000 still gets the same token and the same number.
    for (uint64_t pos = 0; pos < 50; ++pos) b.sample(logits.data(), 500, nullptr, 0, pos);
    CHECK(a.uniform(1000) == b.uniform(1000));
    CHECK(a.sample(logits.data(), 500, nullptr, 0, 1000) == b.sample(logits.data(), 500, nullptr, 0, 1000));
    CHECK(a.uniform(1000) != a.uniform(1001));
    CHECK(a.uniform(1000, 0) != a.uniform(1000, 1));
    SamplerParams other = p;
    other.seed = 43;
    CHECK(Sampler(other).uniform(1000) != a.uniform(1000));
    for (uint64_t pos = 0; pos < 1000; ++pos) {
        const double u = a.uniform(pos, pos % 3);
        CHECK(u >= 0.0 && u < 1.0);
    }

    // sample() is the inverse CDF of distribution() at uniform(position).
    SamplerParams wide = plain(1.0f);
    wide.seed = 7;
    Sampler s(wide);
    for (uint64_t pos = 0; pos < 200; ++pos) {
        const std::vector<float> l = random_logits(50, rng);
        const TokenDistribution d = s.distribution(l.data(), 50, nullptr, 0);
        const double u = s.uniform(pos);
        double cumulative = 0.0;
        size_t i = 0;
        while (i + 1 < d.probs.size() && u >= cumulative + d.probs[i]) cumulative += d.probs[i++];
        const int32_t token = s.sample(l.data(), 50, nullptr, 0, pos);
        // float32 probabilities shift the boundaries by ~1e-7: accept a neighbour only that close to one.
        const bool near_boundary = std::fabs(u - cumulative) < 1e-6 || std::fabs(u - cumulative - d.probs[i]) < 1e-6;
        CHECK_MSG(token == d.ids[i] || near_boundary, "position %llu: %d vs %d", (unsigned long long)pos, token,
                  d.ids[i]);
    }
}

void test_bad_input() {
    Sampler s{SamplerParams{}};
    std::vector<float> logits(10, 0.0f);
    const std::vector<int32_t> bad_history = {3, 10};
    CHECK_THROWS(std::invalid_argument, s.sample(logits.data(), 10, bad_history.data(), 2, 0), "history[1] = 10");
    logits[4] = NAN;
    CHECK_THROWS(std::invalid_argument, s.sample(logits.data(), 10, nullptr, 0, 0), "logit of token 4");
    logits[4] = INFINITY;
    CHECK_THROWS(std::invalid_argument, s.sample(logits.data(), 10, nullptr, 0, 0), "logit of token 4");
    std::vector<float> masked(10, -INFINITY);
    CHECK_THROWS(std::invalid_argument, s.sample(masked.data(), 10, nullptr, 0, 0), "every logit is -inf");
    masked[6] = -1.0f;  // one finite logit: the only possible token
    CHECK(s.sample(masked.data(), 10, nullptr, 0, 0) == 6);
    CHECK_THROWS(std::invalid_argument, s.sample(logits.data(), 0, nullptr, 0, 0), "n_vocab");
    // Dividing by a penalty below 1 raises positive logits: 3e38 / 0.5 overflows. The failed call (window
    // {0, 1}) must leave no stale occurrence counts: afterwards token 1, seen once, gets 1.0 / 0.5 - 1 * 1.0 =
    // 1.0 and ties token 0 (probabilities 1/2 each); a stale count of 2 would give it 0.0.
    SamplerParams boost = plain(1.0f);
    boost.repetition_penalty = 0.5f;
    boost.frequency_penalty = 1.0f;
    Sampler boosting(boost);
    const std::vector<float> huge = {3e38f, 0.0f};
    const std::vector<float> small = {1.0f, 1.0f};
    const std::vector<int32_t> both = {0, 1}, one = {1};
    CHECK_THROWS(std::invalid_argument, boosting.sample(huge.data(), 2, both.data(), 2, 0), "overflows");
    const TokenDistribution d = boosting.distribution(small.data(), 2, one.data(), 1);
    CHECK(d.ids.size() == 2 && std::fabs(d.probs[0] - 0.5f) <= 1e-6f && std::fabs(d.probs[1] - 0.5f) <= 1e-6f);
}

}  // namespace

int main() {
    test_validate();
    test_greedy();
    test_penalties();
    test_position_tied_randomness();
    test_bad_input();
    return test::exit_code("test_sampler");
}
