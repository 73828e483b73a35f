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
// Throws when the file asks for a RoPE scaling the shared attention does not implement (YaRN).
void require_plain_rope(const HParams& hp);
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

// Keeps the rows that need logits (none, the last, or all), normalises them and projects to the
// vocabulary (then softcap * tanh(logit / softcap) when softcap > 0); marks the result as the
// graph's kOutputLogits. Does nothing when n_outputs is 0.
void output_head(Graph& g, TensorId x, const BatchShape& s, const Weight& norm, float eps, const Weight& output,
                 float softcap = 0.0f);

}  // namespace kiln::model::blocks
