// Running the built `kiln` binary from tests: exit code, stdout and stderr.
#pragma once

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "support/shared.h"

namespace kiln::test {

struct RunResult {
    int code = -1;
    std::string out, err;
};

// kiln serve keeps its prefix cache in $XDG_CACHE_HOME/kiln by default: every kiln the tests start
// (and what those start) uses a directory of this test process, never the user's cache.
inline const std::filesystem::path& test_cache_home() {
    static const std::filesystem::path dir = [] {
        const auto d = temp_path("xdg-cache-" + std::to_string(::getpid()));
        std::filesystem::remove_all(d);
        std::filesystem::create_directories(d);
        ::setenv("XDG_CACHE_HOME", d.c_str(), 1);
        return d;
    }();
    return dir;
}
inline const bool kTestCacheHomeSet = !test_cache_home().empty();

// A fresh, empty XDG_CACHE_HOME for one server (set in its process after fork): servers of one
// test process do not see each other's blocks unless a test passes the same --cache-dir.
inline void use_fresh_cache_home(const std::string& tag) {
    static int counter = 0;
    const auto d = test_cache_home() / (tag + "-" + std::to_string(counter++));
    std::filesystem::remove_all(d);
    ::setenv("XDG_CACHE_HOME", d.c_str(), 1);
}

inline std::string kiln_binary() { return (std::filesystem::path(KILN_BINARY_DIR) / "kiln").string(); }

inline std::string shell_quote(const std::string& s) {
    std::string q = "'";
    for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return q + "'";
}

// Runs a shell command line; its stdout into r.out, its exit code into r.code.
inline RunResult run_command_line(const std::string& cmd) {
    RunResult r;
    FILE* p = ::popen(cmd.c_str(), "r");
    if (!p) return r;
    std::array<char, 65536> buf;
    size_t n;
    while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
    const int status = ::pclose(p);
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return r;
}

// Runs `kiln ARGS...` (each argument quoted), capturing stdout and stderr separately; stdin is
// `input` when given, else empty.
inline RunResult run_kiln(const std::vector<std::string>& args, const std::string& tag = "run", const std::string* input = nullptr) {
    static int counter = 0;
    const std::string base = tag + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
    const auto err_path = temp_path(base + ".err"), in_path = temp_path(base + ".in");
    if (input) std::ofstream(in_path, std::ios::binary) << *input;
    std::string cmd = shell_quote(kiln_binary());
    // Appended piecewise: GCC 12 warns falsely (-Wrestrict) on "literal" + string&&.
    for (const auto& a : args) {
        cmd += ' ';
        cmd += shell_quote(a);
    }
    cmd += " 2>";
    cmd += shell_quote(err_path.string());
    cmd += input ? " <" + shell_quote(in_path.string()) : std::string(" </dev/null");
    RunResult r = run_command_line(cmd);
    std::ifstream e(err_path);
    std::stringstream ss;
    ss << e.rdbuf();
    r.err = ss.str();
    std::filesystem::remove(err_path);
    if (input) std::filesystem::remove(in_path);
    return r;
}

inline RunResult run_kiln_with_input(const std::vector<std::string>& args, const std::string& input) { return run_kiln(args, "in", &input); }

// Runs a shell command; stdout and stderr together.
inline RunResult run_shell(const std::string& cmd) { return run_command_line(cmd + " 2>&1"); }

}  // namespace kiln::test
