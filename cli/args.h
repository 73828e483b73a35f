// A small argument parser with llama.cpp-style flags (-m, -p, -n, -c, -t ...). Unknown flags and
// bad values are errors that name the flag.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "kiln/context.h"
#include "kiln/model.h"
#include "kiln/sampler.h"
#include "kiln/types.h"

namespace kiln::cli {

class Args {
public:
    Args(std::string command, std::string usage) : command_(std::move(command)), usage_(std::move(usage)) {}

    // Register options. `names` is a list like {"-m", "--model"}.
    void flag(std::vector<std::string> names, bool* out, std::string help);
    void option(std::vector<std::string> names, std::string* out, std::string metavar, std::string help);
    void option(std::vector<std::string> names, int64_t* out, std::string metavar, std::string help);
    void option(std::vector<std::string> names, int* out, std::string metavar, std::string help);
    void option(std::vector<std::string> names, double* out, std::string metavar, std::string help);
    void option(std::vector<std::string> names, float* out, std::string metavar, std::string help);
    void option(std::vector<std::string> names, KvType* out, std::string metavar, std::string help);
    // A number with its allowed range [lo, hi] (NaN is never allowed): a value outside is an error
    // naming the flag and the range; `range` describes it when lo..hi would not say enough.
    void option(std::vector<std::string> names, int64_t* out, std::string metavar, std::string help, int64_t lo, int64_t hi,
                std::string range = {});
    void option(std::vector<std::string> names, int* out, std::string metavar, std::string help, int lo, int hi, std::string range = {});
    void option(std::vector<std::string> names, float* out, std::string metavar, std::string help, float lo, float hi,
                std::string range = {});
    // -t / --threads (1.. ; unset: all cores, left 0). -c / --ctx-size (0: the model's, at most 4096).
    void threads_option(int* n_threads);
    void ctx_size_option(int64_t* n_ctx);
    // The sampling flags of run and chat, llama.cpp's names: --temp, --top-k, --top-p, --min-p,
    // --repeat-penalty, --repeat-last-n, --presence-penalty, --frequency-penalty, -s/--seed.
    void sampler_options(SamplerParams* sp, int64_t* seed);
    // -ctk / --cache-type-k and -ctv / --cache-type-v, as llama.cpp names them.
    void kv_type_options(KvType* k, KvType* v);
    // --backend, --device, -ctk and -ctv straight into a context's options (run, chat, logits, bench).
    void backend_options(ContextOptions* co);
    // --rope-scaling, --rope-scale, --yarn-orig-ctx (llama.cpp's names) into the load options.
    void rope_options(LoadOptions* lo);
    // Positional arguments are collected in order.
    void positional(std::vector<std::string>* out) { positional_ = out; }

    // Parses; on error throws kiln::Error. Returns false when --help was asked (help printed).
    bool parse(const std::vector<std::string>& args);
    std::string help() const;

private:
    struct Opt {
        std::vector<std::string> names;
        std::string metavar, help;
        std::function<void(const std::string&)> set;  // null for flags
        bool* flag = nullptr;
    };
    const Opt* lookup(const std::string& name) const;
    std::string command_, usage_;
    std::vector<Opt> opts_;
    std::vector<std::string>* positional_ = nullptr;
};

}  // namespace kiln::cli
