// What a kiln::Model holds (engine-internal).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>

#include "gguf/gguf.h"
#include "kiln/model.h"
#include "model/architecture.h"
#include "kiln/tokenizer.h"

namespace kiln::runtime {
struct SharedBackend;  // runtime/shared_backend.h
}

namespace kiln {

struct Model::Impl {
    std::unique_ptr<gguf::File> file;  // the mapping the weights point into; declared first, freed last
    std::unique_ptr<model::Architecture> arch;
    std::unique_ptr<Tokenizer> tokenizer;  // null when it could not be built:
    std::string tokenizer_error;            // ... and this says why
    ModelInfo info;
    int n_threads = 0;
    // The Vulkan backend of this model's contexts on each device (by device index): one copy of
    // the weights per device, whatever the number of contexts. Weak: it goes (and its device
    // memory with it) when the last context using it does. Guarded by backends_mu.
    mutable std::mutex backends_mu;
    mutable std::map<uint32_t, std::weak_ptr<runtime::SharedBackend>> vulkan_backends;
};

}  // namespace kiln
