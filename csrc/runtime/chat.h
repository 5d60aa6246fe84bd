// Chat prompts without a jinja engine, for the compiled CLI: as llama.cpp's built-in templates
// (llama-chat.cpp), a GGUF's tokenizer.chat_template is recognised by marker strings and the conversation is
// formatted by hand-written code for that family. The Python API renders the template itself with jinja2
// (python/flashmtp/chat.py); tests/python/test_chat.py checks both give the same text.
// Owns: family detection, message formatting, ChatML's default system turn.
// Does not own: tokenization (the caller tokenizes with parse_special), generation, the conversation history.
//
// Families (each formats as its canonical jinja template, quoted in chat.cpp):
//   chatml     "<|im_start|>"   SmolLM2, Qwen2.5 (both ship ChatML variants), many others
//   llama3     "<|start_header_id|>" + "<|end_header_id|>"
//   gemma      "<start_of_turn>"
//   deepseek3  "<｜User｜>" + "<｜Assistant｜>" + "<｜end▁of▁sentence｜>"   DeepSeek V3 and later
// Other templates are refused with an error pointing to the Python `flashmtp chat`, which runs any template.
// Extras of later template versions are left out, as llama.cpp's built-ins leave them out: Llama 3.1's dated
// system header, tool calls, DeepSeek R1's "<think>" opening.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/gguf.h"
#include "runtime/tokenizer.h"

namespace flashmtp {

enum ChatTemplateFamily {
    CHAT_TEMPLATE_CHATML,
    CHAT_TEMPLATE_LLAMA3,
    CHAT_TEMPLATE_GEMMA,
    CHAT_TEMPLATE_DEEPSEEK3,
};

const char *chat_template_family_name(ChatTemplateFamily family);

struct ChatMessage {
    std::string role;  // "system", "user" or "assistant"
    std::string content;
};

class ChatTemplate {
public:
    // Recognises `source` (a jinja template); bos_text is what the template knows as bos_token. Throws
    // std::invalid_argument for a template of no supported family.
    static ChatTemplate detect(std::string_view source, std::string bos_text);

    // The file's tokenizer.chat_template, recognised as above. A file without one gets plain ChatML, as in
    // llama.cpp (has_file_template() tells the caller, who should warn).
    static ChatTemplate from_gguf(const GGUFFile &file, const Tokenizer &tokenizer);

    // The prompt text of `messages`, ending with the assistant's header when add_generation_prompt.
    // Throws std::invalid_argument for an empty conversation, a role the family has no place for, or (gemma)
    // turns that do not alternate user/assistant, as the jinja templates raise.
    std::string apply(const std::vector<ChatMessage> &messages, bool add_generation_prompt) const;

    ChatTemplateFamily family() const { return family_; }
    bool has_file_template() const { return has_file_template_; }
    // ChatML templates that write a fixed system turn when the conversation starts without one (SmolLM2,
    // Qwen2.5) carry its text here, read from the template; empty otherwise.
    const std::string &default_system() const { return default_system_; }

private:
    ChatTemplateFamily family_ = CHAT_TEMPLATE_CHATML;
    std::string bos_text_;
    std::string default_system_;
    bool has_file_template_ = true;
};

// Token ids of a rendered chat prompt, as llama.cpp tokenizes it (common/chat.cpp): control-token text parsed,
// BOS added when the tokenizer asks for it, after cutting a BOS text the template wrote itself.
std::vector<int32_t> chat_prompt_tokens(const Tokenizer &tokenizer, std::string_view text);

}  // namespace flashmtp
