#include <algorithm>
#include <map>
#include <thread>

#include <fmt/format.h>

#include "kiln/error.h"
#include "model/model_impl.h"

namespace kiln {

namespace {

// The ModelInfo of an opened file and its bound architecture.
ModelInfo describe(const std::string& path, const gguf::File& file, const model::Architecture& arch) {
    const model::HParams& hp = arch.hparams();
    ModelInfo in;
    in.path = path;
    in.arch = hp.arch;
    in.name = file.get_string_or("general.name", "");
    in.n_vocab = hp.n_vocab;
    in.n_ctx_train = hp.n_ctx_train;
    in.n_embd = hp.n_embd;
    in.n_layer = hp.n_layer;
    in.n_head = hp.n_head;
    in.n_head_kv = hp.n_head_kv;
    in.head_dim = hp.head_dim_k;
    in.n_ff = hp.n_ff;
    in.weight_bytes = arch.weight_bytes();
    std::map<std::string, int> types;
    for (const gguf::TensorInfo& t : file.tensors()) {
        in.n_params += t.n_elements;
        ++types[type_name(t.type)];
    }
    for (const auto& [name, count] : types) in.weight_types += fmt::format("{}{}:{}", in.weight_types.empty() ? "" : " ", name, count);
    return in;
}

}  // namespace

ModelInfo Model::read_info(const std::string& path) {
    const auto file = gguf::File::open(path);
    return describe(path, *file, *model::load_architecture(*file));
}

Model Model::load(const std::string& path, const LoadOptions& options) {
    auto report = [&](float done) {
        if (options.progress && !options.progress(done)) throw Error(fmt::format("loading {} cancelled", path));
    };
    report(0.0f);
    auto impl = std::make_shared<Impl>();
    impl->file = gguf::File::open(path);
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

    impl->info = describe(path, *impl->file, *impl->arch);

    // Touch every page of the weights now, so the first decode does not stall on page faults and
    // the progress callback means something on a large file.
    const auto& tensors = impl->file->tensors();
    uint64_t total = 0, done = 0;
    for (const gguf::TensorInfo& t : tensors) total += t.n_bytes;
    uint8_t sink = 0;
    for (const gguf::TensorInfo& t : tensors) {
        for (uint64_t off = 0; off < t.n_bytes; off += 4096) sink ^= t.data[off];
        done += t.n_bytes;
        report(0.1f + 0.9f * static_cast<float>(static_cast<double>(done) / static_cast<double>(std::max<uint64_t>(total, 1))));
    }
    volatile uint8_t keep = sink;
    (void)keep;

    impl->n_threads = options.n_threads > 0 ? options.n_threads
                                            : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    report(1.0f);
    return Model(std::move(impl));
}

const ModelInfo& Model::info() const { return impl_->info; }
int Model::default_threads() const { return impl_->n_threads; }
bool Model::has_tokenizer() const { return impl_->tokenizer != nullptr; }
const Tokenizer& Model::tokenizer() const {
    if (!impl_->tokenizer) throw Error(impl_->tokenizer_error.empty() ? "model has no tokenizer" : impl_->tokenizer_error);
    return *impl_->tokenizer;
}

}  // namespace kiln
