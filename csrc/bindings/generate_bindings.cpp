// The generation loop (runtime/generate.h) for Python: _core.Generation, stepped by flashmtp.Model.generate
// and chat (one step per token, the GIL released while the model runs), and its statistics.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <vector>

#include "bindings.h"
#include "flashmtp.h"
#include "runtime/generate.h"
#include "runtime/tokenizer.h"

namespace py = pybind11;

namespace flashmtp {

void bind_generate(py::module_ &m) {
    py::class_<DraftCosts, std::shared_ptr<DraftCosts>>(
        m, "DraftCosts",
        "What drafting costs on one engine (the head's steps, decode batches by size): measured by the "
        "generations that share it, so that auto drafting need not re-measure per request. Thread-safe.")
        .def(py::init<>())
        .def("decode_seconds", &DraftCosts::decode, py::arg("n_tokens"),
             "Median seconds of a decode of n tokens (extrapolated when unmeasured; 0 before any).");

    py::class_<SpeculativeStats>(m, "SpeculativeStats", "MTP drafting: what was drafted, accepted and what it cost.")
        .def_readonly("rounds", &SpeculativeStats::rounds, "verify batches (rounds that drafted)")
        .def_readonly("drafted", &SpeculativeStats::drafted, "draft tokens verified")
        .def_readonly("accepted", &SpeculativeStats::accepted, "draft tokens accepted")
        .def_readonly("rollbacks", &SpeculativeStats::rollbacks, "rounds that rejected a draft and rewound")
        .def_readonly("plain_steps", &SpeculativeStats::plain_steps, "rounds that drafted nothing")
        .def_property_readonly("tried_at", [](const SpeculativeStats &s) {
            return std::vector<int64_t>(s.tried_at.begin(), s.tried_at.end());
        }, "drafts verified at draft position i + 1")
        .def_property_readonly("accepted_at", [](const SpeculativeStats &s) {
            return std::vector<int64_t>(s.accepted_at.begin(), s.accepted_at.end());
        }, "of which accepted")
        .def_readonly("draft_s", &SpeculativeStats::draft_s, "seconds in the draft head")
        .def_readonly("verify_s", &SpeculativeStats::verify_s, "seconds in verify batches")
        .def_property_readonly("acceptance", &SpeculativeStats::acceptance)
        .def_property_readonly("mean_accepted_length", &SpeculativeStats::mean_accepted_length,
                               "accepted drafts per verify round")
        .def("summary", &SpeculativeStats::summary, py::arg("head_bytes") = 0,
             "Lines for people: counts, acceptance by draft position, time, the head's weights.");

    py::class_<GenerateStats>(m, "GenerateStats", "Token counts and timings of one generation.")
        .def_readonly("n_prompt", &GenerateStats::n_prompt, "prompt tokens, BOS included")
        .def_readonly("n_reused", &GenerateStats::n_reused, "leading prompt tokens kept from a session's cache")
        .def_readonly("n_generated", &GenerateStats::n_generated,
                      "sampled tokens, an ending end-of-generation token included")
        .def_readonly("stopped_at_eos", &GenerateStats::stopped_at_eos)
        .def_readonly("prefill_s", &GenerateStats::prefill_s, "seconds of the prompt's decode")
        .def_readonly("generate_s", &GenerateStats::generate_s, "seconds of sampling, drafting and decoding after it")
        .def_readonly("speculative", &GenerateStats::speculative)
        .def_property_readonly("prompt_tokens_per_s", &GenerateStats::prompt_tokens_per_s)
        .def_property_readonly("generated_tokens_per_s", &GenerateStats::generated_tokens_per_s)
        .def("__repr__", [](const GenerateStats &s) {
            return "GenerateStats(n_prompt=" + std::to_string(s.n_prompt) + ", n_reused=" +
                   std::to_string(s.n_reused) + ", n_generated=" +
                   std::to_string(s.n_generated) + ", prefill_s=" + std::to_string(s.prefill_s) +
                   ", generate_s=" + std::to_string(s.generate_s) + ")";
        });

    // The generation keeps a reference to its tokenizer (keep_alive); its session keeps the engine alive.
    py::class_<Generation>(m, "Generation",
                           "One prompt's generation, stepped per token, over a fresh session or a kept one (chat).")
        .def(py::init([](const Engine &engine, const Tokenizer &tokenizer, const std::string &prompt,
                         int max_tokens, int n_ctx, float temperature, int top_k, float top_p, float min_p,
                         uint64_t seed, bool add_special, bool parse_special, int draft, const std::string &mode,
                         std::shared_ptr<DraftCosts> costs) {
                 GenerateParams p;
                 p.speculative.draft = draft;
                 p.speculative.mode = parse_draft_mode(mode);
                 p.speculative.costs = std::move(costs);
                 p.max_tokens = max_tokens;
                 p.n_ctx = n_ctx;
                 p.add_special = add_special;
                 p.parse_special = parse_special;
                 p.sampler.temperature = temperature;
                 p.sampler.top_k = top_k;
                 p.sampler.top_p = top_p;
                 p.sampler.min_p = min_p;
                 p.sampler.seed = seed;
                 return std::make_unique<Generation>(engine, tokenizer, prompt, p);
             }),
             py::arg("engine"), py::arg("tokenizer"), py::arg("prompt"), py::arg("max_tokens"), py::arg("n_ctx"),
             py::arg("temperature"), py::arg("top_k"), py::arg("top_p"), py::arg("min_p"), py::arg("seed"),
             py::arg("add_special") = true, py::arg("parse_special") = false, py::arg("draft") = 0,
             py::arg("draft_mode") = "coupled", py::arg("draft_costs") = nullptr, py::keep_alive<1, 3>(),
             "draft: MTP draft tokens per round (0 off, 1..8, -1 auto); draft_mode: coupled, residual or greedy.")
        // Over a kept session (a chat): keeps the session and the tokenizer alive.
        .def(py::init([](Session &session, const Tokenizer &tokenizer, std::vector<int32_t> prompt,
                         const std::vector<int32_t> &cached, int max_tokens, float temperature, int top_k,
                         float top_p, float min_p, uint64_t seed, int draft, const std::string &mode,
                         std::shared_ptr<DraftCosts> costs) {
                 GenerateParams p;
                 p.speculative.draft = draft;
                 p.speculative.mode = parse_draft_mode(mode);
                 p.speculative.costs = std::move(costs);
                 p.max_tokens = max_tokens;
                 p.sampler.temperature = temperature;
                 p.sampler.top_k = top_k;
                 p.sampler.top_p = top_p;
                 p.sampler.min_p = min_p;
                 p.sampler.seed = seed;
                 return std::make_unique<Generation>(session, tokenizer, std::move(prompt), cached, p);
             }),
             py::arg("session"), py::arg("tokenizer"), py::arg("prompt"), py::arg("cached"), py::arg("max_tokens"),
             py::arg("temperature"), py::arg("top_k"), py::arg("top_p"), py::arg("min_p"), py::arg("seed"),
             py::arg("draft") = 0, py::arg("draft_mode") = "coupled", py::arg("draft_costs") = nullptr,
             py::keep_alive<1, 2>(), py::keep_alive<1, 3>(),
             "Prompt token ids over a session holding `cached` (earlier tokens): only the part after their "
             "common prefix is decoded.")
        .def("step",
             [](Generation &g) -> py::object {
                 std::string piece;
                 bool more;
                 {
                     py::gil_scoped_release release;
                     more = g.step(piece);
                 }
                 if (!more) return py::none();
                 // Whole characters only (TokenTextStream); bytes that are not UTF-8 at all become U+FFFD.
                 PyObject *o = PyUnicode_DecodeUTF8(piece.data(), Py_ssize_t(piece.size()), "replace");
                 if (!o) throw py::error_already_set();
                 return py::reinterpret_steal<py::str>(o);
             },
             "The next token's text (possibly ''), or None once generation has ended.")
        .def_property_readonly("tokens", &Generation::tokens, "prompt tokens, then generated ones")
        .def_property_readonly("n_past", [](const Generation &g) { return g.session().n_past(); },
                               "positions of the session decoded: tokens[:n_past] are in its cache")
        .def_property_readonly("stats", &Generation::stats);
}

}  // namespace flashmtp
