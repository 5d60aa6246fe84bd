// runtime/chat.h for Python: the compiled CLI's chat formatter, _core.ChatTemplate (Python chats render the
// jinja template itself, flashmtp.chat; the binding lets tests compare the two), and chat_prompt_tokens.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "bindings.h"
#include "core/gguf.h"
#include "runtime/chat.h"
#include "runtime/tokenizer.h"

namespace py = pybind11;

namespace flashmtp {

namespace {

// [{"role": ..., "content": ...}, ...] as in the Python chat API.
std::vector<ChatMessage> to_messages(const py::list &messages) {
    std::vector<ChatMessage> out;
    for (const py::handle &m : messages) {
        out.push_back({py::cast<std::string>(m["role"]), py::cast<std::string>(m["content"])});
    }
    return out;
}

}  // namespace

void bind_chat(py::module_ &m) {
    py::class_<ChatTemplate>(m, "ChatTemplate",
                             "Built-in chat formatter (chatml, llama3, gemma, deepseek3) recognised from a jinja "
                             "template's text, as the compiled flashmtp-cli uses it")
        .def_static("detect", &ChatTemplate::detect, py::arg("source"), py::arg("bos_text") = "",
                    "Recognise a jinja chat template; ValueError if it is of no built-in family")
        .def_static("from_gguf",
                    [](const std::string &path) {
                        const auto file = GGUFFile::open(path);
                        return ChatTemplate::from_gguf(*file, Tokenizer::from_gguf(*file));
                    },
                    py::arg("path"), "The file's tokenizer.chat_template (ChatML if it has none)")
        .def("apply",
             [](const ChatTemplate &t, const py::list &messages, bool add_generation_prompt) {
                 const std::string text = t.apply(to_messages(messages), add_generation_prompt);
                 return py::str(text);
             },
             py::arg("messages"), py::arg("add_generation_prompt") = true,
             "Prompt text of [{'role': ..., 'content': ...}, ...]")
        .def_property_readonly("family",
                               [](const ChatTemplate &t) { return chat_template_family_name(t.family()); })
        .def_property_readonly("default_system", &ChatTemplate::default_system)
        .def_property_readonly("has_file_template", &ChatTemplate::has_file_template);

    m.def("chat_prompt_tokens", &chat_prompt_tokens, py::arg("tokenizer"), py::arg("text"),
          py::call_guard<py::gil_scoped_release>(),
          "Token ids of a rendered chat prompt as llama.cpp tokenizes it: control tokens parsed, BOS added "
          "when the tokenizer asks for it, a BOS the template wrote cut first");
}

}  // namespace flashmtp
