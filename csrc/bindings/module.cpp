// The pybind11 module flashmtp._core: translation only. Each area registers itself from its own file.
#include <pybind11/pybind11.h>

#include "bindings.h"
#include "core/error.h"
#include "flashmtp.h"

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
    m.doc() = "flashmtp native core";
    m.attr("__version__") = flashmtp::version();
    // GGUFError derives from ValueError so callers can catch either.
    static py::exception<flashmtp::GGUFError> gguf_error(m, "GGUFError", PyExc_ValueError);
    flashmtp::bind_kernels(m);
    flashmtp::bind_gguf(m);
    flashmtp::bind_matmul(m);
    flashmtp::bind_model(m);
    flashmtp::bind_sampler(m);
    flashmtp::bind_tokenizer(m);
    flashmtp::bind_generate(m);
    flashmtp::bind_chat(m);
    flashmtp::bind_hyper(m);
    flashmtp::bind_ds4_attention(m);
    flashmtp::bind_moe(m);
}
