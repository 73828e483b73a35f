// Hyper-parameters of a transformer, read from the `<arch>.*` metadata keys of a GGUF file.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "gguf/gguf.h"

namespace kiln::model {

enum class RopeScaling { None, Linear, Yarn };

struct HParams {
    std::string arch;         // general.architecture
    int64_t n_vocab = 0;      // token list length, else the embedding table's rows
    int64_t n_ctx_train = 0;  // <arch>.context_length
    int64_t n_embd = 0;       // <arch>.embedding_length
    int64_t n_layer = 0;      // <arch>.block_count
    int64_t n_ff = 0;         // <arch>.feed_forward_length
    int64_t n_head = 0;       // <arch>.attention.head_count
    int64_t n_head_kv = 0;    // <arch>.attention.head_count_kv (default: n_head)
    int64_t head_dim_k = 0;   // <arch>.attention.key_length (default: n_embd / n_head)
    int64_t head_dim_v = 0;   // <arch>.attention.value_length (default: head_dim_k)
    float rms_eps = 1e-5f;    // <arch>.attention.layer_norm_rms_epsilon
    // RoPE
    int64_t n_rot = 0;               // <arch>.rope.dimension_count (default: head_dim_k)
    float rope_freq_base = 10000.0f;  // <arch>.rope.freq_base
    RopeScaling rope_scaling = RopeScaling::None;  // <arch>.rope.scaling.type
    float rope_scale_factor = 1.0f;  // <arch>.rope.scaling.factor; positions are divided by it
    // YaRN (rope_scaling == Yarn)
    int64_t rope_n_ctx_orig = 0;      // <arch>.rope.scaling.original_context_length (default: n_ctx_train)
    float rope_yarn_log_mul = 0.0f;   // <arch>.rope.scaling.yarn_log_multiplier
    float rope_attn_factor = 1.0f;    // <arch>.rope.scaling.attn_factor
    float yarn_ext_factor = 0.0f;     // <arch>.rope.scaling.yarn_ext_factor (default: 1 with YaRN, else 0)
    float yarn_beta_fast = 32.0f;     // <arch>.rope.scaling.yarn_beta_fast
    float yarn_beta_slow = 1.0f;      // <arch>.rope.scaling.yarn_beta_slow
    // Mixture of experts (0 when the model has none)
    int64_t n_expert = 0;             // <arch>.expert_count
    int64_t n_expert_used = 0;        // <arch>.expert_used_count
    int64_t n_expert_group = 1;       // <arch>.expert_group_count (group-limited routing)
    int64_t n_expert_group_used = 1;  // <arch>.expert_group_used_count

    // Sliding-window attention per layer, filled by the architecture (empty: none): a layer with
    // window w > 0 attends to the last w positions and keeps only a ring of them in its KV cache.
    std::vector<int64_t> layer_window;

    int64_t window(int64_t il) const {
        return layer_window.empty() ? 0 : layer_window.at(static_cast<size_t>(il));
    }
    float rope_freq_scale() const { return rope_scaling != RopeScaling::None ? 1.0f / rope_scale_factor : 1.0f; }
    int64_t n_gqa() const { return n_head / n_head_kv; }

    // Reads the keys of `arch` common to the transformer families; throws kiln::Error naming the
    // file and key when a required key is missing or a value is impossible (zero heads, a head
    // count that does not divide, ...).
    static HParams read(const gguf::File& f);
};

}  // namespace kiln::model
