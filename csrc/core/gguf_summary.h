// A human-readable summary of a GGUF model (what `flashmtp info` prints, from the CLI and from Python alike):
// file and format, architecture hyperparameters, tensor types and sizes, parameter count, bits per weight,
// tokenizer and chat template, then every remaining key.
#pragma once

#include <cstdint>
#include <string>

#include "core/gguf.h"

namespace flashmtp {

std::string gguf_summary(const GGUFFile &file);

// One metadata value on one line: scalars as written, strings quoted and escaped, arrays as
// "[type x n] first elements ..."; at most about max_chars characters.
std::string gguf_format_value(const GGUFValue &value, size_t max_chars = 72);

// 135036672 -> "135.0 M"; below a thousand the plain number.
std::string format_count(uint64_t n);
// 1288490188 -> "1.20 GiB"
std::string format_bytes(uint64_t n);

}  // namespace flashmtp
