// csrc/layers/hyper: what the Python tests (tests/python/test_ds4_hyper.py, against transformers) cannot reach
// through the bindings: hc_post in place (out == streams) against hc_post into a separate buffer, and bitwise
// batch invariance at V4-Flash width (D 4096) and a ragged width (D 300: a partial hc_post chunk), batch of 5
// against single tokens, 1 thread against 2. Oracle: the layer itself, bit for bit.
#include <cmath>
#include <cstring>
#include <random>
#include <stdexcept>
#include <vector>

#include "check.h"
#include "layers/hyper.h"

using namespace flashmtp;

namespace {

std::vector<float> random_floats(size_t n, float scale, std::mt19937 &rng) {
    std::normal_distribution<float> dist(0.0f, scale);
    std::vector<float> v(n);
    for (float &x : v) x = dist(rng);
    return v;
}

bool same_bits(const float *a, const float *b, size_t n) { return std::memcmp(a, b, n * sizeof(float)) == 0; }

void check_width(int64_t d) {
    const int n = 4;
    const int64_t n_tokens = 5, width = n * d, n_weights = hc_weights_size(n);
    const HcParams params{n, d, 20, 1e-6f, 1e-6f};
    std::mt19937 rng{unsigned(d)};
    std::vector<float> fn = random_floats(size_t(n_weights * width), 1.0f / std::sqrt(float(width)), rng);
    std::vector<float> base = random_floats(size_t(n_weights), 0.5f, rng), scale{0.7f, 1.3f, 1.9f};
    std::vector<float> head_scale{1.1f};
    const HcMixer mixer{{DTYPE_F32, fn.data(), n_weights, width, size_t(width) * sizeof(float)}, base.data(),
                        scale.data()};
    const HcHead head{{DTYPE_F32, fn.data(), n, width, size_t(width) * sizeof(float)}, base.data(),
                      head_scale.data()};
    std::vector<float> streams = random_floats(size_t(n_tokens * width), 2.0f, rng);
    std::vector<float> block_out = random_floats(size_t(n_tokens * d), 1.0f, rng);

    // The batch on 2 threads.
    ThreadPool pool2(2);
    HcScratch scratch2;
    std::vector<float> weights(n_tokens * n_weights), x(n_tokens * d), h(n_tokens * d);
    std::vector<float> out(streams.size());
    hc_pre(params, mixer, streams.data(), n_tokens, weights.data(), x.data(), pool2, scratch2);
    hc_post(params, weights.data(), block_out.data(), streams.data(), n_tokens, out.data(), pool2);
    hc_head(params, head, streams.data(), n_tokens, h.data(), pool2, scratch2);

    // In place gives the same bits as into a separate buffer.
    std::vector<float> in_place = streams;
    hc_post(params, weights.data(), block_out.data(), in_place.data(), n_tokens, in_place.data(), pool2);
    CHECK_MSG(same_bits(in_place.data(), out.data(), out.size()), "D %lld: in-place hc_post", (long long)d);

    // Each token alone on 1 thread gives the same bits as in the batch.
    ThreadPool pool1(1);
    HcScratch scratch1;
    for (int64_t t = 0; t < n_tokens; ++t) {
        std::vector<float> w1(n_weights), x1(d), h1(d), out1(width);
        const float *s = streams.data() + t * width;
        hc_pre(params, mixer, s, 1, w1.data(), x1.data(), pool1, scratch1);
        hc_post(params, w1.data(), block_out.data() + t * d, s, 1, out1.data(), pool1);
        hc_head(params, head, s, 1, h1.data(), pool1, scratch1);
        CHECK_MSG(same_bits(w1.data(), weights.data() + t * n_weights, size_t(n_weights)), "D %lld token %lld: "
                  "weights", (long long)d, (long long)t);
        CHECK_MSG(same_bits(x1.data(), x.data() + t * d, size_t(d)), "D %lld token %lld: x", (long long)d,
                  (long long)t);
        CHECK_MSG(same_bits(out1.data(), out.data() + t * width, size_t(width)), "D %lld token %lld: post",
                  (long long)d, (long long)t);
        CHECK_MSG(same_bits(h1.data(), h.data() + t * d, size_t(d)), "D %lld token %lld: head", (long long)d,
                  (long long)t);
    }
}

void check_refusals() {
    const HcParams params{4, 64, 20, 1e-6f, 1e-6f};
    std::vector<float> fn(size_t(24 * 256)), base(24), scale(3);
    ThreadPool pool(1);
    HcScratch scratch;
    const HcMixer mixer{{DTYPE_F32, fn.data(), 24, 256, 256 * sizeof(float)}, base.data(), scale.data()};
    std::vector<float> streams(256), weights(24), x(64);
    // zero tokens: nothing to do, null buffers allowed
    hc_pre(params, mixer, nullptr, 0, nullptr, nullptr, pool, scratch);
    hc_post(params, nullptr, nullptr, nullptr, 0, nullptr, pool);
    bool threw = false;
    try {
        hc_pre(params, mixer, streams.data(), 1, weights.data(), nullptr, pool, scratch);
    } catch (const std::invalid_argument &) {
        threw = true;
    }
    CHECK_MSG(threw, "hc_pre with a null x");
    threw = false;
    const HcMixer no_base{mixer.fn, nullptr, scale.data()};
    try {
        hc_check(params, no_base);
    } catch (const std::invalid_argument &) {
        threw = true;
    }
    CHECK_MSG(threw, "hc_check without base");
}

}  // namespace

int main() {
    check_width(4096);
    check_width(300);
    check_refusals();
    return test::exit_code("test_hyper");
}
