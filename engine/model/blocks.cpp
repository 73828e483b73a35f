#include "model/blocks.h"

#include <cmath>

#include <fmt/format.h>

#include "kiln/error.h"

namespace kiln::model::blocks {

BatchInputs inputs(Graph& g, const BatchShape& s) {
    BatchInputs in;
    in.tokens = g.input(kInputTokens, graph::DType::I32, s.n_tokens, 1);
    in.positions = g.input(kInputPositions, graph::DType::I32, s.n_tokens, 1);
    return in;
}

TensorId linear(Graph& g, TensorId x, const Weight& w, const Weight& b) {
    TensorId y = g.matmul(w.in(g), x);
    if (b) y = g.add(y, b.in(g));
    return y;
}

void require_plain_rope(const HParams& hp) {
    if (hp.rope_scaling == RopeScaling::Yarn)
        throw Error(fmt::format("{}: YaRN RoPE scaling ({}.rope.scaling.type = yarn) is not implemented for this "
                                "architecture yet",
                                hp.arch, hp.arch));
}

AttentionConfig attention_config(const HParams& hp, int64_t layer, graph::RopeMode mode) {
    require_plain_rope(hp);
    AttentionConfig c;
    c.attn.layer = static_cast<int>(layer);
    c.attn.n_head = static_cast<int>(hp.n_head);
    c.attn.n_head_kv = static_cast<int>(hp.n_head_kv);
    c.attn.head_dim_k = static_cast<int>(hp.head_dim_k);
    c.attn.head_dim_v = static_cast<int>(hp.head_dim_v);
    c.attn.scale = 1.0f / std::sqrt(static_cast<float>(hp.head_dim_k));
    c.attn.window = 0;
    c.rope.mode = mode;
    c.rope.head_dim = static_cast<int>(hp.head_dim_k);
    c.rope.n_dims = static_cast<int>(hp.n_rot);
    c.rope.freq_base = hp.rope_freq_base;
    c.rope.freq_scale = hp.rope_freq_scale();
    return c;
}

TensorId self_attention(Graph& g, TensorId h, TensorId positions, const AttentionWeights& w, const AttentionConfig& c) {
    TensorId q = linear(g, h, w.wq, w.bq);
    TensorId k = linear(g, h, w.wk, w.bk);
    TensorId v = linear(g, h, w.wv, w.bv);
    if (w.q_norm) q = g.rms_norm_groups(q, w.q_norm.in(g), c.norm_eps, c.attn.head_dim_k);
    if (w.k_norm) k = g.rms_norm_groups(k, w.k_norm.in(g), c.norm_eps, c.attn.head_dim_k);

    graph::RopeParams rq = c.rope, rk = c.rope;
    rq.n_head = c.attn.n_head;
    rk.n_head = c.attn.n_head_kv;
    q = g.rope(q, positions, rq);
    k = g.rope(k, positions, rk);

    g.store_kv(k, v, c.attn);
    const TensorId o = g.attention(q, c.attn, w.sinks ? w.sinks.in(g) : graph::kNone);
    return linear(g, o, w.wo, w.bo);
}

TensorId ffn_swiglu(Graph& g, TensorId h, const FfnWeights& w) {
    const TensorId gate = g.matmul(w.gate.in(g), h);
    const TensorId up = g.matmul(w.up.in(g), h);
    return g.matmul(w.down.in(g), g.swiglu(gate, up));
}

TensorId ffn_geglu(Graph& g, TensorId h, const FfnWeights& w) {
    const TensorId gate = g.matmul(w.gate.in(g), h);
    const TensorId up = g.matmul(w.up.in(g), h);
    return g.matmul(w.down.in(g), g.geglu(gate, up));
}

void output_head(Graph& g, TensorId x, const BatchShape& s, const Weight& norm, float eps, const Weight& output,
                 float softcap) {
    if (s.n_outputs == 0) return;
    const int64_t n = g.tensor(x).ne1;
    if (s.n_outputs == 1 && n > 1) x = g.rows(x, n - 1, 1);
    else if (s.n_outputs != n)
        throw Error(fmt::format("internal: {} logit rows asked of a batch of {}", s.n_outputs, n));
    x = g.rms_norm(x, norm.in(g), eps);
    TensorId logits = g.matmul(output.in(g), x);
    if (softcap > 0.0f) logits = g.softcap(logits, softcap);
    g.mark_output(logits, kOutputLogits);
}

}  // namespace kiln::model::blocks
