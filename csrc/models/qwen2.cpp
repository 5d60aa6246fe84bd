// qwen2: llama's decoder with biases on the query, key and value projections, and NeoX-style RoPE (llama.cpp's
// choice for this architecture: its GGUF files keep Hugging Face's unpermuted Q and K weights).
#include "models/llama.h"

namespace flashmtp {

LlamaModel qwen2_load(const GGUFFile &file) { return llama_load(file, {"qwen2", true, ROPE_NEOX}); }

}  // namespace flashmtp
