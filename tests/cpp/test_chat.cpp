// The built-in chat formatters (csrc/runtime/chat.h) without Python: one conversation per family against
// the text its canonical jinja template renders (oracle: jinja2 as transformers configures it, the strings
// below produced by flashmtp.chat from the templates in tests/python/test_chat.py, which also compares every
// family with jinja on many conversations); detection; the default system turn read from ChatML templates
// in both spellings of its newline; refusals with their messages.
#include <stdexcept>
#include <string>
#include <vector>

#include "check.h"
#include "runtime/chat.h"

using namespace flashmtp;

namespace {

const std::vector<ChatMessage> kConversation = {
    {"system", "Be kind."}, {"user", " Hi "}, {"assistant", "Hello!"}, {"user", "Bye"}};

void test_families() {
    struct Case {
        const char *marker;  // enough of the template to detect its family
        const char *bos;
        ChatTemplateFamily family;
        std::string expected;
    };
    const Case cases[] = {
        {"{{ '<|im_start|>' + message['role'] }}", "<s>", CHAT_TEMPLATE_CHATML,
         "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\n Hi <|im_end|>\n<|im_start|>assistant\n"
         "Hello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"},
        {"<|start_header_id|>{{ role }}<|end_header_id|>", "<|begin_of_text|>", CHAT_TEMPLATE_LLAMA3,
         "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe kind.<|eot_id|><|start_header_id|>user"
         "<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
         "<|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|><|start_header_id|>assistant<|end_header_id|>"
         "\n\n"},
        {"<start_of_turn>", "<bos>", CHAT_TEMPLATE_GEMMA,
         "<bos><start_of_turn>user\nBe kind.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
         "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"},
        {"<｜User｜><｜Assistant｜><｜end▁of▁sentence｜>", "<｜begin▁of▁sentence｜>", CHAT_TEMPLATE_DEEPSEEK3,
         "<｜begin▁of▁sentence｜>Be kind.<｜User｜> Hi <｜Assistant｜>Hello!<｜end▁of▁sentence｜><｜User｜>Bye"
         "<｜Assistant｜>"},
    };
    for (const Case &c : cases) {
        const ChatTemplate t = ChatTemplate::detect(c.marker, c.bos);
        CHECK_MSG(t.family() == c.family, "%s detected as %s", c.marker, chat_template_family_name(t.family()));
        const std::string got = t.apply(kConversation, true);
        CHECK_MSG(got == c.expected, "%s: got\n%s", chat_template_family_name(c.family), got.c_str());
    }
}

void test_chatml_default_system() {
    // SmolLM2 writes the newline as is, Qwen2.5 as the escape \n; the branch that copies the caller's system
    // message (a literal concatenated with a variable) is not taken for the default.
    const char *smollm2 = "{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
                          "You are SmolLM<|im_end|>\n' }}{% endif %}";
    const char *qwen = "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}"
                       "{{- '<|im_start|>system\\nYou are Qwen, \\'helpful\\'.<|im_end|>\\n' }}";
    CHECK(ChatTemplate::detect(smollm2, "").default_system() == "You are SmolLM");
    const ChatTemplate t = ChatTemplate::detect(qwen, "");
    CHECK(t.default_system() == "You are Qwen, 'helpful'.");
    CHECK(t.apply({{"user", "x"}}, false) ==
          "<|im_start|>system\nYou are Qwen, 'helpful'.<|im_end|>\n<|im_start|>user\nx<|im_end|>\n");
    CHECK(t.apply({{"system", "S"}}, false) == "<|im_start|>system\nS<|im_end|>\n");  // a given one replaces it
}

void test_refusals() {
    CHECK_THROWS(std::invalid_argument, ChatTemplate::detect("{{ messages[0].content }}", ""),
                 "use the Python `flashmtp chat`");
    CHECK_THROWS(std::invalid_argument, ChatTemplate::detect("<|im_start|><|im_sep|>", ""), "built-in formats");
    const ChatTemplate chatml = ChatTemplate::detect("<|im_start|>", "");
    CHECK_THROWS(std::invalid_argument, chatml.apply({}, true), "no messages");
    CHECK_THROWS(std::invalid_argument, chatml.apply({{"tool", "{}"}}, true), "role \"tool\"");
    const ChatTemplate gemma = ChatTemplate::detect("<start_of_turn>", "");
    CHECK_THROWS(std::invalid_argument, gemma.apply({{"user", "a"}, {"user", "b"}}, true), "must alternate");
}

}  // namespace

int main() {
    test_families();
    test_chatml_default_system();
    test_refusals();
    return test::exit_code("test_chat");
}
