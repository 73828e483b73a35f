#include "graph/graph.h"

#include <algorithm>
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
        case Op::Softcap: return "softcap";
        case Op::Silu: return "silu";
        case Op::Scale: return "scale";
        case Op::Rows: return "rows";
    }
    return "?";
}

namespace {
std::string shape_str(const Tensor& t) { return fmt::format("[{}, {}]", t.ne0, t.ne1); }
}  // namespace

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
    require(I.dtype == DType::I32 && I.ne1 == 1, Op::GetRows, "ids must be one i32 row, got " + shape_str(I));
    const int64_t ne0 = W.ne0, n = I.ne0;
    const TensorId d = new_value(ne0, n);
    nodes_.emplace_back(Node(Op::GetRows, d, w, ids));
    return d;
}

TensorId Graph::matmul(TensorId w, TensorId x) {
    const Tensor& W = t(w);
    const Tensor& X = t(x);
    require(W.kind == TensorKind::Weight, Op::MatMul, "first operand must be a weight");
    require(X.dtype == DType::F32 && X.ne0 == W.ne0, Op::MatMul,
            fmt::format("weight '{}' {} does not fit input {}", W.name, shape_str(W), shape_str(X)));
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
    require(broadcastable(A, B), Op::Add, fmt::format("{} + {}", shape_str(A), shape_str(B)));
    const int64_t ne0 = A.ne0, ne1 = A.ne1;
    const TensorId d = new_value(ne0, ne1);
    nodes_.emplace_back(Node(Op::Add, d, a, b));
    return d;
}

TensorId Graph::mul(TensorId a, TensorId b) {
    const Tensor& A = t(a);
    const Tensor& B = t(b);
    require(broadcastable(A, B), Op::Mul, fmt::format("{} * {}", shape_str(A), shape_str(B)));
    const int64_t ne0 = A.ne0, ne1 = A.ne1;
    const TensorId d = new_value(ne0, ne1);
    nodes_.emplace_back(Node(Op::Mul, d, a, b));
    return d;
}

TensorId Graph::rms_norm(TensorId x, TensorId w, float eps) {
    const Tensor& X = t(x);
    if (w != kNone) {
        const Tensor& W = t(w);
        require(W.ne0 == X.ne0 && W.ne1 == 1, Op::RmsNorm, fmt::format("weight {} for input {}", shape_str(W), shape_str(X)));
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
        require(W.ne0 == group && W.ne1 == 1, Op::RmsNorm, fmt::format("weight {} for groups of {}", shape_str(W), group));
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
            fmt::format("positions {} for {} rows", shape_str(P), X.ne1));
    const int64_t ne0 = X.ne0, ne1 = X.ne1;
    const TensorId d = new_value(ne0, ne1);
    Node n(Op::Rope, d, x, positions);
    n.rope = p;
    nodes_.push_back(n);
    return d;
}

void Graph::store_kv(TensorId k, TensorId v, const AttentionParams& p) {
    const Tensor& K = t(k);
    const Tensor& V = t(v);
    require(K.ne0 == static_cast<int64_t>(p.n_head_kv) * p.head_dim_k, Op::StoreKV,
            fmt::format("K row of {} is not {} heads of {}", K.ne0, p.n_head_kv, p.head_dim_k));
    require(V.ne0 == static_cast<int64_t>(p.n_head_kv) * p.head_dim_v && V.ne1 == K.ne1, Op::StoreKV,
            fmt::format("V {} does not match K {} ({} heads of {})", shape_str(V), shape_str(K), p.n_head_kv, p.head_dim_v));
    Node n(Op::StoreKV, kNone, k, v);
    n.attn = p;
    nodes_.push_back(n);
}

TensorId Graph::attention(TensorId q, const AttentionParams& p, TensorId sinks) {
    const Tensor& Q = t(q);
    if (sinks != kNone) {
        const Tensor& S = t(sinks);
        require(S.ne0 == p.n_head && S.ne1 == 1, Op::Attention,
                fmt::format("sinks {} for {} heads", shape_str(S), p.n_head));
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
    require(G.ne0 == U.ne0 && G.ne1 == U.ne1, Op::SwiGLU, fmt::format("{} and {}", shape_str(G), shape_str(U)));
    const int64_t ne0 = G.ne0, ne1 = G.ne1;
    const TensorId d = new_value(ne0, ne1);
    nodes_.emplace_back(Node(Op::SwiGLU, d, gate, up));
    return d;
}

TensorId Graph::geglu(TensorId gate, TensorId up) {
    const Tensor& G = t(gate);
    const Tensor& U = t(up);
    require(G.ne0 == U.ne0 && G.ne1 == U.ne1, Op::GeGLU, fmt::format("{} and {}", shape_str(G), shape_str(U)));
    const int64_t ne0 = G.ne0, ne1 = G.ne1;
    const TensorId d = new_value(ne0, ne1);
    nodes_.emplace_back(Node(Op::GeGLU, d, gate, up));
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
            fmt::format("rows [{}, {}) of {}", first, first + count, shape_str(X)));
    const int64_t ne0 = X.ne0;
    const TensorId d = new_value(ne0, count);
    Node n(Op::Rows, d, x);
    n.i0 = first;
    nodes_.push_back(n);
    return d;
}

std::string Graph::dump() const {
    std::string out;
    auto name = [&](TensorId id) -> std::string {
        if (id == kNone) return "-";
        const Tensor& x = tensors_[static_cast<size_t>(id)];
        return x.name.empty() ? fmt::format("%{}{}", id, shape_str(x)) : fmt::format("{}{}", x.name, shape_str(x));
    };
    for (const Node& n : nodes_) {
        out += fmt::format("{} = {}({}", name(n.dst), op_name(n.op), name(n.src[0]));
        for (int i = 1; i < 3; ++i)
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
        for (int k = 0; k < 3; ++k) {
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
