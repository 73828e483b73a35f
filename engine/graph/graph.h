// The op graph: what one forward pass of a batch computes, as an explicit list of ops on 2-D
// tensors. An architecture builds it (engine/model/arch/*.cpp), a backend plans its buffers once
// and executes it many times (engine/backend/). Nothing here computes anything.
//
// Tensors are row-major matrices: ne0 is the row length (contiguous), ne1 the number of rows. An
// activation tensor has one row per token of the batch; heads are a reading of a row
// (n_head × head_dim), not a separate dimension. Weights are leaves that point at the model file's
// mapped bytes in their stored type (quantized or not); everything else is f32, token ids and
// positions are i32.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "quant/types.h"

namespace kiln::graph {

using TensorId = int32_t;
inline constexpr TensorId kNone = -1;

enum class DType : uint8_t { F32, I32 };

enum class TensorKind : uint8_t {
    Weight,  // model weight: data points into the model file, type may be quantized
    Input,   // filled by the caller before each run (token ids, positions)
    Value,   // intermediate: lives in the planned workspace only between its producer and last user
    Output,  // result read back after the run (kept alive to the end)
};

struct Tensor {
    TensorKind kind = TensorKind::Value;
    DType dtype = DType::F32;
    int64_t ne0 = 0;  // row length
    int64_t ne1 = 0;  // rows
    // Weights only.
    TensorType wtype = TensorType::F32;
    const void* data = nullptr;
    std::string name;  // weights and inputs/outputs: for messages and debugging

    int64_t n_elements() const { return ne0 * ne1; }
};

enum class RopeMode : uint8_t {
    Normal,  // rotates the pairs (x[2i], x[2i+1])             (llama)
    Neox,    // rotates the pairs (x[i], x[i + n_dims/2])      (qwen2, gpt-neox)
};

struct RopeParams {
    RopeMode mode = RopeMode::Normal;
    int n_head = 0;         // heads in a row
    int head_dim = 0;       // elements per head
    int n_dims = 0;         // leading elements of each head that are rotated (<= head_dim)
    float freq_base = 10000.0f;
    float freq_scale = 1.0f;  // linear scaling: positions are multiplied by this (1 / factor)
};

struct AttentionParams {
    int layer = 0;       // which KV-cache layer
    int n_head = 0;      // query heads
    int n_head_kv = 0;   // key/value heads (GQA: n_head is a multiple)
    int head_dim_k = 0;  // query/key elements per head
    int head_dim_v = 0;  // value elements per head
    float scale = 1.0f;  // applied to q·k before the softmax
    int window = 0;      // sliding window in tokens (0: attend to the whole past): a query at
                         // position p sees keys at positions (p - window, p]
    float softcap = 0.0f;  // > 0: scores become softcap * tanh(score / softcap) before the softmax
};

enum class Op : uint8_t {
    GetRows,    // dst[t] = dequantized row ids[t] of weight src0;          src1 = ids (i32 input)
    MatMul,     // dst[t][r] = sum_i W[r][i] * x[t][i];                       src0 = W, src1 = x
    Add,        // dst = src0 + src1; src1 has src0's shape or is one row (broadcast: a bias)
    Mul,        // dst = src0 * src1; same broadcasting as Add
    RmsNorm,    // dst[t] = src0[t] / sqrt(mean(src0[t]^2) + eps) * src1 (src1 optional weight row);
                // with i0 > 0 each group of i0 elements of a row (a head) is normalised on its own
                // and src1 has i0 elements
    Rope,       // rotary position embedding of each head of src0 at positions src1 (i32 input)
    StoreKV,    // writes K rows (src0) and V rows (src1) into the cache of attn.layer; no dst
    Attention,  // causal attention of the query rows src0 over the cache of attn.layer (GQA);
                // src1 (optional, f32 [n_head]): per-head sink logits, one more term exp(sink) in
                // each softmax denominator that takes no value
    SwiGLU,     // dst = silu(src0) * src1
    GeGLU,      // dst = gelu_tanh(src0) * src1
    Softcap,    // dst = f * tanh(src0 / f)
    Silu,       // dst = silu(src0)
    Scale,      // dst = src0 * f
    Rows,       // dst = rows [i0, i0 + dst.ne1) of src0
};
const char* op_name(Op op);

struct Node {
    Node(Op o, TensorId d, TensorId s0 = kNone, TensorId s1 = kNone, TensorId s2 = kNone)
        : op(o), dst(d), src{s0, s1, s2} {}
    Op op;
    TensorId dst = kNone;
    TensorId src[3] = {kNone, kNone, kNone};
    float f = 0.0f;   // RmsNorm: eps; Scale: factor; Softcap: cap
    int64_t i0 = 0;   // Rows: first row; RmsNorm: group size (0: the whole row)
    RopeParams rope;  // Rope
    AttentionParams attn;  // StoreKV, Attention
};

// A graph for one batch shape. Builder methods check shapes and throw kiln::Error on a mismatch
// (that is a bug in an architecture file, reported with the op and both shapes).
class Graph {
public:
    // ---- leaves
    TensorId weight(const std::string& name, TensorType type, const void* data, int64_t ne0, int64_t ne1);
    TensorId input(const std::string& name, DType dtype, int64_t ne0, int64_t ne1);
    // Marks a value as a result of the graph (kept to the end, read back by the caller).
    void mark_output(TensorId t, const std::string& name);

    // ---- ops
    TensorId get_rows(TensorId w, TensorId ids);
    TensorId matmul(TensorId w, TensorId x);
    TensorId add(TensorId a, TensorId b);
    TensorId mul(TensorId a, TensorId b);
    TensorId rms_norm(TensorId x, TensorId w, float eps);  // w may be kNone
    // RMS norm of each group of `group` elements of every row (per head: QK-norm); w has `group`.
    TensorId rms_norm_groups(TensorId x, TensorId w, float eps, int64_t group);
    TensorId rope(TensorId x, TensorId positions, const RopeParams& p);
    void store_kv(TensorId k, TensorId v, const AttentionParams& p);
    TensorId attention(TensorId q, const AttentionParams& p, TensorId sinks = kNone);
    TensorId swiglu(TensorId gate, TensorId up);
    TensorId geglu(TensorId gate, TensorId up);
    TensorId softcap(TensorId x, float cap);
    TensorId silu(TensorId x);
    TensorId scale(TensorId x, float s);
    TensorId rows(TensorId x, int64_t first, int64_t count);

    const std::vector<Tensor>& tensors() const { return tensors_; }
    const std::vector<Node>& nodes() const { return nodes_; }
    const Tensor& tensor(TensorId id) const { return tensors_.at(static_cast<size_t>(id)); }
    TensorId find(const std::string& name) const;  // inputs and outputs by name; kNone if absent

    // One line per node, for debugging ("kiln graph" and test failures).
    std::string dump() const;

private:
    TensorId new_value(int64_t ne0, int64_t ne1, DType dt = DType::F32);
    const Tensor& t(TensorId id) const;
    std::vector<Tensor> tensors_;
    std::vector<Node> nodes_;
};

// Buffer plan of a graph: where each Value/Output tensor lives in one workspace. Computed once per
// graph from the tensors' lifetimes (a value's bytes are reused after its last reader).
struct Plan {
    std::vector<int64_t> offset;  // bytes into the workspace, per tensor; -1 for weights and inputs
    int64_t workspace_bytes = 0;
};
Plan plan_buffers(const Graph& g, int64_t alignment = 64);

}  // namespace kiln::graph
