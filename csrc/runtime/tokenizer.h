// Tokenizers built from a GGUF file's tokenizer.ggml.* metadata, as llama.cpp builds them:
// - "gpt2" (LLAMA_VOCAB_TYPE_BPE): byte-level BPE. The text is split into words by the model's pre-tokenizer
//   (tokenizer.ggml.pre), each word's bytes are written in GPT-2's byte-level alphabet and merged by rank
//   (tokenizer.ggml.merges).
// - "llama" (LLAMA_VOCAB_TYPE_SPM): SentencePiece-style BPE (tokenizer_spm.cpp). Spaces become U+2581, a
//   space is prepended when tokenizer.ggml.add_space_prefix asks, and adjacent pieces are merged best score
//   first (tokenizer.ggml.scores) with no pre-tokenizer; pieces the vocabulary lacks fall back to <0xNN>
//   byte tokens.
// Both cut special tokens out of the text first. Owns: vocabulary, merge table, special-token matching,
// pre-tokenizers, decoding to bytes. Does not own: chat templates, sampling, the model.
//
// Supported tokenizer.ggml.pre values (gpt2 model): "default" (llama.cpp's fallback regexes), "gpt2",
// "smollm" (gpt2 with every digit its own word), "qwen2", "llama-bpe" (llama 3), "deepseek-v3". Others
// are refused with an error naming them, rather than tokenized wrongly.
//
// The BPE reference is the Hugging Face tokenizer built from the same vocabulary and merges, the SPM one the
// sentencepiece library on the same pieces and scores, framed as llama.cpp frames it (tests/python/
// test_tokenizer*.py check ids are identical). Where llama.cpp differs from Hugging Face in corner cases, this
// follows Hugging Face: special tokens match leftmost-longest (llama.cpp cuts out the longest specials first,
// wherever they are), and a byte the vocabulary has no token for is dropped (BPE: llama.cpp drops it after
// merging; SPM: llama.cpp throws).
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

// tokenizer.ggml.model
enum TokenizerModel {
    TOKENIZER_MODEL_BPE,  // "gpt2"
    TOKENIZER_MODEL_SPM,  // "llama"
};

// tokenizer.ggml.pre (BPE only; SPM has no pre-tokenizer and reports DEFAULT, as llama.cpp does).
enum TokenizerPre {
    TOKENIZER_PRE_DEFAULT,
    TOKENIZER_PRE_GPT2,
    TOKENIZER_PRE_SMOLLM,
    TOKENIZER_PRE_QWEN2,
    TOKENIZER_PRE_LLAMA3,
    TOKENIZER_PRE_DEEPSEEK3,
};

class Tokenizer {
public:
    // Reads tokenizer.ggml.* from `file`. Throws GGUFError naming the file and key for a missing or
    // inconsistent vocabulary (a NaN score, a byte token not spelled <0xNN>), an unsupported
    // tokenizer.ggml.model or tokenizer.ggml.pre.
    static Tokenizer from_gguf(const GGUFFile &file);

    // Token ids of `text` (bytes; invalid UTF-8 is tokenized byte by byte, never rejected; a byte whose token
    // the vocabulary lacks is dropped, as the reference tokenizers do). add_special adds BOS / EOS when the
    // model asks for them (tokenizer.ggml.add_bos_token / add_eos_token). parse_special matches the text of
    // control and unknown tokens (e.g. "<|im_start|>") as those tokens; user-defined tokens are always matched.
    std::vector<int32_t> encode(std::string_view text, bool add_special, bool parse_special) const;

    // The bytes of a token: normal tokens decoded from the byte-level alphabet (BPE) or with U+2581 as a
    // space (SPM), byte tokens <0xNN> as their byte, special tokens as their text.
    const std::string &token_bytes(int32_t id) const;
    // Concatenated token_bytes of `ids`: the exact bytes encode() was given, for text without specials.
    // With add_space_prefix, one leading space of the first token is dropped (the one encode() added), as
    // llama.cpp's detokenize does; a stream of generated tokens (TokenTextStream) keeps every space.
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
    bool add_eos() const { return add_eos_; }
    bool add_space_prefix() const { return add_space_prefix_; }
    float token_score(int32_t id) const;  // tokenizer.ggml.scores (SPM merge priority; 0 if absent)
    TokenizerModel model() const { return model_; }
    TokenizerPre pre() const { return pre_; }

private:
    struct Token {
        std::string text;   // as in tokenizer.ggml.tokens
        std::string bytes;  // what it decodes to
        TokenType type;
        float score;        // SPM: a merge into this token happens before merges into lower-scored ones
    };
    struct Merge {
        int32_t rank;    // position in tokenizer.ggml.merges: lower merges first
        int32_t result;  // token id of the merged pair
    };

    void check_id(int32_t id) const;
    void find_eog_ids(const GGUFFile &file);
    // Fills Token::bytes as model_ and the token types say.
    void load_token_bytes(const GGUFFile &file);
    // Fills special_index_ and special_sizes_by_first_byte_.
    void load_special_index();
    // Appends the BPE tokens of a span holding no special token.
    void encode_plain(std::string_view text, std::vector<int32_t> &out) const;
    // Appends the BPE tokens of one pre-tokenizer word.
    void encode_word(std::string_view word, std::vector<int32_t> &out) const;
    // SPM: space_joiners_ from the vocabulary.
    void load_spm_space_joiners();
    // Appends the SPM tokens of a span holding no special token, spaces already written as U+2581.
    void encode_spm(std::string_view text, std::vector<int32_t> &out) const;
    // The special token (control or unknown only if parse_special, user-defined always) whose text is the
    // longest prefix of text[pos..], or -1.
    int32_t match_special(std::string_view text, size_t pos, bool parse_special) const;

    // Open-addressing hash tables of token ids keyed by token text, looked up with a slice of the text being
    // tokenized (no std::string built per lookup). They hold ids, not pointers, so a copied Tokenizer stays
    // valid. Each slot keeps 32 bits of its text's hash: a probe reads the token's text only when they match,
    // so a miss (most SPM lookups) touches the table alone. On duplicate texts the first id wins.
    struct IndexSlot {
        int32_t id;    // -1: empty
        uint32_t tag;  // high 32 bits of the text's hash
    };
    static std::vector<IndexSlot> index_build(const std::vector<Token> &tokens,
                                              const std::vector<int32_t> &ids);
    int32_t index_find(const std::vector<IndexSlot> &index, std::string_view text) const;
    int32_t find_token(std::string_view text) const { return index_find(token_index_, text); }
    static uint64_t pair_key(int32_t left, int32_t right) {
        return (uint64_t(uint32_t(left)) << 32) | uint32_t(right);
    }

    std::vector<Token> tokens_;                   // [n_vocab]
    std::vector<IndexSlot> token_index_;          // [power of 2 >= 2 n_vocab] every token
    std::vector<IndexSlot> special_index_;        // control, user-defined and unknown tokens only
    std::unordered_map<uint64_t, Merge> merges_;  // BPE: pair_key(left, right) -> merge
    size_t max_token_size_ = 0;                   // longest token text: longer pieces need no lookup
    // SPM: the characters (as char_key in tokenizer_spm.cpp) followed by U+2581 inside some token, sorted.
    std::vector<uint64_t> space_joiners_;
    // Id of each byte's token (BPE: its one-character byte-level token; SPM: <0xNN>), or -1.
    int32_t byte_tokens_[256];
    // Distinct lengths of the special tokens' texts by their first byte, longest first: a text position is
    // looked up only at the lengths of the specials that can start there.
    std::vector<uint32_t> special_sizes_by_first_byte_[256];
    TokenizerModel model_ = TOKENIZER_MODEL_BPE;
    TokenizerPre pre_ = TOKENIZER_PRE_DEFAULT;
    bool ignore_merges_ = false;     // llama 3: a word that is itself a token is that token, merged or not
    bool add_space_prefix_ = false;  // SPM: text after BOS, a special token or the start begins with a space
    int32_t bos_id_ = -1;
    int32_t eos_id_ = -1;
    bool add_bos_ = false;
    std::vector<int32_t> eog_ids_;  // sorted
    bool add_eos_ = false;
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
