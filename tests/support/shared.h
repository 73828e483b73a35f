// Locating ../shared test data. Tests that need it skip LOUDLY when it is absent (a user's clone
// has no shared/; CI has it) - never pass silently.
#pragma once

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <string>

namespace kiln::test {

inline std::filesystem::path shared_dir() {
    if (const char* env = std::getenv("KILN_SHARED_DIR")) return env;
    return KILN_SHARED_DIR;
}

inline bool have_shared(const std::string& sub) { return std::filesystem::is_directory(shared_dir() / sub); }

inline std::filesystem::path temp_path(const std::string& name) {
    auto dir = std::filesystem::temp_directory_path() / "kiln-tests";
    std::filesystem::create_directories(dir);
    return dir / name;
}

}  // namespace kiln::test

#define KILN_REQUIRE_SHARED(sub)                                                                        \
    do {                                                                                                 \
        if (!::kiln::test::have_shared(sub)) {                                                           \
            std::fprintf(stderr, "\n*** SKIPPED: %s/%s not found; shared test data is absent ***\n\n",   \
                         ::kiln::test::shared_dir().c_str(), sub);                                       \
            GTEST_SKIP() << "shared test data " << (::kiln::test::shared_dir() / sub) << " is absent";    \
        }                                                                                                \
    } while (0)
