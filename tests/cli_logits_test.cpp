// `kiln logits`: JSON of every position's logits, equal to what the public API computes.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "kiln/kiln.h"
#include "model/synthetic.h"
#include "support/run.h"

namespace {

std::string synthetic_model() {
    const std::string path = kiln::test::temp_path("cli-logits-llama-" + std::to_string(::getpid()) + ".gguf").string();
    kiln::SyntheticLlama s;
    s.type = kiln::TensorType::Q8_0;
    s.seed = 5;
    kiln::write_synthetic_llama(path, s);
    return path;
}

TEST(CliLogits, PrintsEveryPositionAsTheApiComputesIt) {
    const std::string path = synthetic_model();
    const auto r = kiln::test::run_kiln({"logits", "-m", path, "--tokens", "1,7,42,3", "-t", "1"});
    ASSERT_EQ(r.code, 0) << r.err;
    const nlohmann::json j = nlohmann::json::parse(r.out);
    ASSERT_EQ(j.at("tokens"), nlohmann::json({1, 7, 42, 3}));
    const auto& rows = j.at("logits");
    ASSERT_EQ(rows.size(), 4u);

    const kiln::Model model = kiln::Model::load(path);
    kiln::ContextOptions o;
    o.n_threads = 1;
    o.n_ctx = 4;
    kiln::Context ctx(model, o);
    const std::vector<int32_t> toks = {1, 7, 42, 3};
    ctx.decode(toks, true);
    for (size_t p = 0; p < 4; ++p) {
        ASSERT_EQ(rows[p].size(), static_cast<size_t>(model.info().n_vocab));
        const auto ours = ctx.logits(static_cast<int64_t>(p));
        for (size_t i = 0; i < ours.size(); ++i) {
            const double printed = rows[p][i].get<double>();
            // 9 significant digits round-trip a float exactly.
            ASSERT_EQ(static_cast<float>(printed), ours[i]) << "position " << p << " logit " << i;
        }
    }
}

TEST(CliLogits, ErrorsNameTheProblem) {
    const std::string path = synthetic_model();
    auto r = kiln::test::run_kiln({"logits", "-m", path, "--tokens", "1,2", "--backend", "metal"});
    EXPECT_EQ(r.code, 1);
    EXPECT_NE(r.err.find("unknown backend 'metal'"), std::string::npos) << r.err;

    r = kiln::test::run_kiln({"logits", "-m", path, "--tokens", "1,x"});
    EXPECT_EQ(r.code, 1);
    EXPECT_NE(r.err.find("'x'"), std::string::npos) << r.err;

    r = kiln::test::run_kiln({"logits", "-m", path, "--tokens", "1,2,3", "-c", "2"});
    EXPECT_EQ(r.code, 1);
    EXPECT_NE(r.err.find("3 tokens"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("of 2"), std::string::npos) << r.err;

    r = kiln::test::run_kiln({"logits", "-m", path, "--tokens", "999999"});
    EXPECT_EQ(r.code, 1);
    EXPECT_NE(r.err.find("999999"), std::string::npos) << r.err;

    r = kiln::test::run_kiln({"logits", "--tokens", "1"});
    EXPECT_EQ(r.code, 1);
    EXPECT_NE(r.err.find("-m"), std::string::npos) << r.err;
}

}  // namespace
