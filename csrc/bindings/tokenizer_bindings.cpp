// Tokenizer bindings: translation only. Text goes in as str (encoded to UTF-8) or bytes; decode gives str
// (invalid UTF-8 replaced by U+FFFD), decode_bytes the exact bytes.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <vector>

#include "bindings.h"
#include "core/gguf.h"
#include "runtime/tokenizer.h"
#include "runtime/unicode.h"

namespace py = pybind11;

namespace flashmtp {

namespace {

py::str utf8_to_str(const std::string &s) {
    PyObject *o = PyUnicode_DecodeUTF8(s.data(), Py_ssize_t(s.size()), "replace");
    if (!o) throw py::error_already_set();
    return py::reinterpret_steal<py::str>(o);
}

const char *pre_name(TokenizerPre pre) {
    switch (pre) {
        case TOKENIZER_PRE_DEFAULT: return "default";
        case TOKENIZER_PRE_GPT2: return "gpt2";
        case TOKENIZER_PRE_SMOLLM: return "smollm";
        case TOKENIZER_PRE_QWEN2: return "qwen2";
        case TOKENIZER_PRE_LLAMA3: return "llama-bpe";
        case TOKENIZER_PRE_DEEPSEEK3: return "deepseek-v3";
    }
    return "?";
}

}  // namespace

void bind_tokenizer(py::module_ &m) {
    m.attr("unicode_version") = unicode_version();

    py::class_<Tokenizer, std::shared_ptr<Tokenizer>>(m, "Tokenizer",
        "Byte-level BPE (gpt2) or SentencePiece BPE (llama) tokenizer read from a GGUF file's tokenizer.ggml.* "
        "metadata")
        .def_static("from_gguf", [](const std::string &path) {
            return std::make_shared<Tokenizer>(Tokenizer::from_gguf(*GGUFFile::open(path)));
        }, py::arg("path"))
        .def("encode", &Tokenizer::encode, py::arg("text"), py::arg("add_special") = true,
             py::arg("parse_special") = false, py::call_guard<py::gil_scoped_release>(),
             "Token ids of text (str or UTF-8 bytes)")
        .def("decode",
             [](const Tokenizer &t, const std::vector<int32_t> &ids) { return utf8_to_str(t.decode(ids)); },
             py::arg("ids"), "Text of ids (invalid UTF-8 replaced by U+FFFD)")
        .def("decode_bytes",
             [](const Tokenizer &t, const std::vector<int32_t> &ids) { return py::bytes(t.decode(ids)); },
             py::arg("ids"), "Exact bytes of ids")
        .def("token_bytes", [](const Tokenizer &t, int32_t id) { return py::bytes(t.token_bytes(id)); },
             py::arg("id"))
        .def("token_text", [](const Tokenizer &t, int32_t id) { return utf8_to_str(t.token_text(id)); },
             py::arg("id"), "The token as stored in the GGUF file")
        .def("token_type", [](const Tokenizer &t, int32_t id) { return int(t.token_type(id)); }, py::arg("id"))
        .def_property_readonly("n_vocab", &Tokenizer::n_vocab)
        .def_property_readonly("bos_id", &Tokenizer::bos_id)
        .def_property_readonly("eos_id", &Tokenizer::eos_id)
        .def_property_readonly("eog_ids", &Tokenizer::eog_ids,
                               "End-of-generation ids (EOS, end-of-turn, FIM separators), sorted")
        .def("is_eog", &Tokenizer::is_eog, py::arg("id"))
        .def("token_score", &Tokenizer::token_score, py::arg("id"))
        .def_property_readonly("add_bos", &Tokenizer::add_bos)
        .def_property_readonly("add_eos", &Tokenizer::add_eos)
        .def_property_readonly("add_space_prefix", &Tokenizer::add_space_prefix)
        .def_property_readonly("model", [](const Tokenizer &t) {
            return t.model() == TOKENIZER_MODEL_SPM ? "llama" : "gpt2";
        }, "tokenizer.ggml.model: \"gpt2\" or \"llama\"")
        .def_property_readonly("pre", [](const Tokenizer &t) { return pre_name(t.pre()); });

    // Keeps its tokenizer alive: the stream holds a plain pointer to it.
    py::class_<TokenTextStream>(m, "TokenTextStream",
        "Text of a stream of token ids, released only in whole UTF-8 characters")
        .def(py::init<const Tokenizer &>(), py::arg("tokenizer"), py::keep_alive<1, 2>())
        .def("push", [](TokenTextStream &s, int32_t id) { return utf8_to_str(s.push(id)); }, py::arg("id"))
        .def("flush", [](TokenTextStream &s) { return utf8_to_str(s.flush()); });
}

}  // namespace flashmtp
