// Rotary position embedding, in place on query or key rows. Two layouts, as llama.cpp picks per architecture:
//   ROPE_NORMAL (llama): pairs (x[2i], x[2i+1]) rotate by angle pos * base^(-2i / n_rot). llama's GGUF
//                        converter permutes the Q and K weights so that this matches HF's rotate_half.
//   ROPE_NEOX   (qwen2): pairs (x[i], x[i + n_rot/2]), the same angles; GGUF keeps HF's weight order.
// Dimensions n_rot..head_dim of each head pass through unrotated.
// Owns: the angles and the rotation. Does not own: the buffers.
#pragma once

#include <cstdint>

namespace flashmtp {

enum RopeMode { ROPE_NORMAL, ROPE_NEOX };

// x [n_tokens, n_heads, head_dim]: row t sits at position positions[t]. The result of a row depends only on
// its values and its position (batch invariance).
void rope_apply(float *x, const int32_t *positions, int64_t n_tokens, int64_t n_heads, int64_t head_dim,
                int64_t n_rot, float freq_base, RopeMode mode);

}  // namespace flashmtp
