#include "layers/rope.h"

#include <cmath>
#include <vector>

namespace flashmtp {

void rope_apply(float *x, const int32_t *positions, int64_t n_tokens, int64_t n_heads, int64_t head_dim,
                int64_t n_rot, float freq_base, RopeMode mode) {
    const int64_t n_pairs = n_rot / 2;
    std::vector<float> cos_table(static_cast<size_t>(n_pairs)), sin_table(static_cast<size_t>(n_pairs));  // [n_pairs] for one position
    for (int64_t t = 0; t < n_tokens; ++t) {
        // Angles in double: at position 10^5 a float angle would already be off by ~0.01 rad.
        for (int64_t i = 0; i < n_pairs; ++i) {
            const double angle = double(positions[t]) * std::pow(double(freq_base), -2.0 * double(i) / double(n_rot));
            cos_table[size_t(i)] = float(std::cos(angle));
            sin_table[size_t(i)] = float(std::sin(angle));
        }
        for (int64_t h = 0; h < n_heads; ++h) {
            float *head = x + (t * n_heads + h) * head_dim;
            for (int64_t i = 0; i < n_pairs; ++i) {
                // The two elements of pair i: adjacent (normal) or half the rotated width apart (neox).
                float *a = mode == ROPE_NORMAL ? head + 2 * i : head + i;
                float *b = mode == ROPE_NORMAL ? head + 2 * i + 1 : head + i + n_pairs;
                const float c = cos_table[size_t(i)], s = sin_table[size_t(i)];
                const float x0 = *a, x1 = *b;
                *a = x0 * c - x1 * s;
                *b = x0 * s + x1 * c;
            }
        }
    }
}

}  // namespace flashmtp
