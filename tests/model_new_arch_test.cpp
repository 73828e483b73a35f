// qwen3, qwen3moe and glm4moe files that are wrong in one place: each is refused at load with an
// error naming what is wrong (the models of tests/data/models, copied with one key or tensor changed).
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <string>

#include "gguf/gguf.h"
#include "gguf/writer.h"
#include "kiln/error.h"
#include "kiln/kiln.h"
#include "support/shared.h"

namespace {

namespace fs = std::filesystem;

fs::path model_path(const char* name) { return fs::path(__FILE__).parent_path() / "data" / "models" / name; }

// Copies `src` into a temporary file, with `set` changing keys and tensors named in `drop` left out.
std::string edited_copy(const char* src, const std::string& tag, const std::function<void(kiln::gguf::Writer&)>& set,
                        const std::string& drop = {}) {
    const auto f = kiln::gguf::File::open(model_path(src).string());
    kiln::gguf::Writer w;
    for (const auto& [k, v] : f->metadata()) w.set(k, v);
    set(w);
    for (const auto& t : f->tensors()) {
        if (t.name == drop) continue;
        w.add_tensor(t.name, t.type, t.shape, std::vector<uint8_t>(t.data, t.data + t.n_bytes));
    }
    const fs::path out = kiln::test::temp_path("arch-" + tag + ".gguf");
    w.write(out.string());
    return out.string();
}

void expect_load_error(const std::string& path, const std::string& want) {
    try {
        kiln::Model::load(path);
        ADD_FAILURE() << path << " loaded; expected an error containing '" << want << "'";
    } catch (const kiln::Error& e) {
        EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
    }
    fs::remove(path);
}

TEST(NewArchitectures, LoadTheRepositoryModels) {
    for (const char* name : {"qwen3-tiny.f32.gguf", "qwen3moe-tiny.q8_0.gguf", "glm4moe-tiny.q4_k_m.gguf"}) {
        const kiln::Model m = kiln::Model::load(model_path(name).string());
        EXPECT_GT(m.info().n_vocab, 0) << name;
    }
}

TEST(NewArchitectures, BadFilesAreRefusedByName) {
    auto none = [](kiln::gguf::Writer&) {};
    // qwen3 needs its per-head Q norm.
    expect_load_error(edited_copy("qwen3-tiny.f32.gguf", "q3-norm", none, "blk.1.attn_q_norm.weight"),
                      "blk.1.attn_q_norm.weight");
    // glm4moe: an MTP layer count that leaves nothing to run.
    expect_load_error(edited_copy("glm4moe-tiny.f32.gguf", "glm-nextn",
                                  [](kiln::gguf::Writer& w) { w.set_u32("glm4moe.nextn_predict_layers", 3); }),
                      "nextn_predict_layers 3");
    // qwen3moe: more experts used than there are.
    expect_load_error(edited_copy("qwen3moe-tiny.f32.gguf", "q3moe-used",
                                  [](kiln::gguf::Writer& w) { w.set_u32("qwen3moe.expert_used_count", 200); }),
                      "expert_used_count 200");
    // glm4moe: a gating function this architecture does not have.
    expect_load_error(edited_copy("glm4moe-tiny.f32.gguf", "glm-gating",
                                  [](kiln::gguf::Writer& w) { w.set_u32("glm4moe.expert_gating_func", 3); }),
                      "expert_gating_func = 3");
    // glm4moe: a Q norm without its K norm.
    expect_load_error(edited_copy("glm4moe-tiny.f32.gguf", "glm-qk",
                                  [](kiln::gguf::Writer& w) {
                                      w.add_tensor_f32("blk.0.attn_q_norm.weight", kiln::TensorType::F32, {128},
                                                       std::vector<float>(128, 1.0f));
                                  }),
                      "only one of attn_q_norm and attn_k_norm");
}

}  // namespace
