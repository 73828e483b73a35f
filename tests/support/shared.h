// Locating ../shared test data. Tests that need it skip LOUDLY when it is absent (a user's clone
// has no shared/; CI has it) - never pass silently.
#pragma once

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <string>

#include <unistd.h>

namespace kiln::test {

inline std::filesystem::path shared_dir() {
    if (const char* env = std::getenv("KILN_SHARED_DIR")) return env;
    return KILN_SHARED_DIR;
}

inline bool have_shared(const std::string& sub) { return std::filesystem::is_directory(shared_dir() / sub); }

// A file name in this test process's own scratch directory, $TMPDIR/kiln-tests/<pid>/: ctest runs
// every test in its own process, two at a time, so a fixed name shared between processes would let
// one test truncate a file another is reading. The directory goes when the process exits.
inline std::filesystem::path temp_path(const std::string& name) {
    struct ProcessDir {
        pid_t owner = ::getpid();
        std::filesystem::path path = std::filesystem::temp_directory_path() / "kiln-tests" / std::to_string(owner);
        ProcessDir() { std::filesystem::create_directories(path); }
        ~ProcessDir() {
            std::error_code ec;
            if (::getpid() == owner) std::filesystem::remove_all(path, ec);  // not in a forked child
        }
    };
    static const ProcessDir dir;
    std::filesystem::create_directories(dir.path);
    return dir.path / name;
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
