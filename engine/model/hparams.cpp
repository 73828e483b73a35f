#include "model/hparams.h"

#include <algorithm>

#include <fmt/format.h>

#include "kiln/error.h"

namespace kiln::model {

namespace {

// An integer key that some files store per layer (an array): accepted when all layers agree.
int64_t get_count(const gguf::File& f, const std::string& key, int64_t fallback) {
    const gguf::Value* v = f.find(key);
    if (!v) return fallback;
    if (!v->is_array()) return f.get_int(key);
    const std::vector<int64_t> a = v->as_int_array();
    if (a.empty()) return fallback;
    if (std::any_of(a.begin(), a.end(), [&](int64_t x) { return x != a[0]; }))
        throw Error(fmt::format("{}: '{}' differs between layers ({}), which this architecture does not support",
                                f.path(), key, v->to_string()));
    return a[0];
}

}  // namespace

HParams HParams::read(const gguf::File& f) {
    HParams hp;
    hp.arch = f.architecture();
    if (hp.arch.empty()) throw Error(fmt::format("{}: missing metadata key 'general.architecture'", f.path()));
    const std::string p = hp.arch + ".";

    hp.n_embd = f.get_int(p + "embedding_length");
    hp.n_layer = f.get_int(p + "block_count");
    hp.n_ff = get_count(f, p + "feed_forward_length", 0);
    hp.n_head = get_count(f, p + "attention.head_count", -1);
    if (hp.n_head < 0) throw Error(fmt::format("missing metadata key '{}attention.head_count' in {}", p, f.path()));
    hp.n_head_kv = get_count(f, p + "attention.head_count_kv", hp.n_head);
    hp.n_ctx_train = f.get_int_or(p + "context_length", 0);

    auto bad = [&](const std::string& what) { return Error(fmt::format("{}: {}", f.path(), what)); };
    if (hp.n_embd <= 0) throw bad(fmt::format("{}embedding_length is {}", p, hp.n_embd));
    if (hp.n_layer <= 0) throw bad(fmt::format("{}block_count is {}", p, hp.n_layer));
    if (hp.n_head <= 0) throw bad(fmt::format("{}attention.head_count is {}", p, hp.n_head));
    if (hp.n_head_kv <= 0 || hp.n_head % hp.n_head_kv != 0)
        throw bad(fmt::format("{}attention.head_count_kv is {}, which does not divide head_count {}", p, hp.n_head_kv,
                              hp.n_head));

    const int64_t default_head = hp.n_embd / hp.n_head;
    hp.head_dim_k = f.get_int_or(p + "attention.key_length", default_head);
    hp.head_dim_v = f.get_int_or(p + "attention.value_length", hp.head_dim_k);
    if (hp.head_dim_k <= 0 || hp.head_dim_v <= 0)
        throw bad(fmt::format("head size {} (key) / {} (value) is not positive", hp.head_dim_k, hp.head_dim_v));
    hp.rms_eps = static_cast<float>(f.get_float_or(p + "attention.layer_norm_rms_epsilon", 1e-5));

    hp.n_rot = f.get_int_or(p + "rope.dimension_count", hp.head_dim_k);
    if (hp.n_rot <= 0 || hp.n_rot > hp.head_dim_k || hp.n_rot % 2 != 0)
        throw bad(fmt::format("{}rope.dimension_count is {}; it must be even and at most the head size {}", p, hp.n_rot,
                              hp.head_dim_k));
    hp.rope_freq_base = static_cast<float>(f.get_float_or(p + "rope.freq_base", 10000.0));

    const std::string scaling = f.get_string_or(p + "rope.scaling.type", "");
    const double factor = f.get_float_or(p + "rope.scaling.factor", 0.0);
    if (scaling.empty() || scaling == "none") {
        // Older files: rope.scale_linear alone means linear scaling.
        const double linear = f.get_float_or(p + "rope.scale_linear", 0.0);
        if (linear > 0 && linear != 1.0) {
            hp.rope_scaling = RopeScaling::Linear;
            hp.rope_scale_factor = static_cast<float>(linear);
        }
    } else if (scaling == "linear") {
        hp.rope_scaling = RopeScaling::Linear;
        hp.rope_scale_factor = factor > 0 ? static_cast<float>(factor) : 1.0f;
    } else if (scaling == "yarn") {
        hp.rope_scaling = RopeScaling::Yarn;
        hp.rope_scale_factor = factor > 0 ? static_cast<float>(factor) : 1.0f;
    } else {
        throw bad(fmt::format("{}rope.scaling.type '{}' is not supported (none, linear, yarn)", p, scaling));
    }

    hp.rope_n_ctx_orig = f.get_int_or(p + "rope.scaling.original_context_length", hp.n_ctx_train);
    hp.rope_yarn_log_mul = static_cast<float>(f.get_float_or(p + "rope.scaling.yarn_log_multiplier", 0.0));
    hp.rope_attn_factor = static_cast<float>(f.get_float_or(p + "rope.scaling.attn_factor", 1.0));
    hp.yarn_ext_factor = static_cast<float>(
        f.get_float_or(p + "rope.scaling.yarn_ext_factor", hp.rope_scaling == RopeScaling::Yarn ? 1.0 : 0.0));
    hp.yarn_beta_fast = static_cast<float>(f.get_float_or(p + "rope.scaling.yarn_beta_fast", 32.0));
    hp.yarn_beta_slow = static_cast<float>(f.get_float_or(p + "rope.scaling.yarn_beta_slow", 1.0));
    if (hp.rope_scaling == RopeScaling::Yarn && hp.yarn_ext_factor != 0.0f &&
        (hp.rope_n_ctx_orig <= 0 || hp.yarn_beta_fast <= 0 || hp.yarn_beta_slow <= 0))
        throw bad(fmt::format("YaRN needs {}rope.scaling.original_context_length (or context_length) and positive "
                              "beta_fast / beta_slow (got {}, {}, {})",
                              p, hp.rope_n_ctx_orig, hp.yarn_beta_fast, hp.yarn_beta_slow));

    hp.n_expert = f.get_int_or(p + "expert_count", 0);
    hp.n_expert_used = f.get_int_or(p + "expert_used_count", 0);
    hp.n_expert_group = f.get_int_or(p + "expert_group_count", 1);
    hp.n_expert_group_used = f.get_int_or(p + "expert_group_used_count", hp.n_expert_group);
    if (hp.n_expert_group <= 0) hp.n_expert_group = 1;
    if (hp.n_expert_group_used <= 0) hp.n_expert_group_used = hp.n_expert_group;
    if (hp.n_expert < 0 || hp.n_expert_used < 0 || hp.n_expert_used > hp.n_expert ||
        (hp.n_expert > 0 && hp.n_expert_used == 0))
        throw bad(fmt::format("{}expert_used_count {} does not fit expert_count {}", p, hp.n_expert_used, hp.n_expert));
    if (hp.n_expert > 0 && (hp.n_expert % hp.n_expert_group != 0 || hp.n_expert_group_used > hp.n_expert_group))
        throw bad(fmt::format("{} experts do not form {}expert_group_count {} groups with {} used", hp.n_expert, p,
                              hp.n_expert_group, hp.n_expert_group_used));

    // Vocabulary: the token list when there is one, else the embedding table.
    if (const gguf::Value* toks = f.find("tokenizer.ggml.tokens"); toks && toks->is_array()) {
        hp.n_vocab = static_cast<int64_t>(toks->as_array().size());
    } else if (const int64_t n = f.get_int_or(p + "vocab_size", 0); n > 0) {
        hp.n_vocab = n;
    } else if (const gguf::TensorInfo* e = f.find_tensor("token_embd.weight"); e && e->shape.size() >= 2) {
        hp.n_vocab = static_cast<int64_t>(e->shape[1]);
    }
    if (hp.n_vocab <= 0) throw bad("cannot tell the vocabulary size (no token list, vocab_size or token_embd.weight)");
    return hp;
}

}  // namespace kiln::model
