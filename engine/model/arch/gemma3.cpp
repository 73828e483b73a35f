// gemma3 (Gemma 3): RMSNorm before and after both sub-blocks ("sandwich"), QK-norm, GELU-tanh
// gated FFN, embeddings scaled by sqrt(n_embd), tied output. Attention interleaves sliding-window
// layers with global ones: with a window in the file, layer il is global when
// il % period == period - 1 (period from attention.sliding_window_pattern, default 6: five local
// layers, then one global). Local layers rotate with their own base (rope.freq_base_swa, default
// 10000) and no scaling; global layers with rope.freq_base and the file's linear scaling. The
// norm weights in GGUF files already include Gemma's "+1".
#include <cmath>
#include <limits>

#include <fmt/format.h>

#include "kiln/error.h"
#include "model/blocks.h"

namespace kiln::model {

namespace {

struct Gemma3Layer {
    Weight attn_norm, post_attention_norm;
    blocks::AttentionWeights attn;
    Weight ffn_norm, post_ffw_norm;
    blocks::FfnWeights ffn;
};

class Gemma3 final : public Architecture {
public:
    explicit Gemma3(const gguf::File& f) : hp_(HParams::read(f)), w_(f) {
        blocks::require_plain_rope(hp_);
        read_attention_layout(f);

        const int64_t E = hp_.n_embd, V = hp_.n_vocab, F = hp_.n_ff, DK = hp_.head_dim_k;
        const int64_t QD = hp_.n_head * hp_.head_dim_k, KD = hp_.n_head_kv * hp_.head_dim_k;
        const int64_t VD = hp_.n_head_kv * hp_.head_dim_v, OD = hp_.n_head * hp_.head_dim_v;
        tok_embd_ = w_.require("token_embd.weight", {E, V});
        output_norm_ = w_.require("output_norm.weight", {E});
        output_ = w_.optional("output.weight", {E, V});
        if (!output_) output_ = tok_embd_;  // tied embeddings (every released Gemma 3)
        for (int64_t il = 0; il < hp_.n_layer; ++il) {
            auto name = [&](const char* s) { return WeightBinder::layer(il, s); };
            Gemma3Layer L;
            L.attn_norm = w_.require(name("attn_norm.weight"), {E});
            L.attn.wq = w_.require(name("attn_q.weight"), {E, QD});
            L.attn.wk = w_.require(name("attn_k.weight"), {E, KD});
            L.attn.wv = w_.require(name("attn_v.weight"), {E, VD});
            L.attn.wo = w_.require(name("attn_output.weight"), {OD, E});
            L.attn.q_norm = w_.require(name("attn_q_norm.weight"), {DK});
            L.attn.k_norm = w_.require(name("attn_k_norm.weight"), {DK});
            L.post_attention_norm = w_.require(name("post_attention_norm.weight"), {E});
            L.ffn_norm = w_.require(name("ffn_norm.weight"), {E});
            L.ffn.gate = w_.require(name("ffn_gate.weight"), {E, F});
            L.ffn.up = w_.require(name("ffn_up.weight"), {E, F});
            L.ffn.down = w_.require(name("ffn_down.weight"), {F, E});
            L.post_ffw_norm = w_.require(name("post_ffw_norm.weight"), {E});
            layers_.push_back(L);
        }
    }

    graph::Graph build(const BatchShape& s) const override {
        graph::Graph g;
        const blocks::BatchInputs in = blocks::inputs(g, s);
        graph::TensorId x = g.get_rows(tok_embd_.in(g), in.tokens);
        x = g.scale(x, std::sqrt(static_cast<float>(hp_.n_embd)));
        for (int64_t il = 0; il < hp_.n_layer; ++il) {
            const Gemma3Layer& L = layers_[static_cast<size_t>(il)];
            graph::TensorId h = g.rms_norm(x, L.attn_norm.in(g), hp_.rms_eps);
            h = blocks::self_attention(g, h, in.positions, L.attn, layer_config(il));
            x = g.add(x, g.rms_norm(h, L.post_attention_norm.in(g), hp_.rms_eps));
            h = g.rms_norm(x, L.ffn_norm.in(g), hp_.rms_eps);
            h = blocks::ffn_geglu(g, h, L.ffn);
            x = g.add(x, g.rms_norm(h, L.post_ffw_norm.in(g), hp_.rms_eps));
        }
        blocks::output_head(g, x, s, output_norm_, hp_.rms_eps, output_, final_softcap_);
        return g;
    }

    const HParams& hparams() const override { return hp_; }
    uint64_t weight_bytes() const override { return w_.bytes_bound(); }
    size_t weight_count() const override { return w_.n_bound(); }

private:
    // Which layers slide, their RoPE, the attention scale and the soft-caps.
    void read_attention_layout(const gguf::File& f) {
        const std::string p = hp_.arch + ".";
        auto bad = [&](const std::string& what) { return Error(fmt::format("{}: {}", f.path(), what)); };

        const int64_t window = f.get_int_or(p + "attention.sliding_window", 0);
        if (window < 0) throw bad(fmt::format("{}attention.sliding_window is {}", p, window));
        hp_.layer_window.assign(static_cast<size_t>(hp_.n_layer), 0);
        if (window > 0) {
            const gguf::Value* pattern = f.find(p + "attention.sliding_window_pattern");
            if (pattern && pattern->is_array()) {
                // One entry per layer: true (non-zero) marks a sliding-window layer.
                const auto& a = pattern->as_array();
                if (static_cast<int64_t>(a.size()) != hp_.n_layer)
                    throw bad(fmt::format("{}attention.sliding_window_pattern has {} entries for {} layers", p, a.size(),
                                          hp_.n_layer));
                for (size_t il = 0; il < a.size(); ++il) hp_.layer_window[il] = a[il].as_bool() ? window : 0;
            } else {
                const int64_t period = pattern ? pattern->as_int() : 6;
                if (period <= 0)
                    throw bad(fmt::format("{}attention.sliding_window_pattern is {}; it must be positive", p, period));
                for (int64_t il = 0; il < hp_.n_layer; ++il)
                    hp_.layer_window[static_cast<size_t>(il)] = il % period < period - 1 ? window : 0;
            }
        }
        if (window > std::numeric_limits<int>::max()) throw bad(fmt::format("sliding window {} is too large", window));

        local_freq_base_ = static_cast<float>(f.get_float_or(p + "rope.freq_base_swa", 10000.0));
        // Gemma 3 27B (62 layers) scales queries by 1/sqrt(n_embd / n_head) (its query_pre_attn_scalar);
        // every other size by 1/sqrt(head size).
        const double scale_dim = hp_.n_layer == 62 ? static_cast<double>(hp_.n_embd / hp_.n_head)
                                                   : static_cast<double>(hp_.head_dim_k);
        attn_scale_ = static_cast<float>(1.0 / std::sqrt(scale_dim));
        attn_softcap_ = static_cast<float>(f.get_float_or(p + "attn_logit_softcapping", 0.0));
        final_softcap_ = static_cast<float>(f.get_float_or(p + "final_logit_softcapping", 0.0));
        if (attn_softcap_ < 0 || final_softcap_ < 0 || !std::isfinite(attn_softcap_) || !std::isfinite(final_softcap_))
            throw bad(fmt::format("soft-capping values must be positive (attention {}, final {})", attn_softcap_,
                                  final_softcap_));
        if (!(local_freq_base_ > 0)) throw bad(fmt::format("{}rope.freq_base_swa is {}", p, local_freq_base_));
    }

    blocks::AttentionConfig layer_config(int64_t il) const {
        blocks::AttentionConfig c = blocks::attention_config(hp_, il, graph::RopeMode::Neox);
        c.attn.scale = attn_scale_;
        c.attn.softcap = attn_softcap_;
        c.attn.window = static_cast<int>(hp_.window(il));
        c.norm_eps = hp_.rms_eps;
        if (c.attn.window > 0) {
            c.rope.freq_base = local_freq_base_;
            c.rope.freq_scale = 1.0f;
        }
        return c;
    }

    HParams hp_;
    WeightBinder w_;
    Weight tok_embd_, output_norm_, output_;
    std::vector<Gemma3Layer> layers_;
    float local_freq_base_ = 10000.0f;
    float attn_scale_ = 1.0f;
    float attn_softcap_ = 0.0f, final_softcap_ = 0.0f;
};

}  // namespace

std::unique_ptr<Architecture> load_gemma3(const gguf::File& f) { return std::make_unique<Gemma3>(f); }

}  // namespace kiln::model
