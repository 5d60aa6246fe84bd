// A minimal test harness for the C++ tests: CHECK records a failure with file:line and keeps going;
// main returns test_exit_code() so ctest sees the result.
#pragma once

#include <cstdio>
#include <string>

namespace test {

inline int &failures() {
    static int n = 0;
    return n;
}

inline int exit_code(const char *name) {
    if (failures()) {
        std::fprintf(stderr, "%s: %d check(s) failed\n", name, failures());
        return 1;
    }
    std::printf("%s: all checks passed\n", name);
    return 0;
}

}  // namespace test

#define CHECK(cond)                                                                      \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            ++test::failures();                                                          \
        }                                                                                \
    } while (0)

#define CHECK_MSG(cond, ...)                                                             \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            std::fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond); \
            std::fprintf(stderr, __VA_ARGS__);                                           \
            std::fprintf(stderr, "\n");                                                  \
            ++test::failures();                                                          \
        }                                                                                \
    } while (0)

// Expects the statement to throw exception type E whose message contains substring.
#define CHECK_THROWS(E, stmt, substring)                                                            \
    do {                                                                                            \
        bool thrown_ = false;                                                                       \
        try {                                                                                       \
            stmt;                                                                                   \
        } catch (const E &e_) {                                                                     \
            thrown_ = true;                                                                         \
            CHECK_MSG(std::string(e_.what()).find(substring) != std::string::npos,                  \
                      "message '%s' lacks '%s'", e_.what(), substring);                             \
        }                                                                                           \
        CHECK_MSG(thrown_, "expected %s from %s", #E, #stmt);                                       \
    } while (0)
