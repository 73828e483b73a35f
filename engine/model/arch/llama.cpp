// llama (and the many models stored as it: Mistral, TinyLlama, ...): pre-norm decoder with RMSNorm,
// grouped-query attention, RoPE on adjacent pairs ("normal"), linear RoPE scaling, SwiGLU FFN; the
// output projection reuses the token embedding when output.weight is absent. The same decoder
// serves qwen2, qwen3, qwen3moe and glm4moe (arch/dense.h says how they differ).
#include <fmt/format.h>

#include "kiln/error.h"
#include "model/arch/dense.h"

namespace kiln::model {

namespace {

struct DenseLayer {
    Weight attn_norm;
    blocks::AttentionWeights attn;
    Weight ffn_norm;
    blocks::FfnWeights ffn;    // dense layers
    blocks::MoeWeights moe;    // MoE layers
    blocks::FfnWeights shexp;  // shared experts (optional)
};

class DenseDecoder final : public Architecture {
public:
    DenseDecoder(const gguf::File& f, const DenseDecoderSpec& spec) : spec_(spec), hp_(HParams::read(f)), w_(f) {
        read_moe_params(f);
        const int64_t E = hp_.n_embd, V = hp_.n_vocab, F = hp_.n_ff, DK = hp_.head_dim_k;
        const int64_t QD = hp_.n_head * hp_.head_dim_k, KD = hp_.n_head_kv * hp_.head_dim_k;
        const int64_t VD = hp_.n_head_kv * hp_.head_dim_v, OD = hp_.n_head * hp_.head_dim_v;
        auto bind = [&](Presence p, const std::string& name, std::vector<int64_t> shape) {
            return p == Presence::Required ? w_.require(name, std::move(shape))
                   : p == Presence::Optional ? w_.optional(name, std::move(shape))
                                             : Weight{};
        };
        tok_embd_ = w_.require("token_embd.weight", {E, V});
        output_norm_ = w_.require("output_norm.weight", {E});
        output_ = w_.optional("output.weight", {E, V});
        if (!output_) output_ = tok_embd_;  // tied embeddings
        for (int64_t il = 0; il < hp_.n_layer; ++il) {
            auto name = [&](const char* s) { return WeightBinder::layer(il, s); };
            DenseLayer L;
            L.attn_norm = w_.require(name("attn_norm.weight"), {E});
            L.attn.wq = w_.require(name("attn_q.weight"), {E, QD});
            L.attn.wk = w_.require(name("attn_k.weight"), {E, KD});
            L.attn.wv = w_.require(name("attn_v.weight"), {E, VD});
            L.attn.bq = bind(spec_.qkv_bias, name("attn_q.bias"), {QD});
            L.attn.bk = bind(spec_.qkv_bias, name("attn_k.bias"), {KD});
            L.attn.bv = bind(spec_.qkv_bias, name("attn_v.bias"), {VD});
            L.attn.q_norm = bind(spec_.qk_norm, name("attn_q_norm.weight"), {DK});
            L.attn.k_norm = bind(spec_.qk_norm, name("attn_k_norm.weight"), {DK});
            if (static_cast<bool>(L.attn.q_norm) != static_cast<bool>(L.attn.k_norm))
                throw Error(fmt::format("{}: layer {} has only one of attn_q_norm and attn_k_norm", f.path(), il));
            L.attn.wo = w_.require(name("attn_output.weight"), {OD, E});
            L.ffn_norm = w_.require(WeightBinder::layer(il, fmt::format("{}.weight", spec_.ffn_norm).c_str()), {E});
            if (!spec_.moe || il < n_dense_lead_) {
                L.ffn.gate = w_.require(name("ffn_gate.weight"), {E, F});
                L.ffn.up = w_.require(name("ffn_up.weight"), {E, F});
                L.ffn.down = w_.require(name("ffn_down.weight"), {F, E});
            } else {
                const int64_t X = hp_.n_expert, FE = n_ff_exp_;
                L.moe.gate_inp = w_.require(name("ffn_gate_inp.weight"), {E, X});
                L.moe.gate_exps = w_.require(name("ffn_gate_exps.weight"), {E, FE, X});
                L.moe.up_exps = w_.require(name("ffn_up_exps.weight"), {E, FE, X});
                L.moe.down_exps = w_.require(name("ffn_down_exps.weight"), {FE, E, X});
                if (spec_.exp_probs_b) L.moe.exp_probs_b = w_.optional(name("exp_probs_b.bias"), {X});
                if (n_expert_shared_ > 0) {
                    const int64_t FS = FE * n_expert_shared_;
                    L.shexp.gate = w_.require(name("ffn_gate_shexp.weight"), {E, FS});
                    L.shexp.up = w_.require(name("ffn_up_shexp.weight"), {E, FS});
                    L.shexp.down = w_.require(name("ffn_down_shexp.weight"), {FS, E});
                }
            }
            if (il >= n_main_layers()) {  // an MTP layer's own head: bound so the file is checked, never run
                w_.optional(name("nextn.eh_proj.weight"), {2 * E, E});
                for (const char* s : {"nextn.enorm.weight", "nextn.hnorm.weight", "nextn.shared_head_norm.weight"})
                    w_.optional(name(s), {E});
                for (const char* s : {"nextn.shared_head_head.weight", "nextn.embed_tokens.weight"})
                    w_.optional(name(s), {E, V});
            }
            layers_.push_back(std::move(L));
        }
    }

    graph::Graph build(const BatchShape& s) const override {
        graph::Graph g;
        const blocks::BatchInputs in = blocks::inputs(g, s);
        graph::TensorId x = g.get_rows(tok_embd_.in(g), in.tokens);
        for (int64_t il = 0; il < n_main_layers(); ++il) {
            const DenseLayer& L = layers_[static_cast<size_t>(il)];
            auto cfg = blocks::attention_config(hp_, il, spec_.rope_mode);
            cfg.norm_eps = hp_.rms_eps;
            graph::TensorId h = g.rms_norm(x, L.attn_norm.in(g), hp_.rms_eps);
            x = g.add(x, blocks::self_attention(g, h, in.positions, L.attn, cfg));
            h = g.rms_norm(x, L.ffn_norm.in(g), hp_.rms_eps);
            if (!L.moe.gate_inp) {
                x = g.add(x, blocks::ffn_swiglu(g, h, L.ffn));
            } else {
                graph::TensorId y = blocks::moe_ffn(g, h, L.moe, moe_);
                if (L.shexp.gate) y = g.add(y, blocks::ffn_swiglu(g, h, L.shexp));
                x = g.add(x, y);
            }
        }
        blocks::output_head(g, x, s, output_norm_, hp_.rms_eps, output_);
        return g;
    }

    std::vector<KvLayer> kv_layers() const override {
        std::vector<KvLayer> l = Architecture::kv_layers();
        l.resize(static_cast<size_t>(n_main_layers()));
        return l;
    }

    const HParams& hparams() const override { return hp_; }
    uint64_t weight_bytes() const override { return w_.bytes_bound(); }
    size_t weight_count() const override { return w_.n_bound(); }

private:
    int64_t n_main_layers() const { return hp_.n_layer - n_nextn_; }

    void read_moe_params(const gguf::File& f) {
        const std::string a = hp_.arch + ".";
        auto bad = [&](const std::string& what) { return Error(fmt::format("{}: {}", f.path(), what)); };
        if (spec_.nextn) {
            n_nextn_ = f.get_int_or(a + "nextn_predict_layers", 0);
            if (n_nextn_ < 0 || n_nextn_ >= hp_.n_layer)
                throw bad(fmt::format("{}nextn_predict_layers {} leaves no layer of {} to run", a, n_nextn_, hp_.n_layer));
        }
        if (!spec_.moe) return;
        n_dense_lead_ = f.get_int_or(a + "leading_dense_block_count", 0);
        if (n_dense_lead_ < 0) throw bad(fmt::format("{}leading_dense_block_count is {}", a, n_dense_lead_));
        if (n_dense_lead_ >= n_main_layers()) return;  // no MoE layer runs
        if (hp_.n_expert <= 0 || hp_.n_expert_used <= 0 || hp_.n_expert_used > hp_.n_expert)
            throw bad(fmt::format("{}expert_count {} / expert_used_count {} do not describe a mixture of experts", a,
                                  hp_.n_expert, hp_.n_expert_used));
        n_ff_exp_ = f.get_int_or(a + "expert_feed_forward_length", 0);
        if (n_ff_exp_ == 0) n_ff_exp_ = hp_.n_ff / hp_.n_expert_used;  // as llama.cpp derives it
        if (n_ff_exp_ <= 0) throw bad(fmt::format("{}expert_feed_forward_length is {}", a, n_ff_exp_));
        n_expert_shared_ = f.get_int_or(a + "expert_shared_count", 0);
        if (n_expert_shared_ < 0) throw bad(fmt::format("{}expert_shared_count is {}", a, n_expert_shared_));
        moe_.n_expert = static_cast<int>(hp_.n_expert);
        moe_.n_used = static_cast<int>(hp_.n_expert_used);
        moe_.norm_weights = f.get_bool_or(a + "expert_weights_norm", spec_.norm_weights);
        const double scale = f.get_float_or(a + "expert_weights_scale", 0.0);
        moe_.weights_scale = scale != 0.0 ? static_cast<float>(scale) : 1.0f;  // 0: unset, as llama.cpp reads it
        moe_.n_group = static_cast<int>(hp_.n_expert_group);
        moe_.n_group_used = static_cast<int>(hp_.n_expert_group_used);
        moe_.gating = spec_.gating;
        const std::string key = a + "expert_gating_func";
        if (f.has(key)) {
            const int64_t v = f.get_int(key);
            if (v != 1 && v != 2)
                throw bad(fmt::format("{} = {} is not a gating function this architecture has (1 softmax, 2 sigmoid)",
                                      key, v));
            moe_.gating = static_cast<graph::Gating>(v);
        }
    }

    DenseDecoderSpec spec_;
    HParams hp_;
    WeightBinder w_;
    int64_t n_nextn_ = 0, n_dense_lead_ = 0, n_ff_exp_ = 0, n_expert_shared_ = 0;
    blocks::MoeConfig moe_;
    Weight tok_embd_, output_norm_, output_;
    std::vector<DenseLayer> layers_;
};

}  // namespace

std::unique_ptr<Architecture> load_dense_decoder(const gguf::File& f, const DenseDecoderSpec& spec) {
    return std::make_unique<DenseDecoder>(f, spec);
}

std::unique_ptr<Architecture> load_llama(const gguf::File& f) {
    return load_dense_decoder(f, {.rope_mode = graph::RopeMode::Normal});
}

}  // namespace kiln::model
