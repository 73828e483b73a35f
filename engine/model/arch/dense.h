// The plain pre-norm dense decoder that llama and qwen2 share: RMSNorm, grouped-query attention with
// RoPE, SwiGLU FFN, output projection tied to the token embedding when output.weight is absent.
// The architectures differ only in the RoPE pairing and whether the Q/K/V biases must be there.
#pragma once

#include <memory>

#include "model/blocks.h"

namespace kiln::model {

struct DenseDecoderSpec {
    graph::RopeMode rope_mode = graph::RopeMode::Normal;
    bool qkv_bias_required = false;  // qwen2: attn_{q,k,v}.bias must exist; llama: used when present
};

std::unique_ptr<Architecture> load_dense_decoder(const gguf::File& f, const DenseDecoderSpec& spec);

}  // namespace kiln::model
