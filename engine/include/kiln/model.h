// kiln public API: a loaded model.
//
//   kiln::Model model = kiln::Model::load("model.gguf");
//   kiln::Context ctx(model, {.n_ctx = 2048});
//   ctx.decode(tokens);                     // the whole prompt, in batches of n_batch
//   std::span<const float> row = ctx.logits();   // the last token's logits
//
// A Model is a cheap handle (copies share the same loaded file); it stays alive as long as any
// copy or any Context made from it. Every failure is a kiln::Error with a message for the user.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace kiln {

class Tokenizer;  // kiln/tokenizer.h

struct LoadOptions {
    // Called while loading with the fraction done (0..1); return false to cancel (load() then
    // throws kiln::Error "loading ... cancelled").
    std::function<bool(float)> progress;
    // Threads for load-time work and the default for contexts of this model (0: all cores).
    int n_threads = 0;
    // Read every page of the weights before load() returns (the first decode then does not stall on
    // page faults, and `progress` means something on a large file). false: only the metadata is
    // read (kiln fit, or a program that checks the memory plan first and calls touch_weights()).
    bool touch_weights = true;
    // RoPE scaling instead of the file's (llama.cpp's --rope-scaling / --rope-scale /
    // --yarn-orig-ctx): rope_scaling "" keeps the file's, else "none", "linear" or "yarn";
    // rope_scale > 0 is the context factor (positions are divided by it); yarn_orig_ctx > 0 the
    // context the model was trained with before YaRN. They override <arch>.rope.scaling.* of the
    // file before the architecture reads it.
    std::string rope_scaling;
    float rope_scale = 0.0f;
    int64_t yarn_orig_ctx = 0;
};

struct ModelInfo {
    std::string path;
    std::string arch;          // general.architecture, e.g. "llama"
    std::string name;          // general.name (may be empty)
    int64_t n_vocab = 0;
    int64_t n_ctx_train = 0;   // context length the model was trained with (0 if unknown)
    int64_t n_embd = 0;
    int64_t n_layer = 0;
    int64_t n_head = 0;
    int64_t n_head_kv = 0;
    int64_t head_dim = 0;
    int64_t n_ff = 0;
    uint64_t n_params = 0;     // elements over all weights
    uint64_t weight_bytes = 0; // bytes of all weights as stored
    std::string weight_types;  // e.g. "q4_K:113 q6_K:1 f32:9"
};

class Model {
public:
    // Maps the GGUF file and binds the weights of its architecture. Throws kiln::Error naming the
    // file and what is wrong (unknown architecture, missing or mis-shaped tensor, bad metadata).
    static Model load(const std::string& path, const LoadOptions& options = {});
    // What load() would report in info(), from the file's metadata alone (nothing of the weights
    // is read): e.g. the trained context length before choosing a context size. Throws as load().
    static ModelInfo read_info(const std::string& path);

    // Reads every page of the weights (what load() does unless LoadOptions::touch_weights is false);
    // progress(fraction) as in LoadOptions.
    void touch_weights(const std::function<bool(float)>& progress = {}) const;

    const ModelInfo& info() const;
    int default_threads() const;

    // The model's tokenizer (from its tokenizer.ggml.* metadata). A model whose tokenizer cannot
    // be built still loads and computes logits from ids; asking for its tokenizer then throws
    // the kiln::Error that building it gave.
    const Tokenizer& tokenizer() const;
    bool has_tokenizer() const;

    struct Impl;  // engine-internal
    const std::shared_ptr<const Impl>& impl() const { return impl_; }

private:
    explicit Model(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
    std::shared_ptr<const Impl> impl_;
};

// Writes kiln's demo model to `path` (what `kiln demo` runs): a small llama (2 layers, 64 wide, a
// few MB) whose weights tell a story, "once upon a time there was a kiln ...", while every block
// of the forward pass runs. weight_type names the matrices' type ("f32", "f16", "q8_0", "q4_K",
// ...). Throws kiln::Error for a type kiln cannot write, or when the file cannot be written.
void write_demo_model(const std::string& path, const std::string& weight_type = "q8_0");

}  // namespace kiln
