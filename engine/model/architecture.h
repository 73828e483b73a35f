// An architecture: hyper-parameters and weights bound from a GGUF file, and the forward pass it
// builds as a graph for a batch. One file per architecture under engine/model/arch/ implements it
// from the shared blocks of model/blocks.h; model/registry.cpp maps general.architecture to it.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "gguf/gguf.h"
#include "graph/graph.h"
#include "kiln/types.h"
#include "model/hparams.h"

namespace kiln::model {

// Names of a batch graph's inputs and output.
inline constexpr const char* kInputTokens = "tokens";        // i32 [n_tokens]
inline constexpr const char* kInputPositions = "positions";  // i32 [n_tokens]
inline constexpr const char* kOutputLogits = "logits";       // f32 [n_outputs][n_vocab]

struct BatchShape {
    int64_t n_tokens = 1;
    // Logit rows wanted: 0 (fill the cache only), 1 (the last token's) or n_tokens (every token's).
    int64_t n_outputs = 1;
};

class Architecture {
public:
    virtual ~Architecture() = default;
    virtual const HParams& hparams() const = 0;
    // The KV cache this architecture's graphs use (kiln::KvLayer, n_slots 0; AttentionParams::layer
    // indexes it). Default: every layer, n_head_kv heads of head_dim_k (K) and head_dim_v (V), the
    // layer's sliding window from hparams().window(il).
    virtual std::vector<KvLayer> kv_layers() const;
    // Builds the forward graph of one batch. Inputs kInputTokens and kInputPositions; output
    // kOutputLogits (absent when n_outputs is 0). Token t's K/V go to cache slot kv_base + t.
    virtual graph::Graph build(const BatchShape& shape) const = 0;
    // Bytes of weights bound and their number (for info()).
    virtual uint64_t weight_bytes() const = 0;
    virtual size_t weight_count() const = 0;
};

using ArchitectureLoader = std::unique_ptr<Architecture> (*)(const gguf::File& f);

// The architecture of `f` (general.architecture), bound. An unknown one is a kiln::Error naming it
// and listing the supported ones.
std::unique_ptr<Architecture> load_architecture(const gguf::File& f);
std::vector<std::string> supported_architectures();

// Loaders, one per file in engine/model/arch/.
std::unique_ptr<Architecture> load_llama(const gguf::File& f);
std::unique_ptr<Architecture> load_qwen2(const gguf::File& f);
std::unique_ptr<Architecture> load_qwen3(const gguf::File& f);
std::unique_ptr<Architecture> load_qwen3moe(const gguf::File& f);
std::unique_ptr<Architecture> load_glm4moe(const gguf::File& f);
std::unique_ptr<Architecture> load_gemma3(const gguf::File& f);
std::unique_ptr<Architecture> load_gpt_oss(const gguf::File& f);
std::unique_ptr<Architecture> load_deepseek2(const gguf::File& f);

}  // namespace kiln::model
