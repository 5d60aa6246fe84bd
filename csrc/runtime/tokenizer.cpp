#include "runtime/tokenizer.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <queue>
#include <stdexcept>

#include "runtime/unicode.h"

namespace flashmtp {

// ---- pre-tokenizers ------------------------------------------------------------------------------------------------
// Each splits a span of text (already free of special tokens) into words, exactly as the model's regexes do
// in its Hugging Face tokenizer (a sequence of Split(pattern, "isolated") steps), but hand-written over
// character classes: std::regex has no \p{..}, and a matcher per pattern is simpler and faster than a
// general engine. The patterns are quoted above their matchers.

namespace {

struct DecodedText {
    std::vector<uint32_t> cpts;              // [n] code points (UNICODE_INVALID for a byte that is not UTF-8)
    std::vector<UnicodeCategory> categories; // [n]
    std::vector<bool> spaces;                // [n] \s, i.e. White_Space (U+0085 is one, of category C)
    std::vector<size_t> offsets;             // [n + 1] byte offset of each code point, then the text's size

    bool letter(size_t i) const { return categories[i] == UNICODE_LETTER; }
    bool number(size_t i) const { return categories[i] == UNICODE_NUMBER; }
    bool space(size_t i) const { return spaces[i]; }
    bool newline(size_t i) const { return cpts[i] == '\r' || cpts[i] == '\n'; }
    bool punct_or_symbol(size_t i) const {
        return categories[i] == UNICODE_PUNCTUATION || categories[i] == UNICODE_SYMBOL;
    }
    // [^\s\p{L}\p{N}]
    bool other(size_t i) const { return !spaces[i] && !letter(i) && !number(i); }
};

DecodedText decode_text(std::string_view text) {
    DecodedText d;
    d.cpts.reserve(text.size());
    d.categories.reserve(text.size());
    d.spaces.reserve(text.size());
    d.offsets.reserve(text.size() + 1);
    for (size_t pos = 0; pos < text.size();) {
        uint32_t cpt;
        const size_t len = utf8_decode(text, pos, cpt);
        d.cpts.push_back(cpt);
        d.categories.push_back(unicode_category(cpt));
        d.spaces.push_back(unicode_is_whitespace(cpt));
        d.offsets.push_back(pos);
        pos += len;
    }
    d.offsets.push_back(text.size());
    return d;
}

// A matcher returns the end of the match starting at code point i of a span ending at `end`, or i if no
// alternative of its pattern matches there.
using Matcher = size_t (*)(const DecodedText &d, size_t i, size_t end);

// Appends the word ends of d[begin, end) under one pattern. As in a Split(pattern, "isolated"), each match
// is a word and so is each stretch of text between matches.
void split_pattern(const DecodedText &d, size_t begin, size_t end, Matcher match, std::vector<size_t> &ends) {
    size_t unmatched = begin;  // start of text no match has covered yet
    for (size_t i = begin; i < end;) {
        const size_t j = match(d, i, end);
        if (j == i) {
            ++i;
            continue;
        }
        if (unmatched < i) ends.push_back(i);
        ends.push_back(j);
        i = unmatched = j;
    }
    if (unmatched < end) ends.push_back(end);
}

// Isolates the runs of code points that satisfy `member` (cut into runs of at most max_run) and passes
// the text between them to `rest`, which splits it further: the first steps of a sequence of Splits.
// Later patterns see each piece on its own, so a lookahead like (?!\S) sees a piece's end as the text's end.
template <typename Member, typename Rest>
void split_isolating(size_t begin, size_t end, Member member, size_t max_run, Rest rest, std::vector<size_t> &ends) {
    size_t gap = begin;
    for (size_t i = begin; i < end;) {
        if (!member(i)) {
            ++i;
            continue;
        }
        if (gap < i) rest(gap, i);
        size_t j = i + 1;
        while (j < end && j - i < max_run && member(j)) ++j;
        ends.push_back(j);
        i = gap = j;
    }
    if (gap < end) rest(gap, end);
}

// The regexes' \s+(?!\S)|\s+ at a whitespace run [i, run_end) inside a span ending at `end`: a run followed
// by a non-space gives up its last character, which then starts the next word (" word", "\tfoo" ...).
size_t match_space_run(size_t i, size_t run_end, size_t end) {
    return (run_end == end || run_end - i == 1) ? run_end : run_end - 1;
}

// 's|'t|'re|'ve|'m|'ll|'d, optionally ignoring ASCII case: the match's end, or i.
size_t match_contraction(const DecodedText &d, size_t i, size_t end, bool ignore_case) {
    if (d.cpts[i] != '\'' || i + 1 >= end) return i;
    const auto fold = [&](size_t p) {
        const uint32_t c = d.cpts[p];
        return (ignore_case && c >= 'A' && c <= 'Z') ? c + ('a' - 'A') : c;
    };
    const uint32_t c1 = fold(i + 1);
    if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return i + 2;
    if (i + 2 < end) {
        const uint32_t c2 = fold(i + 2);
        if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return i + 3;
    }
    return i;
}

// GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
size_t match_gpt2(const DecodedText &d, size_t i, size_t end) {
    if (const size_t j = match_contraction(d, i, end, false); j != i) return j;
    // One leading space joins a following letter, number or symbol run.
    const size_t k = (d.cpts[i] == ' ' && i + 1 < end && !d.space(i + 1)) ? i + 1 : i;
    const auto same_class = [&](size_t p) {
        return d.space(k) ? d.space(p) : d.letter(k) ? d.letter(p) : d.number(k) ? d.number(p) : d.other(p);
    };
    size_t j = k + 1;
    while (j < end && same_class(j)) ++j;
    return d.space(k) ? match_space_run(i, j, end) : j;
}

// Llama 3 and (with one digit where llama 3 takes up to 3) Qwen2:
// (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
template <size_t MAX_DIGITS>
size_t match_llama3(const DecodedText &d, size_t i, size_t end) {
    if (const size_t j = match_contraction(d, i, end, true); j != i) return j;
    // A letter run, taking along one preceding character that is not a newline, letter or number.
    if (d.letter(i) || (!d.number(i) && !d.newline(i) && i + 1 < end && d.letter(i + 1))) {
        size_t j = i + 1;
        while (j < end && d.letter(j)) ++j;
        return j;
    }
    if (d.number(i)) {
        size_t j = i + 1;
        while (j < end && j - i < MAX_DIGITS && d.number(j)) ++j;
        return j;
    }
    // Symbols, with one leading space and any newlines right after.
    const size_t k = (d.cpts[i] == ' ' && i + 1 < end && d.other(i + 1)) ? i + 1 : i;
    if (d.other(k)) {
        size_t j = k + 1;
        while (j < end && d.other(j)) ++j;
        while (j < end && d.newline(j)) ++j;
        return j;
    }
    // Whitespace: up to and including its last newline, if it has one.
    size_t j = i + 1;
    while (j < end && d.space(j)) ++j;
    for (size_t p = j; p > i; --p) {
        if (d.newline(p - 1)) return p;
    }
    return match_space_run(i, j, end);
}

// DeepSeek V3, after numbers (\p{N}{1,3}) and CJK/kana runs are isolated:
// [!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*
// |\s*[\r\n]+|\s+(?!\S)|\s+
size_t match_deepseek3(const DecodedText &d, size_t i, size_t end) {
    const auto ascii_letter = [&](size_t p) {
        const uint32_t c = d.cpts[p];
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    };
    const auto ascii_punct = [&](size_t p) {
        const uint32_t c = d.cpts[p];
        return (c >= '!' && c <= '/') || (c >= ':' && c <= '@') || (c >= '[' && c <= '`') || (c >= '{' && c <= '~');
    };
    const auto letter_or_mark = [&](size_t p) { return d.letter(p) || d.categories[p] == UNICODE_MARK; };
    if (ascii_punct(i) && i + 1 < end && ascii_letter(i + 1)) {
        size_t j = i + 2;
        while (j < end && ascii_letter(j)) ++j;
        return j;
    }
    if (letter_or_mark(i) ||
        (!d.newline(i) && !d.letter(i) && !d.punct_or_symbol(i) && i + 1 < end && letter_or_mark(i + 1))) {
        size_t j = i + 1;
        while (j < end && letter_or_mark(j)) ++j;
        return j;
    }
    const size_t k = (d.cpts[i] == ' ' && i + 1 < end && d.punct_or_symbol(i + 1)) ? i + 1 : i;
    if (d.punct_or_symbol(k)) {
        size_t j = k + 1;
        while (j < end && d.punct_or_symbol(j)) ++j;
        while (j < end && d.newline(j)) ++j;
        return j;
    }
    if (!d.space(i)) return i;  // numbers, controls, format characters: no alternative matches
    size_t j = i + 1;
    while (j < end && d.space(j)) ++j;
    for (size_t p = j; p > i; --p) {
        if (d.newline(p - 1)) return p;
    }
    return match_space_run(i, j, end);
}

// [0-9][0-9][0-9]: the end of the match starting at code point i, or i.
size_t match_three_digits(const DecodedText &d, size_t i, size_t end) {
    const auto digit = [&](size_t p) { return d.cpts[p] >= '0' && d.cpts[p] <= '9'; };
    return (i + 3 <= end && digit(i) && digit(i + 1) && digit(i + 2)) ? i + 3 : i;
}

// [一-龥぀-ゟ゠-ヿ]: CJK ideographs U+4E00..U+9FA5, hiragana and katakana U+3040..U+30FF.
bool cjk_or_kana(uint32_t c) { return (c >= 0x4E00 && c <= 0x9FA5) || (c >= 0x3040 && c <= 0x30FF); }

// Appends the code point index at which each word of d ends.
void split_words(TokenizerPre pre, const DecodedText &d, std::vector<size_t> &ends) {
    const size_t n = d.cpts.size();
    const auto number = [&](size_t i) { return d.number(i); };
    switch (pre) {
        case TOKENIZER_PRE_DEFAULT: {
            // llama.cpp's regexes for a BPE vocabulary that names no pre-tokenizer, each applied to the pieces
            // of the one before: [\p{P}\$\+<=>\^~\|]+, then GPT-2's pattern without its final |\s+ (which
            // changes nothing: a whitespace character left unmatched is a piece of its own anyway), then
            // \p{N}+, then [0-9][0-9][0-9]. The punctuation runs of the first step pass the others unchanged.
            const auto punct = [&](size_t i) {
                const uint32_t c = d.cpts[i];
                return d.categories[i] == UNICODE_PUNCTUATION || c == '$' || c == '+' || c == '<' || c == '=' ||
                       c == '>' || c == '^' || c == '~' || c == '|';
            };
            const auto numbers_then_digits = [&](size_t b, size_t e) {
                // Alternating runs of numbers and of anything else, each split by [0-9]{3}.
                for (size_t run = b; run < e;) {
                    size_t run_end = run + 1;
                    while (run_end < e && d.number(run_end) == d.number(run)) ++run_end;
                    split_pattern(d, run, run_end, match_three_digits, ends);
                    run = run_end;
                }
            };
            std::vector<size_t> words;
            const auto gpt2_words = [&](size_t b, size_t e) {
                words.clear();
                split_pattern(d, b, e, match_gpt2, words);
                for (const size_t w : words) {
                    numbers_then_digits(b, w);
                    b = w;
                }
            };
            split_isolating(0, n, punct, SIZE_MAX, gpt2_words, ends);
            break;
        }
        case TOKENIZER_PRE_GPT2:
            split_pattern(d, 0, n, match_gpt2, ends);
            break;
        case TOKENIZER_PRE_SMOLLM:  // \p{N}, then GPT-2's pattern
            split_isolating(0, n, number, 1, [&](size_t b, size_t e) { split_pattern(d, b, e, match_gpt2, ends); },
                            ends);
            break;
        case TOKENIZER_PRE_QWEN2:
            split_pattern(d, 0, n, match_llama3<1>, ends);
            break;
        case TOKENIZER_PRE_LLAMA3:
            split_pattern(d, 0, n, match_llama3<3>, ends);
            break;
        case TOKENIZER_PRE_DEEPSEEK3: {  // \p{N}{1,3}, then CJK and kana runs, then the main pattern
            const auto cjk = [&](size_t i) { return cjk_or_kana(d.cpts[i]); };
            const auto main_pattern = [&](size_t b, size_t e) { split_pattern(d, b, e, match_deepseek3, ends); };
            const auto rest = [&](size_t b, size_t e) { split_isolating(b, e, cjk, SIZE_MAX, main_pattern, ends); };
            split_isolating(0, n, number, 3, rest, ends);
            break;
        }
    }
}

[[noreturn]] void fail(const GGUFFile &file, const std::string &problem) {
    throw GGUFError(file.path() + ": " + problem);
}

}  // namespace

// ---- loading -------------------------------------------------------------------------------------------------------

Tokenizer Tokenizer::from_gguf(const GGUFFile &file) {
    Tokenizer t;
    const std::string &model = file.get_string("tokenizer.ggml.model");
    const std::string pre = file.has("tokenizer.ggml.pre") ? file.get_string("tokenizer.ggml.pre") : "default";
    // llama.cpp's defaults where the file says nothing: SentencePiece models add BOS and a prefix space.
    bool default_add_bos = false;
    if (model == "llama") {
        t.model_ = TOKENIZER_MODEL_SPM;
        default_add_bos = true;
        t.add_space_prefix_ = file.has("tokenizer.ggml.add_space_prefix")
                                  ? file.get_bool("tokenizer.ggml.add_space_prefix") : true;
    } else if (model != "gpt2") {
        fail(file, "tokenizer.ggml.model is \"" + model +
                       "\"; supported: \"gpt2\" (byte-level BPE) and \"llama\" (SentencePiece BPE)");
    } else if (pre == "default") {
        t.pre_ = TOKENIZER_PRE_DEFAULT;
    } else if (pre == "gpt2") {
        t.pre_ = TOKENIZER_PRE_GPT2;
    } else if (pre == "smollm") {
        t.pre_ = TOKENIZER_PRE_SMOLLM;
    } else if (pre == "qwen2") {
        t.pre_ = TOKENIZER_PRE_QWEN2;
    } else if (pre == "llama-bpe" || pre == "llama3" || pre == "llama-v3") {
        t.pre_ = TOKENIZER_PRE_LLAMA3;
        t.ignore_merges_ = true;
        default_add_bos = true;
    } else if (pre == "deepseek-v3") {
        t.pre_ = TOKENIZER_PRE_DEEPSEEK3;
        default_add_bos = true;
    } else {
        fail(file, "tokenizer.ggml.pre \"" + pre +
                       "\" is not supported (supported: default, gpt2, smollm, qwen2, llama-bpe, deepseek-v3)");
    }

    const std::vector<std::string> &texts = file.get_array("tokenizer.ggml.tokens", GGUF_TYPE_STRING).array_strings();
    if (texts.empty() || texts.size() > size_t(INT32_MAX)) {
        fail(file, "tokenizer.ggml.tokens has " + std::to_string(texts.size()) + " tokens");
    }
    const auto per_token_array = [&](const char *key) {
        const GGUFValue *value = file.find(key);
        if (value && (value->type != GGUF_TYPE_ARRAY || value->array_size != texts.size())) {
            fail(file, std::string(key) + " must be an array of one value per token (" +
                           std::to_string(texts.size()) + ")");
        }
        return value;
    };
    const GGUFValue *types = per_token_array("tokenizer.ggml.token_type");
    const GGUFValue *scores = per_token_array("tokenizer.ggml.scores");
    t.tokens_.resize(texts.size());
    for (size_t id = 0; id < texts.size(); ++id) {
        Token &token = t.tokens_[id];
        token.text = texts[id];
        const int64_t type = types ? types->array_i64(id, "tokenizer.ggml.token_type") : int64_t(TOKEN_TYPE_NORMAL);
        if (type < TOKEN_TYPE_UNDEFINED || type > TOKEN_TYPE_BYTE) {
            fail(file, "tokenizer.ggml.token_type[" + std::to_string(id) + "] = " + std::to_string(type) +
                           " is not a token type (0..6)");
        }
        token.type = TokenType(type);
        token.score = scores ? float(scores->array_f64(id, "tokenizer.ggml.scores")) : 0.0f;
        if (std::isnan(token.score)) {  // would break the ordering of the SPM merge queue
            fail(file, "tokenizer.ggml.scores[" + std::to_string(id) + "] is NaN");
        }
        t.max_token_size_ = std::max(t.max_token_size_, token.text.size());
    }
    std::vector<int32_t> all_ids(texts.size());
    for (size_t id = 0; id < texts.size(); ++id) all_ids[id] = int32_t(id);
    t.token_index_ = index_build(t.tokens_, all_ids);
    t.load_token_bytes(file);
    t.load_special_index();

    if (t.model_ == TOKENIZER_MODEL_BPE) {
        // Vocabularies may lack the tokens of bytes that never occur in their training text (SmolLM2 has none
        // for 0x04 or 0xFF): such bytes are dropped when encoding, as the Hugging Face BPE without an unknown
        // token and llama.cpp do.
        for (int b = 0; b < 256; ++b) {
            std::string text;
            utf8_append(text, byte_level_encode(uint8_t(b)));
            t.byte_tokens_[b] = t.find_token(text);
        }
        const std::vector<std::string> &merges =
            file.get_array("tokenizer.ggml.merges", GGUF_TYPE_STRING).array_strings();
        t.merges_.reserve(merges.size());
        for (size_t rank = 0; rank < merges.size(); ++rank) {
            const std::string &merge = merges[rank];
            // "left right": byte-level token texts hold no plain space, so the first space after the first
            // character separates them.
            const size_t space = merge.find(' ', 1);
            const auto fail_merge = [&](const char *problem) {
                fail(file, "tokenizer.ggml.merges[" + std::to_string(rank) + "] \"" + merge + "\" " + problem);
            };
            if (space == std::string::npos) fail_merge("is not two tokens separated by a space");
            const std::string_view left(merge.data(), space), right(merge.data() + space + 1, merge.size() - space - 1);
            const int32_t l = t.find_token(left), r = t.find_token(right), m = t.find_token(std::string(left) += right);
            if (l < 0 || r < 0 || m < 0) fail_merge("names a token that is not in tokenizer.ggml.tokens");
            t.merges_.emplace(pair_key(l, r), Merge{int32_t(rank), m});  // first rank wins
        }
    } else {
        // A piece the vocabulary lacks is spelled byte by byte: the <0xNN> token, or (llama.cpp's fallback) the
        // token whose text is that one byte. A byte with neither is dropped, as in the BPE vocabularies.
        static const char hex[] = "0123456789ABCDEF";
        for (int b = 0; b < 256; ++b) {
            const char name[6] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>'};
            const int32_t id = t.find_token(std::string_view(name, 6));
            t.byte_tokens_[b] = id >= 0 ? id : t.find_token(std::string(1, char(b)));
        }
        t.load_spm_space_joiners();
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
    t.add_eos_ = file.has("tokenizer.ggml.add_eos_token") && file.get_bool("tokenizer.ggml.add_eos_token");
    if (t.add_bos_ && t.bos_id_ < 0) fail(file, "tokenizer.ggml.add_bos_token is set but no bos_token_id");
    if (t.add_eos_ && t.eos_id_ < 0) fail(file, "tokenizer.ggml.add_eos_token is set but no eos_token_id");
    t.find_eog_ids(file);
    return t;
}

// As llama.cpp's llama_vocab::load: GGUF files rarely name their end-of-turn tokens, so they are also found
// by their text. llama.cpp takes the first FIM-token text match in hash order; every match is taken here
// (deterministic; a vocabulary rarely holds two). Entries llama.cpp added later for vocabularies refused
// above, with their own exceptions (gpt-oss, gemma4, Kimi-K2, paddleocr), are left out: paddleocr's "</s>"
// would end Qwen2.5 replies at a plain-text token.
void Tokenizer::find_eog_ids(const GGUFFile &file) {
    static const char *const kEogTexts[] = {
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>", "<EOT>", "_<EOT>",
        "<|end_of_text|>", "<end_of_utterance>",
    };
    // FIM tokens (fill-in-the-middle padding and separators) end generation too; by text when not named.
    struct FimToken {
        const char *key;
        std::vector<const char *> texts;
    };
    static const FimToken kFimTokens[] = {
        {"tokenizer.ggml.fim_pad_token_id", {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>"}},
        {"tokenizer.ggml.fim_rep_token_id",
         {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"}},
        {"tokenizer.ggml.fim_sep_token_id", {"<|file_sep|>"}},
    };
    const auto add_text = [&](const char *text) {
        const int32_t id = find_token(text);
        if (id >= 0) eog_ids_.push_back(id);
    };
    const auto add_key = [&](const char *key) {
        if (!file.has(key)) return false;
        const uint32_t id = file.get_u32(key);
        if (id >= tokens_.size()) {
            fail(file, std::string(key) + " = " + std::to_string(id) + " is outside the vocabulary of " +
                           std::to_string(tokens_.size()));
        }
        eog_ids_.push_back(int32_t(id));
        return true;
    };
    for (const char *text : kEogTexts) add_text(text);
    for (const FimToken &fim : kFimTokens) {
        if (!add_key(fim.key)) {
            for (const char *text : fim.texts) add_text(text);
        }
    }
    add_key("tokenizer.ggml.eot_token_id");
    add_key("tokenizer.ggml.eom_token_id");
    if (eos_id_ >= 0) eog_ids_.push_back(eos_id_);
    std::sort(eog_ids_.begin(), eog_ids_.end());
    eog_ids_.erase(std::unique(eog_ids_.begin(), eog_ids_.end()), eog_ids_.end());
}

bool Tokenizer::is_eog(int32_t id) const { return std::binary_search(eog_ids_.begin(), eog_ids_.end(), id); }

void Tokenizer::load_token_bytes(const GGUFFile &file) {
    for (size_t id = 0; id < tokens_.size(); ++id) {
        Token &token = tokens_[id];
        if (token.type == TOKEN_TYPE_CONTROL || token.type == TOKEN_TYPE_USER_DEFINED ||
            token.type == TOKEN_TYPE_UNUSED || token.type == TOKEN_TYPE_UNKNOWN) {
            token.bytes = token.text;  // stored as plain text, not in the byte-level alphabet
        } else if (model_ == TOKENIZER_MODEL_SPM && token.type == TOKEN_TYPE_BYTE) {
            const std::string &s = token.text;
            const auto hex_digit = [](char c) {
                if (c >= '0' && c <= '9') return c - '0';
                if (c >= 'A' && c <= 'F') return c - 'A' + 10;
                return (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
            };
            if (s.size() != 6 || s.compare(0, 3, "<0x") != 0 || s[5] != '>' || hex_digit(s[3]) < 0 ||
                hex_digit(s[4]) < 0) {
                fail(file, "tokenizer.ggml.tokens[" + std::to_string(id) + "] \"" + s +
                               "\" is a byte token (type 6) but not spelled <0xNN>");
            }
            token.bytes = std::string(1, char(hex_digit(s[3]) * 16 + hex_digit(s[4])));
        } else if (model_ == TOKENIZER_MODEL_SPM) {
            for (size_t pos = 0; pos < token.text.size();) {  // U+2581 "▁" stands for a space
                if (token.text.compare(pos, 3, "\xE2\x96\x81") == 0) {
                    token.bytes += ' ';
                    pos += 3;
                } else {
                    token.bytes += token.text[pos++];
                }
            }
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
    }
}

void Tokenizer::load_special_index() {
    std::vector<int32_t> specials;
    for (size_t id = 0; id < tokens_.size(); ++id) {
        const Token &token = tokens_[id];
        if ((token.type == TOKEN_TYPE_CONTROL || token.type == TOKEN_TYPE_USER_DEFINED ||
             token.type == TOKEN_TYPE_UNKNOWN) && !token.text.empty()) {
            specials.push_back(int32_t(id));
            special_sizes_by_first_byte_[uint8_t(token.text[0])].push_back(uint32_t(token.text.size()));
        }
    }
    special_index_ = index_build(tokens_, specials);
    for (std::vector<uint32_t> &sizes : special_sizes_by_first_byte_) {
        std::sort(sizes.begin(), sizes.end(), std::greater<uint32_t>());
        sizes.erase(std::unique(sizes.begin(), sizes.end()), sizes.end());
    }
}

std::vector<Tokenizer::IndexSlot> Tokenizer::index_build(const std::vector<Token> &tokens,
                                                         const std::vector<int32_t> &ids) {
    size_t size = 16;
    while (size < 2 * ids.size()) size *= 2;  // at most half full: short probe runs
    std::vector<IndexSlot> index(size, IndexSlot{-1, 0});
    const size_t mask = size - 1;
    for (const int32_t id : ids) {
        const std::string &text = tokens[id].text;
        const size_t hash = std::hash<std::string_view>{}(text);
        const uint32_t tag = uint32_t(uint64_t(hash) >> 32);
        size_t slot = hash & mask;
        while (index[slot].id >= 0 && !(index[slot].tag == tag && tokens[index[slot].id].text == text)) {
            slot = (slot + 1) & mask;
        }
        if (index[slot].id < 0) index[slot] = {id, tag};
    }
    return index;
}

int32_t Tokenizer::index_find(const std::vector<IndexSlot> &index, std::string_view text) const {
    const size_t hash = std::hash<std::string_view>{}(text);
    const uint32_t tag = uint32_t(uint64_t(hash) >> 32);
    const size_t mask = index.size() - 1;
    for (size_t slot = hash & mask;; slot = (slot + 1) & mask) {
        const IndexSlot &entry = index[slot];
        if (entry.id < 0 || (entry.tag == tag && tokens_[entry.id].text == text)) return entry.id;
    }
}

// ---- encoding ------------------------------------------------------------------------------------------------------

int32_t Tokenizer::match_special(std::string_view text, size_t pos, bool parse_special) const {
    for (const uint32_t size : special_sizes_by_first_byte_[uint8_t(text[pos])]) {
        if (size > text.size() - pos) continue;
        const int32_t id = index_find(special_index_, text.substr(pos, size));
        if (id >= 0 && (parse_special || tokens_[id].type == TOKEN_TYPE_USER_DEFINED)) return id;
    }
    return -1;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special, bool parse_special) const {
    std::vector<int32_t> out;
    if (add_special && add_bos_) out.push_back(bos_id_);
    // SPM: a space is prepended to the text at the start and after each special token (llama.cpp's rule).
    bool after_special = true;
    const auto encode_span = [&](std::string_view span) {
        if (span.empty()) return;
        if (model_ == TOKENIZER_MODEL_BPE) {
            encode_plain(span, out);
            return;
        }
        std::string escaped;  // spaces written as U+2581 "▁"
        escaped.reserve(span.size() + span.size() / 4 + 3);
        if (add_space_prefix_ && after_special) escaped += "\xE2\x96\x81";
        for (const char c : span) {
            if (c == ' ') {
                escaped += "\xE2\x96\x81";
            } else {
                escaped += c;
            }
        }
        encode_spm(escaped, out);
        after_special = false;
    };
    // Leftmost-longest special-token matches cut the text into plain spans.
    size_t plain_begin = 0;
    for (size_t pos = 0; pos < text.size();) {
        const int32_t found = match_special(text, pos, parse_special);
        if (found < 0) {
            ++pos;
            continue;
        }
        encode_span(text.substr(plain_begin, pos - plain_begin));
        out.push_back(found);
        after_special = true;
        pos += tokens_[found].text.size();
        plain_begin = pos;
    }
    encode_span(text.substr(plain_begin));
    if (add_special && add_eos_) out.push_back(eos_id_);
    return out;
}

void Tokenizer::encode_plain(std::string_view text, std::vector<int32_t> &out) const {
    if (text.empty()) return;
    const DecodedText d = decode_text(text);
    std::vector<size_t> ends;  // code point index where each word ends, in order
    split_words(pre_, d, ends);
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
        const int32_t id = find_token(encoded);
        if (id >= 0) {
            out.push_back(id);
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
        int32_t left_id, right_id;  // the pair as queued, to recognise stale candidates
        int32_t result;
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
        if (it != merges_.end()) {
            queue.push({it->second.rank, left, right, symbols[left].id, symbols[right].id, it->second.result});
        }
    };
    for (int32_t i = 0; i + 1 < n; ++i) push_pair(i);
    while (!queue.empty()) {
        const Candidate c = queue.top();
        queue.pop();
        Symbol &left = symbols[c.left];
        if (left.id != c.left_id || left.next != c.right || symbols[c.right].id != c.right_id) continue;
        Symbol &right = symbols[c.right];
        left.id = c.result;
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

float Tokenizer::token_score(int32_t id) const {
    check_id(id);
    return tokens_[id].score;
}

std::string Tokenizer::decode(const std::vector<int32_t> &ids) const {
    std::string out;
    for (const int32_t id : ids) out += token_bytes(id);
    if (model_ == TOKENIZER_MODEL_SPM && add_space_prefix_ && !ids.empty() && !tokens_[ids[0]].bytes.empty() &&
        tokens_[ids[0]].bytes[0] == ' ') {
        out.erase(0, 1);
    }
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
