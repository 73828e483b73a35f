#include "cli/args.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cctype>
#include <limits>
#include <type_traits>

#include <fmt/format.h>

#include "kiln/error.h"

namespace kiln::cli {

namespace {
template <class T>
T parse_number(const std::string& flag, const std::string& v) {
    errno = 0;
    char* end = nullptr;
    if constexpr (std::is_floating_point_v<T>) {
        const double d = std::strtod(v.c_str(), &end);
        if (v.empty() || *end || errno) throw Error(fmt::format("{}: '{}' is not a number", flag, v));
        return static_cast<T>(d);
    } else {
        const long long i = std::strtoll(v.c_str(), &end, 10);
        if (v.empty() || *end || errno) throw Error(fmt::format("{}: '{}' is not an integer", flag, v));
        if (i < static_cast<long long>(std::numeric_limits<T>::min()) ||
            i > static_cast<long long>(std::numeric_limits<T>::max()))
            throw Error(fmt::format("{}: {} is out of range", flag, v));
        return static_cast<T>(i);
    }
}
}  // namespace

void Args::flag(std::vector<std::string> names, bool* out, std::string help) {
    opts_.push_back({std::move(names), "", std::move(help), nullptr, out});
}
void Args::option(std::vector<std::string> names, std::string* out, std::string metavar, std::string help) {
    opts_.push_back({std::move(names), std::move(metavar), std::move(help), [out](const std::string& v) { *out = v; }});
}
#define KILN_NUMERIC_OPTION(T)                                                                              \
    void Args::option(std::vector<std::string> names, T* out, std::string metavar, std::string help) {      \
        const std::string flag = names.front();                                                            \
        opts_.push_back({std::move(names), std::move(metavar), std::move(help),                            \
                         [out, flag](const std::string& v) { *out = parse_number<T>(flag, v); }});           \
    }
KILN_NUMERIC_OPTION(int64_t)
KILN_NUMERIC_OPTION(int)
KILN_NUMERIC_OPTION(double)
KILN_NUMERIC_OPTION(float)
#undef KILN_NUMERIC_OPTION

void Args::option(std::vector<std::string> names, KvType* out, std::string metavar, std::string help) {
    const std::string flag = names.front();
    opts_.push_back({std::move(names), std::move(metavar), std::move(help), [out, flag](const std::string& v) {
                         if (!parse_kv_type(v, out))
                             throw Error(fmt::format("{}: unknown KV cache type '{}' (f16, f32, q8_0 or q4_0)", flag, v));
                     }});
}

namespace {
template <class T>
std::function<void(const std::string&)> ranged(const std::string& flag, T* out, T lo, T hi, const std::string& range) {
    return [=](const std::string& v) {
        const T x = parse_number<T>(flag, v);
        if constexpr (std::is_floating_point_v<T>) {
            if (!(x >= lo && x <= hi))  // NaN fails too
                throw Error(fmt::format("{}: {} is out of range (allowed: {})", flag, v, range.empty() ? fmt::format("{} to {}", lo, hi) : range));
        } else {
            if (x < lo || x > hi)
                throw Error(fmt::format("{}: {} is out of range (allowed: {})", flag, v, range.empty() ? fmt::format("{} to {}", lo, hi) : range));
        }
        *out = x;
    };
}
}  // namespace

void Args::option(std::vector<std::string> names, int64_t* out, std::string metavar, std::string help, int64_t lo, int64_t hi,
                  std::string range) {
    const std::string flag = names.front();
    opts_.push_back({std::move(names), std::move(metavar), std::move(help), ranged(flag, out, lo, hi, range)});
}
void Args::option(std::vector<std::string> names, int* out, std::string metavar, std::string help, int lo, int hi, std::string range) {
    const std::string flag = names.front();
    opts_.push_back({std::move(names), std::move(metavar), std::move(help), ranged(flag, out, lo, hi, range)});
}
void Args::option(std::vector<std::string> names, float* out, std::string metavar, std::string help, float lo, float hi,
                  std::string range) {
    const std::string flag = names.front();
    opts_.push_back({std::move(names), std::move(metavar), std::move(help), ranged(flag, out, lo, hi, range)});
}

void Args::threads_option(int* n_threads) {
    option({"-t", "--threads"}, n_threads, "N", "CPU threads (default: all cores)", 1, 1024);
}

void Args::ctx_size_option(int64_t* n_ctx) {
    option({"-c", "--ctx-size"}, n_ctx, "N", "context size in tokens (default 0: the model's, at most 4096)", 0, int64_t{1} << 24,
           "0 (the model's) to 16777216");
}

void Args::sampler_options(SamplerParams* sp, int64_t* seed) {
    constexpr float kBig = 1e6f;
    option({"--temp"}, &sp->temperature, "T", "temperature (default 0.8; 0 = greedy)", 0.0f, 100.0f);
    option({"--top-k"}, &sp->top_k, "N", "top-k sampling (default 40, 0 = off)", 0, std::numeric_limits<int>::max(), "0 (off) or more");
    option({"--top-p"}, &sp->top_p, "P", "top-p sampling (default 0.95, 1 = off)", 0.0f, 1.0f);
    option({"--min-p"}, &sp->min_p, "P", "min-p sampling (default 0.05, 0 = off)", 0.0f, 1.0f);
    option({"--repeat-penalty"}, &sp->repeat_penalty, "X", "repetition penalty (default 1.0 = off)", 1e-6f, kBig, "greater than 0");
    option({"--repeat-last-n"}, &sp->repeat_last_n, "N", "tokens the penalties look back over (default 64, 0 = off, -1 = all)", -1,
           std::numeric_limits<int>::max());
    option({"--presence-penalty"}, &sp->presence_penalty, "X", "presence penalty (default 0)", -kBig, kBig, "a finite number");
    option({"--frequency-penalty"}, &sp->frequency_penalty, "X", "frequency penalty (default 0)", -kBig, kBig, "a finite number");
    option({"-s", "--seed"}, seed, "N", "random seed (default: random)", -1, std::numeric_limits<int64_t>::max(), "-1 (random) or more");
}

void Args::kv_type_options(KvType* k, KvType* v) {
    option({"-ctk", "--cache-type-k"}, k, "TYPE", "KV cache type of K: f16 (default), f32, q8_0 or q4_0");
    option({"-ctv", "--cache-type-v"}, v, "TYPE", "KV cache type of V: f16 (default), f32, q8_0 or q4_0");
}

void Args::rope_options(LoadOptions* lo) {
    option({"--rope-scaling"}, &lo->rope_scaling, "TYPE", "RoPE scaling instead of the file's: none, linear or yarn");
    option({"--rope-scale"}, &lo->rope_scale, "F", "RoPE context scaling factor (the context is extended F times)", 1e-6f, 1e6f,
           "a positive factor");
    option({"--yarn-orig-ctx"}, &lo->yarn_orig_ctx, "N", "YaRN: the context the model was trained with (default: the file's)", 1,
           int64_t{1} << 24);
}

void Args::backend_options(ContextOptions* co) {
    option({"--backend"}, &co->backend, "NAME", "cpu (default), vulkan or auto (Vulkan on a GPU, else the CPU)");
    option({"--device"}, &co->device, "N", "Vulkan device index (see kiln devices; default: the best)");
    kv_type_options(&co->kv_type_k, &co->kv_type_v);
}

namespace {
// llama.cpp flags that mean something else here (or nothing): what to do instead.
const char* llama_cpp_hint(const std::string& flag) {
    static const std::pair<const char*, const char*> hints[] = {
        {"-ngl", "kiln does not split layers between CPU and GPU: use --backend vulkan to run the whole model on the GPU"},
        {"--n-gpu-layers", "kiln does not split layers between CPU and GPU: use --backend vulkan to run the whole model on the GPU"},
        {"--gpu-layers", "kiln does not split layers between CPU and GPU: use --backend vulkan to run the whole model on the GPU"},
        {"-fa", "flash attention is always on in kiln: drop the flag"},
        {"--flash-attn", "flash attention is always on in kiln: drop the flag"},
        {"--jinja", "chat templates are always run as Jinja in kiln: drop the flag"},
        {"--mlock", "kiln does not lock the weights in memory (they are memory-mapped): drop the flag"},
        {"--no-mmap", "kiln always memory-maps the weights (nothing is copied): drop the flag"},
        {"-tb", "kiln uses the -t threads for the prompt too: use -t"},
        {"--threads-batch", "kiln uses the -t threads for the prompt too: use -t"},
    };
    for (const auto& [name, hint] : hints)
        if (flag == name) return hint;
    return nullptr;
}
}  // namespace

const Args::Opt* Args::lookup(const std::string& name) const {
    for (const Opt& o : opts_)
        for (const auto& n : o.names)
            if (n == name) return &o;
    return nullptr;
}

bool Args::parse(const std::vector<std::string>& args) {
    for (size_t i = 0; i < args.size(); ++i) {
        std::string a = args[i];
        if (a == "-h" || a == "--help") {
            std::fputs(help().c_str(), stdout);
            return false;
        }
        if (a.size() > 1 && a[0] == '-' && !(a.size() > 1 && (std::isdigit(static_cast<unsigned char>(a[1])) || a[1] == '.'))) {
            std::string value;
            bool has_value = false;
            if (auto eq = a.find('='); a.rfind("--", 0) == 0 && eq != std::string::npos) {
                value = a.substr(eq + 1);
                a = a.substr(0, eq);
                has_value = true;
            }
            const Opt* o = lookup(a);
            if (!o) {
                if (const char* hint = llama_cpp_hint(a)) throw Error(fmt::format("kiln {}: {}: {}", command_, a, hint));
                throw Error(fmt::format("kiln {}: unknown option '{}' (see kiln {} --help)", command_, a, command_));
            }
            if (o->flag) {
                if (has_value) throw Error(fmt::format("kiln {}: {} takes no value", command_, a));
                *o->flag = true;
                continue;
            }
            if (!has_value) {
                if (i + 1 >= args.size()) throw Error(fmt::format("kiln {}: {} needs a value ({})", command_, a, o->metavar));
                value = args[++i];
            }
            try {
                o->set(value);
            } catch (const Error& e) {
                throw Error(fmt::format("kiln {}: {}", command_, e.what()));
            }
            continue;
        }
        if (!positional_) throw Error(fmt::format("kiln {}: unexpected argument '{}'", command_, a));
        positional_->push_back(a);
    }
    return true;
}

std::string Args::help() const {
    std::string out = fmt::format("usage: kiln {} {}\n\noptions:\n", command_, usage_);
    for (const Opt& o : opts_) {
        std::string names;
        for (const auto& n : o.names) names += (names.empty() ? "" : ", ") + n;
        if (!o.metavar.empty()) names += " " + o.metavar;
        out += fmt::format("  {:<28} {}\n", names, o.help);
    }
    return out;
}

}  // namespace kiln::cli
