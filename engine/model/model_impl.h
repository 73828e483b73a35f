// What a kiln::Model holds (engine-internal).
#pragma once

#include <memory>

#include "gguf/gguf.h"
#include "kiln/model.h"
#include "model/architecture.h"
#include "tokenizer/tokenizer.h"

namespace kiln {

struct Model::Impl {
    std::unique_ptr<gguf::File> file;  // the mapping the weights point into; declared first, freed last
    std::unique_ptr<model::Architecture> arch;
    std::unique_ptr<Tokenizer> tokenizer;  // null when it could not be built:
    std::string tokenizer_error;            // ... and this says why
    ModelInfo info;
    int n_threads = 0;
};

}  // namespace kiln
