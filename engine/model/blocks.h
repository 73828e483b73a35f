// Shared building blocks of transformer forward passes (attention, feed-forward, output head),
// composed by the per-architecture files in engine/model/arch/.
#pragma once

#include "graph/graph.h"
#include "model/architecture.h"
#include "model/hparams.h"
#include "model/weights.h"

namespace kiln::model::blocks {

using graph::Graph;
using graph::TensorId;

struct BatchInputs {
    TensorId tokens = graph::kNone;     // i32 [n_tokens]
    TensorId positions = graph::kNone;  // i32 [n_tokens]
};
BatchInputs inputs(Graph& g, const BatchShape& s);

// x·Wᵀ (+ b when present).
TensorId linear(Graph& g, TensorId x, const Weight& w, const Weight& b = {});

struct AttentionWeights {
    Weight wq, wk, wv, wo;  // [n_embd, n_head*dk], [n_embd, n_head_kv*dk], [n_embd, n_head_kv*dv], [n_head*dv, n_embd]
    Weight bq, bk, bv, bo;  // optional biases
    Weight q_norm, k_norm;  // optional QK-norm: RMS norm of each head of Q / K before RoPE ([dk])
    Weight sinks;           // optional per-head sink logits ([n_head])
};
struct AttentionConfig {
    graph::AttentionParams attn;  // layer, heads, head sizes, scale, window, softcap
    graph::RopeParams rope;       // mode, base, scale, rotated dims (n_head filled per use)
    float norm_eps = 1e-6f;       // QK-norm epsilon
};
// Throws when the file asks for YaRN RoPE scaling (for architectures not yet checked against it).
void require_plain_rope(const HParams& hp);

// RoPE of n_dims of each head_dim-wide head with the file's base and scaling (linear or YaRN);
// n_head is filled per use. YaRN's cos/sin magnitude (attn_factor) is llama.cpp's default for a
// YaRN model: yarn_mscale(factor, 1) / yarn_mscale(factor, log_mul) when the file gives a
// yarn_log_multiplier, else yarn_mscale(factor, 1); times rope.scaling.attn_factor.
graph::RopeParams rope_params(const HParams& hp, graph::RopeMode mode, int64_t head_dim, int64_t n_dims);
// YaRN's magnitude scaling: 1 + 0.1 * m * ln(factor) for factor > 1, else 1.
float yarn_mscale(float factor, float m);
// The usual config of a layer from hparams: scale 1/sqrt(dk), rope over n_rot dims.
AttentionConfig attention_config(const HParams& hp, int64_t layer, graph::RopeMode mode);

// Self-attention of the (normalised) rows h: Q/K/V projections (+ biases), QK-norm when the
// weights have it, RoPE on Q and K, K/V appended to the layer's cache, causal GQA attention over
// the cache (window, softcap and sinks as configured), output projection (+ bias).
TensorId self_attention(Graph& g, TensorId h, TensorId positions, const AttentionWeights& w, const AttentionConfig& c);

struct FfnWeights {
    Weight gate, up, down;
};
// down(silu(gate(h)) * up(h))
TensorId ffn_swiglu(Graph& g, TensorId h, const FfnWeights& w);

// down(gelu_tanh(gate(h)) * up(h))
TensorId ffn_geglu(Graph& g, TensorId h, const FfnWeights& w);

// ---- mixture of experts
struct MoeWeights {
    Weight gate_inp;                       // router [n_embd, n_expert]
    Weight gate_exps, up_exps, down_exps;  // [n_embd, n_ff, n_expert], ..., [n_ff, n_embd, n_expert]
    Weight exp_probs_b;                    // optional [n_expert]: added to the scores for the choice only
    Weight gate_inp_b;                     // optional router bias [n_expert]
    Weight gate_exps_b, up_exps_b, down_exps_b;  // optional per-expert biases [n_ff, n_expert], [n_embd, n_expert]
};
struct MoeConfig {
    int n_expert = 0, n_used = 0;
    graph::Gating gating = graph::Gating::Softmax;
    bool norm_weights = false;  // divide the chosen weights by their sum
    float weights_scale = 1.0f;  // then multiply them by this
    int n_group = 1, n_group_used = 1;  // group-limited routing
    // Expert activation: SwiGLU, or with swiglu_limit > 0 gpt-oss's clamped variant
    // min(gate, limit) * sigmoid(alpha * min(gate, limit)) * (clamp(up, -limit, limit) + 1).
    float swiglu_limit = 0.0f;
    float swiglu_alpha = 1.702f;
};
// Routed experts of the rows h: router -> gating (softmax / sigmoid / softmax over the chosen) ->
// top-k (+ exp_probs_b for the choice only, optionally group-limited) -> weights (normalised,
// scaled) -> per token the chosen experts' SwiGLU FFNs, weighted and summed. Only the chosen
// experts' weights are read.
TensorId moe_ffn(Graph& g, TensorId h, const MoeWeights& w, const MoeConfig& c);

// Keeps the rows that need logits (none, the last, or all), normalises them and projects to the
// vocabulary (then softcap * tanh(logit / softcap) when softcap > 0); marks the result as the
// graph's kOutputLogits. Does nothing when n_outputs is 0.
void output_head(Graph& g, TensorId x, const BatchShape& s, const Weight& norm, float eps, const Weight& output,
                 float softcap = 0.0f);

}  // namespace kiln::model::blocks
