// qwen2 (Qwen1.5, Qwen2, Qwen2.5): llama's layout (arch/dense.h) plus biases on the Q, K and V
// projections, RoPE on the halves of each head ("neox"), usually a separate output projection.
// qwen3 (Qwen3 dense): no biases, an RMS norm of each Q and K head before RoPE (attn_q_norm /
// attn_k_norm), a head size that need not be width / heads (attention.key_length).
// qwen3moe (Qwen3-30B-A3B, Qwen3-Coder-30B-A3B): qwen3's attention with a mixture of experts in every
// layer - softmax over all experts, top-k, the chosen weights renormalised; no shared expert.
#include "model/arch/dense.h"

namespace kiln::model {

std::unique_ptr<Architecture> load_qwen2(const gguf::File& f) {
    return load_dense_decoder(f, {.rope_mode = graph::RopeMode::Neox, .qkv_bias = Presence::Required});
}

std::unique_ptr<Architecture> load_qwen3(const gguf::File& f) {
    return load_dense_decoder(f, {.rope_mode = graph::RopeMode::Neox, .qkv_bias = Presence::Absent,
                                  .qk_norm = Presence::Required});
}

std::unique_ptr<Architecture> load_qwen3moe(const gguf::File& f) {
    return load_dense_decoder(f, {.rope_mode = graph::RopeMode::Neox, .qkv_bias = Presence::Absent,
                                  .qk_norm = Presence::Required, .moe = true, .gating = graph::Gating::Softmax,
                                  .norm_weights = true});
}

// glm4moe (GLM-4.5, GLM-4.5-Air, GLM-4.6): biases on Q/K/V, optional Q/K norms, RoPE "neox" on the
// leading rope.dimension_count dims of each head (half of them in the released models), the FFN's
// pre-norm named post_attention_norm, leading dense layers, then sigmoid routing with exp_probs_b,
// shared experts, expert_weights_scale and expert_weights_norm; nextn_predict_layers trailing
// multi-token-prediction layers are bound but not run.
std::unique_ptr<Architecture> load_glm4moe(const gguf::File& f) {
    return load_dense_decoder(f, {.rope_mode = graph::RopeMode::Neox, .qkv_bias = Presence::Optional,
                                  .qk_norm = Presence::Optional, .ffn_norm = "post_attention_norm", .moe = true,
                                  .gating = graph::Gating::Sigmoid, .norm_weights = false, .exp_probs_b = true,
                                  .nextn = true});
}

}  // namespace kiln::model
