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

float yarn_mscale(float factor, float m) { return factor <= 1.0f ? 1.0f : 0.1f * m * std::log(factor) + 1.0f; }

graph::RopeParams rope_params(const HParams& hp, graph::RopeMode mode, int64_t head_dim, int64_t n_dims) {
    graph::RopeParams r;
    r.mode = mode;
    r.head_dim = static_cast<int>(head_dim);
    r.n_dims = static_cast<int>(n_dims);
    r.freq_base = hp.rope_freq_base;
    r.freq_scale = hp.rope_freq_scale();
    r.attn_factor = hp.rope_attn_factor;
    if (hp.rope_scaling == RopeScaling::Yarn) {
        const float f = hp.rope_scale_factor;
        r.ext_factor = hp.yarn_ext_factor;
        r.beta_fast = hp.yarn_beta_fast;
        r.beta_slow = hp.yarn_beta_slow;
        r.n_ctx_orig = static_cast<int>(hp.rope_n_ctx_orig);
        if (r.ext_factor != 0.0f)
            r.attn_factor *= hp.rope_yarn_log_mul != 0.0f ? yarn_mscale(f, 1.0f) / yarn_mscale(f, hp.rope_yarn_log_mul)
                                                          : yarn_mscale(f, 1.0f);
    }
    return r;
}

AttentionConfig attention_config(const HParams& hp, int64_t layer, graph::RopeMode mode) {
    AttentionConfig c;
    c.attn.layer = static_cast<int>(layer);
    c.attn.n_head = static_cast<int>(hp.n_head);
    c.attn.n_head_kv = static_cast<int>(hp.n_head_kv);
    c.attn.head_dim_k = static_cast<int>(hp.head_dim_k);
    c.attn.head_dim_v = static_cast<int>(hp.head_dim_v);
    c.attn.scale = 1.0f / std::sqrt(static_cast<float>(hp.head_dim_k));
    c.attn.window = 0;
    c.rope = rope_params(hp, mode, hp.head_dim_k, hp.n_rot);
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

TensorId moe_ffn(Graph& g, TensorId h, const MoeWeights& w, const MoeConfig& c) {
    TensorId logits = g.matmul(w.gate_inp.in(g), h);  // [n_expert, T]
    if (w.gate_inp_b) logits = g.add(logits, w.gate_inp_b.in(g));
    TensorId probs = logits;
    switch (c.gating) {
        case graph::Gating::Softmax: probs = g.softmax(logits); break;
        case graph::Gating::Sigmoid: probs = g.sigmoid(logits); break;
        case graph::Gating::SoftmaxWeight: break;
    }
    graph::TopKParams tk;
    tk.k = c.n_used;
    tk.n_group = c.n_group;
    tk.n_group_used = c.n_group_used;
    const TensorId ids = g.top_k(probs, w.exp_probs_b ? w.exp_probs_b.in(g) : graph::kNone, tk);  // i32 [k, T]
    TensorId weights = g.gather(probs, ids);                                                   // [k, T]
    if (c.gating == graph::Gating::SoftmaxWeight) weights = g.softmax(weights);
    if (c.norm_weights) weights = g.normalize_sum(weights);
    if (c.weights_scale != 1.0f) weights = g.scale(weights, c.weights_scale);

    auto bias = [&](const Weight& b) { return b ? b.in(g) : graph::kNone; };
    const TensorId gate = g.moe_matmul(w.gate_exps.in(g), h, ids, bias(w.gate_exps_b));  // [k * n_ff, T]
    const TensorId up = g.moe_matmul(w.up_exps.in(g), h, ids, bias(w.up_exps_b));
    const TensorId act = c.swiglu_limit > 0.0f ? g.swiglu_oai(gate, up, c.swiglu_alpha, c.swiglu_limit) : g.swiglu(gate, up);
    const TensorId down = g.moe_matmul(w.down_exps.in(g), act, ids, bias(w.down_exps_b));  // [k * E, T]
    return g.moe_combine(down, weights);
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
