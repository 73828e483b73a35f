// CPU backend: runs a graph node by node with kernels/ on one thread pool.
//
// Memory: every executable's values live in one workspace owned by the backend (runs are sequential
// within a context, so executables of different batch shapes share it); the workspace, the matmul
// scratch and the attention scratch (per-row scores with the KV cache, the tiled prompt attention's
// per-thread tiles with the backend) are sized when a graph is compiled or a KV cache allocated.
// run() allocates nothing but the next KV page of a sequence (once per page_tokens tokens, CpuKv).
//
// Attention: a batch of at least cpu_tiled_attention_min_tokens() tokens (a prompt) runs tiled
// (attention_tiled: kernels/flash_attn.h, each K/V block converted once per tile of query rows);
// decode runs the same kernel with each KV head's query rows as one tile over chunks of the keys
// split across the threads, the chunks' parts merged (attention_split); what neither takes (too
// many rows for a tile) goes one (token, head) at a time (attention, attention_mla).
#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <thread>

#include <fmt/format.h>

#include "backend/backend.h"
#include "kernels/attention.h"
#include "kernels/flash_attn.h"
#include "kernels/matmul.h"
#include "kernels/moe.h"
#include "kernels/ops.h"
#include "kernels/rope.h"
#include "kernels/threadpool.h"
#include "kiln/error.h"
#include "quant/quant.h"

namespace kiln::backend {

namespace {

using graph::Node;
using graph::Op;
using graph::Tensor;
using graph::TensorId;
using graph::TensorKind;

std::atomic<int64_t> g_tiled_min_tokens{kCpuTiledAttentionMinTokens};
std::atomic<int64_t> g_tiled_runs{0};
std::atomic<int64_t> g_split_runs{0};
std::atomic<bool> g_split_enabled{true};

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

// Memory that is really taken now: a large allocation is mapped lazily by the kernel, so a KV cache
// the machine cannot hold would only fail (or be killed) when generation reaches it. Writing it
// once makes what the memory plan counted resident at once (and its contents defined).
AlignedBuf zeroed_bytes(size_t n) {
    AlignedBuf b = aligned_bytes(n);
    std::memset(b.get(), 0, std::max<size_t>(64, (n + 63) / 64 * 64));
    return b;
}

// K and V of every layer (KvRowFormat: n_head_kv heads of head_dim elements, f32, f16 or
// quantized). A ring layer (sliding window) has one buffer of its slots, taken at once. The other
// layers are paged (KvLayout::page_tokens): page j holds positions [j * P, (j + 1) * P) of all of
// them, taken when a run first writes there (zeroed, so that any row read is defined), shared by
// reference with the prefix cache and other sequences, copied before a shared page is written.
// Each layer reads its rows through a table of row pointers per page (a ring: one entry), so the
// attention finds position p's row at table[p >> shift] + (p & mask) * row bytes. An MLA layer
// (v_in_k) stores K only: V is read from the head of each K row.
class CpuKv final : public KvBuffers {
public:
    static constexpr int kRingShift = 62;  // a ring's slots all lie in its one "page"

    CpuKv(const KvLayout& layout, int n_threads) : layout_(layout), n_threads_(n_threads) {
        const int64_t P = layout.page_tokens;
        if (P < 1 || (P & (P - 1)) != 0 || P > (int64_t{1} << 30))
            throw Error(fmt::format("cpu backend: KV pages of {} tokens (a power of two up to 2^30 expected)", P));
        shift_ = std::countr_zero(static_cast<uint64_t>(P));
        const int64_t n_pages = layout.n_pages();
        pages_.resize(static_cast<size_t>(n_pages));
        for (size_t il = 0; il < layout.layers.size(); ++il) {
            const KvLayer& l = layout.layers[il];
            layout.k_row(il).check(fmt::format("cpu backend: layer {} keys", il));
            if (!l.v_in_k) layout.v_row(il).check(fmt::format("cpu backend: layer {} values", il));
            if (layout.is_ring(il)) {
                const size_t n = static_cast<size_t>(layout.slots(il));
                ring_.push_back(zeroed_bytes(n * layout.k_row(il).row_bytes()));
                k_.push_back({ring_.back().get()});
                ring_bytes_ += n * layout.k_row(il).row_bytes();
                if (!l.v_in_k) {
                    ring_.push_back(zeroed_bytes(n * layout.v_row(il).row_bytes()));
                    v_.push_back({ring_.back().get()});
                    ring_bytes_ += n * layout.v_row(il).row_bytes();
                } else {
                    v_.push_back(k_.back());
                }
            } else {
                k_.emplace_back(static_cast<size_t>(n_pages), nullptr);
                v_.emplace_back(static_cast<size_t>(n_pages), nullptr);
            }
        }
        // Per thread: the scores of one query head over the whole context.
        scores_stride_ = static_cast<size_t>(layout.n_ctx + 16);
        scores_ = aligned_bytes(scores_stride_ * sizeof(float) * static_cast<size_t>(n_threads));
    }
    const KvLayout& layout() const override { return layout_; }
    void read_rows(size_t layer, bool v, int64_t slot, int64_t n, void* dst) override {
        const size_t row = layout_.checked_row_bytes(layer, v, slot, n, "cpu backend: read_rows");
        for_runs(layer, slot, n, [&](int64_t s, int64_t off, int64_t run) {
            const uint8_t* p = row_ptr(layer, v, s);
            if (!p) throw Error(fmt::format("cpu backend: read_rows: position {} of KV layer {} is not held", s, layer));
            std::memcpy(static_cast<uint8_t*>(dst) + row * static_cast<size_t>(off), p, row * static_cast<size_t>(run));
        });
    }
    void write_rows(size_t layer, bool v, int64_t slot, int64_t n, const void* src) override {
        const size_t row = layout_.checked_row_bytes(layer, v, slot, n, "cpu backend: write_rows");
        if (!layout_.is_ring(layer)) prepare(slot, slot + n);
        for_runs(layer, slot, n, [&](int64_t s, int64_t off, int64_t run) {
            std::memcpy(row_ptr(layer, v, s), static_cast<const uint8_t*>(src) + row * static_cast<size_t>(off),
                        row * static_cast<size_t>(run));
        });
    }
    int64_t page_tokens() const override { return layout_.page_tokens; }
    void prepare(int64_t first, int64_t end) override {
        if (first < 0 || first > end || end > layout_.n_ctx)
            throw Error(fmt::format("cpu backend: KV positions [{}, {}) outside the cache of {}", first, end, layout_.n_ctx));
        if (first == end) return;
        const int64_t last_page = (end - 1) >> shift_;
        // Every page up to the last written is held (a run reads from position 0 or its window).
        for (; covered_ <= last_page; ++covered_) {
            if (pages_[static_cast<size_t>(covered_)]) continue;
            KvPage pg = make_kv_page(layout_.page_bytes(covered_));
            std::memset(pg.get(), 0, layout_.page_bytes(covered_));
            assign(covered_, std::move(pg));
        }
        // A page that someone else reads too is copied before it is written.
        for (int64_t j = first >> shift_; j <= last_page; ++j) {
            const KvPage& pg = pages_[static_cast<size_t>(j)];
            if (pg.use_count() <= 1) continue;
            KvPage copy = make_kv_page(layout_.page_bytes(j));
            std::memcpy(copy.get(), pg.get(), layout_.page_bytes(j));
            assign(j, std::move(copy));
        }
    }
    void release_from(int64_t n) override {
        const int64_t keep = std::clamp<int64_t>((n + layout_.page_tokens - 1) >> shift_, 0, layout_.n_pages());
        for (int64_t j = keep; j < layout_.n_pages(); ++j)
            if (pages_[static_cast<size_t>(j)]) assign(j, nullptr);
        covered_ = std::min(covered_, keep);
    }
    KvPage page(int64_t j) const override {
        return j >= 0 && j < layout_.n_pages() ? pages_[static_cast<size_t>(j)] : nullptr;
    }
    void set_page(int64_t j, KvPage p) override {
        if (j < 0 || j >= layout_.n_pages() || !p)
            throw Error(fmt::format("cpu backend: no KV page {} to set ({} pages)", j, layout_.n_pages()));
        assign(j, std::move(p));
    }
    size_t bytes_held() const override { return ring_bytes_ + page_bytes_; }

    // Layer `layer`'s K (v false) or V row table and its shift (KvRows).
    uint8_t* const* table(int layer, bool v) const { return (v ? v_ : k_)[static_cast<size_t>(layer)].data(); }
    int shift(int layer) const { return layout_.is_ring(static_cast<size_t>(layer)) ? kRingShift : shift_; }
    float* scores(int thread) { return reinterpret_cast<float*>(scores_.get()) + scores_stride_ * static_cast<size_t>(thread); }
    int n_threads() const { return n_threads_; }

private:
    // Page j is p from now on (nullptr: none): the tables of every paged layer point into it.
    void assign(int64_t j, KvPage p) {
        const auto u = static_cast<size_t>(j);
        if (pages_[u]) page_bytes_ -= layout_.page_bytes(j);
        if (p) page_bytes_ += layout_.page_bytes(j);
        for (size_t il = 0; il < layout_.layers.size(); ++il) {
            if (layout_.is_ring(il)) continue;
            k_[il][u] = p ? p.get() + layout_.page_offset(j, il, false) : nullptr;
            v_[il][u] = p ? p.get() + layout_.page_offset(j, il, !layout_.layers[il].v_in_k) : nullptr;
        }
        pages_[u] = std::move(p);
    }
    // The row of `slot` (nullptr when its page is not held).
    uint8_t* row_ptr(size_t layer, bool v, int64_t slot) const {
        const auto& t = (v ? v_ : k_)[layer];
        const int sh = shift(static_cast<int>(layer));
        uint8_t* page = t[static_cast<size_t>(slot >> sh)];
        const size_t row = (v ? layout_.v_row(layer) : layout_.k_row(layer)).row_bytes();
        return page ? page + static_cast<size_t>(slot & ((int64_t{1} << sh) - 1)) * row : nullptr;
    }
    // f(slot, offset from the first, count) for the runs of [slot, slot + n) within one page.
    template <class F>
    void for_runs(size_t layer, int64_t slot, int64_t n, F&& f) const {
        const int64_t P = layout_.is_ring(layer) ? n + 1 : layout_.page_tokens;
        for (int64_t done = 0; done < n;) {
            const int64_t s = slot + done;
            const int64_t run = std::min(n - done, P - (layout_.is_ring(layer) ? 0 : s & (P - 1)));
            f(s, done, run);
            done += run;
        }
    }

    KvLayout layout_;
    int n_threads_ = 0;
    int shift_ = 0;
    std::vector<AlignedBuf> ring_;
    std::vector<std::vector<uint8_t*>> k_, v_;  // per layer: a row table per page (a ring: its buffer)
    std::vector<KvPage> pages_;
    int64_t covered_ = 0;  // pages [0, covered_) are held
    size_t ring_bytes_ = 0, page_bytes_ = 0;
    AlignedBuf scores_;
    size_t scores_stride_ = 0;
};

// The rows of one layer's K or V buffer (kernels/kv_rows.h) in format f, through a row table of CpuKv.
kernels::KvRows kv_rows(const KvRowFormat& f, uint8_t* const* table, int shift) {
    return kernels::KvRows(f.type, f.n_head, f.dim, f.head_bytes(), f.head_code_bytes(), table, shift);
}

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
    // Tokens [t0, t1) of the batch, token t0 at position base.
    void store_kv(const Node& n, CpuKv& kv, int64_t base, int64_t t0, int64_t t1);
    void attention(const Node& n, CpuKv& kv, int64_t base, int64_t t0, int64_t t1);
    void attention_mla(const Node& n, CpuKv& kv, int64_t base, int64_t t0, int64_t t1);
    void attention_tiled(const Node& n, CpuKv& kv, int64_t base, int64_t t0, int64_t t1);
    // Decode (a few tokens): the query heads of each KV head as one tile, its keys split in
    // chunks over the threads, the parts merged. False when the shape does not suit it.
    bool attention_split(const Node& n, CpuKv& kv, int64_t base, int64_t t0, int64_t t1);
    // What every attention path reads and writes, from token t0 of the batch: the queries, the sinks
    // (null without), the output rows, and the layer's K and V rows (MLA: V is the head of each K row).
    struct AttnIo {
        const float* q;
        const float* sinks;
        float* out;
        kernels::KvRows k, v;
    };
    AttnIo attn_io(const Node& n, CpuKv& kv, int64_t t0) const;
    bool tiled(int64_t n_tok) const { return n_tok >= std::max<int64_t>(2, g_tiled_min_tokens.load()); }
    void kv_op(const Node& n, CpuKv& kv, int64_t base, int64_t t0, int64_t t1);
    void unary(const Node& n);
    void slice_heads(const Node& n);
    void concat_heads(const Node& n);
    void top_k(const Node& n);
    void gather(const Node& n);
    void grouped_matmul(const Node& n);
    void moe_combine(const Node& n);

    CpuBackend& be_;
    graph::Graph g_;
    graph::Plan plan_;
};

class CpuBackend final : public Backend {
public:
    explicit CpuBackend(int n_threads) : pool_(n_threads) {
        for (int i = 0; i < pool_.size(); ++i) solo_.push_back(std::make_unique<ThreadPool>(1));
    }
    const char* name() const override { return "cpu"; }

    std::unique_ptr<Executable> compile(graph::Graph g) override {
        return std::make_unique<CpuExecutable>(*this, std::move(g));
    }
    std::unique_ptr<KvBuffers> alloc_kv(const KvLayout& layout) override {
        return std::make_unique<CpuKv>(layout, pool_.size());
    }

    void reserve(size_t workspace, size_t scratch, size_t aux = 0, size_t solo_scratch = 0, size_t flash = 0, size_t split = 0) {
        if (split > split_size_) {
            split_ = aligned_bytes(split);
            split_size_ = split;
        }
        if (flash > flash_stride_) {
            flash_stride_ = (flash + 63) / 64 * 64;
            flash_ = aligned_bytes(flash_stride_ * static_cast<size_t>(pool_.size()));
        }
        if (solo_scratch > solo_stride_) {
            solo_stride_ = (solo_scratch + 63) / 64 * 64;
            solo_scratch_ = aligned_bytes(solo_stride_ * solo_.size());
        }
        if (workspace > workspace_size_) {
            workspace_ = aligned_bytes(workspace);
            workspace_size_ = workspace;
        }
        if (scratch > scratch_size_) {
            scratch_ = aligned_bytes(scratch);
            scratch_size_ = scratch;
        }
        if (aux > aux_size_) {
            aux_ = aligned_bytes(aux);
            aux_size_ = aux;
        }
    }
    uint8_t* workspace() const { return workspace_.get(); }
    void* scratch() const { return scratch_.get(); }
    // Gather/scatter room of the grouped matmuls (MoE experts, per-head projections).
    uint8_t* aux() const { return aux_.get(); }
    ThreadPool& pool() { return pool_; }
    // Thread th's own one-thread pool and matmul scratch: a whole small matmul per thread.
    ThreadPool& solo(int th) { return *solo_[static_cast<size_t>(th)]; }
    void* solo_scratch(int th) const { return solo_scratch_.get() + solo_stride_ * static_cast<size_t>(th); }
    // Thread th's tile of the tiled prompt attention (flash_bytes() each).
    void* flash_scratch(int th) const { return flash_.get() + flash_stride_ * static_cast<size_t>(th); }
    size_t flash_bytes() const { return flash_stride_; }
    // The parts of decode's split attention (CpuComputeBytes::split), shared by the threads.
    float* split_parts() const { return reinterpret_cast<float*>(split_.get()); }
    size_t split_floats() const { return split_size_ / sizeof(float); }

private:
    ThreadPool pool_;
    std::vector<std::unique_ptr<ThreadPool>> solo_;
    AlignedBuf workspace_, scratch_, aux_, solo_scratch_, flash_, split_;
    size_t workspace_size_ = 0, scratch_size_ = 0, aux_size_ = 0, solo_stride_ = 0, flash_stride_ = 0, split_size_ = 0;
};

// Groups of at most this many rows (decode) are spread over the threads whole, one per thread,
// when there are enough of them: one pool dispatch per op instead of one per head or expert.
constexpr int64_t kSoloMaxTokens = 4;

// A grouped matmul (MoeMatMul, HeadMatMul) as (group, token, slot) work: slot s of token t multiplies
// matrix group(t, s) of a 3-D weight by its own input row. Sizes of its aux area.
struct GroupedShape {
    int64_t n_tok = 0, n_slot = 0, k = 0, rows = 0, n_group = 0;
    size_t aux_bytes() const {
        const size_t pairs = static_cast<size_t>(n_tok * n_slot);
        auto al = [](size_t b) { return (b + 63) / 64 * 64; };
        return al((pairs + static_cast<size_t>(n_group) + 1) * sizeof(int32_t) * 2) +
               al(pairs * static_cast<size_t>(k) * sizeof(float)) + al(pairs * static_cast<size_t>(rows) * sizeof(float));
    }
};

GroupedShape grouped_shape(const graph::Graph& g, const Node& n) {
    const Tensor& w = g.tensor(n.src[0]);
    const Tensor& x = g.tensor(n.src[1]);
    GroupedShape s;
    s.n_tok = x.ne1;
    s.k = w.ne0;
    s.rows = w.ne1;
    s.n_group = w.ne2;
    s.n_slot = n.op == Op::HeadMatMul ? w.ne2 : g.tensor(n.src[2]).ne0;
    return s;
}

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

}  // namespace

void CpuComputeBytes::max_with(const CpuComputeBytes& o) {
    workspace = std::max(workspace, o.workspace);
    scratch = std::max(scratch, o.scratch);
    aux = std::max(aux, o.aux);
    solo_per_thread = std::max(solo_per_thread, o.solo_per_thread);
    flash_per_thread = std::max(flash_per_thread, o.flash_per_thread);
    split = std::max(split, o.split);
}

size_t CpuComputeBytes::total(int n_threads) const {
    auto al = [](size_t b) { return (b + 63) / 64 * 64; };
    const auto n = static_cast<size_t>(std::max(1, n_threads));
    return al(workspace) + al(scratch) + al(aux) + al(solo_per_thread) * n + al(flash_per_thread) * n + al(split);
}

size_t cpu_kv_scores_bytes(int64_t n_ctx, int n_threads) {
    return static_cast<size_t>(n_ctx + 16) * sizeof(float) * static_cast<size_t>(std::max(1, n_threads));
}

namespace {
// Decode's split attention: the chunks per KV head (enough work items for every thread, each chunk
// at least 256 keys of the len visible) and the floats of all the parts (each row's output, max
// and sum, per chunk) of a batch of n_tok tokens; 0 when the batch has too many rows for it.
int64_t split_chunks(const graph::AttentionParams& p, int64_t len, int n_threads) {
    return std::clamp<int64_t>((4 * int64_t{n_threads} + p.n_head_kv - 1) / p.n_head_kv, 1, std::min<int64_t>(1024, (len + 255) / 256));
}
}  // namespace

size_t split_attention_floats(const graph::AttentionParams& p, int64_t n_tok, int n_threads) {
    const int64_t rows = n_tok * (p.n_head / p.n_head_kv);
    if (rows > kernels::FlashAttn::kRows) return 0;
    const int64_t chunks = split_chunks(p, int64_t{1} << 30, n_threads);
    return static_cast<size_t>(p.n_head_kv * chunks * rows * ((p.head_dim_v + 15) / 16 * 16 + 2));
}

CpuComputeBytes cpu_compute_bytes(const graph::Graph& g, int n_threads) {
    CpuComputeBytes c;
    c.workspace = static_cast<size_t>(graph::plan_buffers(g, 64).workspace_bytes);
    for (const Node& n : g.nodes()) {
        // Tiles: prompts (tiled attention) and decode (split attention, whose parts are kept too).
        if (n.op == Op::Attention) {
            c.flash_per_thread = std::max(c.flash_per_thread, kernels::FlashAttn::scratch_bytes(n.attn.head_dim_k, n.attn.head_dim_v));
            c.split = std::max(c.split, split_attention_floats(n.attn, g.tensor(n.src[0]).ne1, n_threads) * sizeof(float));
        }
        if (n.op != Op::MatMul && n.op != Op::MoeMatMul && n.op != Op::HeadMatMul) continue;
        const Tensor& w = g.tensor(n.src[0]);
        const Tensor& x = g.tensor(n.src[1]);
        if (!kernels::matmul_supports(w.wtype))
            throw Error(fmt::format("cpu backend: weight '{}' has type {}, which the CPU matmul does not support", w.name,
                                    type_name(w.wtype)));
        int64_t n_tok = x.ne1;
        if (n.op != Op::MatMul) {
            const GroupedShape gs = grouped_shape(g, n);
            n_tok = gs.n_tok * gs.n_slot;  // at most every pair on one matrix
            c.aux = std::max(c.aux, gs.aux_bytes());
            c.solo_per_thread = std::max(c.solo_per_thread, kernels::matmul_scratch_bytes(w.wtype, w.ne0, kSoloMaxTokens, 1));
        }
        c.scratch = std::max(c.scratch, kernels::matmul_scratch_bytes(w.wtype, w.ne0, n_tok, n_threads));
    }
    return c;
}

namespace {

CpuExecutable::CpuExecutable(CpuBackend& be, graph::Graph g) : be_(be), g_(std::move(g)) {
    plan_ = graph::plan_buffers(g_, 64);
    const CpuComputeBytes need = cpu_compute_bytes(g_, be_.pool().size());
    be_.reserve(static_cast<size_t>(plan_.workspace_bytes), need.scratch, need.aux, need.solo_per_thread, need.flash_per_thread, need.split);
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
    // The positions the batch writes get their pages (missing ones taken, shared ones copied)
    // before anything runs: once per page of tokens at most.
    for (const Node& n : g_.nodes()) {
        if (n.op != Op::StoreKV) continue;
        const int64_t n_tok = g_.tensor(n.src[0]).ne1;
        if (!args.seq_kv.empty()) {
            if (args.seq_pos.size() != args.seq_kv.size())
                throw Error(fmt::format("cpu backend: {} positions for {} sequences", args.seq_pos.size(), args.seq_kv.size()));
            for (size_t t = 0; t < args.seq_kv.size(); ++t) args.seq_kv[t]->prepare(args.seq_pos[t], args.seq_pos[t] + 1);
        } else if (args.kv) {
            args.kv->prepare(args.kv_base, args.kv_base + n_tok);
        }
        break;
    }
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
            const int64_t n_tok = g_.tensor(n.src[0]).ne1;
            if (!args.seq_kv.empty()) {
                // One token per sequence: each goes to its own cache at its own position.
                if (static_cast<int64_t>(args.seq_kv.size()) != n_tok || args.seq_pos.size() != args.seq_kv.size())
                    throw Error(fmt::format("cpu backend: {} sequences given for a batch of {} tokens", args.seq_kv.size(),
                                            n_tok));
                for (int64_t t = 0; t < n_tok; ++t) {
                    auto& kv = static_cast<CpuKv&>(*args.seq_kv[static_cast<size_t>(t)]);
                    if (kv.n_threads() < be_.pool().size())
                        throw Error(fmt::format("cpu backend: a batched cache has scratch for {} threads, the pool runs {}",
                                                kv.n_threads(), be_.pool().size()));
                    kv_op(n, kv, args.seq_pos[static_cast<size_t>(t)], t, t + 1);
                }
                return;
            }
            if (!args.kv) throw Error(fmt::format("cpu backend: {} needs a KV cache", graph::op_name(n.op)));
            return kv_op(n, static_cast<CpuKv&>(*args.kv), args.kv_base, 0, n_tok);
        }
        case Op::SwiGLU:
        case Op::GeGLU:
        case Op::SwiGLUOai:
        case Op::Softcap:
        case Op::Silu:
        case Op::Scale:
        case Op::Rows:
        case Op::Sigmoid:
        case Op::Softmax:
        case Op::NormalizeSum: return unary(n);
        case Op::SliceHeads: return slice_heads(n);
        case Op::ConcatHeads: return concat_heads(n);
        case Op::TopK: return top_k(n);
        case Op::Gather: return gather(n);
        case Op::HeadMatMul:
        case Op::MoeMatMul: return grouped_matmul(n);
        case Op::MoeCombine: return moe_combine(n);
    }
}

void CpuExecutable::get_rows(const Node& n) {
    const Tensor& w = g_.tensor(n.src[0]);
    const Tensor& dst = g_.tensor(n.dst);
    const int32_t* ids = i32(n.src[1]);
    float* out = f32(n.dst);
    const uint64_t rb = w.row_bytes();
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
    if (p.n_dims > kernels::kRopeMaxDims)
        throw Error(fmt::format("cpu backend: rope over {} dims (at most {})", p.n_dims, kernels::kRopeMaxDims));
    float corr[2] = {0.0f, 0.0f};
    if (p.ext_factor != 0.0f) graph::rope_yarn_corr_dims(p, corr);
    maybe_parallel(be_.pool(), x.ne1, ne0 * 8, [&](int64_t r0, int64_t r1, int) {
        kernels::rope(px + r0 * ne0, d + r0 * ne0, r1 - r0, ne0, pos + r0, p.n_head, p.head_dim, p.n_dims,
                      p.mode == graph::RopeMode::Neox, p.freq_base, p.freq_scale, p.ext_factor, corr, p.attn_factor);
    });
}

void CpuExecutable::kv_op(const Node& n, CpuKv& kv, int64_t base, int64_t t0, int64_t t1) {
    if (n.op == Op::StoreKV) return store_kv(n, kv, base, t0, t1);
    if (n.attn.v_in_k) return attention_mla(n, kv, base, t0, t1);
    return attention(n, kv, base, t0, t1);
}

// Token t0 + t of the batch is at position base + t; its K/V row goes to slot (base + t) % slots of the
// layer (the identity for a full layer, a ring for a sliding-window one).
void CpuExecutable::store_kv(const Node& n, CpuKv& kv, int64_t base, int64_t T0, int64_t T1) {
    const graph::AttentionParams& p = n.attn;
    const KvLayout& L = kv.layout();
    const int64_t n_tok = T1 - T0;
    if (base < 0 || base + n_tok > L.n_ctx)
        throw Error(fmt::format("cpu backend: KV positions [{}, {}) outside the cache of {}", base, base + n_tok, L.n_ctx));
    if (p.layer < 0 || static_cast<size_t>(p.layer) >= L.layers.size() || L.layers[static_cast<size_t>(p.layer)].v_in_k != p.v_in_k)
        throw Error(fmt::format("cpu backend: KV layer {} does not match the cache layout", p.layer));
    const int64_t slots = L.slots(static_cast<size_t>(p.layer));
    const int64_t kw = static_cast<int64_t>(p.n_head_kv) * p.head_dim_k;
    const int64_t vw = static_cast<int64_t>(p.n_head_kv) * p.head_dim_v;
    const float* pk = f32(n.src[0]) + T0 * kw;
    const float* pv = p.v_in_k ? nullptr : f32(n.src[1]) + T0 * vw;
    const kernels::KvRows krows = kv_rows(L.k_row(static_cast<size_t>(p.layer)), kv.table(p.layer, false), kv.shift(p.layer));
    const kernels::KvRows vrows = kv_rows(L.v_row(static_cast<size_t>(p.layer)), kv.table(p.layer, !p.v_in_k), kv.shift(p.layer));
    for (int64_t t = 0; t < n_tok; ++t) {
        const int64_t slot = (base + t) % slots;
        krows.store(slot, pk + t * kw);
        if (pv) vrows.store(slot, pv + t * vw);
    }
}

// Token t (position base + t) attends to positions [first, base + t], first = 0 or the window's
// first position; position j is read from slot j % slots.
void CpuExecutable::attention(const Node& n, CpuKv& kv, int64_t base, int64_t T0, int64_t T1) {
    const graph::AttentionParams& p = n.attn;
    const Tensor& q = g_.tensor(n.src[0]);
    const KvLayout& L = kv.layout();
    const int64_t n_tok = T1 - T0;
    if (base < 0 || base + n_tok > L.n_ctx)
        throw Error(fmt::format("cpu backend: attention over positions [0, {}) outside the cache of {}", base + n_tok,
                                L.n_ctx));
    const int64_t slots = L.slots(static_cast<size_t>(p.layer));
    if (slots < L.n_ctx && (p.window <= 0 || slots < p.window + n_tok - 1))
        throw Error(fmt::format("cpu backend: layer {} keeps a ring of {} KV slots, too few for a window of {} and a "
                                "batch of {} tokens",
                                p.layer, slots, p.window, n_tok));
    if (tiled(n_tok)) return attention_tiled(n, kv, base, T0, T1);
    if (attention_split(n, kv, base, T0, T1)) return;
    const int dk = p.head_dim_k, dv = p.head_dim_v;
    const int group = p.n_head / p.n_head_kv;
    const AttnIo io = attn_io(n, kv, T0);
    const int64_t items = n_tok * p.n_head;

    parallel(be_.pool(), items, [&](int64_t b, int64_t e, int th) {
        float* scores = kv.scores(th);
        for (int64_t it = b; it < e; ++it) {
            const int64_t t = it / p.n_head;
            const int h = static_cast<int>(it % p.n_head);
            const int64_t last = base + t;  // inclusive
            const int64_t first = p.window > 0 ? std::max<int64_t>(0, last - p.window + 1) : 0;
            kernels::attend(io.q + t * q.ne0 + static_cast<int64_t>(h) * dk, io.k, io.v, h / group, first, last - first + 1,
                            slots, dk, dv, p.scale, p.softcap, io.sinks ? io.sinks + h : nullptr, scores,
                            io.out + t * (static_cast<int64_t>(p.n_head) * dv) + static_cast<int64_t>(h) * dv);
        }
    });
}

CpuExecutable::AttnIo CpuExecutable::attn_io(const Node& n, CpuKv& kv, int64_t T0) const {
    const graph::AttentionParams& p = n.attn;
    const KvLayout& L = kv.layout();
    const auto layer = static_cast<size_t>(p.layer);
    const float* sinks = nullptr;
    if (n.src[1] != graph::kNone) {
        const Tensor& st = g_.tensor(n.src[1]);
        sinks = st.kind == TensorKind::Weight ? static_cast<const float*>(st.data) : f32(n.src[1]);
    }
    return {f32(n.src[0]) + T0 * g_.tensor(n.src[0]).ne0, sinks, f32(n.dst) + T0 * (static_cast<int64_t>(p.n_head) * p.head_dim_v),
            kv_rows(L.k_row(layer), kv.table(p.layer, false), kv.shift(p.layer)),
            kv_rows(L.v_row(layer), kv.table(p.layer, !p.v_in_k), kv.shift(p.layer))};
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
        case Op::SwiGLUOai: {
            const float* u = f32(n.src[1]);
            maybe_parallel(be_.pool(), dst.ne1, ne0 * 16, [&](int64_t r0, int64_t r1, int) {
                kernels::swiglu_oai(a + r0 * ne0, u + r0 * ne0, d + r0 * ne0, (r1 - r0) * ne0, n.f, n.f1);
            });
            return;
        }
        case Op::Softcap:
            maybe_parallel(be_.pool(), dst.ne1, ne0 * 16, [&](int64_t r0, int64_t r1, int) {
                kernels::softcap(a + r0 * ne0, d + r0 * ne0, (r1 - r0) * ne0, n.f);
            });
            return;
        case Op::Silu:
            kernels::silu(a, d, dst.n_elements());
            return;
        case Op::Scale:
            if (d != a) std::memcpy(d, a, static_cast<size_t>(dst.n_elements()) * 4);
            kernels::scale(d, n.f, dst.n_elements());
            return;
        case Op::Sigmoid:
            kernels::sigmoid(a, d, dst.n_elements());
            return;
        case Op::Softmax:
            for (int64_t r = 0; r < dst.ne1; ++r) {
                std::memcpy(d + r * ne0, a + r * ne0, static_cast<size_t>(ne0) * 4);
                kernels::softmax_inplace(d + r * ne0, ne0);
            }
            return;
        case Op::NormalizeSum:
            for (int64_t r = 0; r < dst.ne1; ++r) kernels::normalize_sum(a + r * ne0, d + r * ne0, ne0);
            return;
        default:
            throw Error(fmt::format("cpu backend: op {} not handled", graph::op_name(n.op)));
    }
}

// MLA: every query head attends over the same cache rows [latent, k_pe] (one KV head; V = the
// latent). A work item takes a chunk of heads of one token and reads each row once for all of
// them, block by block, with an online softmax (a running max and sum per head), so the cache is
// streamed once per chunk instead of once per head and no context-sized scratch is needed.
void CpuExecutable::attention_mla(const Node& n, CpuKv& kv, int64_t base, int64_t T0, int64_t T1) {
    const graph::AttentionParams& p = n.attn;
    const Tensor& q = g_.tensor(n.src[0]);
    const KvLayout& L = kv.layout();
    const int64_t n_tok = T1 - T0;
    if (base < 0 || base + n_tok > L.n_ctx)
        throw Error(fmt::format("cpu backend: attention over positions [0, {}) outside the cache of {}", base + n_tok,
                                L.n_ctx));
    if (p.n_head_kv != 1 || p.window > 0 || p.softcap > 0 || n.src[1] != graph::kNone || p.head_dim_v > kernels::kMlaMaxDv ||
        L.slots(static_cast<size_t>(p.layer)) != L.n_ctx)
        throw Error(fmt::format("cpu backend: MLA attention of layer {} takes one KV head of a full layer, no window, "
                                "soft-cap or sinks, and V rows of at most {}",
                                p.layer, kernels::kMlaMaxDv));
    if (tiled(n_tok)) return attention_tiled(n, kv, base, T0, T1);
    if (attention_split(n, kv, base, T0, T1)) return;
    const int dk = p.head_dim_k, dv = p.head_dim_v, H = p.n_head;
    const float* pq = f32(n.src[0]) + T0 * q.ne0;
    float* out = f32(n.dst) + T0 * (static_cast<int64_t>(H) * dv);
    // V = the head of each K row.
    const kernels::KvRows rows = kv_rows(L.k_row(static_cast<size_t>(p.layer)), kv.table(p.layer, false), kv.shift(p.layer));
    // Chunk size: as many heads as keep every thread busy (at least two items each), at most kMlaMaxHeads.
    const int64_t threads = be_.pool().size();
    const int chunk = static_cast<int>(std::clamp<int64_t>(H * n_tok / (2 * threads), 1, kernels::kMlaMaxHeads));
    const int n_chunks = (H + chunk - 1) / chunk;

    parallel(be_.pool(), n_tok * n_chunks, [&](int64_t b, int64_t e, int) {
        for (int64_t it = b; it < e; ++it) {
            const int64_t t = it / n_chunks;
            const int h0 = static_cast<int>(it % n_chunks) * chunk;
            const int64_t len = base + t + 1;  // causal: rows [0, base + t]
            kernels::attend_mla(pq + t * q.ne0 + static_cast<int64_t>(h0) * dk, std::min(chunk, H - h0), rows, len, dk, dv,
                                p.scale, out + t * (static_cast<int64_t>(H) * dv) + static_cast<int64_t>(h0) * dv);
        }
    });
}

// Prompt attention in tiles (kernels/flash_attn.h). A work item is one KV head x a tile of query
// rows: tpt tokens x hpt heads of the head's group (all of it unless the group has more heads than
// a tile has rows: FlashAttn::kRows, fewer for a batch too small to give every thread a tile); it
// runs against the keys its rows see, in blocks whose K and V rows are converted to floats once for
// the whole tile. The callers (attention, attention_mla) have checked the positions, the ring and
// the MLA restrictions.
void CpuExecutable::attention_tiled(const Node& n, CpuKv& kv, int64_t base, int64_t T0, int64_t T1) {
    using kernels::FlashAttn;
    constexpr int R = FlashAttn::kRows;
    const graph::AttentionParams& p = n.attn;
    const Tensor& q = g_.tensor(n.src[0]);
    const KvLayout& L = kv.layout();
    const int64_t n_tok = T1 - T0;
    const int64_t slots = L.slots(static_cast<size_t>(p.layer));
    const int64_t dk = p.head_dim_k, dv = p.head_dim_v;
    const int H = p.n_head, n_kv = p.n_head_kv, group = H / n_kv;
    if (p.v_in_k && dv > dk)
        throw Error(fmt::format("cpu backend: MLA layer {} takes values of {} from keys of {}", p.layer, dv, dk));
    if (FlashAttn::scratch_bytes(dk, dv) > be_.flash_bytes())
        throw Error(fmt::format("cpu backend: no tile scratch for the attention of layer {} (a graph of one token?)",
                                p.layer));
    // Rows per tile: R, or fewer (down to one AVX-512 vector) where R would leave threads idle.
    const int64_t threads = be_.pool().size();
    const int rt = static_cast<int>(std::clamp<int64_t>((n_tok * H + threads - 1) / threads, 16, R));
    const int hchunks = (group + rt - 1) / rt;
    const int hpt = (group + hchunks - 1) / hchunks;  // heads per tile
    const int64_t tpt = std::max(1, rt / hpt);         // tokens per tile
    const int64_t tiles = (n_tok + tpt - 1) / tpt * hchunks;
    const int64_t ow = static_cast<int64_t>(H) * dv;  // output row
    const AttnIo io = attn_io(n, kv, T0);
    g_tiled_runs.fetch_add(1, std::memory_order_relaxed);

    parallel(be_.pool(), tiles * n_kv, [&](int64_t b, int64_t e, int th) {
        FlashAttn fa(be_.flash_scratch(th), dk, dv, p.scale, p.softcap);
        const float* qrow[R];
        float* orow[R];
        int64_t first[R], last[R];
        float sink[R];
        for (int64_t it = b; it < e; ++it) {
            // A thread's run of items stays on one KV head (its keys and values stay in cache),
            // its tiles in the order 0, last, 1, last - 1, ...: early (short) and late (long) ones mixed.
            const int kvh = static_cast<int>(it / tiles);
            const int64_t qi = it % tiles;
            const int64_t tile = qi % 2 == 0 ? qi / 2 : tiles - 1 - qi / 2;
            const int64_t t0 = tile / hchunks * tpt, t1 = std::min(n_tok, t0 + tpt);
            const int g0 = static_cast<int>(tile % hchunks) * hpt, g1 = std::min(group, g0 + hpt);
            int nr = 0;
            for (int64_t t = t0; t < t1; ++t)
                for (int g = g0; g < g1; ++g, ++nr) {
                    const int h = kvh * group + g;
                    qrow[nr] = io.q + t * q.ne0 + static_cast<int64_t>(h) * dk;
                    orow[nr] = io.out + t * ow + static_cast<int64_t>(h) * dv;
                    last[nr] = base + t;
                    first[nr] = p.window > 0 ? std::max<int64_t>(0, last[nr] - p.window + 1) : 0;
                    sink[nr] = io.sinks ? io.sinks[h] : 0.0f;
                }
            fa.begin(nr, qrow, first, last);
            kernels::flash_key_blocks(fa, io.k, io.v, p.v_in_k, kvh, slots, dk, dv, first[0], last[nr - 1]);
            fa.end(orow, io.sinks ? sink : nullptr);
        }
    });
}

bool CpuExecutable::attention_split(const Node& n, CpuKv& kv, int64_t base, int64_t T0, int64_t T1) {
    using kernels::FlashAttn;
    constexpr int R = FlashAttn::kRows, KB = FlashAttn::kKeys;
    const graph::AttentionParams& p = n.attn;
    const Tensor& q = g_.tensor(n.src[0]);
    const KvLayout& L = kv.layout();
    const int64_t n_tok = T1 - T0;
    const int64_t slots = L.slots(static_cast<size_t>(p.layer));
    const int64_t dk = p.head_dim_k, dv = p.head_dim_v;
    const int H = p.n_head, n_kv = p.n_head_kv, group = H / n_kv;
    const int rows = static_cast<int>(n_tok) * group;
    if (!g_split_enabled.load(std::memory_order_relaxed) || rows > R || (p.v_in_k && dv > dk) ||
        FlashAttn::scratch_bytes(dk, dv) > be_.flash_bytes())
        return false;
    // The positions the tokens see: [lo, hi].
    const int64_t lo = p.window > 0 ? std::max<int64_t>(0, base - p.window + 1) : 0;
    const int64_t hi = base + n_tok - 1;
    const int64_t len = hi - lo + 1;
    // Chunks of at least 256 keys, enough of them to give every thread work; their parts (each
    // row's unnormalised output, max and sum) in the backend's split area (reserved at compile).
    const int64_t threads = be_.pool().size();
    const int64_t dvp = (dv + 15) / 16 * 16;
    const auto per_part = static_cast<size_t>(rows) * static_cast<size_t>(dvp + 2);
    int64_t chunks = split_chunks(p, len, static_cast<int>(threads));
    if (static_cast<size_t>(n_kv * chunks) * per_part > be_.split_floats()) return false;
    const int64_t csize = ((len + chunks - 1) / chunks + KB - 1) / KB * KB;
    chunks = (len + csize - 1) / csize;
    const int64_t ow = static_cast<int64_t>(H) * dv;
    float* parts = be_.split_parts();
    const AttnIo io = attn_io(n, kv, T0);
    g_split_runs.fetch_add(1, std::memory_order_relaxed);

    // A chunk of one KV head as one tile of the flash-attention kernel: the group's query rows
    // (every token of the batch times the heads sharing the KV head) against the chunk's keys a
    // block at a time, each block converted to floats once for all rows; each row's unnormalised
    // output, max and sum go to the chunk's part.
    parallel(be_.pool(), n_kv * chunks, [&](int64_t b, int64_t e, int th) {
        FlashAttn fa(be_.flash_scratch(th), dk, dv, p.scale, p.softcap);
        const float* qrow[R];
        float* orow[R];
        int64_t first[R], last[R];
        for (int64_t it = b; it < e; ++it) {
            const int kvh = static_cast<int>(it / chunks);
            const int64_t c0 = lo + (it % chunks) * csize, c1 = std::min(hi, c0 + csize - 1);
            float* part = parts + static_cast<size_t>(it) * per_part;
            float* m = part + static_cast<size_t>(rows) * static_cast<size_t>(dvp);
            float* l = m + rows;
            for (int r = 0; r < rows; ++r) {
                const int64_t t = r / group;
                const int64_t row_last = base + t;
                const int64_t row_first = p.window > 0 ? std::max<int64_t>(0, row_last - p.window + 1) : 0;
                qrow[r] = io.q + t * q.ne0 + static_cast<int64_t>(kvh * group + r % group) * dk;
                orow[r] = part + static_cast<int64_t>(r) * dvp;
                first[r] = std::max(row_first, c0);  // last < first: none of the chunk's keys
                last[r] = std::min(row_last, c1);
            }
            fa.begin(rows, qrow, first, last);
            kernels::flash_key_blocks(fa, io.k, io.v, p.v_in_k, kvh, slots, dk, dv, c0, c1);
            fa.end_parts(orow, m, l);
        }
    });
    // Merge each row's parts (one per chunk).
    parallel(be_.pool(), static_cast<int64_t>(n_kv) * rows, [&](int64_t b, int64_t e, int) {
        const float* po[1024];
        float pm[1024], pl[1024];
        for (int64_t it = b; it < e; ++it) {
            const int kvh = static_cast<int>(it / rows), r = static_cast<int>(it % rows);
            const int64_t t = r / group;
            const int h = kvh * group + r % group;
            const int nc = static_cast<int>(std::min<int64_t>(chunks, 1024));
            for (int c = 0; c < nc; ++c) {
                const float* part = parts + static_cast<size_t>(kvh * chunks + c) * per_part;
                po[c] = part + r * dvp;
                pm[c] = part[static_cast<size_t>(rows) * static_cast<size_t>(dvp) + static_cast<size_t>(r)];
                pl[c] = part[static_cast<size_t>(rows) * static_cast<size_t>(dvp) + static_cast<size_t>(rows + r)];
            }
            kernels::merge_attention_parts(nc, po, pm, pl, dv, io.sinks ? io.sinks + h : nullptr, io.out + t * ow + static_cast<int64_t>(h) * dv);
        }
    });
    return true;
}

void CpuExecutable::slice_heads(const Node& n) {
    const graph::SliceParams& sp = n.slice;
    const Tensor& x = g_.tensor(n.src[0]);
    const float* a = f32(n.src[0]);
    float* d = f32(n.dst);
    const size_t bytes = static_cast<size_t>(sp.count) * 4;
    for (int64_t t = 0; t < x.ne1; ++t)
        for (int h = 0; h < sp.n_head; ++h)
            std::memcpy(d + (t * sp.n_head + h) * sp.count, a + t * x.ne0 + static_cast<int64_t>(h) * sp.head_dim + sp.first,
                        bytes);
}

void CpuExecutable::concat_heads(const Node& n) {
    const Tensor& A = g_.tensor(n.src[0]);
    const Tensor& B = g_.tensor(n.src[1]);
    const int nh = n.slice.n_head;
    const int64_t da = A.ne0 / nh, db = B.ne0 / nh;
    const float* a = f32(n.src[0]);
    const float* b = f32(n.src[1]);
    float* d = f32(n.dst);
    for (int64_t t = 0; t < A.ne1; ++t)
        for (int h = 0; h < nh; ++h) {
            float* o = d + t * (A.ne0 + B.ne0) + h * (da + db);
            std::memcpy(o, a + t * A.ne0 + h * da, static_cast<size_t>(da) * 4);
            std::memcpy(o + da, b + t * B.ne0 + h * db, static_cast<size_t>(db) * 4);
        }
}

void CpuExecutable::top_k(const Node& n) {
    const Tensor& S = g_.tensor(n.src[0]);
    const graph::TopKParams& p = n.topk;
    const float* sc = f32(n.src[0]);
    const float* bias = nullptr;
    if (n.src[1] != graph::kNone) {
        const Tensor& B = g_.tensor(n.src[1]);
        bias = B.kind == TensorKind::Weight ? static_cast<const float*>(B.data) : f32(n.src[1]);
    }
    int32_t* out = reinterpret_cast<int32_t*>(f32(n.dst));
    const bool grouped = p.n_group > 1 && p.n_group_used < p.n_group;
    if (grouped && p.n_group > kernels::kTopKMaxGroups)
        throw Error(fmt::format("cpu backend: top_k over {} expert groups (at most {})", p.n_group, kernels::kTopKMaxGroups));
    for (int64_t t = 0; t < S.ne1; ++t) kernels::top_k(sc + t * S.ne0, bias, S.ne0, p.k, p.n_group, p.n_group_used, out + t * p.k);
}

void CpuExecutable::gather(const Node& n) {
    const Tensor& X = g_.tensor(n.src[0]);
    const Tensor& I = g_.tensor(n.src[1]);
    const float* x = f32(n.src[0]);
    const int32_t* ids = i32(n.src[1]);
    float* d = f32(n.dst);
    for (int64_t t = 0; t < I.ne1; ++t)
        for (int64_t j = 0; j < I.ne0; ++j) {
            const int32_t id = ids[t * I.ne0 + j];
            if (id < 0 || id >= X.ne0) throw Error(fmt::format("cpu backend: gather index {} outside a row of {}", id, X.ne0));
            d[t * I.ne0 + j] = x[t * X.ne0 + id];
        }
}

// Slot s of token t: y[t][s] = W[group] · x(t, s) (+ bias[group]), group = ids[t][s] (MoE) or s
// (per-head). The pairs are sorted by group; each group's inputs are gathered into one block and
// multiplied with one matmul call, so a matrix no pair uses is never read.
void CpuExecutable::grouped_matmul(const Node& n) {
    const Tensor& w = g_.tensor(n.src[0]);
    const Tensor& x = g_.tensor(n.src[1]);
    const GroupedShape gs = grouped_shape(g_, n);
    const bool moe = n.op == Op::MoeMatMul;
    const int32_t* ids = moe ? i32(n.src[2]) : nullptr;
    const float* bias = nullptr;
    if (moe && n.src[3] != graph::kNone) bias = static_cast<const float*>(g_.tensor(n.src[3]).data);
    const bool x_per_slot = !moe || x.ne0 != w.ne0;
    const float* px = f32(n.src[1]);
    float* py = f32(n.dst);
    const int64_t K = gs.k, R = gs.rows, S = gs.n_slot, T = gs.n_tok, G = gs.n_group;
    const auto mat_b = static_cast<size_t>(w.matrix_stride());
    const auto* wbase = static_cast<const uint8_t*>(w.data);
    auto x_row = [&](int64_t t, int64_t s) { return px + t * x.ne0 + (x_per_slot ? s * K : 0); };
    auto y_row = [&](int64_t t, int64_t s) { return py + t * (S * R) + s * R; };

    // Counting sort of the pairs (t * S + s) by group.
    const size_t pairs = static_cast<size_t>(T * S);
    auto* count = reinterpret_cast<int32_t*>(be_.aux());
    int32_t* order = count + G + 1;
    auto group_of = [&](int64_t pair) -> int64_t {
        if (!moe) return pair % S;
        const int32_t e = ids[pair];
        if (e < 0 || e >= G) throw Error(fmt::format("cpu backend: expert id {} of '{}' outside [0, {})", e, w.name, G));
        return e;
    };
    kernels::sort_by_group(static_cast<int64_t>(pairs), G, group_of, count, order, order + pairs);
    auto al = [](size_t b) { return (b + 63) / 64 * 64; };
    float* xg = reinterpret_cast<float*>(be_.aux() + al((pairs + static_cast<size_t>(G) + 1) * sizeof(int32_t) * 2));
    float* yg = xg + al(pairs * static_cast<size_t>(K) * sizeof(float)) / sizeof(float);

    // Group e's pairs are order[count[e], count[e + 1]); its gather rows xg/yg start at count[e],
    // so groups never share bytes and may run at the same time.
    auto run_group = [&](int64_t e, void* scratch, ThreadPool& pool) {
        const int64_t b = count[e], m = count[e + 1] - b;
        const uint8_t* we = wbase + mat_b * static_cast<size_t>(e);
        if (m == 1) {  // one pair (every decode step): straight from its input row into its output row
            const int64_t pr = order[b];
            kernels::matmul(w.wtype, we, R, K, x_row(pr / S, pr % S), 1, y_row(pr / S, pr % S), scratch, pool);
        } else {
            float* xe = xg + b * K;
            float* ye = yg + b * R;
            for (int64_t i = 0; i < m; ++i) {
                const int64_t pr = order[b + i];
                std::memcpy(xe + i * K, x_row(pr / S, pr % S), static_cast<size_t>(K) * 4);
            }
            kernels::matmul(w.wtype, we, R, K, xe, m, ye, scratch, pool);
            for (int64_t i = 0; i < m; ++i) {
                const int64_t pr = order[b + i];
                std::memcpy(y_row(pr / S, pr % S), ye + i * R, static_cast<size_t>(R) * 4);
            }
        }
        if (bias)
            for (int64_t i = 0; i < m; ++i) {
                const int64_t pr = order[b + i];
                kernels::add(y_row(pr / S, pr % S), bias + e * R, y_row(pr / S, pr % S), R);
            }
    };

    // The groups with work (the cursors are free again), and the largest.
    int32_t* busy = order + pairs;
    int64_t n_busy = 0, max_m = 0;
    for (int64_t e = 0; e < G; ++e)
        if (const int64_t m = count[e + 1] - count[e]; m > 0) {
            busy[n_busy++] = static_cast<int32_t>(e);
            max_m = std::max(max_m, m);
        }
    // Decode: enough small groups for every thread: each thread multiplies whole groups with its
    // own one-thread pool and scratch (one dispatch for the op). Else each group is split by rows.
    ThreadPool& pool = be_.pool();
    if (pool.size() > 1 && n_busy >= pool.size() && max_m <= kSoloMaxTokens) {
        parallel(pool, n_busy, [&](int64_t i0, int64_t i1, int th) {
            for (int64_t i = i0; i < i1; ++i) run_group(busy[i], be_.solo_scratch(th), be_.solo(th));
        });
    } else {
        for (int64_t i = 0; i < n_busy; ++i) run_group(busy[i], be_.scratch(), pool);
    }
}

void CpuExecutable::moe_combine(const Node& n) {
    const Tensor& Y = g_.tensor(n.src[0]);
    const Tensor& W = g_.tensor(n.src[1]);
    const Tensor& D = g_.tensor(n.dst);
    kernels::moe_combine(f32(n.src[0]), Y.ne0, f32(n.src[1]), W.ne0, D.ne0, D.ne1, f32(n.dst));
}

}  // namespace

void set_cpu_tiled_attention_min_tokens(int64_t n) { g_tiled_min_tokens.store(n); }
int64_t cpu_tiled_attention_min_tokens() { return std::max<int64_t>(2, g_tiled_min_tokens.load()); }
int64_t cpu_tiled_attention_runs() { return g_tiled_runs.load(); }
int64_t cpu_split_attention_runs() { return g_split_runs.load(); }
void set_cpu_split_attention(bool on) { g_split_enabled.store(on); }

std::unique_ptr<Backend> make_cpu_backend(int n_threads) {
    if (n_threads <= 0) n_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    return std::make_unique<CpuBackend>(n_threads);
}

}  // namespace kiln::backend
