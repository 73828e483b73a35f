// llama (and the many models stored as it: Mistral, TinyLlama, ...): pre-norm decoder with RMSNorm,
// grouped-query attention, RoPE on adjacent pairs ("normal"), linear RoPE scaling, SwiGLU FFN; the
// output projection reuses the token embedding when output.weight is absent. The same decoder
// serves qwen2 (arch/dense.h).
#include "model/arch/dense.h"

namespace kiln::model {

namespace {

struct DenseLayer {
    Weight attn_norm;
    blocks::AttentionWeights attn;
    Weight ffn_norm;
    blocks::FfnWeights ffn;
};

class DenseDecoder final : public Architecture {
public:
    DenseDecoder(const gguf::File& f, const DenseDecoderSpec& spec) : spec_(spec), hp_(HParams::read(f)), w_(f) {
        blocks::require_plain_rope(hp_);
        const int64_t E = hp_.n_embd, V = hp_.n_vocab, F = hp_.n_ff;
        const int64_t QD = hp_.n_head * hp_.head_dim_k, KD = hp_.n_head_kv * hp_.head_dim_k;
        const int64_t VD = hp_.n_head_kv * hp_.head_dim_v, OD = hp_.n_head * hp_.head_dim_v;
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
            if (spec_.qkv_bias_required) {
                L.attn.bq = w_.require(name("attn_q.bias"), {QD});
                L.attn.bk = w_.require(name("attn_k.bias"), {KD});
                L.attn.bv = w_.require(name("attn_v.bias"), {VD});
            } else {
                L.attn.bq = w_.optional(name("attn_q.bias"), {QD});
                L.attn.bk = w_.optional(name("attn_k.bias"), {KD});
                L.attn.bv = w_.optional(name("attn_v.bias"), {VD});
            }
            L.attn.wo = w_.require(name("attn_output.weight"), {OD, E});
            L.ffn_norm = w_.require(name("ffn_norm.weight"), {E});
            L.ffn.gate = w_.require(name("ffn_gate.weight"), {E, F});
            L.ffn.up = w_.require(name("ffn_up.weight"), {E, F});
            L.ffn.down = w_.require(name("ffn_down.weight"), {F, E});
            layers_.push_back(L);
        }
    }

    graph::Graph build(const BatchShape& s) const override {
        graph::Graph g;
        const blocks::BatchInputs in = blocks::inputs(g, s);
        graph::TensorId x = g.get_rows(tok_embd_.in(g), in.tokens);
        for (int64_t il = 0; il < hp_.n_layer; ++il) {
            const DenseLayer& L = layers_[static_cast<size_t>(il)];
            const auto cfg = blocks::attention_config(hp_, il, spec_.rope_mode);
            graph::TensorId h = g.rms_norm(x, L.attn_norm.in(g), hp_.rms_eps);
            x = g.add(x, blocks::self_attention(g, h, in.positions, L.attn, cfg));
            h = g.rms_norm(x, L.ffn_norm.in(g), hp_.rms_eps);
            x = g.add(x, blocks::ffn_swiglu(g, h, L.ffn));
        }
        blocks::output_head(g, x, s, output_norm_, hp_.rms_eps, output_);
        return g;
    }

    const HParams& hparams() const override { return hp_; }
    uint64_t weight_bytes() const override { return w_.bytes_bound(); }
    size_t weight_count() const override { return w_.n_bound(); }

private:
    DenseDecoderSpec spec_;
    HParams hp_;
    WeightBinder w_;
    Weight tok_embd_, output_norm_, output_;
    std::vector<DenseLayer> layers_;
};

}  // namespace

std::unique_ptr<Architecture> load_dense_decoder(const gguf::File& f, const DenseDecoderSpec& spec) {
    return std::make_unique<DenseDecoder>(f, spec);
}

std::unique_ptr<Architecture> load_llama(const gguf::File& f) {
    return load_dense_decoder(f, {.rope_mode = graph::RopeMode::Normal, .qkv_bias_required = false});
}

}  // namespace kiln::model
