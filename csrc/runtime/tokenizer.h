// Byte-level BPE tokenizer (GPT-2 style) built from a GGUF file's tokenizer.ggml.* metadata, as llama.cpp's
// LLAMA_VOCAB_TYPE_BPE: special tokens are cut out first, the rest is split into words by the model's
// pre-tokenizer (tokenizer.ggml.pre), each word's bytes are written in GPT-2's byte-level alphabet and
// merged by rank (tokenizer.ggml.merges).
// Owns: vocabulary, merge table, special-token matching, pre-tokenizers, decoding to bytes.
// Does not own: chat templates, sampling, the model.
//
// Supported tokenizer.ggml.pre values: "gpt2", "smollm" (gpt2 with every digit its own word), "qwen2",
// "llama-bpe" (llama 3), "deepseek-v3". Others are refused with an error naming them, rather than
// tokenized wrongly.
//
// The reference is the Hugging Face tokenizer built from the same vocabulary and merges (tests/python/
// test_tokenizer.py checks ids are identical). Where llama.cpp differs from it in corner cases, this follows
// Hugging Face: special tokens match leftmost-longest (llama.cpp cuts out the longest specials first, wherever
// they are), and a byte the vocabulary has no token for is dropped before merging (llama.cpp drops it after).
// Like llama.cpp, no Unicode normalization is applied (Qwen2's tokenizer.json asks for NFC).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/gguf.h"

namespace flashmtp {

// tokenizer.ggml.token_type values (llama.cpp's llama_token_type).
enum TokenType : int32_t {
    TOKEN_TYPE_UNDEFINED = 0,
    TOKEN_TYPE_NORMAL = 1,
    TOKEN_TYPE_UNKNOWN = 2,
    TOKEN_TYPE_CONTROL = 3,
    TOKEN_TYPE_USER_DEFINED = 4,
    TOKEN_TYPE_UNUSED = 5,
    TOKEN_TYPE_BYTE = 6,
};

enum TokenizerPre {
    TOKENIZER_PRE_GPT2,
    TOKENIZER_PRE_SMOLLM,
    TOKENIZER_PRE_QWEN2,
    TOKENIZER_PRE_LLAMA3,
    TOKENIZER_PRE_DEEPSEEK3,
};

class Tokenizer {
public:
    // Reads tokenizer.ggml.* from `file`. Throws GGUFError naming the file and key for a missing or
    // inconsistent vocabulary, an unsupported tokenizer.ggml.model or tokenizer.ggml.pre.
    static Tokenizer from_gguf(const GGUFFile &file);

    // Token ids of `text` (bytes; invalid UTF-8 is tokenized byte by byte, never rejected; a byte whose token
    // the vocabulary lacks is dropped, as the reference tokenizers do). add_special
    // prepends BOS when the model asks for it (tokenizer.ggml.add_bos_token). parse_special matches the text
    // of control tokens (e.g. "<|im_start|>") as those tokens; user-defined tokens are always matched.
    std::vector<int32_t> encode(std::string_view text, bool add_special, bool parse_special) const;

    // The bytes of a token: normal tokens decoded from the byte-level alphabet, special tokens as their text.
    const std::string &token_bytes(int32_t id) const;
    // Concatenated token_bytes of `ids`: the exact bytes encode() was given, for text without specials.
    std::string decode(const std::vector<int32_t> &ids) const;

    int32_t n_vocab() const { return int32_t(tokens_.size()); }
    const std::string &token_text(int32_t id) const;  // as stored in the GGUF file
    TokenType token_type(int32_t id) const;
    int32_t bos_id() const { return bos_id_; }  // -1 if the file names none
    int32_t eos_id() const { return eos_id_; }  // -1 if the file names none
    // End-of-generation tokens (llama.cpp's EOG set): EOS, end-of-turn tokens such as "<|im_end|>" or
    // "<|eot_id|>", and the FIM separators; sampling one ends a reply. Sorted ids.
    const std::vector<int32_t> &eog_ids() const { return eog_ids_; }
    bool is_eog(int32_t id) const;
    bool add_bos() const { return add_bos_; }
    TokenizerPre pre() const { return pre_; }

private:
    struct Token {
        std::string text;   // as in tokenizer.ggml.tokens
        std::string bytes;  // what it decodes to
        TokenType type;
    };
    struct Merge {
        int32_t rank;    // position in tokenizer.ggml.merges: lower merges first
        int32_t result;  // token id of the merged pair
    };

    void check_id(int32_t id) const;
    void find_eog_ids(const GGUFFile &file);
    // Appends the tokens of a span holding no special token.
    void encode_plain(std::string_view text, std::vector<int32_t> &out) const;
    // Appends the BPE tokens of one pre-tokenizer word.
    void encode_word(std::string_view word, std::vector<int32_t> &out) const;
    static uint64_t pair_key(int32_t left, int32_t right) {
        return (uint64_t(uint32_t(left)) << 32) | uint32_t(right);
    }

    std::vector<Token> tokens_;                        // [n_vocab]
    std::unordered_map<std::string, int32_t> ids_;     // token text -> id
    std::unordered_map<uint64_t, Merge> merges_;       // pair_key(left, right) -> merge
    int32_t byte_tokens_[256];                         // id of each byte's one-character token, or -1
    // Control and user-defined tokens by the first byte of their text, longest text first in each: a text
    // position is compared only with the specials that can start there.
    std::vector<int32_t> specials_by_first_byte_[256];
    TokenizerPre pre_ = TOKENIZER_PRE_GPT2;
    bool ignore_merges_ = false;  // llama 3: a word that is itself a token is that token, merged or not
    int32_t bos_id_ = -1;
    int32_t eos_id_ = -1;
    bool add_bos_ = false;
    std::vector<int32_t> eog_ids_;  // sorted
};

// Turns a stream of token ids into text that never ends inside a UTF-8 character: push() returns the
// bytes that complete characters now, holding back a character split across tokens until it is whole.
class TokenTextStream {
public:
    explicit TokenTextStream(const Tokenizer &tokenizer) : tokenizer_(&tokenizer) {}
    std::string push(int32_t id);
    // Whatever is still held back (an unfinished character at the end of generation), then empty.
    std::string flush();

private:
    const Tokenizer *tokenizer_;
    std::string pending_;  // bytes of an incomplete UTF-8 sequence, at most 3
};

}  // namespace flashmtp
