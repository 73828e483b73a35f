// general.architecture -> the file under engine/model/arch/ that builds it. Adding an architecture
// is one file there plus one line here.
#include <fmt/format.h>

#include "kiln/error.h"
#include "model/architecture.h"

namespace kiln::model {

namespace {
struct Entry {
    const char* name;
    ArchitectureLoader load;
};
constexpr Entry kArchitectures[] = {
    {"llama", &load_llama},
    {"qwen2", &load_qwen2},
    {"qwen3", &load_qwen3},
    {"qwen3moe", &load_qwen3moe},
    {"glm4moe", &load_glm4moe},
    {"gemma3", &load_gemma3},
    {"gpt-oss", &load_gpt_oss},
    {"deepseek2", &load_deepseek2},
};
}  // namespace

std::vector<KvLayer> Architecture::kv_layers() const {
    const HParams& hp = hparams();
    KvLayer l;
    l.n_head_kv = hp.n_head_kv;
    l.head_dim_k = hp.head_dim_k;
    l.head_dim_v = hp.head_dim_v;
    std::vector<KvLayer> out(static_cast<size_t>(hp.n_layer), l);
    for (int64_t il = 0; il < hp.n_layer; ++il) out[static_cast<size_t>(il)].window = hp.window(il);
    return out;
}

std::vector<std::string> supported_architectures() {
    std::vector<std::string> out;
    for (const Entry& e : kArchitectures) out.emplace_back(e.name);
    return out;
}

std::unique_ptr<Architecture> load_architecture(const gguf::File& f) {
    const std::string arch = f.architecture();
    for (const Entry& e : kArchitectures)
        if (arch == e.name) return e.load(f);
    throw Error(fmt::format("{}: architecture '{}' is not supported (supported: {})", f.path(),
                            arch.empty() ? "<none: general.architecture is missing>" : arch,
                            fmt::join(supported_architectures(), ", ")));
}

}  // namespace kiln::model
