#include "runtime/chat.h"

#include <stdexcept>

namespace flashmtp {

namespace {

bool contains(std::string_view text, std::string_view part) { return text.find(part) != std::string_view::npos; }

// jinja's `trim` filter on ASCII whitespace (Python's str.strip also strips Unicode spaces; chat turns
// rarely start or end with them).
std::string trim(const std::string &text) {
    const char *space = " \t\n\r\v\f";
    const size_t begin = text.find_first_not_of(space);
    if (begin == std::string::npos) return "";
    return text.substr(begin, text.find_last_not_of(space) - begin + 1);
}

// The system turn a ChatML template writes when the conversation has none: a string literal of the form
// '<|im_start|>system\nTEXT<|im_end|>\n' somewhere in the template (the newline written as is, or as the
// escape \n). Literals that are concatenated with variables (the branch that copies the caller's system
// message) end before "<|im_end|>" and are skipped. Returns TEXT unescaped, or "" if there is none.
std::string chatml_default_system(std::string_view source) {
    const std::string_view head = "<|im_start|>system", tail = "<|im_end|>\n";
    for (size_t pos = source.find(head); pos != std::string_view::npos; pos = source.find(head, pos + 1)) {
        if (pos == 0) continue;
        const char quote = source[pos - 1];
        if (quote != '\'' && quote != '"') continue;
        std::string literal;  // the rest of the string literal after head, unescaped
        bool closed = false;
        for (size_t p = pos + head.size(); p < source.size(); ++p) {
            const char c = source[p];
            if (c == quote) {
                closed = true;
                break;
            }
            if (c == '\\' && p + 1 < source.size()) {
                const char e = source[++p];
                literal += e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e;
            } else {
                literal += c;
            }
        }
        if (!closed || literal.size() < 1 + tail.size() || literal[0] != '\n' ||
            literal.compare(literal.size() - tail.size(), tail.size(), tail) != 0) {
            continue;
        }
        return literal.substr(1, literal.size() - 1 - tail.size());
    }
    return "";
}

void check_role(const ChatMessage &m) {
    if (m.role != "system" && m.role != "user" && m.role != "assistant") {
        throw std::invalid_argument("chat: message role \"" + m.role +
                                    "\" is not supported by the built-in templates (system, user, assistant)");
    }
}

// {% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'
// + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}
// (plus the template's default system turn when the first message is not a system one)
std::string format_chatml(const std::vector<ChatMessage> &messages, bool add_generation_prompt,
                          const std::string &default_system) {
    std::string out;
    if (!default_system.empty() && messages[0].role != "system") {
        out += "<|im_start|>system\n" + default_system + "<|im_end|>\n";
    }
    for (const ChatMessage &m : messages) out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
    if (add_generation_prompt) out += "<|im_start|>assistant\n";
    return out;
}

// {% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] +
// '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content =
// bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{
// '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}
std::string format_llama3(const std::vector<ChatMessage> &messages, bool add_generation_prompt,
                          const std::string &bos_text) {
    std::string out = bos_text;
    for (const ChatMessage &m : messages) {
        out += "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + trim(m.content) + "<|eot_id|>";
    }
    if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
    return out;
}

// {{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first_user_prefix = messages[0]['content'] +
// '\n\n' %}{% set loop_messages = messages[1:] %}{% else %}{% set first_user_prefix = "" %}{% set
// loop_messages = messages %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') !=
// (loop.index0 % 2 == 0) %}{{ raise_exception("Conversation roles must alternate
// user/assistant/user/assistant/...") }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role =
// "model" %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' +
// (first_user_prefix if loop.first else "") + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if
// add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}
std::string format_gemma(const std::vector<ChatMessage> &messages, bool add_generation_prompt,
                         const std::string &bos_text) {
    std::string out = bos_text;
    const bool has_system = messages[0].role == "system";
    const std::string first_user_prefix = has_system ? messages[0].content + "\n\n" : "";
    for (size_t i = has_system ? 1 : 0, turn = 0; i < messages.size(); ++i, ++turn) {
        const ChatMessage &m = messages[i];
        if ((m.role == "user") != (turn % 2 == 0)) {
            throw std::invalid_argument("chat: Conversation roles must alternate user/assistant/user/assistant/...");
        }
        out += "<start_of_turn>" + (m.role == "assistant" ? std::string("model") : m.role) + "\n" +
               (turn == 0 ? first_user_prefix : "") + trim(m.content) + "<end_of_turn>\n";
    }
    if (add_generation_prompt) out += "<start_of_turn>model\n";
    return out;
}

// DeepSeek V3's template without its tool-call branches: every system message first (joined by a blank
// line), right after bos_token, then
// {% for message in messages %}{% if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}{% elif
// message['role'] == 'assistant' %}{{ '<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>' }}{% endif
// %}{% endfor %}{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}
std::string format_deepseek3(const std::vector<ChatMessage> &messages, bool add_generation_prompt,
                             const std::string &bos_text) {
    std::string out = bos_text;
    bool first_system = true;
    for (const ChatMessage &m : messages) {
        if (m.role != "system") continue;
        if (!first_system) out += "\n\n";
        out += m.content;
        first_system = false;
    }
    for (const ChatMessage &m : messages) {
        if (m.role == "user") out += "<｜User｜>" + m.content;
        if (m.role == "assistant") out += "<｜Assistant｜>" + m.content + "<｜end▁of▁sentence｜>";
    }
    if (add_generation_prompt) out += "<｜Assistant｜>";
    return out;
}

}  // namespace

const char *chat_template_family_name(ChatTemplateFamily family) {
    switch (family) {
        case CHAT_TEMPLATE_CHATML: return "chatml";
        case CHAT_TEMPLATE_LLAMA3: return "llama3";
        case CHAT_TEMPLATE_GEMMA: return "gemma";
        case CHAT_TEMPLATE_DEEPSEEK3: return "deepseek3";
    }
    return "?";
}

ChatTemplate ChatTemplate::detect(std::string_view source, std::string bos_text) {
    ChatTemplate t;
    t.bos_text_ = std::move(bos_text);
    // llama.cpp's llm_chat_detect_template order. ChatML variants with extra markers (phi-4's "<|im_sep|>",
    // SmolVLM's "<end_of_utterance>") format differently and are refused rather than formatted wrongly.
    if (contains(source, "<|im_start|>") && !contains(source, "<|im_sep|>") &&
        !contains(source, "<end_of_utterance>")) {
        t.family_ = CHAT_TEMPLATE_CHATML;
        t.default_system_ = chatml_default_system(source);
    } else if (contains(source, "<|start_header_id|>") && contains(source, "<|end_header_id|>")) {
        t.family_ = CHAT_TEMPLATE_LLAMA3;
    } else if (contains(source, "<start_of_turn>")) {
        t.family_ = CHAT_TEMPLATE_GEMMA;
    } else if (contains(source, "<｜Assistant｜>") && contains(source, "<｜User｜>") &&
               contains(source, "<｜end▁of▁sentence｜>")) {
        t.family_ = CHAT_TEMPLATE_DEEPSEEK3;
    } else {
        throw std::invalid_argument(
            "the chat template is not one of the built-in formats (chatml, llama3, gemma, deepseek3); "
            "use the Python `flashmtp chat`, which renders any jinja chat template");
    }
    return t;
}

ChatTemplate ChatTemplate::from_gguf(const GGUFFile &file, const Tokenizer &tokenizer) {
    const std::string bos_text = tokenizer.bos_id() >= 0 ? tokenizer.token_text(tokenizer.bos_id()) : "";
    if (file.has("tokenizer.chat_template")) return detect(file.get_string("tokenizer.chat_template"), bos_text);
    ChatTemplate t;
    t.bos_text_ = bos_text;
    t.has_file_template_ = false;
    return t;
}

std::vector<int32_t> chat_prompt_tokens(const Tokenizer &tokenizer, std::string_view text) {
    if (tokenizer.add_bos()) {
        const std::string &bos = tokenizer.token_text(tokenizer.bos_id());
        if (!bos.empty() && text.substr(0, bos.size()) == bos) text.remove_prefix(bos.size());
    }
    return tokenizer.encode(text, true, true);
}

std::string ChatTemplate::apply(const std::vector<ChatMessage> &messages, bool add_generation_prompt) const {
    if (messages.empty()) throw std::invalid_argument("chat: the conversation has no messages");
    for (const ChatMessage &m : messages) check_role(m);
    switch (family_) {
        case CHAT_TEMPLATE_CHATML: return format_chatml(messages, add_generation_prompt, default_system_);
        case CHAT_TEMPLATE_LLAMA3: return format_llama3(messages, add_generation_prompt, bos_text_);
        case CHAT_TEMPLATE_GEMMA: return format_gemma(messages, add_generation_prompt, bos_text_);
        case CHAT_TEMPLATE_DEEPSEEK3: return format_deepseek3(messages, add_generation_prompt, bos_text_);
    }
    return "";
}

}  // namespace flashmtp
