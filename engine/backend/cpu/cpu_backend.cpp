// CPU backend: runs a graph node by node with kernels/ on one thread pool.
//
// Memory: every executable's values live in one workspace owned by the backend (runs are sequential
// within a context, so executables of different batch shapes share it); the workspace, the matmul
// scratch and the attention scratch are sized when a graph is compiled or a KV cache allocated.
// run() allocates nothing.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <thread>

#include <fmt/format.h>

#include "backend/backend.h"
#include "kernels/matmul.h"
#include "kernels/ops.h"
#include "kernels/threadpool.h"
#include "kiln/error.h"
#include "quant/quant.h"

namespace kiln::backend {

size_t KvLayerShape::row_bytes(KvType t) const {
    const size_t el = t == KvType::F16 ? 2 : 4;
    return static_cast<size_t>(n_head_kv) * static_cast<size_t>(head_dim_k + head_dim_v) * el;
}

int64_t KvLayout::slots(size_t layer) const {
    const int64_t n = layers.at(layer).n_slots;
    return n > 0 && n < n_ctx ? n : n_ctx;
}

size_t KvLayout::layer_bytes(size_t layer) const {
    return static_cast<size_t>(slots(layer)) * layers.at(layer).row_bytes(type);
}

size_t KvLayout::bytes() const {
    size_t total = 0;
    for (size_t il = 0; il < layers.size(); ++il) total += layer_bytes(il);
    return total;
}

namespace {

using graph::Node;
using graph::Op;
using graph::Tensor;
using graph::TensorId;
using graph::TensorKind;

struct AlignedFree {
    void operator()(void* p) const { std::free(p); }
};
using AlignedBuf = std::unique_ptr<uint8_t, AlignedFree>;

AlignedBuf aligned_bytes(size_t n) {
    n = std::max<size_t>(64, (n + 63) / 64 * 64);
    void* p = std::aligned_alloc(64, n);
    if (!p) throw Error(fmt::format("cpu backend: out of memory allocating {} bytes", n));
    return AlignedBuf(static_cast<uint8_t*>(p));
}

// K and V of every layer, one row per slot: row = n_head_kv heads of head_dim elements.
class CpuKv final : public KvBuffers {
public:
    CpuKv(const KvLayout& layout, int n_threads) : layout_(layout) {
        const size_t el = layout.type == KvType::F16 ? 2 : 4;
        for (size_t il = 0; il < layout.layers.size(); ++il) {
            const KvLayerShape& l = layout.layers[il];
            const size_t n = static_cast<size_t>(layout.slots(il));
            k_.push_back(aligned_bytes(n * static_cast<size_t>(l.n_head_kv) * static_cast<size_t>(l.head_dim_k) * el));
            v_.push_back(aligned_bytes(n * static_cast<size_t>(l.n_head_kv) * static_cast<size_t>(l.head_dim_v) * el));
        }
        // Per thread: the scores of one query head over the whole context.
        scores_stride_ = static_cast<size_t>(layout.n_ctx + 16);
        scores_ = aligned_bytes(scores_stride_ * sizeof(float) * static_cast<size_t>(n_threads));
    }
    const KvLayout& layout() const override { return layout_; }
    uint8_t* k(int layer) { return k_[static_cast<size_t>(layer)].get(); }
    uint8_t* v(int layer) { return v_[static_cast<size_t>(layer)].get(); }
    float* scores(int thread) { return reinterpret_cast<float*>(scores_.get()) + scores_stride_ * static_cast<size_t>(thread); }

private:
    KvLayout layout_;
    std::vector<AlignedBuf> k_, v_;
    AlignedBuf scores_;
    size_t scores_stride_ = 0;
};

class CpuBackend;

class CpuExecutable final : public Executable {
public:
    CpuExecutable(CpuBackend& be, graph::Graph g);
    const graph::Graph& graph() const override { return g_; }
    void set_input(TensorId id, const void* data, size_t bytes) override;
    void run(const RunArgs& args) override;
    const float* output(TensorId id) const override;

private:
    float* f32(TensorId id) const;
    const int32_t* i32(TensorId id) const { return reinterpret_cast<const int32_t*>(f32(id)); }
    void run_node(const Node& n, const RunArgs& args);
    void get_rows(const Node& n);
    void matmul(const Node& n);
    void binary(const Node& n);
    void rms_norm(const Node& n);
    void rope(const Node& n);
    void store_kv(const Node& n, CpuKv& kv, int64_t base);
    void attention(const Node& n, CpuKv& kv, int64_t base);
    void unary(const Node& n);

    CpuBackend& be_;
    graph::Graph g_;
    graph::Plan plan_;
};

class CpuBackend final : public Backend {
public:
    explicit CpuBackend(int n_threads) : pool_(n_threads) {}
    const char* name() const override { return "cpu"; }

    std::unique_ptr<Executable> compile(graph::Graph g) override {
        return std::make_unique<CpuExecutable>(*this, std::move(g));
    }
    std::unique_ptr<KvBuffers> alloc_kv(const KvLayout& layout) override {
        return std::make_unique<CpuKv>(layout, pool_.size());
    }

    void reserve(size_t workspace, size_t scratch) {
        if (workspace > workspace_size_) {
            workspace_ = aligned_bytes(workspace);
            workspace_size_ = workspace;
        }
        if (scratch > scratch_size_) {
            scratch_ = aligned_bytes(scratch);
            scratch_size_ = scratch;
        }
    }
    uint8_t* workspace() const { return workspace_.get(); }
    void* scratch() const { return scratch_.get(); }
    ThreadPool& pool() { return pool_; }

private:
    ThreadPool pool_;
    AlignedBuf workspace_, scratch_;
    size_t workspace_size_ = 0, scratch_size_ = 0;
};

// pool.parallel_for through a one-pointer closure: the std::function it takes then fits its
// small-object buffer, so no call allocates, however much the body captures.
template <class F>
void parallel(ThreadPool& pool, int64_t n, F&& fn) {
    pool.parallel_for(n, [&fn](int64_t b, int64_t e, int th) { fn(b, e, th); });
}

// Splits [0, n) over the pool only when there is enough work to pay for waking the threads.
template <class F>
void maybe_parallel(ThreadPool& pool, int64_t n, int64_t work_per_item, F&& fn) {
    if (n * work_per_item < 32768 || n == 1) {
        fn(int64_t{0}, n, 0);
        return;
    }
    parallel(pool, n, fn);
}

CpuExecutable::CpuExecutable(CpuBackend& be, graph::Graph g) : be_(be), g_(std::move(g)) {
    plan_ = graph::plan_buffers(g_, 64);
    size_t scratch = 0;
    for (const Node& n : g_.nodes()) {
        if (n.op != Op::MatMul) continue;
        const Tensor& w = g_.tensor(n.src[0]);
        const Tensor& x = g_.tensor(n.src[1]);
        if (!kernels::matmul_supports(w.wtype))
            throw Error(fmt::format("cpu backend: weight '{}' has type {}, which the CPU matmul does not support",
                                    w.name, type_name(w.wtype)));
        scratch = std::max(scratch, kernels::matmul_scratch_bytes(w.wtype, w.ne0, x.ne1, be_.pool().size()));
    }
    be_.reserve(static_cast<size_t>(plan_.workspace_bytes), scratch);
}

float* CpuExecutable::f32(TensorId id) const {
    const int64_t off = plan_.offset[static_cast<size_t>(id)];
    return reinterpret_cast<float*>(be_.workspace() + off);
}

void CpuExecutable::set_input(TensorId id, const void* data, size_t bytes) {
    const Tensor& t = g_.tensor(id);
    if (t.kind != TensorKind::Input) throw Error(fmt::format("cpu backend: tensor {} is not an input", id));
    const size_t want = static_cast<size_t>(t.n_elements()) * 4;
    if (bytes != want)
        throw Error(fmt::format("cpu backend: input '{}' takes {} bytes, got {}", t.name, want, bytes));
    std::memcpy(f32(id), data, bytes);
}

const float* CpuExecutable::output(TensorId id) const {
    if (g_.tensor(id).kind != TensorKind::Output) throw Error(fmt::format("cpu backend: tensor {} is not an output", id));
    return f32(id);
}

void CpuExecutable::run(const RunArgs& args) {
    for (const Node& n : g_.nodes()) run_node(n, args);
}

void CpuExecutable::run_node(const Node& n, const RunArgs& args) {
    switch (n.op) {
        case Op::GetRows: return get_rows(n);
        case Op::MatMul: return matmul(n);
        case Op::Add:
        case Op::Mul: return binary(n);
        case Op::RmsNorm: return rms_norm(n);
        case Op::Rope: return rope(n);
        case Op::StoreKV:
        case Op::Attention: {
            if (!args.kv) throw Error(fmt::format("cpu backend: {} needs a KV cache", graph::op_name(n.op)));
            auto& kv = static_cast<CpuKv&>(*args.kv);
            if (n.op == Op::StoreKV) return store_kv(n, kv, args.kv_base);
            return attention(n, kv, args.kv_base);
        }
        case Op::SwiGLU:
        case Op::GeGLU:
        case Op::Softcap:
        case Op::Silu:
        case Op::Scale:
        case Op::Rows: return unary(n);
    }
}

void CpuExecutable::get_rows(const Node& n) {
    const Tensor& w = g_.tensor(n.src[0]);
    const Tensor& dst = g_.tensor(n.dst);
    const int32_t* ids = i32(n.src[1]);
    float* out = f32(n.dst);
    const uint64_t rb = *row_bytes(w.wtype, static_cast<uint64_t>(w.ne0));
    for (int64_t t = 0; t < dst.ne1; ++t) {
        const int32_t id = ids[t];
        if (id < 0 || id >= w.ne1)
            throw Error(fmt::format("token id {} is out of range for '{}' ({} rows)", id, w.name, w.ne1));
        const uint8_t* row = static_cast<const uint8_t*>(w.data) + rb * static_cast<uint64_t>(id);
        float* o = out + t * dst.ne0;
        dequantize_row(w.wtype, row, o, w.ne0);
    }
}

void CpuExecutable::matmul(const Node& n) {
    const Tensor& w = g_.tensor(n.src[0]);
    const Tensor& x = g_.tensor(n.src[1]);
    kernels::matmul(w.wtype, w.data, w.ne1, w.ne0, f32(n.src[1]), x.ne1, f32(n.dst), be_.scratch(), be_.pool());
}

void CpuExecutable::binary(const Node& n) {
    const Tensor& a = g_.tensor(n.src[0]);
    const Tensor& b = g_.tensor(n.src[1]);
    const float* pa = f32(n.src[0]);
    const float* pb = b.kind == TensorKind::Weight ? static_cast<const float*>(b.data) : f32(n.src[1]);
    if (b.kind == TensorKind::Weight && b.wtype != TensorType::F32)
        throw Error(fmt::format("cpu backend: {} with weight '{}' of type {} (f32 expected)", graph::op_name(n.op),
                                b.name, type_name(b.wtype)));
    float* d = f32(n.dst);
    const int64_t ne0 = a.ne0;
    const bool bcast = b.ne1 == 1;
    const bool is_add = n.op == Op::Add;
    maybe_parallel(be_.pool(), a.ne1, ne0, [&](int64_t r0, int64_t r1, int) {
        for (int64_t r = r0; r < r1; ++r) {
            const float* x = pa + r * ne0;
            const float* y = pb + (bcast ? 0 : r * ne0);
            float* o = d + r * ne0;
            if (is_add) kernels::add(x, y, o, ne0);
            else kernels::mul(x, y, o, ne0);
        }
    });
}

void CpuExecutable::rms_norm(const Node& n) {
    const Tensor& x = g_.tensor(n.src[0]);
    const float* px = f32(n.src[0]);
    const float* pw = nullptr;
    if (n.src[1] != graph::kNone) {
        const Tensor& w = g_.tensor(n.src[1]);
        pw = w.kind == TensorKind::Weight ? static_cast<const float*>(w.data) : f32(n.src[1]);
    }
    float* d = f32(n.dst);
    // A group (i0 > 0) is normalised on its own: the rows are read as rows of i0 elements.
    const int64_t ne0 = n.i0 > 0 ? n.i0 : x.ne0;
    const int64_t rows = x.n_elements() / ne0;
    const float eps = n.f;
    maybe_parallel(be_.pool(), rows, ne0, [&](int64_t r0, int64_t r1, int) {
        for (int64_t r = r0; r < r1; ++r) kernels::rms_norm(px + r * ne0, pw, ne0, eps, d + r * ne0);
    });
}

void CpuExecutable::rope(const Node& n) {
    const Tensor& x = g_.tensor(n.src[0]);
    const graph::RopeParams& p = n.rope;
    const float* px = f32(n.src[0]);
    const int32_t* pos = i32(n.src[1]);
    float* d = f32(n.dst);
    const int64_t ne0 = x.ne0;
    const int half = p.n_dims / 2;
    // theta_i = pos * freq_scale * base^(-2i / n_dims), i < n_dims / 2
    maybe_parallel(be_.pool(), x.ne1, ne0 * 8, [&](int64_t r0, int64_t r1, int) {
        float cs[512], sn[512];  // n_dims / 2 <= 512 (head sizes up to 1024)
        for (int64_t r = r0; r < r1; ++r) {
            const double position = static_cast<double>(pos[r]) * p.freq_scale;
            for (int i = 0; i < half; ++i) {
                const double theta = position * std::pow(static_cast<double>(p.freq_base), -2.0 * i / p.n_dims);
                cs[i] = static_cast<float>(std::cos(theta));
                sn[i] = static_cast<float>(std::sin(theta));
            }
            const float* xr = px + r * ne0;
            float* dr = d + r * ne0;
            for (int h = 0; h < p.n_head; ++h) {
                const float* xh = xr + static_cast<int64_t>(h) * p.head_dim;
                float* dh = dr + static_cast<int64_t>(h) * p.head_dim;
                if (p.mode == graph::RopeMode::Normal) {
                    for (int i = 0; i < half; ++i) {
                        const float a = xh[2 * i], b = xh[2 * i + 1];
                        dh[2 * i] = a * cs[i] - b * sn[i];
                        dh[2 * i + 1] = a * sn[i] + b * cs[i];
                    }
                } else {
                    for (int i = 0; i < half; ++i) {
                        const float a = xh[i], b = xh[i + half];
                        dh[i] = a * cs[i] - b * sn[i];
                        dh[i + half] = a * sn[i] + b * cs[i];
                    }
                }
                for (int i = p.n_dims; i < p.head_dim; ++i) dh[i] = xh[i];
            }
        }
    });
}

// Token t of the batch is at position base + t; its K/V row goes to slot (base + t) % slots of the
// layer (the identity for a full layer, a ring for a sliding-window one).
void CpuExecutable::store_kv(const Node& n, CpuKv& kv, int64_t base) {
    const graph::AttentionParams& p = n.attn;
    const Tensor& k = g_.tensor(n.src[0]);
    const KvLayout& L = kv.layout();
    const int64_t n_tok = k.ne1;
    if (base < 0 || base + n_tok > L.n_ctx)
        throw Error(fmt::format("cpu backend: KV positions [{}, {}) outside the cache of {}", base, base + n_tok, L.n_ctx));
    const int64_t slots = L.slots(static_cast<size_t>(p.layer));
    const int64_t kw = static_cast<int64_t>(p.n_head_kv) * p.head_dim_k;
    const int64_t vw = static_cast<int64_t>(p.n_head_kv) * p.head_dim_v;
    const float* pk = f32(n.src[0]);
    const float* pv = f32(n.src[1]);
    // Contiguous runs of slots (a ring wraps at most a few times per batch).
    for (int64_t t0 = 0; t0 < n_tok;) {
        const int64_t slot = (base + t0) % slots;
        const int64_t run = std::min(n_tok - t0, slots - slot);
        if (L.type == KvType::F16) {
            kernels::f32_to_f16(pk + t0 * kw, reinterpret_cast<uint16_t*>(kv.k(p.layer)) + slot * kw, run * kw);
            kernels::f32_to_f16(pv + t0 * vw, reinterpret_cast<uint16_t*>(kv.v(p.layer)) + slot * vw, run * vw);
        } else {
            std::memcpy(reinterpret_cast<float*>(kv.k(p.layer)) + slot * kw, pk + t0 * kw, static_cast<size_t>(run * kw) * 4);
            std::memcpy(reinterpret_cast<float*>(kv.v(p.layer)) + slot * vw, pv + t0 * vw, static_cast<size_t>(run * vw) * 4);
        }
        t0 += run;
    }
}

// Token t (position base + t) attends to positions [first, base + t], first = 0 or the window's
// first position; position j is read from slot j % slots.
void CpuExecutable::attention(const Node& n, CpuKv& kv, int64_t base) {
    const graph::AttentionParams& p = n.attn;
    const Tensor& q = g_.tensor(n.src[0]);
    const KvLayout& L = kv.layout();
    const int64_t n_tok = q.ne1;
    if (base < 0 || base + n_tok > L.n_ctx)
        throw Error(fmt::format("cpu backend: attention over positions [0, {}) outside the cache of {}", base + n_tok,
                                L.n_ctx));
    const int64_t slots = L.slots(static_cast<size_t>(p.layer));
    if (slots < L.n_ctx && (p.window <= 0 || slots < p.window + n_tok - 1))
        throw Error(fmt::format("cpu backend: layer {} keeps a ring of {} KV slots, too few for a window of {} and a "
                                "batch of {} tokens",
                                p.layer, slots, p.window, n_tok));
    const int dk = p.head_dim_k, dv = p.head_dim_v;
    const int group = p.n_head / p.n_head_kv;
    const int64_t kw = static_cast<int64_t>(p.n_head_kv) * dk;
    const int64_t vw = static_cast<int64_t>(p.n_head_kv) * dv;
    const float* pq = f32(n.src[0]);
    const float* sinks = nullptr;
    if (n.src[1] != graph::kNone) {
        const Tensor& st = g_.tensor(n.src[1]);
        sinks = st.kind == TensorKind::Weight ? static_cast<const float*>(st.data) : f32(n.src[1]);
    }
    float* out = f32(n.dst);
    const bool f16 = L.type == KvType::F16;
    const uint8_t* kbase = kv.k(p.layer);
    const uint8_t* vbase = kv.v(p.layer);
    const int64_t items = n_tok * p.n_head;
    const float cap = p.softcap;

    parallel(be_.pool(), items, [&](int64_t b, int64_t e, int th) {
        float* scores = kv.scores(th);
        for (int64_t it = b; it < e; ++it) {
            const int64_t t = it / p.n_head;
            const int h = static_cast<int>(it % p.n_head);
            const int kvh = h / group;
            const int64_t last = base + t;  // inclusive
            const int64_t first = p.window > 0 ? std::max<int64_t>(0, last - p.window + 1) : 0;
            const int64_t len = last - first + 1;
            const float* qh = pq + t * q.ne0 + static_cast<int64_t>(h) * dk;
            float* oh = out + t * (static_cast<int64_t>(p.n_head) * dv) + static_cast<int64_t>(h) * dv;

            int64_t slot = first % slots;
            for (int64_t j = 0; j < len; ++j) {
                float s = f16 ? kernels::dot_f32_f16(qh, reinterpret_cast<const uint16_t*>(kbase) + slot * kw + kvh * dk, dk)
                              : kernels::dot_f32(qh, reinterpret_cast<const float*>(kbase) + slot * kw + kvh * dk, dk);
                s *= p.scale;
                if (cap > 0.0f) s = cap * std::tanh(s / cap);
                scores[j] = s;
                if (++slot == slots) slot = 0;
            }
            // A sink is one more logit in the softmax whose weight goes nowhere.
            if (sinks) scores[len] = sinks[h];
            kernels::softmax_inplace(scores, sinks ? len + 1 : len);

            std::fill(oh, oh + dv, 0.0f);
            slot = first % slots;
            for (int64_t j = 0; j < len; ++j) {
                const float w = scores[j];
                if (f16) {
                    kernels::axpy_f16(w, reinterpret_cast<const uint16_t*>(vbase) + slot * vw + kvh * dv, oh, dv);
                } else {
                    kernels::axpy_f32(w, reinterpret_cast<const float*>(vbase) + slot * vw + kvh * dv, oh, dv);
                }
                if (++slot == slots) slot = 0;
            }
        }
    });
}

void CpuExecutable::unary(const Node& n) {
    const Tensor& dst = g_.tensor(n.dst);
    const float* a = f32(n.src[0]);
    float* d = f32(n.dst);
    const int64_t ne0 = dst.ne0;
    switch (n.op) {
        case Op::Rows:
            std::memcpy(d, a + n.i0 * ne0, static_cast<size_t>(dst.n_elements()) * 4);
            return;
        case Op::SwiGLU: {
            const float* u = f32(n.src[1]);
            maybe_parallel(be_.pool(), dst.ne1, ne0 * 4, [&](int64_t r0, int64_t r1, int) {
                kernels::silu(a + r0 * ne0, d + r0 * ne0, (r1 - r0) * ne0);
                kernels::mul(d + r0 * ne0, u + r0 * ne0, d + r0 * ne0, (r1 - r0) * ne0);
            });
            return;
        }
        case Op::GeGLU: {
            const float* u = f32(n.src[1]);
            maybe_parallel(be_.pool(), dst.ne1, ne0 * 16, [&](int64_t r0, int64_t r1, int) {
                kernels::gelu_tanh(a + r0 * ne0, d + r0 * ne0, (r1 - r0) * ne0);
                kernels::mul(d + r0 * ne0, u + r0 * ne0, d + r0 * ne0, (r1 - r0) * ne0);
            });
            return;
        }
        case Op::Softcap: {
            const float cap = n.f, inv = 1.0f / n.f;
            maybe_parallel(be_.pool(), dst.ne1, ne0 * 16, [&](int64_t r0, int64_t r1, int) {
                for (int64_t i = r0 * ne0; i < r1 * ne0; ++i) d[i] = cap * std::tanh(a[i] * inv);
            });
            return;
        }
        case Op::Silu:
            kernels::silu(a, d, dst.n_elements());
            return;
        case Op::Scale:
            if (d != a) std::memcpy(d, a, static_cast<size_t>(dst.n_elements()) * 4);
            kernels::scale(d, n.f, dst.n_elements());
            return;
        default:
            throw Error(fmt::format("cpu backend: op {} not handled", graph::op_name(n.op)));
    }
}

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int n_threads) {
    if (n_threads <= 0) n_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    return std::make_unique<CpuBackend>(n_threads);
}

}  // namespace kiln::backend
