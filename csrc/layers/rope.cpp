#include "layers/rope.h"

#include <cmath>

namespace flashmtp {

void rope_angles(const int32_t *positions, int64_t n_tokens, int64_t n_rot, float freq_base, float *cos,
                 float *sin) {
    const int64_t n_pairs = n_rot / 2;
    for (int64_t t = 0; t < n_tokens; ++t) {
        for (int64_t i = 0; i < n_pairs; ++i) {
            // In double: at position 10^5 a float angle would already be off by ~0.01 rad.
            const double angle = double(positions[t]) * std::pow(double(freq_base), -2.0 * double(i) / double(n_rot));
            cos[t * n_pairs + i] = float(std::cos(angle));
            sin[t * n_pairs + i] = float(std::sin(angle));
        }
    }
}

void rope_apply(float *x, const float *cos, const float *sin, int64_t n_tokens, int64_t n_heads,
                int64_t head_dim, int64_t n_rot, RopeMode mode) {
    const int64_t n_pairs = n_rot / 2;
    for (int64_t t = 0; t < n_tokens; ++t) {
        const float *cos_t = cos + t * n_pairs, *sin_t = sin + t * n_pairs;
        for (int64_t h = 0; h < n_heads; ++h) {
            float *head = x + (t * n_heads + h) * head_dim;
            for (int64_t i = 0; i < n_pairs; ++i) {
                // The two elements of pair i: adjacent (normal) or half the rotated width apart (neox).
                float *a = mode == ROPE_NORMAL ? head + 2 * i : head + i;
                float *b = mode == ROPE_NORMAL ? head + 2 * i + 1 : head + i + n_pairs;
                const float x0 = *a, x1 = *b;
                *a = x0 * cos_t[i] - x1 * sin_t[i];
                *b = x0 * sin_t[i] + x1 * cos_t[i];
            }
        }
    }
}

}  // namespace flashmtp
