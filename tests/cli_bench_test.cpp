// `kiln bench`: ppN / tgN tests with the numbers a user compares, and clear errors.
#include <gtest/gtest.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "model/synthetic.h"
#include "support/run.h"

namespace {

std::string bench_model() {
    const std::string path = kiln::test::temp_path("cli-bench-llama-" + std::to_string(::getpid()) + ".gguf").string();
    kiln::SyntheticLlama s;
    s.seed = 9;
    kiln::write_synthetic_llama(path, s);
    return path;
}

TEST(CliBench, JsonHasEveryTestWithItsSamples) {
    const auto r = kiln::test::run_kiln({"bench", "-m", bench_model(), "-p", "16", "-n", "8", "-d", "4", "-r", "2", "-t", "1", "--json"});
    ASSERT_EQ(r.code, 0) << r.err;
    const nlohmann::json j = nlohmann::json::parse(r.out);
    EXPECT_EQ(j.at("arch"), "llama");
    EXPECT_EQ(j.at("backend"), "cpu");
    EXPECT_EQ(j.at("depth"), 4);
    EXPECT_GT(j.at("depth_tps").get<double>(), 0.0);  // the depth is decoded once (then truncated back to)
    ASSERT_EQ(j.at("tests").size(), 2u);
    EXPECT_EQ(j["tests"][0]["test"], "pp16 @ d4");
    EXPECT_EQ(j["tests"][0]["n_tokens"], 16);
    EXPECT_EQ(j["tests"][1]["test"], "tg8 @ d4");
    for (const auto& t : j["tests"]) {
        ASSERT_EQ(t.at("samples").size(), 2u);
        double mean = 0;
        for (double v : t["samples"]) {
            EXPECT_GT(v, 0.0);
            mean += v / 2;
        }
        EXPECT_NEAR(t["tps"].get<double>(), mean, 1e-6 * mean);
    }
    // Decode bytes per second: the weights once per generated token.
    const double tg = j["tests"][1]["tps"];
    EXPECT_NEAR(j.at("decode_weight_gbs").get<double>(), j.at("weight_bytes").get<double>() * tg / 1e9, 1e-9 * tg);
    EXPECT_GT(j.at("read_bandwidth_gbs").get<double>(), 0.0);
}

TEST(CliBench, TableAndSkippedTests) {
    const auto r = kiln::test::run_kiln({"bench", "-m", bench_model(), "-p", "0", "-n", "4", "-r", "1", "-t", "1", "-q"});
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_NE(r.out.find("| tg4 |"), std::string::npos) << r.out;
    EXPECT_EQ(r.out.find("| pp"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("read bandwidth measured now"), std::string::npos) << r.out;
}

TEST(CliBench, BadArgumentsAreOneLineErrors) {
    const std::string m = bench_model();
    for (const auto& [args, words] : std::vector<std::pair<std::vector<std::string>, std::string>>{
             {{"bench"}, "no model given"},
             {{"bench", "-m", m, "-p", "0", "-n", "0"}, "nothing to measure"},
             {{"bench", "-m", m, "-r", "0"}, "at least one repetition"},
             {{"bench", "-m", m, "-p", "-5"}, "must not be negative"},
             {{"bench", "-m", m, "-b", "0"}, "at least one token"},
             {{"bench", "-m", "/nonexistent.gguf"}, "nonexistent.gguf"}}) {
        const auto r = kiln::test::run_kiln(args);
        EXPECT_EQ(r.code, 1) << words;
        EXPECT_NE(r.err.find(words), std::string::npos) << r.err;
    }
}

}  // namespace
