#include "runtime/tokenizer.h"

#include <algorithm>
#include <cstring>
#include <queue>
#include <stdexcept>

#include "runtime/unicode.h"

namespace flashmtp {

// ---- pre-tokenizers ------------------------------------------------------------------------------------------------
// Each splits a span of text (already free of special tokens) into words, exactly as the model's regex does
// in the Hugging Face tokenizer, but hand-written over character classes: std::regex has no \p{..}, and a
// matcher per pattern is simpler and faster than a general engine. The regexes are quoted above each matcher.

namespace {

// The classes the patterns distinguish. Whitespace (\s) is tested before category: no letter or number is
// whitespace, and U+0085 (category Cc) is.
enum CharClass : uint8_t { CHAR_LETTER, CHAR_NUMBER, CHAR_SPACE, CHAR_OTHER };

struct DecodedText {
    std::vector<uint32_t> cpts;    // [n] code points (UNICODE_INVALID for a byte that is not valid UTF-8)
    std::vector<CharClass> class_; // [n]
    std::vector<size_t> offsets;   // [n + 1] byte offset of each code point, then the text's size
};

DecodedText decode_text(std::string_view text) {
    DecodedText d;
    d.cpts.reserve(text.size());
    d.class_.reserve(text.size());
    d.offsets.reserve(text.size() + 1);
    for (size_t pos = 0; pos < text.size();) {
        uint32_t cpt;
        const size_t len = utf8_decode(text, pos, cpt);
        CharClass cls = CHAR_OTHER;
        if (unicode_is_whitespace(cpt)) {
            cls = CHAR_SPACE;
        } else {
            const UnicodeCategory cat = unicode_category(cpt);
            cls = cat == UNICODE_LETTER ? CHAR_LETTER : cat == UNICODE_NUMBER ? CHAR_NUMBER : CHAR_OTHER;
        }
        d.cpts.push_back(cpt);
        d.class_.push_back(cls);
        d.offsets.push_back(pos);
        pos += len;
    }
    d.offsets.push_back(text.size());
    return d;
}

// The regexes' \s+(?!\S)|\s+ at a whitespace run [i, run_end) inside a span ending at `end`: a run followed
// by a non-space gives up its last character, which then starts the next word (" word", "\tfoo" ...).
size_t match_space_run(size_t i, size_t run_end, size_t end) {
    return (run_end == end || run_end - i == 1) ? run_end : run_end - 1;
}

// GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// Returns the end of the word starting at i, within [i, end).
size_t match_gpt2(const DecodedText &d, size_t i, size_t end) {
    const auto &c = d.cpts;
    const auto &cls = d.class_;
    if (c[i] == '\'' && i + 1 < end) {
        const uint32_t n1 = c[i + 1];
        if (n1 == 's' || n1 == 't' || n1 == 'm' || n1 == 'd') return i + 2;
        if (i + 2 < end) {
            const uint32_t n2 = c[i + 2];
            if ((n1 == 'r' && n2 == 'e') || (n1 == 'v' && n2 == 'e') || (n1 == 'l' && n2 == 'l')) return i + 3;
        }
    }
    // One leading space joins a following letter, number or symbol run.
    const size_t k = (c[i] == ' ' && i + 1 < end && cls[i + 1] != CHAR_SPACE) ? i + 1 : i;
    size_t j = k + 1;
    while (j < end && cls[j] == cls[k]) ++j;
    return cls[k] == CHAR_SPACE ? match_space_run(i, j, end) : j;
}

// Qwen2 and llama 3 (which takes up to 3 digits where Qwen2 takes 1):
// (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
size_t match_llama3(const DecodedText &d, size_t i, size_t end, size_t max_digits) {
    const auto &c = d.cpts;
    const auto &cls = d.class_;
    const auto lower = [](uint32_t x) { return (x >= 'A' && x <= 'Z') ? x + ('a' - 'A') : x; };
    const auto is_newline = [&](size_t p) { return c[p] == '\r' || c[p] == '\n'; };
    if (c[i] == '\'' && i + 1 < end) {
        const uint32_t n1 = lower(c[i + 1]);
        if (n1 == 's' || n1 == 't' || n1 == 'm' || n1 == 'd') return i + 2;
        if (i + 2 < end) {
            const uint32_t n2 = lower(c[i + 2]);
            if ((n1 == 'r' && n2 == 'e') || (n1 == 'v' && n2 == 'e') || (n1 == 'l' && n2 == 'l')) return i + 3;
        }
    }
    // A letter run, taking along one preceding character that is not a newline, letter or number.
    size_t letters = end;
    if (cls[i] == CHAR_LETTER) {
        letters = i;
    } else if (cls[i] != CHAR_NUMBER && !is_newline(i) && i + 1 < end && cls[i + 1] == CHAR_LETTER) {
        letters = i + 1;
    }
    if (letters != end) {
        size_t j = letters + 1;
        while (j < end && cls[j] == CHAR_LETTER) ++j;
        return j;
    }
    if (cls[i] == CHAR_NUMBER) {
        size_t j = i + 1;
        while (j < end && j - i < max_digits && cls[j] == CHAR_NUMBER) ++j;
        return j;
    }
    // Symbols, with one leading space and any newlines right after.
    const size_t k = (c[i] == ' ' && i + 1 < end && cls[i + 1] == CHAR_OTHER) ? i + 1 : i;
    if (cls[k] == CHAR_OTHER) {
        size_t j = k + 1;
        while (j < end && cls[j] == CHAR_OTHER) ++j;
        while (j < end && is_newline(j)) ++j;
        return j;
    }
    // Whitespace: up to and including its last newline, if it has one.
    size_t j = i + 1;
    while (j < end && cls[j] == CHAR_SPACE) ++j;
    for (size_t p = j; p > i; --p) {
        if (is_newline(p - 1)) return p;
    }
    return match_space_run(i, j, end);
}

// Word boundaries (code point indices, each word ending at one) of d's code points [begin, end).
void split_words(TokenizerPre pre, const DecodedText &d, size_t begin, size_t end, std::vector<size_t> &ends) {
    for (size_t i = begin; i < end;) {
        switch (pre) {
            case TOKENIZER_PRE_GPT2:
                i = match_gpt2(d, i, end);
                break;
            case TOKENIZER_PRE_SMOLLM: {
                // \p{N} first: every number character is a word, and the GPT-2 pattern splits the text
                // between them (its lookahead sees each such piece's end as the end of the text).
                size_t piece_end = i;
                while (piece_end < end && d.class_[piece_end] != CHAR_NUMBER) ++piece_end;
                if (piece_end == i) {
                    i = i + 1;
                } else {
                    while (i < piece_end) {
                        i = match_gpt2(d, i, piece_end);
                        if (i < piece_end) ends.push_back(i);
                    }
                }
                break;
            }
            case TOKENIZER_PRE_QWEN2:
                i = match_llama3(d, i, end, 1);
                break;
            case TOKENIZER_PRE_LLAMA3:
                i = match_llama3(d, i, end, 3);
                break;
        }
        ends.push_back(i);
    }
}

[[noreturn]] void fail(const GGUFFile &file, const std::string &problem) {
    throw GGUFError(file.path() + ": " + problem);
}

}  // namespace

// ---- loading -------------------------------------------------------------------------------------------------------

Tokenizer Tokenizer::from_gguf(const GGUFFile &file) {
    const std::string &model = file.get_string("tokenizer.ggml.model");
    if (model != "gpt2") {
        fail(file, "tokenizer.ggml.model is \"" + model + "\"; only \"gpt2\" (byte-level BPE) is supported");
    }
    Tokenizer t;
    const std::string pre = file.has("tokenizer.ggml.pre") ? file.get_string("tokenizer.ggml.pre") : "default";
    bool default_add_bos = false;
    if (pre == "gpt2") {
        t.pre_ = TOKENIZER_PRE_GPT2;
    } else if (pre == "smollm") {
        t.pre_ = TOKENIZER_PRE_SMOLLM;
    } else if (pre == "qwen2") {
        t.pre_ = TOKENIZER_PRE_QWEN2;
    } else if (pre == "llama-bpe" || pre == "llama3" || pre == "llama-v3") {
        t.pre_ = TOKENIZER_PRE_LLAMA3;
        t.ignore_merges_ = true;
        default_add_bos = true;
    } else {
        fail(file, "tokenizer.ggml.pre \"" + pre +
                       "\" is not supported (supported: gpt2, smollm, qwen2, llama-bpe)");
    }

    const std::vector<std::string> &texts = file.get_array("tokenizer.ggml.tokens", GGUF_TYPE_STRING).array_strings();
    if (texts.empty() || texts.size() > size_t(INT32_MAX)) {
        fail(file, "tokenizer.ggml.tokens has " + std::to_string(texts.size()) + " tokens");
    }
    const GGUFValue *types = file.find("tokenizer.ggml.token_type");
    if (types && (types->type != GGUF_TYPE_ARRAY || types->array_size != texts.size())) {
        fail(file, "tokenizer.ggml.token_type must be an array of one type per token (" +
                       std::to_string(texts.size()) + ")");
    }
    t.tokens_.resize(texts.size());
    t.ids_.reserve(texts.size());
    for (size_t id = 0; id < texts.size(); ++id) {
        Token &token = t.tokens_[id];
        token.text = texts[id];
        token.type = types ? TokenType(types->array_i64(id, "tokenizer.ggml.token_type")) : TOKEN_TYPE_NORMAL;
        if (token.type == TOKEN_TYPE_CONTROL || token.type == TOKEN_TYPE_USER_DEFINED ||
            token.type == TOKEN_TYPE_UNUSED || token.type == TOKEN_TYPE_UNKNOWN) {
            token.bytes = token.text;  // stored as plain text, not in the byte-level alphabet
        } else {
            for (size_t pos = 0; pos < token.text.size();) {
                uint32_t cpt;
                const size_t len = utf8_decode(token.text, pos, cpt);
                const int byte = byte_level_decode(cpt);
                if (byte >= 0) {
                    token.bytes += char(byte);
                } else {
                    token.bytes.append(token.text, pos, len);
                }
                pos += len;
            }
        }
        t.ids_.emplace(token.text, int32_t(id));  // on duplicate texts the first id wins
        if ((token.type == TOKEN_TYPE_CONTROL || token.type == TOKEN_TYPE_USER_DEFINED) && !token.text.empty()) {
            t.specials_by_first_byte_[uint8_t(token.text[0])].push_back(int32_t(id));
        }
    }
    for (std::vector<int32_t> &specials : t.specials_by_first_byte_) {
        std::stable_sort(specials.begin(), specials.end(), [&](int32_t a, int32_t b) {
            return t.tokens_[a].text.size() > t.tokens_[b].text.size();
        });
    }

    // Vocabularies may lack the tokens of bytes that never occur in their training text (SmolLM2 has none
    // for 0x04 or 0xFF): such bytes are dropped when encoding, as the Hugging Face BPE without an unknown
    // token and llama.cpp do.
    for (int b = 0; b < 256; ++b) {
        std::string text;
        utf8_append(text, byte_level_encode(uint8_t(b)));
        const auto it = t.ids_.find(text);
        t.byte_tokens_[b] = it == t.ids_.end() ? -1 : it->second;
    }

    const std::vector<std::string> &merges = file.get_array("tokenizer.ggml.merges", GGUF_TYPE_STRING).array_strings();
    t.merges_.reserve(merges.size());
    for (size_t rank = 0; rank < merges.size(); ++rank) {
        const std::string &merge = merges[rank];
        // "left right": byte-level token texts hold no plain space, so the first space after the first
        // character separates them.
        const size_t space = merge.find(' ', 1);
        const std::string problem = "tokenizer.ggml.merges[" + std::to_string(rank) + "] \"" + merge + "\"";
        if (space == std::string::npos) fail(file, problem + " is not two tokens separated by a space");
        const std::string left = merge.substr(0, space), right = merge.substr(space + 1);
        const auto l = t.ids_.find(left), r = t.ids_.find(right), m = t.ids_.find(left + right);
        if (l == t.ids_.end() || r == t.ids_.end() || m == t.ids_.end()) {
            fail(file, problem + " names a token that is not in tokenizer.ggml.tokens");
        }
        t.merges_.emplace(pair_key(l->second, r->second), Merge{int32_t(rank), m->second});  // first rank wins
    }

    const auto optional_id = [&](const char *key) {
        if (!file.has(key)) return int32_t(-1);
        const uint32_t id = file.get_u32(key);
        if (id >= texts.size()) {
            fail(file, std::string(key) + " = " + std::to_string(id) + " is outside the vocabulary of " +
                           std::to_string(texts.size()));
        }
        return int32_t(id);
    };
    t.bos_id_ = optional_id("tokenizer.ggml.bos_token_id");
    t.eos_id_ = optional_id("tokenizer.ggml.eos_token_id");
    t.add_bos_ = file.has("tokenizer.ggml.add_bos_token") ? file.get_bool("tokenizer.ggml.add_bos_token")
                                                          : default_add_bos;
    if (t.add_bos_ && t.bos_id_ < 0) fail(file, "tokenizer.ggml.add_bos_token is set but no bos_token_id");
    return t;
}

// ---- encoding ------------------------------------------------------------------------------------------------------

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special, bool parse_special) const {
    std::vector<int32_t> out;
    if (add_special && add_bos_) out.push_back(bos_id_);
    // Leftmost-longest special-token matches cut the text into plain spans.
    size_t plain_begin = 0;
    for (size_t pos = 0; pos < text.size();) {
        int32_t found = -1;
        for (const int32_t id : specials_by_first_byte_[uint8_t(text[pos])]) {
            const Token &token = tokens_[id];
            if (token.type == TOKEN_TYPE_CONTROL && !parse_special) continue;
            if (text.compare(pos, token.text.size(), token.text) == 0) {
                found = id;
                break;
            }
        }
        if (found < 0) {
            ++pos;
            continue;
        }
        encode_plain(text.substr(plain_begin, pos - plain_begin), out);
        out.push_back(found);
        pos += tokens_[found].text.size();
        plain_begin = pos;
    }
    encode_plain(text.substr(plain_begin), out);
    return out;
}

void Tokenizer::encode_plain(std::string_view text, std::vector<int32_t> &out) const {
    if (text.empty()) return;
    const DecodedText d = decode_text(text);
    std::vector<size_t> ends;
    split_words(pre_, d, 0, d.cpts.size(), ends);
    size_t begin = 0;
    for (const size_t end : ends) {
        encode_word(text.substr(d.offsets[begin], d.offsets[end] - d.offsets[begin]), out);
        begin = end;
    }
}

void Tokenizer::encode_word(std::string_view word, std::vector<int32_t> &out) const {
    if (ignore_merges_) {
        std::string encoded;
        for (const char ch : word) utf8_append(encoded, byte_level_encode(uint8_t(ch)));
        const auto it = ids_.find(encoded);
        if (it != ids_.end()) {
            out.push_back(it->second);
            return;
        }
    }
    // One symbol per byte in a doubly linked list; repeatedly merge the adjacent pair of lowest rank
    // (leftmost among equals), as the reference BPE does. Merging a pair invalidates the queued candidates
    // that overlap it: they are recognised when popped because their symbols' ids no longer match.
    struct Symbol {
        int32_t id;  // -1 once merged into its left neighbour
        int32_t prev, next;
    };
    struct Candidate {
        int32_t rank, left, right;
        int32_t left_id, right_id;
        bool operator>(const Candidate &o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
    };
    std::vector<Symbol> symbols;  // [bytes of word that have a token]
    symbols.reserve(word.size());
    for (const char ch : word) {
        const int32_t id = byte_tokens_[uint8_t(ch)];
        if (id < 0) continue;  // no token: dropped (see from_gguf)
        const int32_t i = int32_t(symbols.size());
        symbols.push_back({id, i - 1, i + 1});
    }
    if (symbols.empty()) return;
    symbols.back().next = -1;
    const int32_t n = int32_t(symbols.size());
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
    const auto push_pair = [&](int32_t left) {
        if (left < 0 || symbols[left].next < 0) return;
        const int32_t right = symbols[left].next;
        const auto it = merges_.find(pair_key(symbols[left].id, symbols[right].id));
        if (it != merges_.end()) queue.push({it->second.rank, left, right, symbols[left].id, symbols[right].id});
    };
    for (int32_t i = 0; i + 1 < n; ++i) push_pair(i);
    while (!queue.empty()) {
        const Candidate c = queue.top();
        queue.pop();
        Symbol &left = symbols[c.left];
        if (left.id != c.left_id || left.next != c.right || symbols[c.right].id != c.right_id) continue;
        Symbol &right = symbols[c.right];
        left.id = merges_.at(pair_key(c.left_id, c.right_id)).result;
        left.next = right.next;
        if (right.next >= 0) symbols[right.next].prev = c.left;
        right.id = -1;
        push_pair(left.prev);
        push_pair(c.left);
    }
    for (int32_t i = 0; i >= 0; i = symbols[i].next) out.push_back(symbols[i].id);
}

// ---- decoding ------------------------------------------------------------------------------------------------------

void Tokenizer::check_id(int32_t id) const {
    if (id < 0 || id >= n_vocab()) {
        throw std::out_of_range("token id " + std::to_string(id) + " is outside the vocabulary of " +
                                std::to_string(n_vocab()));
    }
}

const std::string &Tokenizer::token_bytes(int32_t id) const {
    check_id(id);
    return tokens_[id].bytes;
}

const std::string &Tokenizer::token_text(int32_t id) const {
    check_id(id);
    return tokens_[id].text;
}

TokenType Tokenizer::token_type(int32_t id) const {
    check_id(id);
    return tokens_[id].type;
}

std::string Tokenizer::decode(const std::vector<int32_t> &ids) const {
    std::string out;
    for (const int32_t id : ids) out += token_bytes(id);
    return out;
}

std::string TokenTextStream::push(int32_t id) {
    pending_ += tokenizer_->token_bytes(id);
    const size_t complete = utf8_complete_prefix(pending_);
    std::string ready = pending_.substr(0, complete);
    pending_.erase(0, complete);
    return ready;
}

std::string TokenTextStream::flush() {
    std::string rest;
    rest.swap(pending_);
    return rest;
}

}  // namespace flashmtp
