#include "runtime/speculative.h"

#include <algorithm>
#include <cstdio>
#include <stdexcept>

namespace flashmtp {

namespace {

constexpr double kDecay = 0.9;  // weight of earlier acceptance counts per new observation (~10 recent rounds)

}  // namespace

const char *draft_mode_name(DraftMode mode) {
    switch (mode) {
        case DraftMode::coupled: return "coupled";
        case DraftMode::residual: return "residual";
        case DraftMode::greedy: return "greedy";
    }
    return "?";
}

DraftMode parse_draft_mode(const std::string &name) {
    for (DraftMode mode : {DraftMode::coupled, DraftMode::residual, DraftMode::greedy}) {
        if (name == draft_mode_name(mode)) return mode;
    }
    throw std::invalid_argument("draft mode '" + name + "' is not one of coupled, residual, greedy");
}

void SpeculativeParams::validate() const {
    if (draft < kAuto || draft > Session::kMaxDraft) {
        throw std::invalid_argument("draft length " + std::to_string(draft) + " is outside [0, " +
                                    std::to_string(Session::kMaxDraft) + "] (or auto)");
    }
}

std::string SpeculativeStats::summary(size_t head_bytes) const {
    char line[256];
    std::snprintf(line, sizeof line,
                  "mtp:       %lld rounds, %lld drafted, %lld accepted (%.1f%%), %.2f accepted per round, "
                  "%lld rollbacks, %lld plain steps\n",
                  (long long)rounds, (long long)drafted, (long long)accepted, 100 * acceptance(),
                  mean_accepted_length(), (long long)rollbacks, (long long)plain_steps);
    std::string out = line;
    out += "           acceptance by draft position:";
    for (size_t i = 0; i < tried_at.size() && tried_at[i] > 0; ++i) {
        std::snprintf(line, sizeof line, " %zu: %.1f%% of %lld", i + 1,
                      100.0 * double(accepted_at[i]) / double(tried_at[i]), (long long)tried_at[i]);
        out += line;
    }
    std::snprintf(line, sizeof line, "\n           draft %.3f s, verify %.3f s; head weights %.1f MiB\n", draft_s,
                  verify_s, double(head_bytes) / (1 << 20));
    return out + line;
}

double DraftCosts::Timing::median() const {
    const int n = std::min(count, kSamples);
    if (n == 0) return 0;
    std::array<double, kSamples> sorted = samples;
    std::nth_element(sorted.begin(), sorted.begin() + n / 2, sorted.begin() + n);
    return sorted[size_t(n / 2)];
}

void DraftCosts::add_decode(int n_tokens, double seconds) {
    std::lock_guard<std::mutex> lock(mutex_);
    decode_[size_t(n_tokens)].add(seconds);
}

void DraftCosts::add_first(double seconds) {
    std::lock_guard<std::mutex> lock(mutex_);
    first_.add(seconds);
}

void DraftCosts::add_step(double seconds) {
    std::lock_guard<std::mutex> lock(mutex_);
    step_.add(seconds);
}

bool DraftCosts::measured_decode(int n_tokens) const {
    std::lock_guard<std::mutex> lock(mutex_);
    return decode_[size_t(n_tokens)].count > 0;
}

bool DraftCosts::measured_first() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return first_.count > 0;
}

double DraftCosts::first() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return first_.median();
}

double DraftCosts::step() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return step_.count > 0 ? step_.median() : first_.median();
}

double DraftCosts::decode(int n_tokens) const {
    std::lock_guard<std::mutex> lock(mutex_);
    return decode_locked(n_tokens);
}

double DraftCosts::decode_locked(int n_tokens) const {
    if (decode_[size_t(n_tokens)].count > 0) return decode_[size_t(n_tokens)].median();
    // The line through one token's cost and the largest measured smaller batch's.
    int m = n_tokens - 1;
    while (m >= 1 && decode_[size_t(m)].count == 0) --m;
    if (m < 1) return 0;
    const double one = decode_[1].count > 0 ? decode_[1].median() : 0, at_m = decode_[size_t(m)].median();
    if (m == 1 || one == 0) return at_m * n_tokens / m;
    return at_m + (n_tokens - m) * (at_m - one) / (m - 1);
}

DraftPolicy::DraftPolicy(int draft, std::shared_ptr<DraftCosts> costs)
    : draft_(draft), costs_(costs ? std::move(costs) : std::make_shared<DraftCosts>()) {}

double DraftPolicy::acceptance_at(int i) const { return (accepted_[size_t(i)] + 1.0) / (tried_[size_t(i)] + 2.0); }

double DraftPolicy::expected_tokens(int k, bool all_accepted) const {
    double expected = 1, run = 1;
    for (int i = 0; i < k; ++i) {
        run *= all_accepted ? 1.0 : acceptance_at(i);
        expected += run;
    }
    return expected;
}

double DraftPolicy::round_seconds(int k) const {
    if (k == 0) return costs_->decode(1);
    return costs_->first() + (k - 1) * costs_->step() + costs_->decode(k + 1);
}

int DraftPolicy::choose(int limit) {
    limit = std::min(limit, Session::kMaxDraft);
    if (draft_ != SpeculativeParams::kAuto) return std::min(draft_, limit);
    if (limit <= 0) return 0;
    // Measure plain decoding first, then one-token drafts, then let the estimates decide.
    if (!costs_->measured_decode(1)) return 0;
    if (!costs_->measured_first() || !costs_->measured_decode(2)) return 1;
    const double plain_rate = kMargin / round_seconds(0);
    int best = 0, best_possible = 0;
    double best_rate = plain_rate;
    for (int k = 1; k <= limit; ++k) {
        const double seconds = round_seconds(k);
        if (expected_tokens(k, true) / seconds > plain_rate) best_possible = k;
        const double rate = expected_tokens(k) / seconds;
        if (rate > best_rate) best = k, best_rate = rate;
    }
    if (best_possible == 0) return 0;  // drafting cannot pay here: no probes either
    if (best > 0) plain_interval_ = kProbeInterval;
    const bool same_side = (best > 0) == (last_k_ > 0);
    streak_ = same_side ? streak_ + 1 : 0;
    if (best > 0 && streak_ >= kProbeInterval) {  // refresh the plain decode's cost
        streak_ = 0;
        return 0;
    }
    if (best == 0 && streak_ >= plain_interval_) {  // measure the acceptance again
        streak_ = 0;
        plain_interval_ = std::min(2 * plain_interval_, kMaxProbeInterval);
        return 1;
    }
    return best;
}

void DraftPolicy::record(int k, int accepted, double first_s, double steps_s, double decode_s) {
    const size_t n = size_t(k + 1);
    if (warm_[n]) costs_->add_decode(k + 1, decode_s);
    warm_[n] = true;
    const int previous_k = last_k_;
    last_k_ = k;
    if (k == 0) return;
    if (previous_k > 0 || !costs_->measured_first()) costs_->add_first(first_s);
    if (k > 1) costs_->add_step(steps_s / (k - 1));
    // Position i was tried if every earlier draft was accepted.
    for (int i = 0; i < k && i <= accepted; ++i) {
        tried_[size_t(i)] = kDecay * tried_[size_t(i)] + 1;
        accepted_[size_t(i)] = kDecay * accepted_[size_t(i)] + (i < accepted ? 1 : 0);
    }
}

}  // namespace flashmtp
