// SwiGLU, the gated feed-forward activation: gate = silu(min(gate, limit)) * clamp(up, -limit, limit), in place
// (llama and qwen2 have no clamp; DeepSeek-V4's experts clamp at 10).
// Owns: splitting the element-wise kernel (kernels.h SwigluFn) over threads. Does not own: the projections.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/thread_pool.h"

namespace flashmtp {

// gate [n] = silu(min(gate, limit)) * clamp(up, -limit, limit). Element-wise, so the result does not depend
// on how the pool splits it.
void swiglu(float *gate, const float *up, int64_t n, ThreadPool &pool, float limit = INFINITY);

}  // namespace flashmtp
