// kiln info MODEL.gguf [--tensors] [--json]: what a GGUF file holds, without loading weights.
#include <algorithm>
#include <cctype>
#include <map>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/args.h"
#include "cli/command.h"
#include "kiln/error.h"
#include "kiln/gguf_info.h"

namespace kiln::cli {
namespace {

nlohmann::json to_json(const GgufValue& v) {
    switch (v.kind) {
        case GgufValue::Kind::String: return v.s;
        case GgufValue::Kind::Bool: return v.b;
        case GgufValue::Kind::Float: return v.f;
        case GgufValue::Kind::Array: {
            nlohmann::json a = nlohmann::json::array();
            for (const GgufValue& e : v.items) a.push_back(to_json(e));
            return a;
        }
        case GgufValue::Kind::UInt: return v.u;
        case GgufValue::Kind::Int: return v.i;
    }
    return nullptr;
}

std::string human_bytes(double b) {
    const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (b >= 1024 && u < 4) b /= 1024, ++u;
    return u == 0 ? fmt::format("{:.0f} B", b) : fmt::format("{:.2f} {}", b, units[u]);
}

std::string human_count(double n) {
    if (n >= 1e9) return fmt::format("{:.2f}B", n / 1e9);
    if (n >= 1e6) return fmt::format("{:.2f}M", n / 1e6);
    if (n >= 1e3) return fmt::format("{:.2f}K", n / 1e3);
    return fmt::format("{:.0f}", n);
}

// RoPE flavour by architecture (how pairs are rotated), as the graphs use it.
const char* rope_kind(const std::string& arch) {
    if (arch == "llama" || arch == "deepseek2") return "normal";
    if (arch == "qwen2" || arch == "qwen3" || arch == "qwen3moe" || arch == "glm4moe" || arch == "gemma3" ||
        arch == "gpt-oss")
        return "neox";
    return "unknown";
}

// What a layer's attention has beside its projections, from the first layer's tensors (the
// layouts with separate Q/K/V projections; MLA and others: nothing known): per-head RMS norms on Q
// and K (qwen3, qwen3moe, gemma3, optional in glm4moe) and which projections carry biases (qwen2,
// glm4moe, gpt-oss).
struct AttentionParts {
    bool known = false, qk_norm = false;
    std::vector<std::string> biases;  // "q", "k", "v", "output"
};

AttentionParts attention_parts(const GgufInfo& f) {
    auto has = [&](const std::string& name) {
        return std::any_of(f.tensors.begin(), f.tensors.end(), [&](const GgufTensor& t) { return t.name == name; });
    };
    AttentionParts a;
    if (!has("blk.0.attn_q.weight")) return a;
    a.known = true;
    a.qk_norm = has("blk.0.attn_q_norm.weight") && has("blk.0.attn_k_norm.weight");
    for (const char* p : {"q", "k", "v", "output"})
        if (has(fmt::format("blk.0.attn_{}.bias", p))) a.biases.emplace_back(p);
    return a;
}

struct Summary {
    nlohmann::json hparams = nlohmann::json::object();  // every "<arch>." key, prefix stripped, plus derived
    uint64_t params = 0, tensor_bytes = 0;
    std::map<std::string, std::pair<uint64_t, uint64_t>> per_type;  // name -> (count, bytes)
};

Summary summarise(const GgufInfo& f) {
    Summary s;
    const std::string arch = f.architecture();
    const std::string prefix = arch + ".";
    for (const auto& [key, value] : f.metadata)
        if (!arch.empty() && key.rfind(prefix, 0) == 0) s.hparams[key.substr(prefix.size())] = to_json(value);

    auto& h = s.hparams;
    auto get = [&](const char* k) -> const nlohmann::json* { return h.contains(k) ? &h[k] : nullptr; };
    if (const auto* heads = get("attention.head_count"); heads && heads->is_number_integer() && get("embedding_length")) {
        const int64_t n_head = heads->get<int64_t>();
        if (n_head > 0) {
            const int64_t hd = h["embedding_length"].get<int64_t>() / n_head;
            if (!get("attention.key_length")) h["attention.key_length"] = hd;
            if (!get("attention.value_length")) h["attention.value_length"] = hd;
        }
    }
    if (!arch.empty()) h["rope.type"] = rope_kind(arch);

    for (const auto& t : f.tensors) {
        s.params += t.n_elements;
        s.tensor_bytes += t.n_bytes;
        auto& e = s.per_type[t.type];
        e.first += 1;
        e.second += t.n_bytes;
    }
    return s;
}

// The order and labels of the hyper-parameters people look for first; the rest follow.
const std::vector<std::pair<const char*, const char*>> kLabels = {
    {"block_count", "layers"},
    {"embedding_length", "width"},
    {"feed_forward_length", "ffn width"},
    {"attention.head_count", "heads"},
    {"attention.head_count_kv", "kv heads"},
    {"attention.key_length", "head dim (k)"},
    {"attention.value_length", "head dim (v)"},
    {"context_length", "context length"},
    {"rope.type", "rope type"},
    {"rope.freq_base", "rope base"},
    {"rope.dimension_count", "rope dims"},
    {"rope.scaling.type", "rope scaling"},
    {"rope.scaling.factor", "rope scale factor"},
    {"rope.scaling.original_context_length", "rope orig. context"},
    {"attention.sliding_window", "sliding window"},
    {"expert_count", "experts"},
    {"expert_used_count", "experts used"},
    {"expert_shared_count", "shared experts"},
    {"attention.q_lora_rank", "q lora rank"},
    {"attention.kv_lora_rank", "kv lora rank"},
    {"expert_gating_func", "gating func"},
    {"expert_feed_forward_length", "expert ffn width"},
    {"leading_dense_block_count", "dense lead layers"},
    {"nextn_predict_layers", "MTP layers (not run)"},
    {"expert_weights_norm", "expert weights norm"},
    {"expert_weights_scale", "expert weights scale"},
};

// A GGUF string for the terminal: NUL and other control bytes shown escaped (\0, \n, \xNN), so a
// string with a NUL in it is neither cut short nor garbles the output.
std::string shown(const std::string& s) {
    std::string out;
    for (unsigned char c : s) {
        if (c == 0) out += "\\0";
        else if (c == '\n') out += "\\n";
        else if (c == '\t') out += "\\t";
        else if (c < 0x20 || c == 0x7f) out += fmt::format("\\x{:02x}", c);
        else out += static_cast<char>(c);
    }
    return out;
}

std::string render(const nlohmann::json& v) {
    if (v.is_string()) return shown(v.get<std::string>());
    if (v.is_array() && v.size() > 8) return fmt::format("[{} values] {}...", v.size(), v[0].dump());
    return v.dump();
}

// KV cache per token by layer kind (f16 cache), when kiln supports the architecture: a full layer
// keeps every token of the context, a sliding-window layer a ring of its window plus one batch.
struct KvPerToken {
    bool known = false;
    std::string error;  // why not known
    int64_t full_layers = 0, sliding_layers = 0, window = 0;
    uint64_t full_bytes = 0, sliding_bytes = 0;  // per token per layer
};

KvPerToken kv_per_token(const GgufInfo& f) {
    KvPerToken k;
    try {
        for (const GgufKvLayer& kl : GgufInfo::read_kv_layers(f.path)) {  // MLA layers store K only (V is its head)
            const uint64_t row = static_cast<uint64_t>(kl.n_head_kv * (kl.head_dim_k + (kl.v_in_k ? 0 : kl.head_dim_v))) * 2;
            if (const int64_t w = kl.window; w > 0) {
                ++k.sliding_layers;
                k.window = w;
                k.sliding_bytes = row;
            } else {
                ++k.full_layers;
                k.full_bytes = row;
            }
        }
        k.known = true;
    } catch (const Error& e) {
        k.error = e.what();
    }
    return k;
}

int run_info(const std::vector<std::string>& argv) {
    std::vector<std::string> files;
    bool tensors = false, json = false;
    std::string model_flag;
    Args args("info", "MODEL.gguf | -m MODEL.gguf [--tensors] [--json]");
    args.option({"-m", "--model"}, &model_flag, "FILE", "the model (or give it as the argument)");
    args.flag({"--tensors"}, &tensors, "print the full tensor table");
    args.flag({"--json"}, &json, "print one JSON object");
    args.positional(&files);
    if (!args.parse(argv)) return 0;
    if (!model_flag.empty()) files.insert(files.begin(), model_flag);
    std::string path;
    if (files.size() == 1) path = files[0];
    if (files.empty()) throw Error("kiln info: no model given (usage: kiln info MODEL.gguf)");
    if (files.size() > 1) throw Error("kiln info: give one model file");

    const GgufInfo info = GgufInfo::read(path);
    const GgufInfo* f = &info;
    const Summary s = summarise(info);
    const std::string arch = f->architecture();
    const GgufValue* tokens = f->find("tokenizer.ggml.tokens");
    const uint64_t n_vocab = tokens && tokens->kind == GgufValue::Kind::Array ? tokens->items.size() : 0;
    const GgufValue* tmpl = f->find("tokenizer.chat_template");
    const bool has_template = tmpl && tmpl->kind == GgufValue::Kind::String;

    if (json) {
        nlohmann::json j;
        j["file"] = path;
        j["gguf_version"] = f->version;
        j["file_size"] = f->file_size;
        j["architecture"] = arch;
        j["name"] = f->get_string_or("general.name", "");
        j["hparams"] = s.hparams;
        j["tokenizer"] = {{"model", f->get_string_or("tokenizer.ggml.model", "")},
                          {"pre", f->get_string_or("tokenizer.ggml.pre", "")},
                          {"vocab_size", n_vocab},
                          {"bos_token_id", f->get_int_or("tokenizer.ggml.bos_token_id", -1)},
                          {"eos_token_id", f->get_int_or("tokenizer.ggml.eos_token_id", -1)}};
        j["chat_template"] = has_template;
        if (const AttentionParts a = attention_parts(info); a.known) j["attention"] = {{"qk_norm", a.qk_norm}, {"biases", a.biases}};
        if (const KvPerToken kv = kv_per_token(info); kv.known)
            j["kv_cache"] = {{"type", "f16"},
                             {"full_layers", kv.full_layers},
                             {"full_bytes_per_token_per_layer", kv.full_bytes},
                             {"sliding_layers", kv.sliding_layers},
                             {"sliding_window", kv.window},
                             {"sliding_bytes_per_token_per_layer", kv.sliding_bytes}};
        j["tensor_count"] = f->tensors.size();
        j["parameter_count"] = s.params;
        j["tensor_bytes"] = s.tensor_bytes;
        nlohmann::json types = nlohmann::json::object();
        for (const auto& [name, e] : s.per_type) types[name] = {{"tensors", e.first}, {"bytes", e.second}};
        j["types"] = types;
        if (tensors) {
            nlohmann::json t = nlohmann::json::array();
            for (const auto& ti : f->tensors)
                t.push_back({{"name", ti.name}, {"type", ti.type}, {"shape", ti.shape},
                             {"bytes", ti.n_bytes}, {"offset", ti.offset}});
            j["tensors"] = t;
        }
        fmt::print("{}\n", j.dump(2));
        return 0;
    }

    fmt::print("file            {} (GGUF v{}, {})\n", path, f->version, human_bytes(static_cast<double>(f->file_size)));
    fmt::print("architecture    {}\n", arch.empty() ? "(none)" : arch);
    fmt::print("name            {}\n", shown(f->get_string_or("general.name", "(none)")));
    if (!s.hparams.empty()) {
        fmt::print("hyper-parameters\n");
        std::vector<std::string> shown;
        for (const auto& [key, label] : kLabels) {
            if (!s.hparams.contains(key)) continue;
            std::string v = render(s.hparams[key]);
            if (std::string(key) == "expert_gating_func")
                v += v == "1" ? " (softmax)" : v == "2" ? " (sigmoid)" : v == "3" ? " (softmax over the chosen)" : " (unknown)";
            fmt::print("  {:<34} {}\n", label, v);
            shown.push_back(key);
        }
        for (const auto& [key, value] : s.hparams.items())
            if (std::find(shown.begin(), shown.end(), key) == shown.end())
                fmt::print("  {:<34} {}\n", key, render(value));
    }
    if (const AttentionParts a = attention_parts(info); a.known) {
        std::string bias;
        for (const auto& b : a.biases) bias += (bias.empty() ? "" : ", ") + (b == "output" ? b : std::string(1, static_cast<char>(std::toupper(b[0]))));
        fmt::print("attention       {}, {}\n", a.qk_norm ? "Q/K RMS norms" : "no Q/K norms", bias.empty() ? "no biases" : "biases on " + bias);
    }
    fmt::print("tokenizer       {} (pre: {}), {} tokens, bos {}, eos {}\n",
               shown(f->get_string_or("tokenizer.ggml.model", "(none)")), shown(f->get_string_or("tokenizer.ggml.pre", "default")),
               n_vocab, f->get_int_or("tokenizer.ggml.bos_token_id", -1), f->get_int_or("tokenizer.ggml.eos_token_id", -1));
    if (const KvPerToken kv = kv_per_token(info); kv.known) {
        std::string line = fmt::format("f16, {} full layers x {} B per token", kv.full_layers, kv.full_bytes);
        if (kv.sliding_layers > 0)
            line += fmt::format("; {} sliding-window layers x {} B per token, ring of {} + batch tokens", kv.sliding_layers,
                                kv.sliding_bytes, kv.window);
        fmt::print("kv cache        {}\n", line);
    } else {
        fmt::print("kv cache        unknown ({})\n", kv.error);
    }
    fmt::print("chat template   {}\n", has_template ? fmt::format("present ({} chars)", tmpl->s.size()) : "none");
    const double bpw = s.params ? 8.0 * static_cast<double>(s.tensor_bytes) / static_cast<double>(s.params) : 0.0;
    fmt::print("tensors         {} tensors, {} parameters, {} ({:.2f} bits per weight)\n", f->tensors.size(),
               human_count(static_cast<double>(s.params)), human_bytes(static_cast<double>(s.tensor_bytes)), bpw);
    for (const auto& [name, e] : s.per_type)
        fmt::print("  {:<8} {:>6} tensors {:>12}\n", name, e.first, human_bytes(static_cast<double>(e.second)));
    if (tensors) {
        fmt::print("\n{:<40} {:<8} {:<24} {:>12} {:>12}\n", "name", "type", "shape", "bytes", "offset");
        for (const auto& ti : f->tensors)
            fmt::print("{:<40} {:<8} {:<24} {:>12} {:>12}\n", ti.name, ti.type, ti.shape_string(), ti.n_bytes,
                       ti.offset);
    }
    return 0;
}

}  // namespace

KILN_COMMAND("info", "describe a GGUF file: architecture, hyper-parameters, tokenizer, tensors", run_info);

}  // namespace kiln::cli
