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

void Args::kv_type_options(KvType* k, KvType* v) {
    option({"-ctk", "--cache-type-k"}, k, "TYPE", "KV cache type of K: f16 (default), f32, q8_0 or q4_0");
    option({"-ctv", "--cache-type-v"}, v, "TYPE", "KV cache type of V: f16 (default), f32, q8_0 or q4_0");
}

void Args::backend_options(ContextOptions* co) {
    option({"--backend"}, &co->backend, "NAME", "cpu (default), vulkan or auto (Vulkan on a GPU, else the CPU)");
    option({"--device"}, &co->device, "N", "Vulkan device index (see kiln devices; default: the best)");
    kv_type_options(&co->kv_type_k, &co->kv_type_v);
}

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
            if (!o) throw Error(fmt::format("kiln {}: unknown option '{}' (see kiln {} --help)", command_, a, command_));
            if (o->flag) {
                if (has_value) throw Error(fmt::format("kiln {}: {} takes no value", command_, a));
                *o->flag = true;
                continue;
            }
            if (!has_value) {
                if (i + 1 >= args.size()) throw Error(fmt::format("kiln {}: {} needs a value ({})", command_, a, o->metavar));
                value = args[++i];
            }
            o->set(value);
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
