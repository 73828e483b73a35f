#include <algorithm>
#include <cmath>
#include <map>
#include <thread>

#include <fmt/format.h>

#include "kiln/error.h"
#include "model/model_impl.h"

namespace kiln {

namespace {

// --rope-scaling / --rope-scale / --yarn-orig-ctx: written over the file's <arch>.rope.scaling.*
// keys, so the architecture reads them as if the file said so.
void apply_rope_overrides(gguf::File& f, const LoadOptions& o) {
    if (o.rope_scaling.empty() && o.rope_scale <= 0.0f && o.yarn_orig_ctx <= 0) return;
    if (!o.rope_scaling.empty() && o.rope_scaling != "none" && o.rope_scaling != "linear" && o.rope_scaling != "yarn")
        throw Error(fmt::format("unknown RoPE scaling '{}' (none, linear or yarn)", o.rope_scaling));
    if (o.rope_scale < 0.0f || !std::isfinite(o.rope_scale))
        throw Error(fmt::format("the RoPE scale must be a positive factor, got {}", o.rope_scale));
    const std::string p = f.architecture() + ".rope.";
    const std::string type = !o.rope_scaling.empty() ? o.rope_scaling : f.get_string_or(p + "scaling.type", "");
    if (type == "none") {
        f.set_metadata(p + "scaling.type", gguf::Value::make_string("none"));
        f.set_metadata(p + "scaling.factor", gguf::Value::make_float(gguf::ValueType::FLOAT32, 1.0));
        f.set_metadata(p + "scale_linear", gguf::Value::make_float(gguf::ValueType::FLOAT32, 0.0));
        return;
    }
    if (type.empty() && o.rope_scale > 0.0f)
        throw Error("--rope-scale needs a scaling type: the model has none (--rope-scaling linear or yarn)");
    if (!type.empty()) f.set_metadata(p + "scaling.type", gguf::Value::make_string(type));
    if (o.rope_scale > 0.0f) f.set_metadata(p + "scaling.factor", gguf::Value::make_float(gguf::ValueType::FLOAT32, o.rope_scale));
    if (o.yarn_orig_ctx > 0)
        f.set_metadata(p + "scaling.original_context_length", gguf::Value::make_uint(gguf::ValueType::UINT32, static_cast<uint64_t>(o.yarn_orig_ctx)));
}

}  // namespace

Model Model::load(const std::string& path, const LoadOptions& options) {
    auto report = [&](float done) {
        if (options.progress && !options.progress(done)) throw Error(fmt::format("loading {} cancelled", path));
    };
    report(0.0f);
    auto impl = std::make_shared<Impl>();
    impl->file = gguf::File::open(path);
    apply_rope_overrides(*impl->file, options);
    report(0.1f);
    impl->arch = model::load_architecture(*impl->file);
    const model::HParams& hp = impl->arch->hparams();
    try {
        impl->tokenizer = std::make_unique<Tokenizer>(*impl->file);
        if (impl->tokenizer->n_vocab() != hp.n_vocab)
            throw Error(fmt::format("{}: the tokenizer has {} tokens but the model's vocabulary is {}", path,
                                    impl->tokenizer->n_vocab(), hp.n_vocab));
    } catch (const Error& e) {
        impl->tokenizer.reset();
        impl->tokenizer_error = e.what();
    }

    ModelInfo& in = impl->info;
    in.path = path;
    in.arch = hp.arch;
    in.name = impl->file->get_string_or("general.name", "");
    in.n_vocab = hp.n_vocab;
    in.n_ctx_train = hp.n_ctx_train;
    in.n_embd = hp.n_embd;
    in.n_layer = hp.n_layer;
    in.n_head = hp.n_head;
    in.n_head_kv = hp.n_head_kv;
    in.head_dim = hp.head_dim_k;
    in.n_ff = hp.n_ff;
    in.weight_bytes = impl->arch->weight_bytes();
    std::map<std::string, int> types;
    for (const gguf::TensorInfo& t : impl->file->tensors()) {
        in.n_params += t.n_elements;
        ++types[type_name(t.type)];
    }
    for (const auto& [name, count] : types) in.weight_types += fmt::format("{}{}:{}", in.weight_types.empty() ? "" : " ", name, count);

    impl->n_threads = options.n_threads > 0 ? options.n_threads
                                            : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    Model model(std::move(impl));
    if (options.touch_weights)
        model.touch_weights([&](float done) {
            report(0.1f + 0.9f * done);
            return true;
        });
    report(1.0f);
    return model;
}

ModelInfo Model::read_info(const std::string& path) {
    LoadOptions lo;
    lo.touch_weights = false;  // metadata and the architecture's binding only
    return load(path, lo).info();
}

void Model::touch_weights(const std::function<bool(float)>& progress) const {
    const auto& tensors = impl_->file->tensors();
    uint64_t total = 0, done = 0;
    for (const gguf::TensorInfo& t : tensors) total += t.n_bytes;
    uint8_t sink = 0;
    for (const gguf::TensorInfo& t : tensors) {
        for (uint64_t off = 0; off < t.n_bytes; off += 4096) sink ^= t.data[off];
        done += t.n_bytes;
        if (progress && !progress(static_cast<float>(static_cast<double>(done) / static_cast<double>(std::max<uint64_t>(total, 1)))))
            throw Error(fmt::format("reading the weights of {} cancelled", impl_->info.path));
    }
    volatile uint8_t keep = sink;
    (void)keep;
}

const ModelInfo& Model::info() const { return impl_->info; }
int Model::default_threads() const { return impl_->n_threads; }
bool Model::has_tokenizer() const { return impl_->tokenizer != nullptr; }
const Tokenizer& Model::tokenizer() const {
    if (!impl_->tokenizer) throw Error(impl_->tokenizer_error.empty() ? "model has no tokenizer" : impl_->tokenizer_error);
    return *impl_->tokenizer;
}

}  // namespace kiln
