// Engine and Session (flashmtp.h) for Python: flashmtp._core.Engine(path, threads) and its sessions.
#include <memory>
#include <optional>
#include <string>

#include <pybind11/stl.h>

#include "bindings.h"
#include "flashmtp.h"

namespace py = pybind11;

namespace flashmtp {

namespace {

// tokens: a 1-D array (or sequence) of integer ids. Returns float32 [n_logits, n_vocab]: the logits of the last
// n_logits tokens (None: all of them).
py::array_t<float> session_decode(Session &session, const py::array &tokens_in, std::optional<int> n_logits_in) {
    const auto tokens = py::array_t<int32_t, py::array::c_style | py::array::forcecast>::ensure(tokens_in);
    if (!tokens || tokens.ndim() != 1) {
        throw py::value_error("decode: tokens must be a 1-D array of token ids, got " +
                              std::to_string(tokens_in.ndim()) + " dimension(s)");
    }
    const int n_tokens = int(tokens.shape(0));
    const int n_logits = n_logits_in.value_or(n_tokens);
    // An out-of-range n_logits is the session's error to report; allocate nothing for it.
    const py::ssize_t rows = n_logits >= 0 && n_logits <= n_tokens ? n_logits : 0;
    py::array_t<float> logits({rows, py::ssize_t(session.n_vocab())});
    float *out = logits.mutable_data();
    const int32_t *ids = tokens.data();
    py::gil_scoped_release release;
    session.decode(ids, n_tokens, out, n_logits);
    return logits;
}

// The draft head's logits [n_vocab] (float32) for the token after `token` (Session::draft / draft_next).
template <void (Session::*step)(int32_t, float *)>
py::array_t<float> session_draft(Session &session, int32_t token) {
    py::array_t<float> logits(py::ssize_t(session.n_vocab()));
    float *out = logits.mutable_data();
    py::gil_scoped_release release;
    (session.*step)(token, out);
    return logits;
}

}  // namespace

void bind_model(py::module_ &m) {
    py::class_<Session>(m, "Session", "One timeline over an Engine: its per-sequence state (KV cache, attention rings) and position.")
        .def("decode", &session_decode, py::arg("tokens"), py::arg("n_logits") = py::none(),
             "Decode token ids (1-D int32) in one batch; returns float32 logits [n_logits, n_vocab] of the last"
             " n_logits tokens (default: all; 1: the next token's; 0: none).")
        .def("rewind", &Session::rewind, py::arg("n_past"),
             "Drop every position from n_past on (exact: as if they had never been decoded).")
        .def("draft", &session_draft<&Session::draft>, py::arg("next"),
             "MTP draft head: `next` is the token at position n_past (sampled, not decoded); returns the head's"
             " float32 logits [n_vocab] for the token at n_past + 1.")
        .def("draft_next", &session_draft<&Session::draft_next>, py::arg("drafted"),
             "The head's logits for the position after `drafted` (the token chosen from the previous draft"
             " logits); at most max_draft tokens per draft.")
        .def_property_readonly_static("max_draft", [](const py::object &) { return Session::kMaxDraft; })
        .def_property_readonly_static("rewind_depth", [](const py::object &) { return Session::rewind_depth(); },
                                      "Positions a rewind drops in place; longer rewinds re-run the kept tokens.")
        .def_property_readonly("n_past", &Session::n_past)
        .def_property_readonly("n_ctx", &Session::n_ctx)
        .def_property_readonly("n_vocab", &Session::n_vocab)
        .def_property_readonly("state_size", &Session::state_size, "Bytes of per-sequence state (fp32 KV cache).");

    py::class_<Engine, std::shared_ptr<Engine>>(m, "Engine", "A model's validated, read-only weights and threads.")
        .def(py::init([](const std::string &path, int threads, const std::string &mtp) {
                 py::gil_scoped_release release;
                 return Engine::load(path, threads, mtp);
             }),
             py::arg("path"), py::arg("threads") = 2, py::arg("mtp") = "",
             "Load a GGUF model; mtp: an MTP sidecar GGUF for the draft head (deepseek4).")
        .def_property_readonly("has_draft_head", &Engine::has_draft_head)
        .def_property_readonly("draft_head_bytes", &Engine::draft_head_bytes,
                               "Bytes of weights only the draft head reads (shared embedding and output excluded).")
        .def_property_readonly("architecture", &Engine::architecture)
        .def_property_readonly("n_vocab", &Engine::n_vocab)
        .def_property_readonly("n_embd", &Engine::n_embd)
        .def_property_readonly("n_layer", &Engine::n_layer)
        .def_property_readonly("n_head", &Engine::n_head)
        .def_property_readonly("n_head_kv", &Engine::n_head_kv)
        .def_property_readonly("n_ff", &Engine::n_ff)
        .def_property_readonly("n_ctx_train", &Engine::n_ctx_train)
        .def_property_readonly("n_threads", &Engine::n_threads)
        .def("session", &Engine::new_session, py::arg("n_ctx") = 0,
             "A new empty session of n_ctx positions (0: the training context).");
}

}  // namespace flashmtp
