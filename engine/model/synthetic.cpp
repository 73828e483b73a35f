#include "model/synthetic.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include <fmt/format.h>

#include "gguf/writer.h"
#include "kiln/error.h"
#include "kiln/model.h"
#include "quant/types.h"

namespace kiln {
namespace {

// SPM token types as stored in tokenizer.ggml.token_type.
enum : int32_t { kNormal = 1, kUnknown = 2, kControl = 3, kByte = 6 };

// Returns the token texts.
std::vector<std::string> vocab_impl(gguf::Writer& w, int n_vocab) {
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
    // Padding to a real model's vocabulary size (never produced by the merges: no prefix chain).
    for (int i = static_cast<int>(tokens.size()); i < n_vocab; ++i) {
        tokens.push_back(fmt::format("<unused{}>", i));
        scores.push_back(-10000.0f);
        types.push_back(kControl);
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
    return tokens;
}

// The story model's word chain: each word's possible next words (SPM pieces, "_" = "▁").
const std::vector<std::pair<const char*, std::vector<const char*>>> kStory = {
    {"_once", {"_upon"}},
    {"_upon", {"_a"}},
    {"_a", {"_time", "_kiln", "_pot"}},
    {"_time", {"_there"}},
    {"_there", {"_was"}},
    {"_was", {"_a", "_hot", "_cool"}},
    {"_kiln", {"_was"}},
    {"_pot", {"_was"}},
    {"_hot", {"_and", "."}},
    {"_cool", {"_and", "."}},
    {"_and", {"_the"}},
    {"_the", {"_clay", "_fire", "_glaze", "_kiln", "_pot"}},
    {"_clay", {"_was"}},
    {"_fire", {"_was"}},
    {"_glaze", {"_was"}},
    {".", {"_the", "_once"}},
};

std::string piece(const char* word) {
    std::string w = word;
    return w[0] == '_' ? "\xE2\x96\x81" + w.substr(1) : w;
}

}  // namespace

std::vector<std::string> write_synthetic_vocab(gguf::Writer& w, int n_vocab) { return vocab_impl(w, n_vocab); }

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
    const std::vector<std::string> token_texts = write_synthetic_vocab(w, o.n_vocab);
    const uint64_t vocab = token_texts.size();
    auto token_id = [&](const std::string& text) -> uint64_t {
        const auto it = std::find(token_texts.begin(), token_texts.end(), text);
        if (it == token_texts.end()) throw Error("synthetic llama: story word '" + text + "' is not in the vocabulary");
        return static_cast<uint64_t>(it - token_texts.begin());
    };
    if (o.story && (o.tied_output || static_cast<size_t>(o.n_embd) <= kStory.size()))
        throw Error("synthetic llama: the story model needs an untied output and more dimensions than story words");

    std::mt19937_64 rng(o.seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    // In the story model the blocks only nudge the residual: their output projections are small.
    auto matrix = [&](const std::string& name, uint64_t cols, uint64_t rows, TensorType type, float gain = 1.0f) {
        std::vector<float> v(cols * rows);
        const float scale = gain / std::sqrt(static_cast<float>(cols));
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
    // Embeddings are stored at the matrix type too, as real files do. The story model gives each
    // story word its own axis (every other token shares the last one) and its output matrix maps
    // a word's axis to its possible next words: a bigram chain that the attention and FFN blocks,
    // computed in full, only perturb.
    const float out_gain = o.story ? 0.05f : 1.0f;
    {
        std::vector<float> v(d * vocab);
        for (float& x : v) x = normal(rng) * (o.story ? 0.05f : 1.0f);
        if (o.story) {
            for (uint64_t t = 0; t < vocab; ++t) v[t * d + d - 1] += 4.0f;
            for (size_t i = 0; i < kStory.size(); ++i) {
                const uint64_t t = token_id(piece(kStory[i].first));
                v[t * d + d - 1] -= 4.0f;
                v[t * d + i] += 4.0f;
            }
        }
        w.add_tensor_f32("token_embd.weight", o.type, {d, vocab}, v);
    }
    for (int l = 0; l < o.n_layer; ++l) {
        const std::string p = fmt::format("blk.{}.", l);
        norm(p + "attn_norm.weight");
        matrix(p + "attn_q.weight", d, d, o.type);
        matrix(p + "attn_k.weight", d, kv, o.type);
        matrix(p + "attn_v.weight", d, kv, o.type);
        matrix(p + "attn_output.weight", d, d, o.type, out_gain);
        norm(p + "ffn_norm.weight");
        matrix(p + "ffn_gate.weight", d, ff, o.type);
        matrix(p + "ffn_up.weight", d, ff, o.type);
        matrix(p + "ffn_down.weight", ff, d, o.type, out_gain);
    }
    if (o.story) {
        w.add_tensor_f32("output_norm.weight", TensorType::F32, {d}, std::vector<float>(d, 1.0f));
        std::vector<float> out(d * vocab);
        for (float& x : out) x = normal(rng) * 0.01f;
        for (size_t i = 0; i < kStory.size(); ++i)
            for (const char* next : kStory[i].second) out[token_id(piece(next)) * d + i] += 1.5f;
        out[token_id(piece("_once")) * d + d - 1] += 1.5f;  // any other token starts the story
        w.add_tensor_f32("output.weight", o.type, {d, vocab}, out);
    } else {
        norm("output_norm.weight");
        if (!o.tied_output) matrix("output.weight", d, vocab, o.type);
    }
    w.write(path);
}

void write_demo_model(const std::string& path, const std::string& weight_type) {
    const auto t = type_from_name(weight_type);
    if (!t || !traits(*t).can_quantize) throw Error(fmt::format("demo model: '{}' is not a weight type kiln can write", weight_type));
    SyntheticLlama opts;
    opts.type = *t;
    opts.story = true;
    write_synthetic_llama(path, opts);
}

}  // namespace kiln
