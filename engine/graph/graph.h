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

// A node's tensor: what it is (kind, dtype, shape; a weight's stored type and bytes), not where a
// backend keeps it. The Vulkan backend's vk::Tensor is that other thing (a device buffer range
// of up to four dimensions, views included), made from these by its graph executor; the two
// share the type table (quant/types.h: row_bytes, type_name) and kiln::shape_string.
struct Tensor {
    TensorKind kind = TensorKind::Value;
    DType dtype = DType::F32;
    int64_t ne0 = 0;  // row length
    int64_t ne1 = 0;  // rows
    // Weights only.
    TensorType wtype = TensorType::F32;
    const void* data = nullptr;
    // 3-D weights (a stack of ne2 matrices of ne1 rows: MoE experts, per-head projections): matrix
    // i starts nb2 * i bytes after `data` (nb2 = 0: packed, ne1 rows of the row size apart).
    int64_t ne2 = 1;
    uint64_t nb2 = 0;
    std::string name;  // weights and inputs/outputs: for messages and debugging

    int64_t n_elements() const { return ne0 * ne1; }
    // Weights: the bytes of one row (ne0 elements of wtype; throws kiln::Error when ne0 is not a
    // whole number of blocks) and the distance between the matrices of a stack (nb2, or packed).
    uint64_t row_bytes() const;
    uint64_t matrix_stride() const { return nb2 ? nb2 : row_bytes() * static_cast<uint64_t>(ne1); }
    std::string shape_string() const;  // "[4096, 32000]" ("[2048, 768, 128]": a stack of matrices)
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
    // YaRN (rope.scaling.type = yarn). With ext_factor > 0, pair i's angle ramps from the
    // interpolated pos * freq_scale * theta_i (low frequencies) to the extrapolated pos * theta_i
    // (high frequencies) between the correction dims of beta_slow and beta_fast, computed from
    // n_ctx_orig; mix = ext_factor * ramp(i). cos and sin are then multiplied by attn_factor (the
    // magnitude scaling, already final here: see model::yarn_rope_attn_factor).
    float ext_factor = 0.0f;
    float attn_factor = 1.0f;
    float beta_fast = 32.0f;
    float beta_slow = 1.0f;
    int n_ctx_orig = 0;
};

// YaRN's correction range [low, high] of pair indices for these params (low >= 0, high <= n_dims - 1).
void rope_yarn_corr_dims(const RopeParams& p, float dims[2]);

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
    // MLA (absorbed multi-head latent attention): V is not stored; each head's value is the first
    // head_dim_v elements of its K row (the compressed latent). StoreKV then takes no V.
    bool v_in_k = false;
};

// Expert gating of a mixture-of-experts router (<arch>.expert_gating_func).
enum class Gating : uint8_t {
    Softmax = 1,        // probs = softmax(logits); weights = probs of the chosen experts
    Sigmoid = 2,        // probs = sigmoid(logits)
    SoftmaxWeight = 3,  // choose by logits; weights = softmax over the chosen logits (gpt-oss)
};

struct TopKParams {
    int k = 0;             // experts chosen per token
    int n_group = 1;       // group-limited routing: experts form n_group equal groups,
    int n_group_used = 1;  // ... a group scores the sum of its best two; only the best n_group_used groups compete
};

struct SliceParams {
    int n_head = 1;    // the row is n_head heads of head_dim elements
    int head_dim = 0;
    int first = 0;     // each head keeps [first, first + count)
    int count = 0;
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
    SwiGLUOai,  // gpt-oss: x = min(src0, f1), y = clamp(src1, -f1, f1); dst = x * sigmoid(f * x) * (y + 1)
    Softcap,    // dst = f * tanh(src0 / f)
    Silu,       // dst = silu(src0)
    Scale,      // dst = src0 * f
    Rows,       // dst = rows [i0, i0 + dst.ne1) of src0
    Sigmoid,    // dst = 1 / (1 + exp(-src0))
    Softmax,    // dst[t] = softmax(src0[t])
    SliceHeads,    // dst = per head, elements [first, first + count) of src0's heads (slice)
    ConcatHeads,   // dst = per head h: src0's head h then src1's head h (slice.n_head heads each)
    HeadMatMul,    // dst head h = W[h] · src1 head h; src0 = 3-D weight [k, rows, n_head]
    TopK,          // dst (i32 [k, T]) = indices of the k largest of src0[t] (+ src1 bias row if given), best first
    Gather,        // dst[t][j] = src0[t][ids[t][j]]; src1 = ids (i32)
    NormalizeSum,  // dst[t] = src0[t] / max(sum(src0[t]), 2^-14)
    MoeMatMul,     // dst[t][s] = W[ids[t][s]] · x[t] (or x[t][s]) (+ b[ids[t][s]]); src0 = W [k, rows, n_expert], src1 = x, src2 = ids, src3 = b
    MoeCombine,    // dst[t] = sum_s w[t][s] * src0[t][s]; src1 = w [n_used, T]
};
const char* op_name(Op op);

inline constexpr int kMaxSrc = 4;

struct Node {
    Node(Op o, TensorId d, TensorId s0 = kNone, TensorId s1 = kNone, TensorId s2 = kNone, TensorId s3 = kNone)
        : op(o), dst(d), src{s0, s1, s2, s3} {}
    Op op;
    TensorId dst = kNone;
    TensorId src[4] = {kNone, kNone, kNone, kNone};
    float f = 0.0f;   // RmsNorm: eps; Scale: factor; Softcap: cap; SwiGLUOai: alpha
    float f1 = 0.0f;  // SwiGLUOai: limit
    int64_t i0 = 0;   // Rows: first row; RmsNorm: group size (0: the whole row)
    RopeParams rope;  // Rope
    AttentionParams attn;  // StoreKV, Attention
    TopKParams topk;       // TopK
    SliceParams slice;     // SliceHeads, ConcatHeads (n_head)
};

// A graph for one batch shape. Builder methods check shapes and throw kiln::Error on a mismatch
// (that is a bug in an architecture file, reported with the op and both shapes).
class Graph {
public:
    // ---- leaves
    TensorId weight(const std::string& name, TensorType type, const void* data, int64_t ne0, int64_t ne1);
    // A stack of ne2 matrices [ne0, ne1], matrix i at data + i * nb2 bytes (nb2 0: packed).
    TensorId weight3(const std::string& name, TensorType type, const void* data, int64_t ne0, int64_t ne1, int64_t ne2,
                     uint64_t nb2 = 0);
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
    // gpt-oss's clamped SwiGLU: min(gate, limit) * sigmoid(alpha * min(gate, limit)) * (clamp(up, ±limit) + 1).
    TensorId swiglu_oai(TensorId gate, TensorId up, float alpha, float limit);
    TensorId softcap(TensorId x, float cap);
    TensorId silu(TensorId x);
    TensorId scale(TensorId x, float s);
    TensorId rows(TensorId x, int64_t first, int64_t count);
    TensorId sigmoid(TensorId x);
    TensorId softmax(TensorId x);
    // Each of the n_head heads (head_dim elements) of x's rows keeps [first, first + count).
    TensorId slice_heads(TensorId x, int n_head, int head_dim, int first, int count);
    // Per head: a's head then b's head (n_head heads in each row of both).
    TensorId concat_heads(TensorId a, TensorId b, int n_head);
    // Head h of the result = matrix h of the 3-D weight w [k, rows, n_head] times head h of x.
    TensorId head_matmul(TensorId w, TensorId x);
    // Indices (i32 [k, T]) of the k largest of each row of scores (+ bias row, may be kNone).
    TensorId top_k(TensorId scores, TensorId bias, const TopKParams& p);
    // dst[t][j] = x[t][ids[t][j]].
    TensorId gather(TensorId x, TensorId ids);
    TensorId normalize_sum(TensorId x);
    // Row t, slot s: expert ids[t][s] of the 3-D weight w [k, rows, n_expert] times x[t] (x of k
    // columns, shared by the slots) or x[t][s] (x of n_used * k columns); + that expert's row of
    // the 2-D bias b [rows, n_expert] when given. Only the chosen experts' bytes are read.
    TensorId moe_matmul(TensorId w, TensorId x, TensorId ids, TensorId b = kNone);
    // dst[t] = sum_s w[t][s] * y[t][s] (y: n_used rows of E per token).
    TensorId moe_combine(TensorId y, TensorId w);

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
