// The pre-norm decoder that llama, qwen2, qwen3, qwen3moe and glm4moe share: RMSNorm, grouped-query
// attention with RoPE (optionally on the leading rope.dimension_count dims of each head only),
// optional Q/K/V biases and per-head Q/K RMS norms, then a SwiGLU FFN or a mixture of experts
// (optionally after leading dense layers, with shared experts), output projection tied to the token
// embedding when output.weight is absent. The architectures differ only in what the spec says.
#pragma once

#include <memory>

#include "model/blocks.h"

namespace kiln::model {

enum class Presence { Absent, Optional, Required };

struct DenseDecoderSpec {
    graph::RopeMode rope_mode = graph::RopeMode::Normal;
    Presence qkv_bias = Presence::Optional;  // attn_{q,k,v}.bias (qwen2: required)
    Presence qk_norm = Presence::Absent;     // attn_{q,k}_norm (qwen3: required; glm4moe: optional)
    // The FFN's pre-norm tensor: "ffn_norm", or GLM-4.5's "post_attention_norm".
    const char* ffn_norm = "ffn_norm";
    // Mixture of experts from layer leading_dense_block_count on (expert_count experts, top
    // expert_used_count, expert_feed_forward_length wide, expert_shared_count shared experts).
    bool moe = false;
    graph::Gating gating = graph::Gating::Softmax;  // when the file has no expert_gating_func
    bool norm_weights = false;  // when the file has no expert_weights_norm
    bool exp_probs_b = false;   // exp_probs_b.bias per MoE layer (glm4moe)
    bool nextn = false;         // nextn_predict_layers trailing MTP layers: bound, not run
};

std::unique_ptr<Architecture> load_dense_decoder(const gguf::File& f, const DenseDecoderSpec& spec);

}  // namespace kiln::model
