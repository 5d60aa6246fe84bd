// flashmtp's public C++ API. The CLI, the benches and the Python bindings use only this header.
// Engine (read-only weights) and session (one timeline) arrive with the model issues; today it exposes the
// GGUF reader and the kernel layer they stand on.
#pragma once

namespace flashmtp {

const char *version();

}  // namespace flashmtp
