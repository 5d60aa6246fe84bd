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

DraftPolicy::DraftPolicy(int draft) : draft_(draft) {}

double DraftPolicy::acceptance_at(int i) const { return (accepted_[size_t(i)] + 1.0) / (tried_[size_t(i)] + 2.0); }

double DraftPolicy::Timing::median() const {
    const int n = std::min(count, kSamples);
    if (n == 0) return 0;
    std::array<double, kSamples> sorted = samples;
    std::nth_element(sorted.begin(), sorted.begin() + n / 2, sorted.begin() + n);
    return sorted[size_t(n / 2)];
}

double DraftPolicy::batch_seconds(int n_tokens) const {
    // Unmeasured sizes cost what the largest measured smaller batch did: optimistic, so they get tried.
    for (int n = n_tokens; n >= 1; --n) {
        if (decode_s_[size_t(n)].count > 0) return decode_s_[size_t(n)].median();
    }
    return 0;
}

double DraftPolicy::expected_tokens(int k) const {
    double expected = 1, run = 1;
    for (int i = 0; i < k; ++i) {
        run *= acceptance_at(i);
        expected += run;
    }
    return expected;
}

double DraftPolicy::round_seconds(int k) const {
    if (k == 0) return batch_seconds(1);
    return first_s_.median() + (k - 1) * step_s_.median() + batch_seconds(k + 1);
}

int DraftPolicy::choose(int limit) {
    limit = std::min(limit, Session::kMaxDraft);
    if (draft_ != SpeculativeParams::kAuto) return std::min(draft_, limit);
    if (limit <= 0) return 0;
    // Measure plain decoding first (the first one warms up), then one-token drafts, then let the estimates decide.
    if (decode_s_[1].count == 0) return 0;
    if (first_s_.count == 0 || decode_s_[2].count == 0) return 1;
    int best = 0;
    double best_rate = kMargin * expected_tokens(0) / round_seconds(0);
    for (int k = 1; k <= limit; ++k) {
        const double rate = expected_tokens(k) / round_seconds(k);
        if (rate > best_rate) best = k, best_rate = rate;
    }
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
    if (warm_[n]) decode_s_[n].add(decode_s);
    warm_[n] = true;
    const int previous_k = last_k_;
    last_k_ = k;
    if (k == 0) return;
    if (previous_k > 0 || first_s_.count == 0) first_s_.add(first_s);
    if (k > 1) step_s_.add(steps_s / (k - 1));
    // Position i was tried if every earlier draft was accepted.
    for (int i = 0; i < k && i <= accepted; ++i) {
        tried_[size_t(i)] = kDecay * tried_[size_t(i)] + 1;
        accepted_[size_t(i)] = kDecay * accepted_[size_t(i)] + (i < accepted ? 1 : 0);
    }
}

}  // namespace flashmtp
