// SwiGLU, the gated feed-forward activation of llama and qwen2: gate = silu(gate) * up, in place.
// Owns: the element-wise arithmetic. Does not own: the three projections (matmul.h) around it.
#pragma once

#include <cstdint>

namespace flashmtp {

// gate [n] = gate / (1 + exp(-gate)) * up [n].
void swiglu(float *gate, const float *up, int64_t n);

}  // namespace flashmtp
