// SentencePiece-style BPE (tokenizer.ggml.model "llama"), as llama.cpp's llm_tokenizer_spm and the
// sentencepiece library's BPE model encode: the text (spaces already written as U+2581) starts as one symbol
// per UTF-8 character; the adjacent pair whose concatenation is the highest-scored token is merged, the
// leftmost pair among equal scores, until no adjacent pair forms a token. A final symbol that is not a token
// (a character the vocabulary lacks) is spelled with byte tokens <0xNN>.
// Like llama.cpp, every token is a merge candidate, whatever its type.
#include <queue>

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

}  // namespace

void Tokenizer::encode_spm(std::string_view text, std::vector<int32_t> &out) const {
    std::vector<SpmSymbol> symbols;  // [characters of text]
    symbols.reserve(text.size());
    for (size_t pos = 0; pos < text.size();) {
        const size_t size = std::min(utf8_char_size(uint8_t(text[pos])), text.size() - pos);
        const int32_t i = int32_t(symbols.size());
        symbols.push_back({pos, size, i - 1, i + 1, find_token(text.substr(pos, size))});
        pos += size;
    }
    if (symbols.empty()) return;
    symbols.back().next = -1;

    // Each merge queues at most two new pairs, so the queue holds O(n) pairs and the loop is O(n log n).
    std::vector<SpmBigram> storage;
    storage.reserve(2 * symbols.size());
    std::priority_queue<SpmBigram, std::vector<SpmBigram>, SpmBigramWorse> queue(SpmBigramWorse{}, std::move(storage));
    const auto push_pair = [&](int32_t left) {
        if (left < 0 || symbols[left].next < 0) return;
        const size_t size = symbols[left].size + symbols[symbols[left].next].size;
        if (size > max_token_size_) return;
        const int32_t id = find_token(text.substr(symbols[left].begin, size));
        if (id >= 0) queue.push({tokens_[id].score, left, id, uint32_t(size)});
    };
    for (int32_t i = 0; i + 1 < int32_t(symbols.size()); ++i) push_pair(i);

    while (!queue.empty()) {
        const SpmBigram pair = queue.top();
        queue.pop();
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

    for (int32_t i = 0; i >= 0; i = symbols[i].next) {
        const SpmSymbol &symbol = symbols[i];
        if (symbol.id >= 0) {
            out.push_back(symbol.id);
            continue;
        }
        for (size_t pos = symbol.begin; pos < symbol.begin + symbol.size; ++pos) {
            const int32_t byte_id = byte_tokens_[uint8_t(text[pos])];
            if (byte_id >= 0) out.push_back(byte_id);
        }
    }
}

}  // namespace flashmtp
