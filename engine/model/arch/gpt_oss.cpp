// gpt-oss (OpenAI's open-weight MoE models): pre-norm decoder whose layers alternate sliding-window
// and full attention (layer il slides when il % period < period - 1; period from
// attention.sliding_window_pattern, default 2: even layers slide), biases on Q/K/V/O, a learned
// per-head attention sink (one more logit in each softmax denominator), RoPE on head halves
// ("neox") with YaRN scaling on every layer, and a mixture of experts in every layer: router with
// bias, top-k by the raw router logits, softmax over the chosen ones, experts with biases and the
// clamped SwiGLU (limit 7, alpha 1.702). Expert weights are usually MXFP4, read by the matmul as
// stored. post_attention_norm is the norm before the experts (there is no norm after a block).
#include <cmath>
#include <limits>

#include <fmt/format.h>

#include "kiln/error.h"
#include "model/blocks.h"

namespace kiln::model {

namespace {

struct GptOssLayer {
    Weight attn_norm;
    blocks::AttentionWeights attn;
    Weight ffn_norm;  // blk.N.post_attention_norm
    blocks::MoeWeights moe;
};

class GptOss final : public Architecture {
public:
    explicit GptOss(const gguf::File& f) : hp_(HParams::read(f)), w_(f) {
        read_layout(f);
        const int64_t E = hp_.n_embd, V = hp_.n_vocab, X = hp_.n_expert, F = n_ff_exp_;
        const int64_t QD = hp_.n_head * hp_.head_dim_k, KD = hp_.n_head_kv * hp_.head_dim_k;
        const int64_t VD = hp_.n_head_kv * hp_.head_dim_v, OD = hp_.n_head * hp_.head_dim_v;
        tok_embd_ = w_.require("token_embd.weight", {E, V});
        output_norm_ = w_.require("output_norm.weight", {E});
        output_ = w_.optional("output.weight", {E, V});
        if (!output_) output_ = tok_embd_;
        for (int64_t il = 0; il < hp_.n_layer; ++il) {
            auto name = [&](const char* s) { return WeightBinder::layer(il, s); };
            GptOssLayer L;
            L.attn_norm = w_.require(name("attn_norm.weight"), {E});
            L.attn.wq = w_.require(name("attn_q.weight"), {E, QD});
            L.attn.wk = w_.require(name("attn_k.weight"), {E, KD});
            L.attn.wv = w_.require(name("attn_v.weight"), {E, VD});
            L.attn.wo = w_.require(name("attn_output.weight"), {OD, E});
            L.attn.bq = w_.require(name("attn_q.bias"), {QD});
            L.attn.bk = w_.require(name("attn_k.bias"), {KD});
            L.attn.bv = w_.require(name("attn_v.bias"), {VD});
            L.attn.bo = w_.require(name("attn_output.bias"), {E});
            L.attn.sinks = w_.require(name("attn_sinks.weight"), {hp_.n_head});
            L.ffn_norm = w_.require(name("post_attention_norm.weight"), {E});
            L.moe.gate_inp = w_.require(name("ffn_gate_inp.weight"), {E, X});
            L.moe.gate_inp_b = w_.require(name("ffn_gate_inp.bias"), {X});
            L.moe.gate_exps = w_.require(name("ffn_gate_exps.weight"), {E, F, X});
            L.moe.up_exps = w_.require(name("ffn_up_exps.weight"), {E, F, X});
            L.moe.down_exps = w_.require(name("ffn_down_exps.weight"), {F, E, X});
            L.moe.gate_exps_b = w_.require(name("ffn_gate_exps.bias"), {F, X});
            L.moe.up_exps_b = w_.require(name("ffn_up_exps.bias"), {F, X});
            L.moe.down_exps_b = w_.require(name("ffn_down_exps.bias"), {E, X});
            layers_.push_back(L);
        }
    }

    graph::Graph build(const BatchShape& s) const override {
        graph::Graph g;
        const blocks::BatchInputs in = blocks::inputs(g, s);
        graph::TensorId x = g.get_rows(tok_embd_.in(g), in.tokens);
        for (int64_t il = 0; il < hp_.n_layer; ++il) {
            const GptOssLayer& L = layers_[static_cast<size_t>(il)];
            graph::TensorId h = g.rms_norm(x, L.attn_norm.in(g), hp_.rms_eps);
            x = g.add(x, blocks::self_attention(g, h, in.positions, L.attn, layer_config(il)));
            h = g.rms_norm(x, L.ffn_norm.in(g), hp_.rms_eps);
            x = g.add(x, blocks::moe_ffn(g, h, L.moe, moe_));
        }
        blocks::output_head(g, x, s, output_norm_, hp_.rms_eps, output_);
        return g;
    }

    const HParams& hparams() const override { return hp_; }
    uint64_t weight_bytes() const override { return w_.bytes_bound(); }
    size_t weight_count() const override { return w_.n_bound(); }

private:
    void read_layout(const gguf::File& f) {
        const std::string p = hp_.arch + ".";
        auto bad = [&](const std::string& what) { return Error(fmt::format("{}: {}", f.path(), what)); };

        if (hp_.n_expert <= 0) throw bad(fmt::format("{}expert_count is missing or 0; gpt-oss layers are all MoE", p));
        n_ff_exp_ = f.get_int(p + "expert_feed_forward_length");
        if (n_ff_exp_ <= 0) throw bad(fmt::format("{}expert_feed_forward_length is {}", p, n_ff_exp_));
        if (hp_.n_expert_group != 1)
            throw bad(fmt::format("{}expert_group_count {} (group-limited routing) is not part of gpt-oss", p,
                                  hp_.n_expert_group));
        // The router is always "softmax over the chosen experts" (expert_gating_func 3).
        if (const int64_t gating = f.get_int_or(p + "expert_gating_func", 3); gating != 3)
            throw bad(fmt::format("{}expert_gating_func = {}: gpt-oss routes with 3 (softmax over the chosen "
                                  "experts), other gatings are not supported",
                                  p, gating));
        moe_.n_expert = static_cast<int>(hp_.n_expert);
        moe_.n_used = static_cast<int>(hp_.n_expert_used);
        moe_.gating = graph::Gating::SoftmaxWeight;
        moe_.swiglu_alpha = 1.702f;
        moe_.swiglu_limit = 7.0f;

        // Sliding-window layers: the window is required (every gpt-oss has one).
        const int64_t window = f.get_int(p + "attention.sliding_window");
        if (window <= 0 || window > std::numeric_limits<int>::max())
            throw bad(fmt::format("{}attention.sliding_window is {}", p, window));
        int64_t period = 2;
        if (const gguf::Value* v = f.find(p + "attention.sliding_window_pattern")) {
            if (v->is_array())
                throw bad(fmt::format("{}attention.sliding_window_pattern as a per-layer array is not supported for "
                                      "gpt-oss (give a period)",
                                      p));
            period = v->as_int();
            if (period <= 0) throw bad(fmt::format("{}attention.sliding_window_pattern is {}", p, period));
        }
        hp_.layer_window.assign(static_cast<size_t>(hp_.n_layer), 0);
        for (int64_t il = 0; il < hp_.n_layer; ++il)
            hp_.layer_window[static_cast<size_t>(il)] = il % period < period - 1 ? window : 0;
        swa_freq_base_ = static_cast<float>(f.get_float_or(p + "rope.freq_base_swa", hp_.rope_freq_base));
        if (!(swa_freq_base_ > 0)) throw bad(fmt::format("{}rope.freq_base_swa is {}", p, swa_freq_base_));
    }

    blocks::AttentionConfig layer_config(int64_t il) const {
        blocks::AttentionConfig c = blocks::attention_config(hp_, il, graph::RopeMode::Neox);  // YaRN from the file
        c.attn.scale = 1.0f / std::sqrt(static_cast<float>(hp_.n_rot));
        c.attn.window = static_cast<int>(hp_.window(il));
        if (c.attn.window > 0) c.rope.freq_base = swa_freq_base_;
        return c;
    }

    HParams hp_;
    WeightBinder w_;
    int64_t n_ff_exp_ = 0;
    blocks::MoeConfig moe_;
    float swa_freq_base_ = 0.0f;
    Weight tok_embd_, output_norm_, output_;
    std::vector<GptOssLayer> layers_;
};

}  // namespace

std::unique_ptr<Architecture> load_gpt_oss(const gguf::File& f) { return std::make_unique<GptOss>(f); }

}  // namespace kiln::model
