// `kiln info` on every shared file (text and JSON), and on bad files (exit 1, loader message).
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "gguf/gguf.h"
#include "gguf/writer.h"
#include "support/run.h"

namespace fs = std::filesystem;
using kiln::test::run_kiln;

TEST(CliInfo, EverySharedFileIsDescribed) {
    KILN_REQUIRE_SHARED("models");
    int n = 0;
    for (const char* sub : {"models", "vocab"}) {
        for (const auto& entry : fs::directory_iterator(kiln::test::shared_dir() / sub)) {
            if (entry.path().extension() != ".gguf") continue;
            const std::string path = entry.path().string();
            SCOPED_TRACE(path);
            auto text = run_kiln({"info", path}, "info");
            ASSERT_EQ(text.code, 0) << text.err;
            EXPECT_NE(text.out.find("architecture"), std::string::npos);
            auto js = run_kiln({"info", "--json", "--tensors", path}, "info");
            ASSERT_EQ(js.code, 0) << js.err;
            const auto j = nlohmann::json::parse(js.out);
            auto f = kiln::gguf::File::open(path);
            EXPECT_EQ(j["architecture"], f->architecture());
            EXPECT_EQ(j["name"], f->get_string_or("general.name", ""));
            EXPECT_EQ(j["tensor_count"], f->tensors().size());
            EXPECT_EQ(j["file_size"], fs::file_size(entry.path()));
            uint64_t params = 0;
            for (const auto& t : f->tensors()) params += t.n_elements;
            EXPECT_EQ(j["parameter_count"], params);
            EXPECT_EQ(j["tensors"].size(), f->tensors().size());
            const auto& h = j["hparams"];
            const std::string a = f->architecture();
            EXPECT_EQ(h["block_count"], f->get_int(a + ".block_count"));
            EXPECT_EQ(h["embedding_length"], f->get_int(a + ".embedding_length"));
            EXPECT_EQ(h["attention.head_count"], f->get_int(a + ".attention.head_count"));
            EXPECT_TRUE(h.contains("attention.key_length"));
            EXPECT_TRUE(h.contains("context_length"));
            if (f->has(a + ".attention.sliding_window")) {
                EXPECT_EQ(h["attention.sliding_window"], f->get_int(a + ".attention.sliding_window"));
            }
            if (f->has(a + ".expert_count")) {
                EXPECT_EQ(h["expert_count"], f->get_int(a + ".expert_count"));
            }
            EXPECT_EQ(j["tokenizer"]["vocab_size"], f->get("tokenizer.ggml.tokens").as_array().size());
            ++n;
        }
    }
    EXPECT_GE(n, 30);
}

// The architectures of tests/data/models: their hyper-parameters and KV layers by name.
TEST(CliInfo, NewArchitecturesShowTheirHyperParameters) {
    const fs::path dir = fs::path(__FILE__).parent_path() / "data" / "models";
    const auto glm = run_kiln({"info", (dir / "glm4moe-tiny.f32.gguf").string()}, "info");
    ASSERT_EQ(glm.code, 0) << glm.err;
    for (const char* want : {"architecture    glm4moe", "rope type                          neox",
                             "rope dims                          64", "experts                            16",
                             "shared experts                     1", "dense lead layers                  1",
                             "MTP layers (not run)               1", "expert weights scale               2.5",
                             "kv cache        f16, 2 full layers"})
        EXPECT_NE(glm.out.find(want), std::string::npos) << want << "\n" << glm.out;
    const auto q3 = run_kiln({"info", "--json", (dir / "qwen3moe-tiny.q8_0.gguf").string()}, "info");
    ASSERT_EQ(q3.code, 0) << q3.err;
    const auto j = nlohmann::json::parse(q3.out);
    EXPECT_EQ(j["architecture"], "qwen3moe");
    EXPECT_EQ(j["hparams"]["expert_count"], 128);
    EXPECT_EQ(j["hparams"]["expert_used_count"], 8);
    EXPECT_EQ(j["hparams"]["attention.key_length"], 64);
    EXPECT_EQ(j["attention"]["qk_norm"], true);
    EXPECT_EQ(j["attention"]["biases"], nlohmann::json::array());
    // qwen3: a head size (128) that is not width / heads (128 / 32), per-head Q/K norms, no biases.
    const auto q = run_kiln({"info", (dir / "qwen3-tiny.f32.gguf").string()}, "info");
    ASSERT_EQ(q.code, 0) << q.err;
    for (const char* want : {"architecture    qwen3\n", "width                              128\n", "heads                              32\n",
                             "kv heads                           4\n", "head dim (k)                       128\n",
                             "head dim (v)                       128\n", "rope type                          neox\n",
                             "rope dims                          128\n", "attention       Q/K RMS norms, no biases\n",
                             "kv cache        f16, 2 full layers x 2048 B per token"})
        EXPECT_NE(q.out.find(want), std::string::npos) << want << "\n" << q.out;
    // glm4moe: biases on Q, K and V (not on the output), no Q/K norms in this file.
    EXPECT_NE(glm.out.find("attention       no Q/K norms, biases on Q, K, V\n"), std::string::npos) << glm.out;
    // qwen3moe: qwen3's attention.
    const auto qm = run_kiln({"info", (dir / "qwen3moe-tiny.q8_0.gguf").string()}, "info");
    ASSERT_EQ(qm.code, 0) << qm.err;
    EXPECT_NE(qm.out.find("attention       Q/K RMS norms, no biases\n"), std::string::npos) << qm.out;
}

TEST(CliInfo, BadFilesExitOneWithTheLoaderMessage) {
    const auto missing = run_kiln({"info", "/nonexistent/model.gguf"});
    EXPECT_EQ(missing.code, 1);
    EXPECT_NE(missing.err.find("/nonexistent/model.gguf"), std::string::npos) << missing.err;

    kiln::gguf::Writer w;
    w.set_string("general.architecture", "llama");
    w.add_tensor("t", kiln::TensorType::F32, {1024}, std::vector<uint8_t>(4096));
    auto bytes = w.to_bytes();
    bytes.resize(bytes.size() - 100);
    const auto path = kiln::test::temp_path("info-truncated-" + std::to_string(::getpid()) + ".gguf");
    std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    const auto r = run_kiln({"info", path.string()});
    EXPECT_EQ(r.code, 1);
    EXPECT_NE(r.err.find("tensor 't': data [offset"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("runs past end of file"), std::string::npos) << r.err;
    EXPECT_TRUE(r.out.empty());

    const auto text = kiln::test::temp_path("info-text-" + std::to_string(::getpid()) + ".gguf");
    std::ofstream(text) << "hello, not a model\n";
    const auto t = run_kiln({"info", text.string()});
    EXPECT_EQ(t.code, 1);
    EXPECT_NE(t.err.find("not a GGUF file"), std::string::npos) << t.err;

    const auto noarg = run_kiln({"info"});
    EXPECT_EQ(noarg.code, 1);
    const auto badflag = run_kiln({"info", "--bogus", "x"});
    EXPECT_EQ(badflag.code, 1);
    EXPECT_NE(badflag.err.find("--bogus"), std::string::npos);
}

// KV memory per token by layer kind, from the architecture's KV layers.
TEST(CliInfo, KvCacheByLayerKind) {
    KILN_REQUIRE_SHARED("models");
    const auto models = kiln::test::shared_dir() / "models";
    struct Want {
        const char* file;
        int full, sliding, window;
    };
    for (const Want& w : {Want{"gemma3-tiny.q8_0.gguf", 1, 7, 16}, Want{"gpt-oss-tiny.mxfp4_moe.gguf", 2, 2, 8}}) {
        SCOPED_TRACE(w.file);
        if (!fs::exists(models / w.file)) continue;
        const auto js = run_kiln({"info", "--json", (models / w.file).string()}, "info");
        ASSERT_EQ(js.code, 0) << js.err;
        const auto kv = nlohmann::json::parse(js.out).at("kv_cache");
        EXPECT_EQ(kv["full_layers"], w.full);
        EXPECT_EQ(kv["sliding_layers"], w.sliding);
        EXPECT_EQ(kv["sliding_window"], w.window);
        EXPECT_EQ(kv["sliding_bytes_per_token_per_layer"], kv["full_bytes_per_token_per_layer"]);
        const auto text = run_kiln({"info", (models / w.file).string()}, "info");
        EXPECT_NE(text.out.find("sliding-window layers"), std::string::npos) << text.out;
    }
}
