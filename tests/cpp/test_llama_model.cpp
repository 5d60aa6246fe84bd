// The llama forward pass on the shipped random model (models/tiny-llama.gguf), against itself: a token's
// logits must be bit-identical whatever batch it was decoded in and whatever the thread count (DESIGN.md,
// batch invariance), and decode / rewind / decode must equal decoding the kept tokens from scratch (exact
// rewind). Closeness to the float64 reference is tests/python/test_llama_model.py's job.
#include <cstring>
#include <stdexcept>
#include <thread>
#include <vector>

#include "check.h"
#include "core/error.h"
#include "flashmtp.h"

using flashmtp::Engine;
using flashmtp::Session;

namespace {

const std::string kModel = std::string(FLASHMTP_SOURCE_DIR) + "/models/tiny-llama.gguf";

// Token ids spread over the vocabulary, deterministic.
std::vector<int32_t> some_tokens(int n, int n_vocab, int seed) {
    std::vector<int32_t> tokens(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) tokens[size_t(i)] = int32_t((i * 37 + seed * 101 + 11) % n_vocab);
    return tokens;
}

// Logits [n_tokens, n_vocab] of `tokens` decoded in consecutive batches of the given sizes (cycled).
std::vector<float> decode_in_chunks(Session &session, const std::vector<int32_t> &tokens, int n_vocab,
                                    const std::vector<int> &chunk_sizes) {
    std::vector<float> logits(tokens.size() * size_t(n_vocab));
    size_t done = 0, chunk = 0;
    while (done < tokens.size()) {
        const int n = int(std::min(size_t(chunk_sizes[chunk++ % chunk_sizes.size()]), tokens.size() - done));
        session.decode(tokens.data() + done, n, logits.data() + done * size_t(n_vocab), n);
        done += size_t(n);
    }
    return logits;
}

bool same_bits(const std::vector<float> &a, const std::vector<float> &b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

void test_hparams() {
    auto engine = Engine::load(kModel, 1);
    CHECK(engine->architecture() == "llama");
    CHECK(engine->n_embd() == 64);
    CHECK(engine->n_layer() == 2);
    CHECK(engine->n_head() == 4);
    CHECK(engine->n_head_kv() == 2);
    CHECK(engine->n_ff() == 128);
    CHECK(engine->n_ctx_train() == 256);
    CHECK(engine->n_vocab() > 256);
    auto session = engine->new_session();
    CHECK(session->n_ctx() == 256);
    CHECK(session->n_past() == 0);
    // K and V, fp32: 2 x n_layer x n_ctx x n_head_kv x head_dim x 4 bytes.
    CHECK(session->state_size() == size_t(2 * 2 * 256 * 2 * 16 * 4));
}

void test_batch_invariance() {
    auto engine1 = Engine::load(kModel, 1), engine2 = Engine::load(kModel, 2);
    const int n_vocab = engine1->n_vocab();
    const auto tokens = some_tokens(40, n_vocab, 1);
    auto session = engine1->new_session(64);
    const auto whole = decode_in_chunks(*session, tokens, n_vocab, {40});
    const std::vector<std::vector<int>> splits = {{1}, {7}, {3, 13, 1, 20}, {39, 1}};
    for (const auto &split : splits) {
        for (auto *engine : {engine1.get(), engine2.get()}) {
            auto other = engine->new_session(64);
            CHECK_MSG(same_bits(decode_in_chunks(*other, tokens, n_vocab, split), whole),
                      "chunks starting with %d on %d thread(s) differ from one batch of 40", split[0],
                      engine->n_threads());
        }
    }
}

// Logits of the last n_logits tokens only: the same bits as those rows of a full decode.
void test_last_logits() {
    auto engine = Engine::load(kModel, 2);
    const int n_vocab = engine->n_vocab();
    const auto tokens = some_tokens(10, n_vocab, 5);
    auto session = engine->new_session(32);
    const auto all = decode_in_chunks(*session, tokens, n_vocab, {10});
    for (int n_logits : {1, 3}) {
        auto other = engine->new_session(32);
        std::vector<float> last(size_t(n_logits * n_vocab));
        other->decode(tokens.data(), 10, last.data(), n_logits);
        const float *expected = all.data() + size_t((10 - n_logits) * n_vocab);
        CHECK_MSG(std::memcmp(last.data(), expected, last.size() * sizeof(float)) == 0,
                  "the last %d row(s) differ from a full decode", n_logits);
    }
}

void test_rewind() {
    auto engine = Engine::load(kModel, 2);
    const int n_vocab = engine->n_vocab();
    const auto a = some_tokens(12, n_vocab, 2), b = some_tokens(9, n_vocab, 3);
    const int keep = 5;

    auto session = engine->new_session(64);
    decode_in_chunks(*session, a, n_vocab, {12});
    session->rewind(keep);
    CHECK(session->n_past() == keep);
    const auto after_rewind = decode_in_chunks(*session, b, n_vocab, {4});

    auto fresh = engine->new_session(64);
    decode_in_chunks(*fresh, std::vector<int32_t>(a.begin(), a.begin() + keep), n_vocab, {keep});
    CHECK(same_bits(decode_in_chunks(*fresh, b, n_vocab, {9}), after_rewind));

    session->rewind(0);
    CHECK(session->n_past() == 0);
}

// Sessions of one engine decoding at the same time on several threads (they share the weights and the pool)
// get the bits they get alone.
void test_shared_engine() {
    auto engine = Engine::load(kModel, 2);
    const int n_vocab = engine->n_vocab();
    std::vector<std::vector<int32_t>> inputs;
    std::vector<std::vector<float>> alone, together(3);
    for (int i = 0; i < 3; ++i) {
        inputs.push_back(some_tokens(24, n_vocab, 10 + i));
        auto session = engine->new_session(32);
        alone.push_back(decode_in_chunks(*session, inputs.back(), n_vocab, {5}));
    }
    std::vector<std::thread> threads;
    for (size_t i = 0; i < 3; ++i) {
        threads.emplace_back([&, i] {
            auto session = engine->new_session(32);
            together[i] = decode_in_chunks(*session, inputs[i], n_vocab, {1, 2});
        });
    }
    for (auto &thread : threads) thread.join();
    for (size_t i = 0; i < 3; ++i) CHECK_MSG(same_bits(together[i], alone[i]), "session %zu differs", i);
}

void test_errors() {
    auto engine = Engine::load(kModel, 1);
    auto session = engine->new_session(8);
    std::vector<float> logits(size_t(9 * engine->n_vocab()));
    const int32_t bad[] = {1, engine->n_vocab(), 2};
    CHECK_THROWS(std::invalid_argument, session->decode(bad, 3, logits.data(), 3), "outside the vocabulary");
    const int32_t negative[] = {-1};
    CHECK_THROWS(std::invalid_argument, session->decode(negative, 1, logits.data(), 1), "token id -1");
    CHECK(session->n_past() == 0);
    const auto nine = some_tokens(9, engine->n_vocab(), 4);
    CHECK_THROWS(std::invalid_argument, session->decode(nine.data(), 9, logits.data(), 9), "exceed the context of 8");
    CHECK_THROWS(std::invalid_argument, session->decode(nine.data(), 0, logits.data(), 0), "at least one token");
    CHECK_THROWS(std::invalid_argument, session->decode(nine.data(), 2, logits.data(), 3),
                 "n_logits 3 is outside [0, 2]");
    CHECK_THROWS(std::invalid_argument, session->decode(nine.data(), 2, logits.data(), -1), "n_logits -1");
    CHECK(session->n_past() == 0);
    session->decode(nine.data(), 8, nullptr, 0);
    CHECK(session->n_past() == 8);
    CHECK_THROWS(std::invalid_argument, session->decode(nine.data(), 1, logits.data(), 1), "exceed the context");
    CHECK_THROWS(std::invalid_argument, session->rewind(9), "outside [0, 8]");
    CHECK_THROWS(std::invalid_argument, session->rewind(-1), "outside [0, 8]");
    CHECK_THROWS(std::invalid_argument, engine->new_session(-1), "negative");
    CHECK_THROWS(flashmtp::GGUFError, Engine::load(kModel + ".missing", 1), ".missing");
}

}  // namespace

int main() {
    test_hparams();
    test_batch_invariance();
    test_last_logits();
    test_rewind();
    test_shared_engine();
    test_errors();
    return test::exit_code("test_llama_model");
}
