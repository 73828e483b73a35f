#include "graph/graph.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <map>

#include <fmt/format.h>

#include "kiln/error.h"

namespace kiln::graph {

const char* op_name(Op op) {
    switch (op) {
        case Op::GetRows: return "get_rows";
        case Op::MatMul: return "matmul";
        case Op::Add: return "add";
        case Op::Mul: return "mul";
        case Op::RmsNorm: return "rms_norm";
        case Op::Rope: return "rope";
        case Op::StoreKV: return "store_kv";
        case Op::Attention: return "attention";
        case Op::SwiGLU: return "swiglu";
        case Op::GeGLU: return "geglu";
        case Op::SwiGLUOai: return "swiglu_oai";
        case Op::Softcap: return "softcap";
        case Op::Silu: return "silu";
        case Op::Scale: return "scale";
        case Op::Rows: return "rows";
        case Op::Sigmoid: return "sigmoid";
        case Op::Softmax: return "softmax";
        case Op::SliceHeads: return "slice_heads";
        case Op::ConcatHeads: return "concat_heads";
        case Op::HeadMatMul: return "head_matmul";
        case Op::TopK: return "top_k";
        case Op::Gather: return "gather";
        case Op::NormalizeSum: return "normalize_sum";
        case Op::MoeMatMul: return "moe_matmul";
        case Op::MoeCombine: return "moe_combine";
    }
    return "?";
}

uint64_t Tensor::row_bytes() const {
    const std::optional<uint64_t> rb = kiln::row_bytes(wtype, static_cast<uint64_t>(ne0));
    if (!rb) throw Error(fmt::format("graph: tensor '{}' has rows of {} elements, not whole {} blocks", name, ne0, type_name(wtype)));
    return *rb;
}

std::string Tensor::shape_string() const {
    if (ne2 > 1) return kiln::shape_string(std::array<int64_t, 3>{ne0, ne1, ne2});
    return kiln::shape_string(std::array<int64_t, 2>{ne0, ne1});
}


// Pair index i turns through n_rot = 2π full turns over the original context when
// n_ctx_orig * base^(-2i / n_dims) = 2π n_rot; solved for i.
static float yarn_corr_dim(int n_dims, int n_ctx_orig, float n_rot, float base) {
    return static_cast<float>(n_dims) * std::log(static_cast<float>(n_ctx_orig) / (n_rot * 2.0f * 3.14159265358979f)) /
           (2.0f * std::log(base));
}

void rope_yarn_corr_dims(const RopeParams& p, float dims[2]) {
    const float lo = std::floor(yarn_corr_dim(p.n_dims, p.n_ctx_orig, p.beta_fast, p.freq_base));
    const float hi = std::ceil(yarn_corr_dim(p.n_dims, p.n_ctx_orig, p.beta_slow, p.freq_base));
    dims[0] = std::max(0.0f, lo);
    dims[1] = std::min(static_cast<float>(p.n_dims - 1), hi);
}

const Tensor& Graph::t(TensorId id) const {
    if (id < 0 || static_cast<size_t>(id) >= tensors_.size())
        throw Error(fmt::format("graph: tensor id {} does not exist", id));
    return tensors_[static_cast<size_t>(id)];
}

TensorId Graph::new_value(int64_t ne0, int64_t ne1, DType dt) {
    Tensor v;
    v.kind = TensorKind::Value;
    v.dtype = dt;
    v.ne0 = ne0;
    v.ne1 = ne1;
    tensors_.push_back(std::move(v));
    return static_cast<TensorId>(tensors_.size() - 1);
}

TensorId Graph::weight(const std::string& name, TensorType type, const void* data, int64_t ne0, int64_t ne1) {
    Tensor w;
    w.kind = TensorKind::Weight;
    w.wtype = type;
    w.data = data;
    w.ne0 = ne0;
    w.ne1 = ne1;
    w.name = name;
    tensors_.push_back(std::move(w));
    return static_cast<TensorId>(tensors_.size() - 1);
}

TensorId Graph::weight3(const std::string& name, TensorType type, const void* data, int64_t ne0, int64_t ne1,
                        int64_t ne2, uint64_t nb2) {
    const TensorId id = weight(name, type, data, ne0, ne1);
    Tensor& w = tensors_.back();
    w.ne2 = ne2;
    w.nb2 = nb2;
    return id;
}

TensorId Graph::input(const std::string& name, DType dtype, int64_t ne0, int64_t ne1) {
    Tensor in;
    in.kind = TensorKind::Input;
    in.dtype = dtype;
    in.ne0 = ne0;
    in.ne1 = ne1;
    in.name = name;
    tensors_.push_back(std::move(in));
    return static_cast<TensorId>(tensors_.size() - 1);
}

void Graph::mark_output(TensorId id, const std::string& name) {
    Tensor& o = tensors_.at(static_cast<size_t>(id));
    if (o.kind != TensorKind::Value) throw Error(fmt::format("graph: only a computed value can be an output ('{}')", name));
    o.kind = TensorKind::Output;
    o.name = name;
}

TensorId Graph::find(const std::string& name) const {
    for (size_t i = 0; i < tensors_.size(); ++i)
        if ((tensors_[i].kind == TensorKind::Input || tensors_[i].kind == TensorKind::Output) && tensors_[i].name == name)
            return static_cast<TensorId>(i);
    return kNone;
}

static void require(bool ok, Op op, const std::string& what) {
    if (!ok) throw Error(fmt::format("graph: {}: {}", op_name(op), what));
}

TensorId Graph::get_rows(TensorId w, TensorId ids) {
    const Tensor& W = t(w);
    const Tensor& I = t(ids);
    require(W.kind == TensorKind::Weight, Op::GetRows, "source must be a weight");
    require(I.dtype == DType::I32 && I.ne1 == 1, Op::GetRows, "ids must be one i32 row, got " + I.shape_string());
    const int64_t ne0 = W.ne0, n = I.ne0;
    const TensorId d = new_value(ne0, n);
    nodes_.emplace_back(Node(Op::GetRows, d, w, ids));
    return d;
}

TensorId Graph::matmul(TensorId w, TensorId x) {
    const Tensor& W = t(w);
    const Tensor& X = t(x);
    require(W.kind == TensorKind::Weight, Op::MatMul, "first operand must be a weight");
    require(W.ne2 == 1, Op::MatMul, fmt::format("weight '{}' is 3-D {}", W.name, W.shape_string()));
    require(X.dtype == DType::F32 && X.ne0 == W.ne0, Op::MatMul,
            fmt::format("weight '{}' {} does not fit input {}", W.name, W.shape_string(), X.shape_string()));
    const int64_t rows = W.ne1, n = X.ne1;
    const TensorId d = new_value(rows, n);
    nodes_.emplace_back(Node(Op::MatMul, d, w, x));
    return d;
}

static bool broadcastable(const Tensor& a, const Tensor& b) {
    return b.ne0 == a.ne0 && (b.ne1 == a.ne1 || b.ne1 == 1);
}

TensorId Graph::add(TensorId a, TensorId b) {
    const Tensor& A = t(a);
    const Tensor& B = t(b);
    require(broadcastable(A, B), Op::Add, fmt::format("{} + {}", A.shape_string(), B.shape_string()));
    const int64_t ne0 = A.ne0, ne1 = A.ne1;
    const TensorId d = new_value(ne0, ne1);
    nodes_.emplace_back(Node(Op::Add, d, a, b));
    return d;
}

TensorId Graph::mul(TensorId a, TensorId b) {
    const Tensor& A = t(a);
    const Tensor& B = t(b);
    require(broadcastable(A, B), Op::Mul, fmt::format("{} * {}", A.shape_string(), B.shape_string()));
    const int64_t ne0 = A.ne0, ne1 = A.ne1;
    const TensorId d = new_value(ne0, ne1);
    nodes_.emplace_back(Node(Op::Mul, d, a, b));
    return d;
}

TensorId Graph::rms_norm(TensorId x, TensorId w, float eps) {
    const Tensor& X = t(x);
    if (w != kNone) {
        const Tensor& W = t(w);
        require(W.ne0 == X.ne0 && W.ne1 == 1, Op::RmsNorm, fmt::format("weight {} for input {}", W.shape_string(), X.shape_string()));
        require(W.kind != TensorKind::Weight || W.wtype == TensorType::F32, Op::RmsNorm,
                fmt::format("weight '{}' must be f32, is {}", W.name, type_name(W.wtype)));
    }
    const int64_t ne0 = X.ne0, ne1 = X.ne1;
    const TensorId d = new_value(ne0, ne1);
    Node n(Op::RmsNorm, d, x, w);
    n.f = eps;
    nodes_.push_back(n);
    return d;
}

TensorId Graph::rms_norm_groups(TensorId x, TensorId w, float eps, int64_t group) {
    const Tensor& X = t(x);
    require(group > 0 && X.ne0 % group == 0, Op::RmsNorm,
            fmt::format("groups of {} do not divide a row of {}", group, X.ne0));
    if (w != kNone) {
        const Tensor& W = t(w);
        require(W.ne0 == group && W.ne1 == 1, Op::RmsNorm, fmt::format("weight {} for groups of {}", W.shape_string(), group));
        require(W.kind != TensorKind::Weight || W.wtype == TensorType::F32, Op::RmsNorm,
                fmt::format("weight '{}' must be f32, is {}", W.name, type_name(W.wtype)));
    }
    const int64_t ne0 = X.ne0, ne1 = X.ne1;
    const TensorId d = new_value(ne0, ne1);
    Node n(Op::RmsNorm, d, x, w);
    n.f = eps;
    n.i0 = group;
    nodes_.push_back(n);
    return d;
}

TensorId Graph::rope(TensorId x, TensorId positions, const RopeParams& p) {
    const Tensor& X = t(x);
    const Tensor& P = t(positions);
    require(X.ne0 == static_cast<int64_t>(p.n_head) * p.head_dim, Op::Rope,
            fmt::format("row of {} is not {} heads of {}", X.ne0, p.n_head, p.head_dim));
    require(p.n_dims > 0 && p.n_dims <= p.head_dim && p.n_dims % 2 == 0, Op::Rope,
            fmt::format("rotated dims {} must be even and at most the head size {}", p.n_dims, p.head_dim));
    require(P.dtype == DType::I32 && P.ne0 == X.ne1 && P.ne1 == 1, Op::Rope,
            fmt::format("positions {} for {} rows", P.shape_string(), X.ne1));
    require(p.ext_factor == 0.0f || (p.n_ctx_orig > 0 && p.beta_fast > 0 && p.beta_slow > 0), Op::Rope,
            fmt::format("YaRN needs the original context ({}) and positive betas ({}, {})", p.n_ctx_orig, p.beta_fast,
                        p.beta_slow));
    const int64_t ne0 = X.ne0, ne1 = X.ne1;
    const TensorId d = new_value(ne0, ne1);
    Node n(Op::Rope, d, x, positions);
    n.rope = p;
    nodes_.push_back(n);
    return d;
}

void Graph::store_kv(TensorId k, TensorId v, const AttentionParams& p) {
    const Tensor& K = t(k);
    require(K.ne0 == static_cast<int64_t>(p.n_head_kv) * p.head_dim_k, Op::StoreKV,
            fmt::format("K row of {} is not {} heads of {}", K.ne0, p.n_head_kv, p.head_dim_k));
    if (p.v_in_k) {
        require(v == kNone, Op::StoreKV, "no V is stored when V is part of K (MLA)");
        require(p.head_dim_v <= p.head_dim_k, Op::StoreKV,
                fmt::format("V of {} cannot be the head of a K row of {}", p.head_dim_v, p.head_dim_k));
        Node n(Op::StoreKV, kNone, k);
        n.attn = p;
        nodes_.push_back(n);
        return;
    }
    const Tensor& V = t(v);
    require(V.ne0 == static_cast<int64_t>(p.n_head_kv) * p.head_dim_v && V.ne1 == K.ne1, Op::StoreKV,
            fmt::format("V {} does not match K {} ({} heads of {})", V.shape_string(), K.shape_string(), p.n_head_kv, p.head_dim_v));
    Node n(Op::StoreKV, kNone, k, v);
    n.attn = p;
    nodes_.push_back(n);
}

TensorId Graph::attention(TensorId q, const AttentionParams& p, TensorId sinks) {
    const Tensor& Q = t(q);
    if (sinks != kNone) {
        const Tensor& S = t(sinks);
        require(S.ne0 == p.n_head && S.ne1 == 1, Op::Attention,
                fmt::format("sinks {} for {} heads", S.shape_string(), p.n_head));
        require(S.kind != TensorKind::Weight || S.wtype == TensorType::F32, Op::Attention,
                fmt::format("sinks '{}' must be f32, is {}", S.name, type_name(S.wtype)));
    }
    require(p.window >= 0 && p.softcap >= 0.0f, Op::Attention,
            fmt::format("window {} and softcap {} must not be negative", p.window, p.softcap));
    require(p.n_head_kv > 0 && p.n_head % p.n_head_kv == 0, Op::Attention,
            fmt::format("{} query heads are not a multiple of {} kv heads", p.n_head, p.n_head_kv));
    require(Q.ne0 == static_cast<int64_t>(p.n_head) * p.head_dim_k, Op::Attention,
            fmt::format("Q row of {} is not {} heads of {}", Q.ne0, p.n_head, p.head_dim_k));
    const int64_t ne0 = static_cast<int64_t>(p.n_head) * p.head_dim_v, ne1 = Q.ne1;
    const TensorId d = new_value(ne0, ne1);
    Node n(Op::Attention, d, q, sinks);
    n.attn = p;
    nodes_.push_back(n);
    return d;
}

TensorId Graph::swiglu(TensorId gate, TensorId up) {
    const Tensor& G = t(gate);
    const Tensor& U = t(up);
    require(G.ne0 == U.ne0 && G.ne1 == U.ne1, Op::SwiGLU, fmt::format("{} and {}", G.shape_string(), U.shape_string()));
    const int64_t ne0 = G.ne0, ne1 = G.ne1;
    const TensorId d = new_value(ne0, ne1);
    nodes_.emplace_back(Node(Op::SwiGLU, d, gate, up));
    return d;
}

TensorId Graph::geglu(TensorId gate, TensorId up) {
    const Tensor& G = t(gate);
    const Tensor& U = t(up);
    require(G.ne0 == U.ne0 && G.ne1 == U.ne1, Op::GeGLU, fmt::format("{} and {}", G.shape_string(), U.shape_string()));
    const int64_t ne0 = G.ne0, ne1 = G.ne1;
    const TensorId d = new_value(ne0, ne1);
    nodes_.emplace_back(Node(Op::GeGLU, d, gate, up));
    return d;
}

TensorId Graph::swiglu_oai(TensorId gate, TensorId up, float alpha, float limit) {
    const Tensor& G = t(gate);
    const Tensor& U = t(up);
    require(G.ne0 == U.ne0 && G.ne1 == U.ne1, Op::SwiGLUOai, fmt::format("{} and {}", G.shape_string(), U.shape_string()));
    require(limit > 0.0f, Op::SwiGLUOai, fmt::format("limit {} must be positive", limit));
    const int64_t ne0 = G.ne0, ne1 = G.ne1;
    const TensorId d = new_value(ne0, ne1);
    Node n(Op::SwiGLUOai, d, gate, up);
    n.f = alpha;
    n.f1 = limit;
    nodes_.push_back(n);
    return d;
}

TensorId Graph::softcap(TensorId x, float cap) {
    require(cap > 0.0f, Op::Softcap, fmt::format("cap {} must be positive", cap));
    const int64_t ne0 = t(x).ne0, ne1 = t(x).ne1;
    const TensorId d = new_value(ne0, ne1);
    Node n(Op::Softcap, d, x);
    n.f = cap;
    nodes_.push_back(n);
    return d;
}

TensorId Graph::silu(TensorId x) {
    const int64_t ne0 = t(x).ne0, ne1 = t(x).ne1;
    const TensorId d = new_value(ne0, ne1);
    nodes_.emplace_back(Node(Op::Silu, d, x));
    return d;
}

TensorId Graph::scale(TensorId x, float s) {
    const int64_t ne0 = t(x).ne0, ne1 = t(x).ne1;
    const TensorId d = new_value(ne0, ne1);
    Node n(Op::Scale, d, x);
    n.f = s;
    nodes_.push_back(n);
    return d;
}

TensorId Graph::rows(TensorId x, int64_t first, int64_t count) {
    const Tensor& X = t(x);
    require(first >= 0 && count >= 0 && first + count <= X.ne1, Op::Rows,
            fmt::format("rows [{}, {}) of {}", first, first + count, X.shape_string()));
    const int64_t ne0 = X.ne0;
    const TensorId d = new_value(ne0, count);
    Node n(Op::Rows, d, x);
    n.i0 = first;
    nodes_.push_back(n);
    return d;
}

TensorId Graph::sigmoid(TensorId x) {
    const int64_t ne0 = t(x).ne0, ne1 = t(x).ne1;
    const TensorId d = new_value(ne0, ne1);
    nodes_.emplace_back(Node(Op::Sigmoid, d, x));
    return d;
}

TensorId Graph::softmax(TensorId x) {
    const int64_t ne0 = t(x).ne0, ne1 = t(x).ne1;
    const TensorId d = new_value(ne0, ne1);
    nodes_.emplace_back(Node(Op::Softmax, d, x));
    return d;
}

TensorId Graph::slice_heads(TensorId x, int n_head, int head_dim, int first, int count) {
    const Tensor& X = t(x);
    require(X.dtype == DType::F32 && n_head > 0 && head_dim > 0 && X.ne0 == static_cast<int64_t>(n_head) * head_dim,
            Op::SliceHeads, fmt::format("row of {} is not {} heads of {}", X.ne0, n_head, head_dim));
    require(first >= 0 && count > 0 && first + count <= head_dim, Op::SliceHeads,
            fmt::format("[{}, {}) is not inside a head of {}", first, first + count, head_dim));
    const int64_t ne1 = X.ne1;
    const TensorId d = new_value(static_cast<int64_t>(n_head) * count, ne1);
    Node n(Op::SliceHeads, d, x);
    n.slice = {n_head, head_dim, first, count};
    nodes_.push_back(n);
    return d;
}

TensorId Graph::concat_heads(TensorId a, TensorId b, int n_head) {
    const Tensor& A = t(a);
    const Tensor& B = t(b);
    require(n_head > 0 && A.ne0 % n_head == 0 && B.ne0 % n_head == 0 && A.ne1 == B.ne1, Op::ConcatHeads,
            fmt::format("{} and {} as {} heads", A.shape_string(), B.shape_string(), n_head));
    const int64_t ne0 = A.ne0 + B.ne0, ne1 = A.ne1;
    const TensorId d = new_value(ne0, ne1);
    Node n(Op::ConcatHeads, d, a, b);
    n.slice.n_head = n_head;
    nodes_.push_back(n);
    return d;
}

TensorId Graph::head_matmul(TensorId w, TensorId x) {
    const Tensor& W = t(w);
    const Tensor& X = t(x);
    require(W.kind == TensorKind::Weight, Op::HeadMatMul, "first operand must be a weight");
    require(X.dtype == DType::F32 && X.ne0 == W.ne0 * W.ne2, Op::HeadMatMul,
            fmt::format("weight '{}' {} does not fit input {}", W.name, W.shape_string(), X.shape_string()));
    const int64_t ne0 = W.ne1 * W.ne2, ne1 = X.ne1;
    const TensorId d = new_value(ne0, ne1);
    nodes_.emplace_back(Node(Op::HeadMatMul, d, w, x));
    return d;
}

TensorId Graph::top_k(TensorId scores, TensorId bias, const TopKParams& p) {
    const Tensor& S = t(scores);
    require(S.dtype == DType::F32 && p.k > 0 && p.k <= S.ne0, Op::TopK,
            fmt::format("{} of a row of {}", p.k, S.ne0));
    require(p.n_group >= 1 && p.n_group_used >= 1 && p.n_group_used <= p.n_group && S.ne0 % p.n_group == 0 &&
                (p.n_group == 1 || S.ne0 / p.n_group >= 2) && p.k <= S.ne0 / p.n_group * p.n_group_used,
            Op::TopK,
            fmt::format("{} of {} scores in {} groups, {} used", p.k, S.ne0, p.n_group, p.n_group_used));
    if (bias != kNone) {
        const Tensor& B = t(bias);
        require(B.ne0 == S.ne0 && B.ne1 == 1 && (B.kind != TensorKind::Weight || B.wtype == TensorType::F32), Op::TopK,
                fmt::format("bias {} for scores {}", B.shape_string(), S.shape_string()));
    }
    const int64_t ne1 = S.ne1;
    const TensorId d = new_value(p.k, ne1, DType::I32);
    Node n(Op::TopK, d, scores, bias);
    n.topk = p;
    nodes_.push_back(n);
    return d;
}

TensorId Graph::gather(TensorId x, TensorId ids) {
    const Tensor& X = t(x);
    const Tensor& I = t(ids);
    require(X.dtype == DType::F32 && I.dtype == DType::I32 && I.ne1 == X.ne1, Op::Gather,
            fmt::format("{} by ids {}", X.shape_string(), I.shape_string()));
    const int64_t ne0 = I.ne0, ne1 = I.ne1;
    const TensorId d = new_value(ne0, ne1);
    nodes_.emplace_back(Node(Op::Gather, d, x, ids));
    return d;
}

TensorId Graph::normalize_sum(TensorId x) {
    const int64_t ne0 = t(x).ne0, ne1 = t(x).ne1;
    const TensorId d = new_value(ne0, ne1);
    nodes_.emplace_back(Node(Op::NormalizeSum, d, x));
    return d;
}

TensorId Graph::moe_matmul(TensorId w, TensorId x, TensorId ids, TensorId b) {
    const Tensor& W = t(w);
    const Tensor& X = t(x);
    const Tensor& I = t(ids);
    require(W.kind == TensorKind::Weight && W.ne2 >= 1, Op::MoeMatMul, "first operand must be a 3-D weight");
    require(I.dtype == DType::I32 && I.ne1 == X.ne1, Op::MoeMatMul,
            fmt::format("ids {} for input {}", I.shape_string(), X.shape_string()));
    require(X.dtype == DType::F32 && (X.ne0 == W.ne0 || X.ne0 == W.ne0 * I.ne0), Op::MoeMatMul,
            fmt::format("weight '{}' {} does not fit input {} with {} experts a token", W.name, W.shape_string(),
                        X.shape_string(), I.ne0));
    if (b != kNone) {
        const Tensor& B = t(b);
        require(B.kind == TensorKind::Weight && B.wtype == TensorType::F32 && B.ne0 == W.ne1 && B.ne1 == W.ne2,
                Op::MoeMatMul, fmt::format("bias '{}' {} for weight {}", B.name, B.shape_string(), W.shape_string()));
    }
    const int64_t ne0 = W.ne1 * I.ne0, ne1 = X.ne1;
    const TensorId d = new_value(ne0, ne1);
    nodes_.emplace_back(Node(Op::MoeMatMul, d, w, x, ids, b));
    return d;
}

TensorId Graph::moe_combine(TensorId y, TensorId w) {
    const Tensor& Y = t(y);
    const Tensor& Wt = t(w);
    require(Wt.ne0 > 0 && Y.ne0 % Wt.ne0 == 0 && Y.ne1 == Wt.ne1, Op::MoeCombine,
            fmt::format("{} weighted by {}", Y.shape_string(), Wt.shape_string()));
    const int64_t ne0 = Y.ne0 / Wt.ne0, ne1 = Y.ne1;
    const TensorId d = new_value(ne0, ne1);
    nodes_.emplace_back(Node(Op::MoeCombine, d, y, w));
    return d;
}

std::string Graph::dump() const {
    std::string out;
    auto name = [&](TensorId id) -> std::string {
        if (id == kNone) return "-";
        const Tensor& x = tensors_[static_cast<size_t>(id)];
        return x.name.empty() ? fmt::format("%{}{}", id, x.shape_string()) : fmt::format("{}{}", x.name, x.shape_string());
    };
    for (const Node& n : nodes_) {
        out += fmt::format("{} = {}({}", name(n.dst), op_name(n.op), name(n.src[0]));
        for (int i = 1; i < kMaxSrc; ++i)
            if (n.src[i] != kNone) out += ", " + name(n.src[i]);
        out += ")\n";
    }
    return out;
}

// ---------------------------------------------------------------------------------------------
// Buffer planning: first-fit over a free list, values released after their last reader.

Plan plan_buffers(const Graph& g, int64_t alignment) {
    const auto& ts = g.tensors();
    const auto& nodes = g.nodes();
    const size_t n_t = ts.size();
    const int64_t kForever = static_cast<int64_t>(nodes.size());

    std::vector<int64_t> last_use(n_t, -1);
    for (size_t i = 0; i < nodes.size(); ++i)
        for (TensorId s : nodes[i].src)
            if (s != kNone) last_use[static_cast<size_t>(s)] = static_cast<int64_t>(i);
    for (size_t i = 0; i < n_t; ++i)
        if (ts[i].kind == TensorKind::Output || ts[i].kind == TensorKind::Input) last_use[i] = kForever;

    auto bytes_of = [&](const Tensor& x) {
        const int64_t b = x.n_elements() * 4;  // f32 and i32
        return (b + alignment - 1) / alignment * alignment;
    };

    Plan plan;
    plan.offset.assign(n_t, -1);
    std::map<int64_t, int64_t> free_blocks;  // offset -> size
    int64_t top = 0;
    auto allocate = [&](int64_t size) {
        for (auto it = free_blocks.begin(); it != free_blocks.end(); ++it) {
            if (it->second < size) continue;
            const int64_t off = it->first, rest = it->second - size;
            free_blocks.erase(it);
            if (rest > 0) free_blocks[off + size] = rest;
            return off;
        }
        // Grow: extend a free block that ends at the top, if any.
        if (!free_blocks.empty()) {
            auto last = std::prev(free_blocks.end());
            if (last->first + last->second == top) {
                const int64_t off = last->first;
                free_blocks.erase(last);
                top = off + size;
                return off;
            }
        }
        const int64_t off = top;
        top += size;
        return off;
    };
    auto release = [&](int64_t off, int64_t size) {
        auto it = free_blocks.emplace(off, size).first;
        if (auto next = std::next(it); next != free_blocks.end() && it->first + it->second == next->first) {
            it->second += next->second;
            free_blocks.erase(next);
        }
        if (it != free_blocks.begin()) {
            auto prev = std::prev(it);
            if (prev->first + prev->second == it->first) {
                prev->second += it->second;
                free_blocks.erase(it);
            }
        }
    };

    for (size_t i = 0; i < n_t; ++i)
        if (ts[i].kind == TensorKind::Input) plan.offset[i] = allocate(bytes_of(ts[i]));

    for (size_t ni = 0; ni < nodes.size(); ++ni) {
        const Node& n = nodes[ni];
        if (n.dst != kNone) {
            const size_t d = static_cast<size_t>(n.dst);
            plan.offset[d] = allocate(bytes_of(ts[d]));
            if (last_use[d] < 0) last_use[d] = static_cast<int64_t>(ni);  // unused result: free at once
        }
        // Release sources whose last reader is this node (after the destination is placed, so a
        // destination never aliases one of its own sources).
        for (int k = 0; k < kMaxSrc; ++k) {
            const TensorId s = n.src[k];
            if (s == kNone) continue;
            bool dup = false;
            for (int j = 0; j < k; ++j) dup |= n.src[j] == s;
            const size_t si = static_cast<size_t>(s);
            if (!dup && last_use[si] == static_cast<int64_t>(ni) && plan.offset[si] >= 0)
                release(plan.offset[si], bytes_of(ts[si]));
        }
        if (n.dst != kNone && last_use[static_cast<size_t>(n.dst)] == static_cast<int64_t>(ni))
            release(plan.offset[static_cast<size_t>(n.dst)], bytes_of(ts[static_cast<size_t>(n.dst)]));
    }
    plan.workspace_bytes = top;
    return plan;
}

}  // namespace kiln::graph
