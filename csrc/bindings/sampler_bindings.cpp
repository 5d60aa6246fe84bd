// Bindings for the sampler: _core.Sampler(temperature=..., ...) with sample, distribution and uniform.
// Numpy dtypes and shapes are checked here; settings and token ids by the sampler itself
// (std::invalid_argument, which pybind11 raises as ValueError).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "bindings.h"
#include "runtime/sampler.h"

namespace py = pybind11;

namespace flashmtp {

namespace {

// logits: float32 [n_vocab], any strides (copied when not contiguous).
py::array_t<float, py::array::c_style> checked_logits(const py::array &logits) {
    if (!logits.dtype().is(py::dtype::of<float>()) || logits.ndim() != 1) {
        throw py::value_error("Sampler: logits must be a 1-D float32 array [n_vocab], got " +
                              std::string(py::str(logits.dtype())) + " with " + std::to_string(logits.ndim()) +
                              " dimension(s)");
    }
    return py::array_t<float, py::array::c_style>::ensure(logits);
}

// history: any 1-D integer array or sequence, oldest token first. Values outside int32 are rejected here,
// values outside the vocabulary by the sampler.
std::vector<int32_t> checked_history(const py::object &history) {
    const py::array array = py::array::ensure(history);
    if (!array || array.ndim() != 1) throw py::value_error("Sampler: history must be a 1-D array of token ids");
    if (array.size() == 0) return {};
    const char kind = array.dtype().kind();
    if (kind != 'i' && kind != 'u') {
        throw py::value_error("Sampler: history must hold integer token ids, got " +
                              std::string(py::str(array.dtype())));
    }
    const auto ids = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(array);
    std::vector<int32_t> result(size_t(ids.size()));
    for (size_t i = 0; i < result.size(); ++i) {
        const int64_t id = ids.data()[i];
        if (id < 0 || id > std::numeric_limits<int32_t>::max()) {
            throw py::value_error("Sampler: history[" + std::to_string(i) + "] = " + std::to_string(id) +
                                  " is not a token id");
        }
        result[i] = int32_t(id);
    }
    return result;
}

}  // namespace

void bind_sampler(py::module_ &m) {
    const SamplerParams defaults;
    py::class_<Sampler>(m, "Sampler",
                        "Token sampler: penalties -> top_k -> top_p -> min_p -> temperature -> sample "
                        "(csrc/runtime/sampler.h). Random numbers depend only on (seed, position).")
        .def(py::init([](float temperature, int32_t top_k, float top_p, float min_p, float repetition_penalty,
                         float presence_penalty, float frequency_penalty, int32_t penalty_last_n, uint64_t seed) {
                 SamplerParams params;
                 params.temperature = temperature;
                 params.top_k = top_k;
                 params.top_p = top_p;
                 params.min_p = min_p;
                 params.repetition_penalty = repetition_penalty;
                 params.presence_penalty = presence_penalty;
                 params.frequency_penalty = frequency_penalty;
                 params.penalty_last_n = penalty_last_n;
                 params.seed = seed;
                 return Sampler(params);
             }),
             py::kw_only(), py::arg("temperature") = defaults.temperature, py::arg("top_k") = defaults.top_k,
             py::arg("top_p") = defaults.top_p, py::arg("min_p") = defaults.min_p,
             py::arg("repetition_penalty") = defaults.repetition_penalty,
             py::arg("presence_penalty") = defaults.presence_penalty,
             py::arg("frequency_penalty") = defaults.frequency_penalty,
             py::arg("penalty_last_n") = defaults.penalty_last_n, py::arg("seed") = defaults.seed)
        .def(
            "sample",
            [](Sampler &sampler, const py::array &logits, const py::object &history, uint64_t position) {
                const auto l = checked_logits(logits);
                const std::vector<int32_t> h = checked_history(history);
                return sampler.sample(l.data(), l.size(), h.data(), h.size(), position);
            },
            py::arg("logits"), py::arg("history"), py::arg("position"),
            "The token id at sequence position `position`.")
        .def(
            "distribution",
            [](Sampler &sampler, const py::array &logits, const py::object &history) {
                const auto l = checked_logits(logits);
                const std::vector<int32_t> h = checked_history(history);
                const TokenDistribution d = sampler.distribution(l.data(), l.size(), h.data(), h.size());
                py::array_t<int32_t> ids(py::ssize_t(d.ids.size()), d.ids.data());
                py::array_t<float> probs(py::ssize_t(d.probs.size()), d.probs.data());
                return std::make_pair(ids, probs);
            },
            py::arg("logits"), py::arg("history"),
            "(ids int32, probs float32): the tokens that can be drawn, most likely first, after every transform.")
        .def("uniform", &Sampler::uniform, py::arg("position"), py::arg("stream") = 0,
             "The uniform number in [0, 1) of (seed, position, stream); sample() uses stream 0.")
        .def_property_readonly("temperature", [](const Sampler &s) { return s.params().temperature; })
        .def_property_readonly("top_k", [](const Sampler &s) { return s.params().top_k; })
        .def_property_readonly("top_p", [](const Sampler &s) { return s.params().top_p; })
        .def_property_readonly("min_p", [](const Sampler &s) { return s.params().min_p; })
        .def_property_readonly("repetition_penalty", [](const Sampler &s) { return s.params().repetition_penalty; })
        .def_property_readonly("presence_penalty", [](const Sampler &s) { return s.params().presence_penalty; })
        .def_property_readonly("frequency_penalty", [](const Sampler &s) { return s.params().frequency_penalty; })
        .def_property_readonly("penalty_last_n", [](const Sampler &s) { return s.params().penalty_last_n; })
        .def_property_readonly("seed", [](const Sampler &s) { return s.params().seed; });
}

}  // namespace flashmtp
