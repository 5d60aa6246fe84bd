// MTP speculative decoding: how drafts are chosen and checked, how many to draft, and what it cost.
// Owns: the draft modes, the acceptance rules, the adaptive draft-length policy and the statistics. Does not
// own: the loop that drives them (runtime/generate.cpp), the draft head (Session::draft), the sampler.
//
// A round, with positions [0, P) decoded and the logits of P - 1 in hand: sample the token t at P as plain
// decoding would; draft d_1..d_k for positions P + 1..P + k with the head; decode [t, d_1..d_k] in ONE batch
// (k + 1 logits); accept d_i while the main model agrees; rewind the session past the first rejected draft.
// The next round samples its first token from the logits of the last kept position, which is the plain
// decoder's token there (or, in the residual mode, the residual sample drawn at the rejection).
//
// Why greedy output is identical to plain decoding: every token emitted is the main model's choice at its
// position, from logits that are bit-identical whatever batch they came from (batch invariance) and whatever
// was decoded and rewound before (exact rewind). The head only decides how many of those choices one batch
// checks. The same holds for sampling in the coupled and greedy-draft modes: the sampler's random number is a
// function of (seed, position), so the token the verifier samples at a position is the one plain decoding
// samples there, and a draft is accepted exactly when it equals it.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "flashmtp.h"
#include "runtime/sampler.h"

namespace flashmtp {

enum class DraftMode {
    // The head's distribution sampled at the position's own random number (the one the verifier uses): a draft
    // is accepted when the main model's sample equals it. Output = plain decoding's, token for token, for
    // every seed (so distributed exactly as the main model's).
    coupled,
    // Standard speculative sampling (Leviathan et al. 2023, Chen et al. 2023): drafts drawn from the head's
    // distribution q on a separate random stream, accepted with probability min(1, p/q), a rejection resampled
    // from the residual max(0, p - q). Output distributed exactly as the main model's, with the highest
    // acceptance for a sampled draft, but not the same text as plain decoding for a given seed.
    residual,
    // The peers' mode (llama.cpp, ds4): drafts are the head's argmax; the verifier samples and compares.
    // Exact and seed-stable like `coupled`; accepts less when sampling at a high temperature.
    greedy,
};

// "coupled", "residual", "greedy"; parse_draft_mode throws std::invalid_argument naming the valid ones.
const char *draft_mode_name(DraftMode mode);
DraftMode parse_draft_mode(const std::string &name);

class DraftCosts;

struct SpeculativeParams {
    int draft = 0;  // tokens per draft: 0 off, 1..Session::kMaxDraft fixed, kAuto chosen per round
    DraftMode mode = DraftMode::coupled;
    std::shared_ptr<DraftCosts> costs;  // shared cost measurements (a Model's); null: the generation's own
    static constexpr int kAuto = -1;
    // Throws std::invalid_argument for a draft length outside [-1, kMaxDraft].
    void validate() const;
};

struct SpeculativeStats {
    int64_t rounds = 0;      // verify batches (rounds that drafted at least one token)
    int64_t drafted = 0;     // draft tokens verified
    int64_t accepted = 0;    // draft tokens accepted
    int64_t rollbacks = 0;   // rounds that rejected a draft (and rewound the session)
    int64_t plain_steps = 0; // rounds that drafted nothing (draft 0, or auto chose 0)
    std::array<int64_t, Session::kMaxDraft> tried_at{};     // drafts verified at draft position i + 1
    std::array<int64_t, Session::kMaxDraft> accepted_at{};  // of which accepted
    double draft_s = 0;   // seconds in the draft head
    double verify_s = 0;  // seconds in verify batches

    double acceptance() const { return drafted ? double(accepted) / double(drafted) : 0.0; }
    // Accepted drafts per verify round (the round also emits the token it started from).
    double mean_accepted_length() const { return rounds ? double(accepted) / double(rounds) : 0.0; }
    // Two or three lines for people: counts, acceptance by draft position, time, the head's memory.
    std::string summary(size_t head_bytes) const;
};

// What drafting costs with one engine on this machine: the head's first and further steps, and decode
// batches by size, each the median of its last kSamples measurements (a shared machine's spikes do not move
// it). A Model shares one among its generations, so that a request does not pay to measure what earlier
// ones did. Thread-safe.
class DraftCosts {
public:
    static constexpr int kSamples = 9;

    void add_decode(int n_tokens, double seconds);
    void add_first(double seconds);
    void add_step(double seconds);
    // Seconds of a decode of n tokens: measured, else extrapolated linearly from the measured sizes (0 before
    // any); of the head's first step and of a further one (a further step, unmeasured, costs a first one).
    double decode(int n_tokens) const;
    double first() const;
    double step() const;
    bool measured_decode(int n_tokens) const;
    bool measured_first() const;

private:
    // The latest kSamples timings of one kind.
    struct Timing {
        std::array<double, kSamples> samples{};
        int count = 0;
        void add(double seconds) { samples[size_t(count++ % kSamples)] = seconds; }
        double median() const;
    };
    double decode_locked(int n_tokens) const;

    mutable std::mutex mutex_;
    std::array<Timing, Session::kMaxDraft + 2> decode_{};  // [n_tokens]
    Timing first_, step_;
};

// Chooses each round's draft length. Fixed lengths are returned as they are. "auto" picks the k in
// [0, limit] that maximises expected tokens per second, E(k) / T(k):
//   E(k) = 1 + a_1 + a_1 a_2 + ... + a_1..a_k, a_i the recent acceptance at draft position i given the earlier
//          ones were accepted (decayed counts with a uniform prior, so the estimate follows the text: code
//          and prose accept differently);
//   T(k) = the head's first step, k - 1 further steps and a verify batch of k + 1 tokens (T(0) = one plain
//          decode), from DraftCosts. A generation's first decode of each size is not counted (it grows the
//          session's buffers), nor the head's first step after plain rounds (it catches up with them: a
//          probe's cost, not a drafting round's).
// Drafting must promise kMargin more tokens/s than plain decoding: a wrong guess costs a whole verify batch.
// When no draft length could pay even if every draft were accepted, auto stays at 0 and never probes.
// Otherwise estimates of the option not taken go stale, so auto takes the other one now and then: a plain
// decode every kProbeInterval drafting rounds; a one-token draft after kProbeInterval plain rounds, then after
// twice as many each time a probe does not make drafting pay (up to kMaxProbeInterval).
class DraftPolicy {
public:
    // draft: SpeculativeParams::draft; costs: shared measurements (null: this policy's own).
    DraftPolicy(int draft, std::shared_ptr<DraftCosts> costs);

    int choose(int limit);
    // A round of k drafts (k = 0: a plain decode) and what it took: the head's first step, its further steps
    // together, and the decode of k + 1 tokens.
    void record(int k, int accepted, double first_s, double steps_s, double decode_s);
    // The current estimate of the acceptance at draft position i + 1.
    double acceptance_at(int i) const;

    static constexpr int kProbeInterval = 32;
    static constexpr int kMaxProbeInterval = 1024;
    static constexpr double kMargin = 1.05;

private:
    double expected_tokens(int k, bool all_accepted = false) const;
    double round_seconds(int k) const;

    int draft_;
    std::shared_ptr<DraftCosts> costs_;
    std::array<double, Session::kMaxDraft> tried_{}, accepted_{};  // decayed counts per draft position
    std::array<bool, Session::kMaxDraft + 2> warm_{};             // [n_tokens] this generation decoded n tokens
    int last_k_ = 0;                                              // the previous round's draft length
    int streak_ = 0;                                              // consecutive rounds on the same side of 0
    int plain_interval_ = kProbeInterval;                         // plain rounds before the next draft probe
};

}  // namespace flashmtp
