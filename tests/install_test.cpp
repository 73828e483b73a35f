// `cmake --install` into a temporary prefix, then examples/ built against the installed tree only
// (nothing of the source or build tree on the include or library path): with find_package (CMake,
// libkiln.a through kiln::engine_static) and with pkg-config (libkiln.so), and both run on a
// model with a real chat template.
#include <gtest/gtest.h>
#include <unistd.h>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>

#include "support/run.h"
#include "support/shared.h"

namespace fs = std::filesystem;
using kiln::test::shell_quote;

using kiln::test::run_shell;

TEST(Install, ExamplesBuildAgainstTheInstalledTreeWithFindPackageAndPkgConfig) {
#ifdef KILN_SANITIZED
    GTEST_SKIP() << "sanitizer build: the installed libraries need the sanitizer runtime";
#endif
    KILN_REQUIRE_SHARED("models");
    const fs::path model = kiln::test::shared_dir() / "models" / "qwen3-vocab-tiny.f16.gguf";
    ASSERT_TRUE(fs::exists(model)) << model;
    const fs::path tmp = kiln::test::temp_path("install-" + std::to_string(::getpid()));
    fs::remove_all(tmp);
    fs::create_directories(tmp);
    const fs::path prefix = tmp / "prefix";
    const std::string cmake = KILN_CMAKE_COMMAND;

    kiln::test::RunResult r = run_shell(shell_quote(cmake) + " --install " + shell_quote(KILN_BINARY_DIR) + " --prefix " + shell_quote(prefix.string()));
    ASSERT_EQ(r.code, 0) << r.out;
    for (const char* f : {"include/kiln/kiln.h", "include/kiln/chat.h", "include/kiln/generator.h", "include/kiln/tokenizer.h",
                          "include/kiln/version.h", "lib/libkiln.a", "lib/libkiln.so", "lib/libkiln.so.0.2", "lib/libkiln.so.0.2.0",
                          "lib/cmake/kiln/kilnConfig.cmake", "lib/cmake/kiln/kilnConfigVersion.cmake", "lib/pkgconfig/kiln.pc", "bin/kiln"})
        EXPECT_TRUE(fs::exists(prefix / f)) << f;
    // Only the public headers: nothing of the engine's layers.
    for (const auto& e : fs::recursive_directory_iterator(prefix / "include")) {
        if (e.is_regular_file()) {
            EXPECT_EQ(e.path().parent_path().filename(), "kiln") << e.path();
        }
    }
    r = run_shell("readelf -d " + shell_quote((prefix / "lib/libkiln.so.0.2.0").string()));
    EXPECT_NE(r.out.find("Library soname: [libkiln.so.0.2]"), std::string::npos) << r.out;

    // find_package(kiln 0.2 REQUIRED), linked statically.
    const fs::path examples = fs::path(KILN_SOURCE_DIR) / "examples", build = tmp / "build-cmake";
    r = run_shell(shell_quote(cmake) + " -S " + shell_quote(examples.string()) + " -B " + shell_quote(build.string()) +
           " -DCMAKE_BUILD_TYPE=Release -DKILN_EXAMPLES_STATIC=ON -DCMAKE_PREFIX_PATH=" + shell_quote(prefix.string()) + " && " +
           shell_quote(cmake) + " --build " + shell_quote(build.string()) + " -j2");
    ASSERT_EQ(r.code, 0) << r.out;
    // A version this is not: 0.3 is refused (0.x minor versions are APIs of their own).
    const fs::path probe = tmp / "probe";
    fs::create_directories(probe);
    std::ofstream(probe / "CMakeLists.txt") << "cmake_minimum_required(VERSION 3.25)\nproject(p CXX)\nfind_package(kiln 0.3 REQUIRED)\n";
    r = run_shell(shell_quote(cmake) + " -S " + shell_quote(probe.string()) + " -B " + shell_quote((probe / "b").string()) +
           " -DCMAKE_PREFIX_PATH=" + shell_quote(prefix.string()));
    EXPECT_NE(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("0.2.0"), std::string::npos) << r.out;

    // pkg-config, linked to libkiln.so.
    const std::string pc = "PKG_CONFIG_PATH=" + shell_quote((prefix / "lib/pkgconfig").string()) + " pkg-config";
    r = run_shell(pc + " --modversion kiln");
    EXPECT_EQ(r.out, "0.2.0\n");
    const fs::path chat_pc = tmp / "chat-pc";
    r = run_shell(shell_quote(KILN_CXX_COMPILER) + " " + shell_quote((examples / "chat.cpp").string()) + " -o " + shell_quote(chat_pc.string()) +
           " $(" + pc + " --cflags --libs kiln) -Wl,-rpath," + shell_quote((prefix / "lib").string()));
    ASSERT_EQ(r.code, 0) << r.out;

    // simple: the argmax chain of the model.
    r = run_shell(shell_quote((build / "simple").string()) + " " + shell_quote(model.string()));
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find(": qwen2, 2 layers, vocab 151"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("position 7: argmax"), std::string::npos) << r.out;

    // chat, both builds: Qwen3's template (hermes parser); the second turn reuses the first's prefix.
    std::ofstream(tmp / "input.txt") << "Hello\nAnd again\n";
    for (const fs::path& exe : {build / "chat", chat_pc}) {
        r = run_shell(shell_quote(exe.string()) + " " + shell_quote(model.string()) + " 8 <" + shell_quote((tmp / "input.txt").string()));
        ASSERT_EQ(r.code, 0) << exe << "\n" << r.out;
        EXPECT_NE(r.out.find("chat template: the model's, parser: hermes (kiln 0.2.0)"), std::string::npos) << r.out;
        std::smatch m;
        const std::regex turn(R"(\[(\d+) prompt tokens, (\d+) reused, (\d+) generated, stopped: (\w+)\])");
        std::vector<std::array<long, 3>> turns;
        for (auto it = std::sregex_iterator(r.out.begin(), r.out.end(), turn); it != std::sregex_iterator(); ++it)
            turns.push_back({std::stol((*it)[1]), std::stol((*it)[2]), std::stol((*it)[3])});
        ASSERT_EQ(turns.size(), 2u) << r.out;
        EXPECT_EQ(turns[0][1], 0) << r.out;  // a fresh context
        EXPECT_GT(turns[0][2], 0) << r.out;
        EXPECT_LE(turns[0][2], 8) << r.out;
        // The second prompt starts with the first (system, user, assistant reply): all of that is reused.
        EXPECT_GT(turns[1][0], turns[0][0]) << r.out;
        EXPECT_GE(turns[1][1], turns[0][0] - 1) << r.out;
        EXPECT_LT(turns[1][1], turns[1][0]) << r.out;
    }
    fs::remove_all(tmp);
}
