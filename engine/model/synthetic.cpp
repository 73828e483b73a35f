#include "model/synthetic.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include <fmt/format.h>

#include "gguf/writer.h"

namespace kiln {
namespace {

// SPM token types as stored in tokenizer.ggml.token_type.
enum : int32_t { kNormal = 1, kUnknown = 2, kControl = 3, kByte = 6 };

// Returns the vocabulary size.
uint64_t add_vocab(gguf::Writer& w) {
    std::vector<std::string> tokens = {"<unk>", "<s>", "</s>"};
    std::vector<float> scores = {0, 0, 0};
    std::vector<int32_t> types = {kUnknown, kControl, kControl};
    for (int b = 0; b < 256; ++b) {
        tokens.push_back(fmt::format("<0x{:02X}>", b));
        scores.push_back(0);
        types.push_back(kByte);
    }
    // Single characters, then whole words with a leading "▁" (SPM's space), scored so that longer
    // pieces win the merges.
    const std::string space = "\xE2\x96\x81";
    std::vector<std::string> pieces = {space};
    for (char c = 'a'; c <= 'z'; ++c) pieces.emplace_back(1, c);
    for (char c = 'A'; c <= 'Z'; ++c) pieces.emplace_back(1, c);
    for (char c = '0'; c <= '9'; ++c) pieces.emplace_back(1, c);
    for (const char* p : {".", ",", "!", "?", "'", "-", ":"}) pieces.emplace_back(p);
    for (const char* word : {"the", "a", "of", "and", "to", "in", "is", "it", "that", "kiln", "fire", "clay", "pot",
                             "hot", "cool", "glaze", "once", "upon", "time", "there", "was", "model", "token"}) {
        // SPM merges two adjacent pieces only into a piece of the vocabulary: add every prefix so
        // that whole words are reachable.
        const std::string w = word;
        for (size_t n = 1; n <= w.size(); ++n) {
            pieces.push_back(space + w.substr(0, n));
            if (n > 1) pieces.push_back(w.substr(0, n));
        }
    }
    for (const auto& p : pieces) {
        if (std::find(tokens.begin(), tokens.end(), p) != tokens.end()) continue;  // "a" is a letter and a word
        tokens.push_back(p);
        scores.push_back(-1000.0f + static_cast<float>(p.size()) * 10.0f - static_cast<float>(tokens.size()) * 0.01f);
        types.push_back(kNormal);
    }
    w.set_string("tokenizer.ggml.model", "llama");
    w.set_strings("tokenizer.ggml.tokens", tokens);
    w.set_f32s("tokenizer.ggml.scores", scores);
    w.set_i32s("tokenizer.ggml.token_type", types);
    w.set_u32("tokenizer.ggml.unknown_token_id", 0);
    w.set_u32("tokenizer.ggml.bos_token_id", 1);
    w.set_u32("tokenizer.ggml.eos_token_id", 2);
    w.set_bool("tokenizer.ggml.add_bos_token", true);
    w.set_bool("tokenizer.ggml.add_eos_token", false);
    return tokens.size();
}

}  // namespace

void write_synthetic_llama(const std::string& path, const SyntheticLlama& o) {
    if (o.n_head <= 0 || o.n_head_kv <= 0 || o.n_embd % o.n_head != 0 || o.n_head % o.n_head_kv != 0)
        throw Error(fmt::format("synthetic llama: bad head layout ({} wide, {} heads, {} kv heads)", o.n_embd, o.n_head,
                                o.n_head_kv));
    gguf::Writer w;
    w.set_string("general.architecture", "llama");
    w.set_string("general.name", o.name);
    w.set_u32("llama.context_length", static_cast<uint32_t>(o.n_ctx));
    w.set_u32("llama.embedding_length", static_cast<uint32_t>(o.n_embd));
    w.set_u32("llama.block_count", static_cast<uint32_t>(o.n_layer));
    w.set_u32("llama.feed_forward_length", static_cast<uint32_t>(o.n_ff));
    w.set_u32("llama.attention.head_count", static_cast<uint32_t>(o.n_head));
    w.set_u32("llama.attention.head_count_kv", static_cast<uint32_t>(o.n_head_kv));
    w.set_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
    w.set_f32("llama.rope.freq_base", o.rope_base);
    const int head_dim = o.n_embd / o.n_head;
    w.set_u32("llama.rope.dimension_count", static_cast<uint32_t>(head_dim));
    const uint64_t vocab = add_vocab(w);

    std::mt19937_64 rng(o.seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    auto matrix = [&](const std::string& name, uint64_t cols, uint64_t rows, TensorType type) {
        std::vector<float> v(cols * rows);
        const float scale = 1.0f / std::sqrt(static_cast<float>(cols));
        for (float& x : v) x = normal(rng) * scale;
        w.add_tensor_f32(name, type, {cols, rows}, v);
    };
    auto norm = [&](const std::string& name) {
        std::vector<float> v(static_cast<size_t>(o.n_embd));
        for (float& x : v) x = 1.0f + 0.1f * normal(rng);
        w.add_tensor_f32(name, TensorType::F32, {static_cast<uint64_t>(o.n_embd)}, v);
    };
    const uint64_t d = static_cast<uint64_t>(o.n_embd), ff = static_cast<uint64_t>(o.n_ff);
    const uint64_t kv = static_cast<uint64_t>(o.n_head_kv * head_dim);
    // Embeddings are stored at the matrix type too, as real files do.
    {
        std::vector<float> v(d * vocab);
        for (float& x : v) x = normal(rng);
        w.add_tensor_f32("token_embd.weight", o.type, {d, vocab}, v);
    }
    for (int l = 0; l < o.n_layer; ++l) {
        const std::string p = fmt::format("blk.{}.", l);
        norm(p + "attn_norm.weight");
        matrix(p + "attn_q.weight", d, d, o.type);
        matrix(p + "attn_k.weight", d, kv, o.type);
        matrix(p + "attn_v.weight", d, kv, o.type);
        matrix(p + "attn_output.weight", d, d, o.type);
        norm(p + "ffn_norm.weight");
        matrix(p + "ffn_gate.weight", d, ff, o.type);
        matrix(p + "ffn_up.weight", d, ff, o.type);
        matrix(p + "ffn_down.weight", ff, d, o.type);
    }
    norm("output_norm.weight");
    if (!o.tied_output) matrix("output.weight", d, vocab, o.type);
    w.write(path);
}

}  // namespace kiln
