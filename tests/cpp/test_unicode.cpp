// Unicode helpers of the tokenizer: categories and White_Space against values from the Unicode Character
// Database, UTF-8 decoding (every code point round-trips; malformed input decodes byte by byte), the
// streaming prefix rule, and GPT-2's byte-level alphabet (a bijection with the published mapping).
#include <cstring>
#include <set>
#include <string>

#include "check.h"
#include "runtime/unicode.h"

using namespace flashmtp;

namespace {

void test_categories() {
    CHECK(unicode_category('a') == UNICODE_LETTER);
    CHECK(unicode_category(0x00E9) == UNICODE_LETTER);   // é
    CHECK(unicode_category(0x4E00) == UNICODE_LETTER);   // CJK
    CHECK(unicode_category('7') == UNICODE_NUMBER);
    CHECK(unicode_category(0x0663) == UNICODE_NUMBER);   // Arabic-Indic 3
    CHECK(unicode_category(0x00BD) == UNICODE_NUMBER);   // ½ (No)
    CHECK(unicode_category(0x216B) == UNICODE_NUMBER);   // Ⅻ (Nl)
    CHECK(unicode_category(0x0301) == UNICODE_MARK);     // combining acute
    CHECK(unicode_category('!') == UNICODE_PUNCTUATION);
    CHECK(unicode_category('+') == UNICODE_SYMBOL);
    CHECK(unicode_category(0x1F600) == UNICODE_SYMBOL);  // 😀
    CHECK(unicode_category(' ') == UNICODE_SEPARATOR);
    CHECK(unicode_category(0x0000) == UNICODE_OTHER);
    CHECK(unicode_category(0xE000) == UNICODE_OTHER);    // private use
    CHECK(unicode_category(0x10FFFF) == UNICODE_OTHER);  // noncharacter
    CHECK(unicode_category(UNICODE_INVALID) == UNICODE_OTHER);
    CHECK(std::strlen(unicode_version()) > 0);

    for (uint32_t c : {0x09u, 0x0Au, 0x0Bu, 0x0Cu, 0x0Du, 0x20u, 0x85u, 0xA0u, 0x1680u, 0x2000u, 0x200Au, 0x2028u,
                       0x2029u, 0x202Fu, 0x205Fu, 0x3000u}) {
        CHECK_MSG(unicode_is_whitespace(c), "U+%04X", c);
    }
    for (uint32_t c : {0x08u, 0x1Cu, 0x1Fu, 0x200Bu, 0xFEFFu, 0x61u, UNICODE_INVALID}) {
        CHECK_MSG(!unicode_is_whitespace(c), "U+%04X", c);
    }
}

void test_utf8() {
    // Every scalar value encodes and decodes back to itself with its expected length.
    for (uint32_t c = 0; c <= 0x10FFFF; ++c) {
        if (c >= 0xD800 && c <= 0xDFFF) continue;
        std::string s;
        utf8_append(s, c);
        uint32_t back = 0;
        const size_t len = utf8_decode(s, 0, back);
        const size_t expected = c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
        if (len != expected || s.size() != expected || back != c) {
            CHECK_MSG(false, "U+%04X", c);
            break;
        }
    }
    // Malformed: lone continuation, overlong, surrogate, above U+10FFFF, truncated, invalid lead bytes.
    for (const char *bad : {"\x80", "\xC0\xAF", "\xE0\x80\x80", "\xED\xA0\x80", "\xF4\x90\x80\x80", "\xE6\x97",
                            "\xF0\x9F\x98", "\xFF", "\xF8\x88\x80\x80\x80", "\xE6\x41\x41"}) {
        uint32_t cpt = 0;
        CHECK_MSG(utf8_decode(bad, 0, cpt) == 1 && cpt == UNICODE_INVALID, "%s", bad);
    }

    // A stream holds back only a tail that can still become a valid character.
    const struct {
        const char *text;
        size_t ready;
    } cases[] = {
        {"", 0},          {"a", 1},          {"\xE6", 0},        {"\xE6\x97", 0},    {"\xE6\x97\xA5", 3},
        {"a\xF0\x9F", 1}, {"\xF0\x9F\x98", 0}, {"\xF0\x9F\x98\x80", 4}, {"\xE0", 0}, {"\xE0\xA0", 0},
        {"\xE0\x80", 2},  {"\xED\xA0", 2},   {"\xF4\x90", 2},    {"\x80", 1},        {"\xF5", 1},
        {"\xC0", 1},      {"\xC3", 0},       {"ab\xC3\xA9", 4},
    };
    for (const auto &c : cases) {
        CHECK_MSG(utf8_complete_prefix(c.text) == c.ready, "\"%s\": %zu, expected %zu", c.text,
                  utf8_complete_prefix(c.text), c.ready);
    }
}

void test_byte_level_alphabet() {
    std::set<uint32_t> seen;
    for (int b = 0; b < 256; ++b) {
        const uint32_t c = byte_level_encode(uint8_t(b));
        seen.insert(c);
        CHECK(byte_level_decode(c) == b);
        CHECK(!unicode_is_whitespace(c) && unicode_category(c) != UNICODE_OTHER);  // printable, no spaces
    }
    CHECK(seen.size() == 256);
    CHECK(byte_level_encode(' ') == 0x120);   // Ġ
    CHECK(byte_level_encode('\n') == 0x10A);  // Ċ
    CHECK(byte_level_encode('!') == '!');
    CHECK(byte_level_encode(0xAD) == 0x143);  // the last unprintable byte takes the last code point
    CHECK(byte_level_decode(' ') == -1);
    CHECK(byte_level_decode(0x144) == -1);
    CHECK(byte_level_decode(0x10FFFF) == -1);
}

}  // namespace

int main() {
    test_categories();
    test_utf8();
    test_byte_level_alphabet();
    return test::exit_code("test_unicode");
}
