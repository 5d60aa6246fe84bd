// SentencePiece-style BPE (tokenizer.ggml.model "llama"), as llama.cpp's llm_tokenizer_spm and the
// sentencepiece library's BPE model encode: the text (spaces already written as U+2581) starts as one symbol
// per UTF-8 character; the adjacent pair whose concatenation is the highest-scored token is merged, the
// leftmost pair among equal scores, until no adjacent pair forms a token. A final symbol that is not a token
// (a character the vocabulary lacks) is spelled with byte tokens <0xNN>.
// Like llama.cpp, every token is a merge candidate, whatever its type.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "runtime/tokenizer.h"

namespace flashmtp {

namespace {

// Bytes of the character a UTF-8 lead byte starts, as llama.cpp counts them: continuation bytes and
// invalid leads are characters of one byte, and the rest is not checked.
size_t utf8_char_size(uint8_t lead) {
    static const uint8_t sizes[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return sizes[lead >> 4];
}

struct SpmSymbol {
    size_t begin, size;  // bytes of the text; size 0 once merged into the left neighbour
    int32_t prev, next;  // neighbours in the text, -1 at the ends
    int32_t id;          // the token the symbol is, or -1 (a single character without a token)
};

// A candidate merge of symbol `left` with its right neighbour. 16 bytes: the queue is the working set.
struct SpmBigram {
    float score;    // of the merged token
    int32_t left;   // symbol index
    int32_t id;     // the merged token
    uint32_t size;  // bytes of the pair when queued, to recognise a pair that changed since
};

// Orders the queue best first: the highest score, then the leftmost pair.
struct SpmBigramWorse {
    bool operator()(const SpmBigram &a, const SpmBigram &b) const {
        return a.score < b.score || (a.score == b.score && a.left > b.left);
    }
};

// A character (at most 4 bytes) as a number: its bytes, and its size above them.
uint64_t char_key(std::string_view c) {
    uint64_t key = uint64_t(c.size()) << 32;
    for (size_t i = 0; i < c.size(); ++i) key |= uint64_t(uint8_t(c[i])) << (8 * i);
    return key;
}

constexpr std::string_view SPACE_MARK = "\xE2\x96\x81";  // U+2581, what spaces became

}  // namespace

void Tokenizer::load_spm_space_joiners() {
    for (const Token &token : tokens_) {
        const std::string_view text = token.text;
        size_t prev = 0;  // start of the character before pos
        for (size_t pos = 0; pos < text.size(); pos += utf8_char_size(uint8_t(text[pos]))) {
            if (pos > 0 && text.compare(pos, SPACE_MARK.size(), SPACE_MARK) == 0) {
                space_joiners_.push_back(char_key(text.substr(prev, pos - prev)));
            }
            prev = pos;
        }
    }
    std::sort(space_joiners_.begin(), space_joiners_.end());
    space_joiners_.erase(std::unique(space_joiners_.begin(), space_joiners_.end()), space_joiners_.end());
}

void Tokenizer::encode_spm(std::string_view text, std::vector<int32_t> &out) const {
    if (text.size() > size_t(INT32_MAX)) {
        throw std::length_error("tokenize: a span of " + std::to_string(text.size()) +
                                " bytes without special tokens is over the limit of 2^31 - 1");
    }
    std::vector<SpmSymbol> symbols;  // [characters of text]
    symbols.reserve(text.size());
    for (size_t pos = 0; pos < text.size();) {
        const size_t size = std::min(utf8_char_size(uint8_t(text[pos])), text.size() - pos);
        const int32_t i = int32_t(symbols.size());
        symbols.push_back({pos, size, i - 1, i + 1, find_token(text.substr(pos, size))});
        pos += size;
    }
    const auto view = [&](const SpmSymbol &symbol) { return text.substr(symbol.begin, symbol.size); };

    // Every merged symbol is a token, so no merge crosses a boundary that no token spans. A U+2581 whose left
    // neighbour is never followed by U+2581 inside a token (space_joiners_) starts such a boundary: the words
    // between them merge independently, in the same order as in one queue, and their queues stay in cache.
    // Each merge queues at most two new pairs, so a word of n characters costs O(n log n).
    std::vector<SpmBigram> queue;  // binary heap, best pair on top
    const SpmBigramWorse worse;
    const auto push_pair = [&](int32_t left) {
        if (left < 0 || symbols[left].next < 0) return;
        const size_t size = symbols[left].size + symbols[symbols[left].next].size;
        if (size > max_token_size_) return;
        const int32_t id = find_token(text.substr(symbols[left].begin, size));
        if (id < 0) return;
        queue.push_back({tokens_[id].score, left, id, uint32_t(size)});
        std::push_heap(queue.begin(), queue.end(), worse);
    };
    const auto encode_word = [&](int32_t begin, int32_t end) {
        symbols[begin].prev = -1;
        symbols[end - 1].next = -1;
        for (int32_t i = begin; i + 1 < end; ++i) push_pair(i);
        while (!queue.empty()) {
            std::pop_heap(queue.begin(), queue.end(), worse);
            const SpmBigram pair = queue.back();
            queue.pop_back();
            SpmSymbol &left = symbols[pair.left];
            // Symbols only grow, and a merged one has size 0: a pair whose sizes still add up is unchanged.
            if (left.size == 0 || left.next < 0 || left.size + symbols[left.next].size != pair.size) continue;
            SpmSymbol &right = symbols[left.next];
            left.size = pair.size;
            left.id = pair.id;
            left.next = right.next;
            if (right.next >= 0) symbols[right.next].prev = pair.left;
            right.size = 0;
            push_pair(left.prev);
            push_pair(pair.left);
        }
        for (int32_t i = begin; i >= 0; i = symbols[i].next) {
            const SpmSymbol &symbol = symbols[i];
            if (symbol.id >= 0) {
                out.push_back(symbol.id);
                continue;
            }
            for (const char byte : view(symbol)) {  // no token: spelled in bytes
                const int32_t byte_id = byte_tokens_[uint8_t(byte)];
                if (byte_id >= 0) out.push_back(byte_id);
            }
        }
    };
    // A word starts at a U+2581 that no token joins to the character on its left.
    const auto starts_word = [&](int32_t i) {
        return view(symbols[i]) == SPACE_MARK &&
               !std::binary_search(space_joiners_.begin(), space_joiners_.end(), char_key(view(symbols[i - 1])));
    };
    const int32_t n = int32_t(symbols.size());
    int32_t word_begin = 0;
    for (int32_t i = 1; i < n; ++i) {
        if (starts_word(i)) {
            encode_word(word_begin, i);
            word_begin = i;
        }
    }
    if (n > 0) encode_word(word_begin, n);
}

}  // namespace flashmtp
