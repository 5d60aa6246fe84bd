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

// cos, sin [n_tokens, n_rot / 2] of the angles positions[t] * freq_base^(-2i / n_rot). They depend on the
// positions only, so a forward pass computes them once and every layer's queries and keys share them.
void rope_angles(const int32_t *positions, int64_t n_tokens, int64_t n_rot, float freq_base, float *cos,
                 float *sin);

// x [n_tokens, n_heads, head_dim]: row t rotated by the angles of row t of cos, sin [n_tokens, n_rot / 2].
// The result of a row depends only on its values and its position (batch invariance).
void rope_apply(float *x, const float *cos, const float *sin, int64_t n_tokens, int64_t n_heads,
                int64_t head_dim, int64_t n_rot, RopeMode mode);

}  // namespace flashmtp
