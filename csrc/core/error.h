// Errors the runtime raises. Every bad input becomes one of these with a message that names the problem
// (file, tensor, offset, expected vs found); the Python bindings map them to Python exceptions.
#pragma once

#include <stdexcept>
#include <string>

namespace flashmtp {

// A malformed or unsupported GGUF file. Python: flashmtp.GGUFError (a ValueError).
class GGUFError : public std::runtime_error {
public:
    explicit GGUFError(const std::string &what) : std::runtime_error(what) {}
};

}  // namespace flashmtp
