// RMSNorm (llama, qwen2, deepseek): y = x / sqrt(mean(x^2) + eps) * weight, one row at a time.
// Owns: the arithmetic and its order. Does not own: the buffers or the weights (views into the model file).
#pragma once

#include <cstdint>

namespace flashmtp {

// out [n_rows, n] = rms_norm(x [n_rows, n]) * weight [n]. out may alias x. Each row is computed alone, in the
// same order whatever n_rows is (batch invariance).
void rms_norm(const float *x, const float *weight, int64_t n_rows, int64_t n, float eps, float *out);

}  // namespace flashmtp
