// Readable byte-exact comparison of rendered text: on a mismatch, the first differing offset with
// the text around it on both sides (escaped, so whitespace differences show).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <string>

namespace kiln::test {

inline std::string escape_text(const std::string& s) {
    std::string out;
    for (unsigned char c : s) {
        switch (c) {
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            case '\\': out += "\\\\"; break;
            default:
                if (c < 0x20 || c == 0x7F) {
                    char buf[8];
                    std::snprintf(buf, sizeof buf, "\\x%02x", c);
                    out += buf;
                } else {
                    out += static_cast<char>(c);
                }
        }
    }
    return out;
}

inline ::testing::AssertionResult same_text(const std::string& expected, const std::string& actual) {
    if (expected == actual) return ::testing::AssertionSuccess();
    size_t i = 0;
    while (i < expected.size() && i < actual.size() && expected[i] == actual[i]) ++i;
    const size_t from = i > 60 ? i - 60 : 0;
    auto around = [&](const std::string& s) {
        return escape_text(s.substr(std::min(from, s.size()), i - from)) + "|>>|" +
               escape_text(s.substr(std::min(i, s.size()), 60));
    };
    return ::testing::AssertionFailure() << "texts differ at byte " << i << " (expected " << expected.size()
                                         << " bytes, got " << actual.size() << ")\n  expected: ..." << around(expected)
                                         << "\n  actual:   ..." << around(actual);
}

}  // namespace kiln::test
