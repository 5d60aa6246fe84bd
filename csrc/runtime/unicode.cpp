#include "runtime/unicode.h"

#include <algorithm>
#include <array>
#include <iterator>

namespace flashmtp {

namespace {

struct CategoryRange {
    uint32_t first;  // the range runs to the next entry's first code point
    UnicodeCategory category;
};

#include "runtime/unicode_data.inc"

// Printable bytes that GPT-2's alphabet keeps as themselves: '!'..'~', U+00A1..U+00AC, U+00AE..U+00FF.
constexpr bool byte_is_printable(int b) {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

struct ByteLevelAlphabet {
    std::array<uint32_t, 256> encode{};
    std::array<int16_t, 512> decode{};  // code points of the alphabet are all < U+0144

    ByteLevelAlphabet() {
        decode.fill(-1);
        uint32_t next_unprintable = 0x100;
        for (int b = 0; b < 256; ++b) {
            encode[b] = byte_is_printable(b) ? uint32_t(b) : next_unprintable++;
            decode[encode[b]] = int16_t(b);
        }
    }
};

const ByteLevelAlphabet &byte_level_alphabet() {
    static const ByteLevelAlphabet alphabet;
    return alphabet;
}

}  // namespace

UnicodeCategory unicode_category(uint32_t cpt) {
    if (cpt > 0x10FFFF) return UNICODE_OTHER;
    // Last range starting at or before cpt.
    const CategoryRange *it = std::upper_bound(std::begin(CATEGORY_RANGES), std::end(CATEGORY_RANGES), cpt,
                                               [](uint32_t c, const CategoryRange &r) { return c < r.first; });
    return std::prev(it)->category;
}

bool unicode_is_whitespace(uint32_t cpt) {
    // PropList.txt White_Space, unchanged since Unicode 6.3.
    switch (cpt) {
        case 0x0009: case 0x000A: case 0x000B: case 0x000C: case 0x000D: case 0x0020: case 0x0085: case 0x00A0:
        case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
            return true;
        default:
            return cpt >= 0x2000 && cpt <= 0x200A;
    }
}

const char *unicode_version() { return UNICODE_DATA_VERSION; }

size_t utf8_decode(std::string_view text, size_t pos, uint32_t &cpt) {
    const auto byte = [&](size_t i) { return uint8_t(text[i]); };
    const uint8_t b0 = byte(pos);
    size_t len;
    uint32_t value, min_value;
    if (b0 < 0x80) {
        cpt = b0;
        return 1;
    } else if ((b0 & 0xE0) == 0xC0) {
        len = 2, value = b0 & 0x1F, min_value = 0x80;
    } else if ((b0 & 0xF0) == 0xE0) {
        len = 3, value = b0 & 0x0F, min_value = 0x800;
    } else if ((b0 & 0xF8) == 0xF0) {
        len = 4, value = b0 & 0x07, min_value = 0x10000;
    } else {
        cpt = UNICODE_INVALID;
        return 1;
    }
    if (pos + len > text.size()) {
        cpt = UNICODE_INVALID;
        return 1;
    }
    for (size_t i = 1; i < len; ++i) {
        if ((byte(pos + i) & 0xC0) != 0x80) {
            cpt = UNICODE_INVALID;
            return 1;
        }
        value = (value << 6) | (byte(pos + i) & 0x3F);
    }
    if (value < min_value || value > 0x10FFFF || (value >= 0xD800 && value <= 0xDFFF)) {
        cpt = UNICODE_INVALID;
        return 1;
    }
    cpt = value;
    return len;
}

void utf8_append(std::string &out, uint32_t cpt) {
    if (cpt < 0x80) {
        out += char(cpt);
    } else if (cpt < 0x800) {
        out += char(0xC0 | (cpt >> 6));
        out += char(0x80 | (cpt & 0x3F));
    } else if (cpt < 0x10000) {
        out += char(0xE0 | (cpt >> 12));
        out += char(0x80 | ((cpt >> 6) & 0x3F));
        out += char(0x80 | (cpt & 0x3F));
    } else {
        out += char(0xF0 | (cpt >> 18));
        out += char(0x80 | ((cpt >> 12) & 0x3F));
        out += char(0x80 | ((cpt >> 6) & 0x3F));
        out += char(0x80 | (cpt & 0x3F));
    }
}

size_t utf8_complete_prefix(std::string_view text) {
    // Only the last 3 bytes can belong to an unfinished sequence: find its lead byte, if any.
    const size_t n = text.size();
    for (size_t back = 1; back <= 3 && back <= n; ++back) {
        const uint8_t b = uint8_t(text[n - back]);
        if ((b & 0xC0) == 0x80) continue;  // continuation byte: keep looking for the lead
        const size_t need = (b & 0xE0) == 0xC0 ? 2 : (b & 0xF0) == 0xE0 ? 3 : (b & 0xF8) == 0xF0 ? 4 : 1;
        if (need > back) {
            uint32_t cpt;
            // Hold the tail back only while it could still become a valid character: decode it as if
            // completed with continuation bytes and see whether the bytes seen so far are acceptable.
            std::string probe(text.substr(n - back));
            probe.append(need - back, char(0x80));
            if (utf8_decode(probe, 0, cpt) == need) return n - back;
            // 0x80 completions can be overlong where others are not (E0 A0.., F0 90..): the first
            // continuation decides that, and it is present only when back >= 2.
            if (back == 1 && (b == 0xE0 || b == 0xF0)) return n - back;
        }
        return n;
    }
    return n;
}

uint32_t byte_level_encode(uint8_t byte) { return byte_level_alphabet().encode[byte]; }

int byte_level_decode(uint32_t cpt) {
    return cpt < byte_level_alphabet().decode.size() ? byte_level_alphabet().decode[cpt] : -1;
}

}  // namespace flashmtp
