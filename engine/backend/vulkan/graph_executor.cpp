#include "backend/vulkan/graph_executor.h"

#include <algorithm>
#include <bit>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include <fmt/format.h>

#include "backend/vulkan/backend.h"
#include "kiln/error.h"

namespace kiln::backend {

namespace {

using graph::Node;
using graph::Op;
using graph::TensorId;
using graph::TensorKind;

constexpr int kMaxHeadDimK = static_cast<int>(vk::Backend::kAttentionMaxDk);  // attention.comp: DMAX
constexpr int kMaxHeadDimV = static_cast<int>(vk::Backend::kAttentionMaxDv);  // attention.comp: 8 rows x 64 invocations

std::string shape(const graph::Tensor& t) {
    if (t.kind == TensorKind::Weight) return fmt::format("'{}' {} {}", t.name, type_name(t.wtype), t.shape_string());
    return t.shape_string();
}

[[noreturn]] void unsupported(const graph::Graph& g, const Node& n, const std::string& why) {
    std::string operands;
    for (TensorId s : n.src)
        if (s != graph::kNone) operands += (operands.empty() ? "" : ", ") + shape(g.tensor(s));
    throw Error(fmt::format("vulkan: op '{}' ({}) is not supported yet{}; use --backend cpu", graph::op_name(n.op),
                            operands, why.empty() ? "" : ": " + why));
}

void check_weight_type(const graph::Graph& g, const Node& n, TensorId id, bool any_matmul_type) {
    if (id == graph::kNone) return;
    const graph::Tensor& t = g.tensor(id);
    if (t.kind != TensorKind::Weight) return;
    if (any_matmul_type ? !vk::Backend::supports_matmul(t.wtype) : t.wtype != TensorType::F32)
        unsupported(g, n, fmt::format("no shader reads weight '{}' of type {}", t.name, type_name(t.wtype)));
}

}  // namespace

void vulkan_check_graph(const graph::Graph& g, KvType type_k, KvType type_v) {
    for (const Node& n : g.nodes()) {
        switch (n.op) {
            case Op::GetRows:
            case Op::MatMul:
            case Op::MoeMatMul:
            case Op::HeadMatMul: {
                check_weight_type(g, n, n.src[0], true);
                const graph::Tensor& w = g.tensor(n.src[0]);
                if (w.ne0 % 4) unsupported(g, n, fmt::format("rows of {} elements (the shaders need a multiple of 4)", w.ne0));
                if (n.op == Op::MoeMatMul) {
                    check_weight_type(g, n, n.src[3], false);
                    if (w.ne2 > vk::Backend::kMoeMaxExperts)
                        unsupported(g, n, fmt::format("{} experts (the routing shader lists at most {})", w.ne2,
                                                      vk::Backend::kMoeMaxExperts));
                }
                break;
            }
            case Op::Add:
            case Op::Mul:
                check_weight_type(g, n, n.src[0], false);
                check_weight_type(g, n, n.src[1], false);
                break;
            case Op::RmsNorm: check_weight_type(g, n, n.src[1], false); break;
            case Op::Rope:
                if (n.rope.head_dim % 2) unsupported(g, n, fmt::format("odd head size {}", n.rope.head_dim));
                break;
            case Op::StoreKV:
            case Op::Attention: {
                const auto& a = n.attn;
                for (const KvType t : {type_k, type_v})
                    if (t != KvType::F16 && !kv_type_quantized(t))
                        unsupported(g, n, fmt::format("KV cache type {} (the Vulkan cache is f16, q8_0 or q4_0)", kv_type_name(t)));
                for (const auto& [t, dim] : {std::pair{type_k, a.head_dim_k}, std::pair{type_v, a.v_in_k ? a.head_dim_k : a.head_dim_v}})
                    if ((t == KvType::Q8_0 && dim % 4) || (t == KvType::Q4_0 && dim % 8))
                        unsupported(g, n, fmt::format("a {} KV cache with heads of {} (a multiple of {} is needed)",
                                                      kv_type_name(t), dim, t == KvType::Q8_0 ? 4 : 8));
                if (a.head_dim_k % 2 || a.head_dim_v % 2 || a.head_dim_k > kMaxHeadDimK || a.head_dim_v > kMaxHeadDimV)
                    unsupported(g, n, fmt::format("head sizes K {} / V {} (the shader takes even sizes, K <= {}, V <= {})",
                                                  a.head_dim_k, a.head_dim_v, kMaxHeadDimK, kMaxHeadDimV));
                if ((static_cast<int64_t>(a.n_head_kv) * a.head_dim_k) % 2 || (static_cast<int64_t>(a.n_head_kv) * a.head_dim_v) % 2)
                    unsupported(g, n, "odd KV row width");
                if (n.op == Op::Attention) check_weight_type(g, n, n.src[1], false);  // sinks
                break;
            }
            case Op::Rows:
                if (g.tensor(n.src[0]).ne0 % 4)
                    unsupported(g, n, fmt::format("rows of {} elements (the shader needs a multiple of 4)", g.tensor(n.src[0]).ne0));
                break;
            case Op::TopK: {
                const graph::TopKParams& p = n.topk;
                const int64_t ne = g.tensor(n.src[0]).ne0;
                if (p.n_group > 1 && p.n_group_used < p.n_group && (p.n_group > vk::Backend::kTopKMaxGroups || ne % p.n_group))
                    unsupported(g, n, fmt::format("{} expert groups over {} experts (the shader takes at most {} equal groups)",
                                                  p.n_group, ne, vk::Backend::kTopKMaxGroups));
                check_weight_type(g, n, n.src[1], false);
                break;
            }
            case Op::SwiGLU:
            case Op::GeGLU:
            case Op::SwiGLUOai:
            case Op::Softcap:
            case Op::Silu:
            case Op::Scale:
            case Op::Sigmoid:
            case Op::Softmax:
            case Op::NormalizeSum:
            case Op::Gather:
            case Op::MoeCombine:
            case Op::SliceHeads:
            case Op::ConcatHeads:
                for (TensorId s : n.src) check_weight_type(g, n, s, false);
                break;
            default: unsupported(g, n, "");
        }
    }
}

namespace {

// Vulkan pages: layout.page_tokens, but no more than n_ctx rounded up to a power of two (a small
// context takes one page of its size, not 256 rows).
int64_t vulkan_page_tokens(const KvLayout& L) {
    const int64_t P = L.page_tokens;
    if (P < 1 || (P & (P - 1)) != 0 || P > (int64_t{1} << 30))
        throw Error(fmt::format("vulkan: KV pages of {} tokens (a power of two up to 2^30 expected)", P));
    return std::min<int64_t>(P, static_cast<int64_t>(std::bit_ceil(static_cast<uint64_t>(std::max<int64_t>(1, L.n_ctx)))));
}

void check_vulkan_kv_types(const KvLayout& layout) {
    for (const KvType t : {layout.type_k, layout.type_v})
        if (t != KvType::F16 && !kv_type_quantized(t))
            throw Error(fmt::format("vulkan: a KV cache of type {} is not supported (f16, q8_0 and q4_0 are); use "
                                    "--backend cpu",
                                    kv_type_name(t)));
}

// The device pages of the full (not ring) layers' KV rows, shared by every cache of one shape (the
// same full layers, KV types and page size) on this backend: per full layer one K and one V tensor
// (MLA: K only) of capacity() pages of P rows; page i is rows [i * P, (i + 1) * P) of every one of
// them, so a cache's one page table serves all its layers. Pages are taken and given back by
// reference count - caches, and the prefix cache's blocks through VkPageRef (a page held twice is
// never written: the writer copies it first). When no page
// is free the pool grows - by an eighth at least, so that decoding copies the pool O(1) times per
// page of tokens on average - layer by layer, each layer's rows copied to its new tensors and the
// old ones freed before the next, up to what one buffer binds. Pages given back (a sequence
// cleared or truncated) wait for the next cache that grows; when a cache goes, the pool moves the
// pages still held down into the free ones (rewriting the page tables that name them) and shrinks
// to them, and it goes with its last cache.
class VkKv;
struct VkPageRef;

// A pool's page bookkeeping, shared with the references the prefix cache holds (VkPageRef), which
// may be dropped by another thread without the backend's lock: every use holds mu. `alive` goes
// false with the pool (its pages with it: a reference then names nothing).
struct VkPageBook {
    std::mutex mu;
    std::vector<uint32_t> refs;  // per page: its holders (caches and references)
    std::vector<uint32_t> free;  // pages nobody holds, a stack
    std::vector<VkPageRef*> out;  // the references alive
    bool alive = true;
    void drop(uint32_t i) {
        if (--refs[i] == 0) free.push_back(i);
    }
};

// A page held outside the caches (KvBuffers::device_page).
struct VkPageRef final : KvDevicePage {
    VkPageRef(std::shared_ptr<VkPageBook> b, uint32_t p) : book(std::move(b)), page(p) {}
    ~VkPageRef() override {
        std::lock_guard lk(book->mu);
        if (!book->alive) return;
        std::erase(book->out, this);
        book->drop(page);
    }
    std::shared_ptr<VkPageBook> book;
    uint32_t page;  // moved by the pool's trim (under book->mu)
};

class VkKvPool {
public:
    VkKvPool(vk::Backend& vk, const KvLayout& shape, int64_t P)
        : vk_(vk), shape_(shape), P_(P), shift_(std::countr_zero(static_cast<uint64_t>(P))) {
        paged_.resize(shape.layers.size());
        k_.resize(shape.layers.size());
        v_.resize(shape.layers.size());
        uint64_t widest = 0;
        for (size_t il = 0; il < shape.layers.size(); ++il) {
            if (shape.is_ring(il)) continue;
            paged_[il] = true;
            const uint64_t k = shape.k_row(il).row_bytes(), v = shape.layers[il].v_in_k ? 0 : shape.v_row(il).row_bytes();
            page_bytes_ += static_cast<uint64_t>(P) * (k + v);
            widest = std::max(widest, std::max(k, v) * static_cast<uint64_t>(P));
        }
        // vk::Backend::tensor refuses a tensor larger than one binding.
        max_pages_ = widest ? static_cast<int64_t>(vk.device().max_storage_buffer_range / widest) : 0;
    }
    // Whether a cache of layout L with pages of P rows reads this pool.
    bool matches(const KvLayout& L, int64_t P) const {
        if (P != P_ || L.type_k != shape_.type_k || L.type_v != shape_.type_v || L.layers.size() != paged_.size()) return false;
        for (size_t il = 0; il < paged_.size(); ++il) {
            if (L.is_ring(il) == paged_[il]) return false;
            const KvLayer &a = L.layers[il], &b = shape_.layers[il];
            if (paged_[il] && (a.n_head_kv != b.n_head_kv || a.head_dim_k != b.head_dim_k ||
                               (!a.v_in_k && a.head_dim_v != b.head_dim_v) || a.v_in_k != b.v_in_k))
                return false;
        }
        return true;
    }
    int64_t page_tokens() const { return P_; }
    int shift() const { return shift_; }
    uint64_t page_bytes() const { return page_bytes_; }  // one page of every full layer
    int64_t capacity() const { return cap_; }
    int64_t held() const {
        std::lock_guard lk(book_->mu);
        return cap_ - static_cast<int64_t>(free_.size());
    }
    ~VkKvPool() {
        std::lock_guard lk(book_->mu);
        book_->alive = false;
        book_->out.clear();
    }
    const std::shared_ptr<VkPageBook>& book() const { return book_; }
    // Page i held by a reference (it must be held already).
    std::shared_ptr<KvDevicePage> reference(uint32_t i) {
        std::lock_guard lk(book_->mu);
        ++refs_[i];
        auto r = std::make_shared<VkPageRef>(book_, i);
        book_->out.push_back(r.get());
        return r;
    }
    int64_t max_pages() const { return max_pages_; }
    // Pages the caches of this pool may hold together (their page tables' sizes): the pool never
    // grows past that on its own account (what the memory plan counted for them).
    int64_t reserved() const { return reserved_; }
    void reserve(int64_t n) { reserved_ += n; }
    const vk::Tensor& k(size_t layer) const { return k_[layer]; }
    const vk::Tensor& v(size_t layer) const { return v_[layer]; }
    void join(VkKv* c) { members_.push_back(c); }
    void leave(VkKv* c) { std::erase(members_, c); }
    // Moves the pages held down into the free ones below them and shrinks the tensors to the
    // pages held (when at least an eighth are free).
    void trim();

    // Makes n pages free, growing the pool; throws kiln::Error (the pool unchanged but for layers
    // grown already, which keep their larger tensors) when the device cannot hold or bind them.
    void reserve_free(int64_t n) {
        std::lock_guard lk(book_->mu);
        const auto free = static_cast<int64_t>(free_.size());
        if (free >= n) return;
        const int64_t need = cap_ + n - free;
        const int64_t want = std::max(need, std::min(cap_ + std::max<int64_t>(1, cap_ / 8), reserved_));
        grow(std::min(want, std::max(need, max_pages_)));
    }
    // A free page (reserve_free first), held once.
    uint32_t take() {
        std::lock_guard lk(book_->mu);
        if (free_.empty()) throw Error("vulkan: internal error: no free KV page");
        const uint32_t i = free_.back();
        free_.pop_back();
        refs_[i] = 1;
        return i;
    }
    void hold(uint32_t i) {
        std::lock_guard lk(book_->mu);
        ++refs_[i];
    }
    void drop(uint32_t i) {
        std::lock_guard lk(book_->mu);
        book_->drop(i);
    }
    bool shared(uint32_t i) const {
        std::lock_guard lk(book_->mu);
        return refs_[i] > 1;
    }
    // Records the copy of page `from`'s rows, every layer, into page `to`.
    void copy_page(uint32_t from, uint32_t to) {
        for (size_t il = 0; il < paged_.size(); ++il) {
            if (!paged_[il]) continue;
            const int64_t rows = P_ * k_[il].ne(1);  // tensor rows: one per head of each position
            vk_.copy_rows(k_[il], from * rows, k_[il], to * rows, rows);
            if (!shape_.layers[il].v_in_k) vk_.copy_rows(v_[il], from * rows, v_[il], to * rows, rows);
        }
    }

private:
    void grow(int64_t want) {
        if (want > max_pages_)
            throw Error(fmt::format("vulkan: {} KV pages of {} positions are more than {} binds in one buffer for a layer "
                                    "({} bytes); use a smaller -c or a quantized KV cache",
                                    want, P_, vk_.device().name, vk_.device().max_storage_buffer_range));
        const uint64_t add = static_cast<uint64_t>(want - cap_) * page_bytes_;
        std::string why;
        if (!vk_.fits(add, &why))
            throw Error(fmt::format("vulkan: {} more KV pages of {} positions ({} bytes; the caches hold {} pages) do not "
                                    "fit: {}",
                                    want - cap_, P_, add, cap_ - static_cast<int64_t>(free_.size()), why));
        const int64_t rows = want * P_;
        for (size_t il = 0; il < paged_.size(); ++il) {
            if (!paged_[il] || (k_[il].valid() && k_[il].ne(2) >= rows)) continue;
            retensor(il, rows);
        }
        refs_.resize(static_cast<size_t>(want), 0);
        for (int64_t i = want - 1; i >= cap_; --i) free_.push_back(static_cast<uint32_t>(i));  // lowest first
        cap_ = want;
    }
    // Layer il's K and V as new tensors of `rows` rows holding the first rows of the old ones (as
    // many as both have); the old ones go at once (two copies of one layer at most).
    void retensor(size_t il, int64_t rows) {
        const KvLayer& l = shape_.layers[il];
        vk::Tensor nk = vk_.kv_cache(shape_.type_k, l.head_dim_k, l.n_head_kv, rows, fmt::format("kv_pages_k.{}", il));
        vk::Tensor nv = l.v_in_k ? nk : vk_.kv_cache(shape_.type_v, l.head_dim_v, l.n_head_kv, rows, fmt::format("kv_pages_v.{}", il));
        const bool copied = k_[il].valid();
        if (copied) {
            const int64_t n = std::min(k_[il].n_rows(), nk.n_rows());
            vk_.copy_rows(k_[il], 0, nk, 0, n);
            if (!l.v_in_k) vk_.copy_rows(v_[il], 0, nv, 0, n);
        }
        k_[il] = std::move(nk);
        v_[il] = std::move(nv);
        if (copied) vk_.submit();
    }
    // The tensors as rows [0, pages * P) of what they hold (no pages: none).
    void resize(int64_t pages) {
        const int64_t rows = pages * P_;
        for (size_t il = 0; il < paged_.size(); ++il) {
            if (!paged_[il] || !k_[il].valid()) continue;
            if (pages == 0)
                k_[il] = v_[il] = vk::Tensor();
            else
                retensor(il, rows);
        }
    }

    vk::Backend& vk_;
    KvLayout shape_;
    int64_t P_;
    int shift_;
    std::vector<bool> paged_;
    std::vector<vk::Tensor> k_, v_;  // per layer (none for a ring)
    uint64_t page_bytes_ = 0;
    int64_t cap_ = 0, max_pages_ = 0, reserved_ = 0;
    std::shared_ptr<VkPageBook> book_ = std::make_shared<VkPageBook>();
    std::vector<uint32_t>& refs_ = book_->refs;  // per page
    std::vector<uint32_t>& free_ = book_->free;  // a stack
    std::vector<VkKv*> members_;  // the caches whose tables name its pages
};

// One context's KV cache on the device. A sliding-window layer is a ring of its own (position p in
// row p % slots). The full layers live in pages of the backend's pool (VkKvPool) taken as the
// sequence grows (a run takes the pages it writes; nothing is allocated per token) and given back
// when it shrinks; a page table on the device (one I32 per page of positions, shared by all its
// layers) maps position p to pool row table[p >> shift] * P + (p & (P - 1)), and every shader
// that reads or writes the cache goes through it. An MLA layer (v_in_k) stores K only.
class VkKv final : public KvBuffers {
public:
    VkKv(vk::Backend& vk, std::shared_ptr<VkKvPool> pool, const KvLayout& layout)
        : owner_(&vk), layout_(layout), pool_(std::move(pool)) {
        uint64_t ring_bytes = 0;
        for (size_t il = 0; il < layout.layers.size(); ++il)
            if (layout.is_ring(il)) ring_bytes += layout.layer_bytes(il);
        if (pool_) n_pages_ = (layout.n_ctx + pool_->page_tokens() - 1) / pool_->page_tokens();
        const uint64_t table_bytes = static_cast<uint64_t>(n_pages_) * 4;
        std::string why;
        if (!vk.fits(ring_bytes + table_bytes, &why))
            throw Error(fmt::format("vulkan: the KV cache's sliding-window rings ({} bytes) do not fit: {}", ring_bytes, why));
        k_.resize(layout.layers.size());
        v_.resize(layout.layers.size());
        for (size_t il = 0; il < layout.layers.size(); ++il) {
            const KvLayer& l = layout.layers[il];
            if (!layout.is_ring(il)) continue;
            const int64_t slots = layout.slots(il);
            k_[il] = vk.kv_cache(layout.type_k, l.head_dim_k, l.n_head_kv, slots, fmt::format("cache_k.{}", il));
            v_[il] = l.v_in_k ? k_[il] : vk.kv_cache(layout.type_v, l.head_dim_v, l.n_head_kv, slots, fmt::format("cache_v.{}", il));
        }
        ring_bytes_ = ring_bytes;
        if (pool_) {
            table_ = vk.tensor(TensorType::I32, {n_pages_}, "KV page table");
            pages_.assign(static_cast<size_t>(n_pages_), -1);
            host_table_.assign(static_cast<size_t>(n_pages_), -1);  // not on the device yet: every entry is written once taken
            pool_->reserve(n_pages_);
            pool_->join(this);
        }
    }
    ~VkKv() override {
        if (!pool_) return;
        release_from(0);
        pool_->reserve(-n_pages_);
        pool_->leave(this);
        try {
            pool_->trim();
        } catch (const Error&) {
            // Out of memory for the smaller copy: the pool keeps its pages.
        }
    }
    // The pool moved its pages: page i is to[i] from now on (-1: unchanged); the table is rewritten.
    void remap(const std::vector<int64_t>& to) {
        for (int64_t j = 0; j < n_pages_; ++j) {
            const int64_t pg = page_at(j);
            if (pg < 0 || to[static_cast<size_t>(pg)] < 0) continue;
            --held_;
            assign(j, static_cast<uint32_t>(to[static_cast<size_t>(pg)]));
        }
        write_table();
    }
    const KvLayout& layout() const override { return layout_; }
    void read_rows(size_t layer, bool v, int64_t slot, int64_t n, void* dst) override {
        const uint64_t row = layout_.checked_row_bytes(layer, v, slot, n, "vulkan: read_rows");
        for_runs(layer, slot, n, [&](int64_t s, int64_t off, int64_t run) {
            const int64_t r = pool_row(layer, s);
            if (r < 0) throw Error(fmt::format("vulkan: read_rows: position {} of KV layer {} is not held", s, layer));
            owner_->read_bytes(tensor(layer, v), row * static_cast<uint64_t>(r),
                               static_cast<uint8_t*>(dst) + row * static_cast<uint64_t>(off), row * static_cast<uint64_t>(run));
        });
    }
    void write_rows(size_t layer, bool v, int64_t slot, int64_t n, const void* src) override {
        const uint64_t row = layout_.checked_row_bytes(layer, v, slot, n, "vulkan: write_rows");
        if (!layout_.is_ring(layer)) prepare(slot, slot + n);
        for_runs(layer, slot, n, [&](int64_t s, int64_t off, int64_t run) {
            owner_->write_bytes(tensor(layer, v), row * static_cast<uint64_t>(pool_row(layer, s)),
                                static_cast<const uint8_t*>(src) + row * static_cast<uint64_t>(off),
                                row * static_cast<uint64_t>(run));
        });
    }
    // Makes positions [first, end) writable: every page up to the last is taken (a run reads from
    // position 0 or its window), a shared one among them replaced by a private copy; the page
    // table is written (recorded, in order with the next run) when it changed.
    void prepare(int64_t first, int64_t end) override {
        if (first < 0 || first > end || end > layout_.n_ctx)
            throw Error(fmt::format("vulkan: KV positions [{}, {}) outside the cache of {}", first, end, layout_.n_ctx));
        if (first == end || !pool_) return;
        const int shift = pool_->shift();
        const int64_t last = (end - 1) >> shift;
        int64_t need = 0;
        for (int64_t j = covered_; j <= last; ++j) need += page_at(j) < 0 ? 1 : 0;
        for (int64_t j = first >> shift; j <= last; ++j) need += page_at(j) >= 0 && pool_->shared(static_cast<uint32_t>(page_at(j))) ? 1 : 0;
        if (need > 0) pool_->reserve_free(need);  // throws before anything changed
        for (; covered_ <= last; ++covered_)
            if (page_at(covered_) < 0) assign(covered_, pool_->take());
        for (int64_t j = first >> shift; j <= last; ++j) {
            const int64_t old = page_at(j);
            if (!pool_->shared(static_cast<uint32_t>(old))) continue;
            const uint32_t copy = pool_->take();
            pool_->copy_page(static_cast<uint32_t>(old), copy);
            pool_->drop(static_cast<uint32_t>(old));
            --held_;
            pages_[static_cast<size_t>(j)] = -1;
            assign(j, copy);
        }
        write_table();
    }
    void release_from(int64_t n) override {
        if (!pool_) return;
        const int64_t keep = std::clamp<int64_t>((n + pool_->page_tokens() - 1) >> pool_->shift(), 0, n_pages_);
        for (int64_t j = keep; j < n_pages_; ++j) {
            const int64_t pg = page_at(j);
            if (pg < 0) continue;
            pool_->drop(static_cast<uint32_t>(pg));
            pages_[static_cast<size_t>(j)] = -1;
            --held_;
        }
        covered_ = std::min(covered_, keep);
    }
    // The rings and the pages held now (a page shared with other caches too); not the page table
    // (4 bytes per page).
    size_t bytes_held() const override {
        return ring_bytes_ + static_cast<size_t>(held_) * (pool_ ? pool_->page_bytes() : 0);
    }
    size_t bytes_max() const override { return vulkan_kv_bytes(layout_); }
    int64_t device_page_tokens() const override { return pool_ ? pool_->page_tokens() : 0; }
    std::shared_ptr<KvDevicePage> device_page(int64_t j) override {
        if (!pool_ || j < 0 || j >= n_pages_ || page_at(j) < 0) return nullptr;
        return pool_->reference(static_cast<uint32_t>(page_at(j)));
    }
    bool set_device_page(int64_t j, const std::shared_ptr<KvDevicePage>& p) override {
        const auto* r = dynamic_cast<const VkPageRef*>(p.get());
        if (!pool_ || !r || r->book != pool_->book() || j < 0 || j >= n_pages_) return false;
        uint32_t page = 0;
        {
            std::lock_guard lk(r->book->mu);
            if (!r->book->alive) return false;
            page = r->page;
        }
        if (page_at(j) == static_cast<int64_t>(page)) return true;
        pool_->hold(page);
        if (page_at(j) >= 0) {
            pool_->drop(static_cast<uint32_t>(page_at(j)));
            --held_;
        }
        assign(j, page);
        while (covered_ < n_pages_ && page_at(covered_) >= 0) ++covered_;
        write_table();
        return true;
    }

    const vk::Backend* owner() const { return owner_; }
    const vk::Tensor& k(int layer) const { return tensor(static_cast<size_t>(layer), false); }
    const vk::Tensor& v(int layer) const { return tensor(static_cast<size_t>(layer), true); }
    bool ring(int layer) const { return layout_.is_ring(static_cast<size_t>(layer)); }
    // The page table of the full layers (pages_ of kv_write / attention).
    vk::KvPages pages() const { return vk::KvPages{&table_, static_cast<uint32_t>(pool_ ? pool_->shift() : 0)}; }

private:
    int64_t page_at(int64_t j) const { return pages_[static_cast<size_t>(j)]; }
    // The device's page table := host_table_, when it changed (recorded in order with the next run).
    void write_table() {
        if (!dirty_) return;
        owner_->write_bytes(table_, 0, host_table_.data(), host_table_.size() * 4);
        dirty_ = false;
    }
    void assign(int64_t j, uint32_t page) {
        pages_[static_cast<size_t>(j)] = page;
        ++held_;
        if (host_table_[static_cast<size_t>(j)] != static_cast<int32_t>(page)) {
            host_table_[static_cast<size_t>(j)] = static_cast<int32_t>(page);
            dirty_ = true;
        }
    }
    const vk::Tensor& tensor(size_t layer, bool v) const {
        if (layout_.is_ring(layer)) return v ? v_[layer] : k_[layer];
        return v ? pool_->v(layer) : pool_->k(layer);
    }
    // The row of position `slot` in the layer's tensor (-1: its page is not held).
    int64_t pool_row(size_t layer, int64_t slot) const {
        if (layout_.is_ring(layer)) return slot;
        const int64_t pg = page_at(slot >> pool_->shift());
        return pg < 0 ? -1 : (pg << pool_->shift()) | (slot & (pool_->page_tokens() - 1));
    }
    // f(slot, offset from the first, count) for the runs of [slot, slot + n) within one page (a
    // ring: one run; KvCache splits where a ring wraps).
    template <class F>
    void for_runs(size_t layer, int64_t slot, int64_t n, F&& f) const {
        const bool ring = layout_.is_ring(layer);
        const int64_t P = ring ? 0 : pool_->page_tokens();
        for (int64_t done = 0; done < n;) {
            const int64_t s = slot + done;
            const int64_t run = ring ? n : std::min(n - done, P - (s & (P - 1)));
            f(s, done, run);
            done += run;
        }
    }

    vk::Backend* owner_;  // the device its tensors live on
    KvLayout layout_;
    std::shared_ptr<VkKvPool> pool_;  // nullptr: no full layer
    std::vector<vk::Tensor> k_, v_;   // the rings (per layer; none for a full layer)
    uint64_t ring_bytes_ = 0;
    int64_t n_pages_ = 0;
    vk::Tensor table_;
    std::vector<int64_t> pages_;        // per page of positions: its pool page, -1 when not held
    std::vector<int32_t> host_table_;   // what table_ holds (or will, once dirty_ is written)
    bool dirty_ = false;
    int64_t covered_ = 0;  // pages [0, covered_) are held
    int64_t held_ = 0;
};

class VulkanGraphBackend;

class VkExecutable final : public Executable {
public:
    VkExecutable(VulkanGraphBackend& be, graph::Graph g);
    ~VkExecutable() override;
    const graph::Graph& graph() const override { return g_; }
    void set_input(TensorId id, const void* data, size_t bytes) override;
    void run(const RunArgs& args) override;
    const float* output(TensorId id) const override;
    // Points every view at the backend's workspace and matmul scratch (again, after they grew).
    void bind();

private:
    struct NodeViews {  // reshaped views the ops need (made once at compile)
        vk::Tensor a, b, c;
        vk::Tensor xq;       // matmuls with a quantized weight: x rounded to 8-bit groups
        int xq_group = 0;
    };
    // A StoreKV / Attention node in a batch of several sequences (RunArgs::seq_kv), run once per
    // token on that token's own cache: token t's rows of K and V (StoreKV) or q and out
    // (Attention) as views. Where a row's offset misses the device's storage-buffer alignment
    // (tiny heads), every token's rows go through one aligned scratch instead: copied in, the op,
    // the output row copied back.
    struct SeqNode {
        std::vector<NodeViews> rows;  // per token (views of the node's own tensors)
        bool copy = false;
        NodeViews scratch;            // copy: the scratch as the op sees it ([head_dim, heads, 1])
        vk::Tensor a2, b2, c2;        // copy: the same memory as one row each, for copy_rows
    };
    const vk::Tensor& t(TensorId id) const { return tensors_[static_cast<size_t>(id)]; }
    // A matmul's input: src1 as is, or rounded into the scratch first (recorded here). Not when
    // the kernel the backend will run makes x's 8-bit codes itself (the integer-dot decode
    // kernels): rounding first would give the same codes one dispatch later.
    const vk::Tensor& x_of(const Node& n, const NodeViews& v) {
        const vk::Tensor& x = t(n.src[1]);
        if (!v.xq_group) return x;
        const vk::Tensor& w = t(n.src[0]);
        const bool codes = n.op == Op::MatMul ? vk_.matmul_makes_codes(w.type(), x.n_rows())
                                              : vk_.moe_matmul_makes_codes(w, x, n.op == Op::MoeMatMul ? &t(n.src[2]) : nullptr);
        if (codes) return x;
        vk_.quantize_x(x, v.xq, v.xq_group);
        return v.xq;
    }
    int xq_group(const Node& n) const;
    // Throws unless kv (any KvBuffers) is a cache of this device whose layers match the graph's
    // and slots [base, base + n_tok) are in it. Checked before anything is recorded.
    // `seq`: the sequence of a batch (named in the error), -1 for a run on one cache.
    VkKv& check_kv(KvBuffers* kv, int64_t base, int64_t n_tok, int64_t seq) const;
    // Records a StoreKV or Attention node over n_tok = a.ne(2) tokens at cache slot `base`.
    void kv_node(const Node& n, const NodeViews& v, VkKv& kv, int64_t base);
    // Records node ni for token t alone (of a batch of sequences) on its cache at position pos.
    void kv_node_seq(const Node& n, size_t ni, int64_t t, VkKv& kv, int64_t pos);
    void bind_seq();  // builds seq_ (the first run with several sequences, and after bind())

    VulkanGraphBackend& be_;
    vk::Backend& vk_;
    graph::Graph g_;
    std::vector<vk::Tensor> tensors_;  // per graph tensor: weight, or a view of the workspace
    std::vector<NodeViews> views_;     // per node
    std::vector<SeqNode> seq_;         // per node: empty until a run with several sequences
    vk::Tensor seq_scratch_;           // SeqNode::copy rows (made with seq_ when needed)
    std::map<TensorId, std::vector<float>> outputs_;
    graph::Plan plan_;
    int64_t kv_tokens_ = 0;  // tokens of the StoreKV / Attention nodes (0: none)
    std::vector<std::pair<int, bool>> kv_layers_;  // (layer, v_in_k) of those nodes, each layer once
};

class VulkanGraphBackend final : public Backend {
public:
    VulkanGraphBackend(std::unique_ptr<vk::Backend> vk, const VulkanOptions& o)
        : vk_(std::move(vk)), progress_(o.progress), seq_row_copies_(o.seq_row_copies) {}
    ~VulkanGraphBackend() override = default;
    const char* name() const override { return "vulkan"; }
    vk::Backend& vk() const { return *vk_; }

    std::unique_ptr<Executable> compile(graph::Graph g) override {
        return std::make_unique<VkExecutable>(*this, std::move(g));
    }
    std::unique_ptr<KvBuffers> alloc_kv(const KvLayout& layout) override {
        check_vulkan_kv_types(layout);
        return std::make_unique<VkKv>(*vk_, pool_for(layout), layout);
    }
    // The pool of pages a cache of `layout` takes its pages from: one of the same shape with room
    // for its page table in what one buffer binds (else a new one); nullptr when every layer is a
    // ring.
    std::shared_ptr<VkKvPool> pool_for(const KvLayout& layout) {
        bool any_full = false;
        for (size_t il = 0; il < layout.layers.size(); ++il) any_full |= !layout.is_ring(il);
        if (!any_full) return nullptr;
        const int64_t P = vulkan_page_tokens(layout);
        const int64_t n_pages = (layout.n_ctx + P - 1) / P;
        std::erase_if(pools_, [](const std::weak_ptr<VkKvPool>& w) { return w.expired(); });
        for (const auto& w : pools_) {
            std::shared_ptr<VkKvPool> p = w.lock();
            if (p && p->matches(layout, P) && p->reserved() + n_pages <= p->max_pages()) return p;
        }
        auto p = std::make_shared<VkKvPool>(*vk_, layout, P);
        if (n_pages > p->max_pages())
            throw Error(fmt::format("vulkan: the KV cache of {} positions puts more rows in one layer than {} binds in one "
                                    "buffer ({} bytes); use a smaller -c or a quantized KV cache",
                                    layout.n_ctx, vk_->device().name, vk_->device().max_storage_buffer_range));
        pools_.push_back(p);
        return p;
    }
    void set_progress(std::function<void(uint64_t, uint64_t)> p) { progress_ = std::move(p); }
    uint64_t weight_bytes() const { return weight_bytes_; }
    bool seq_row_copies() const { return seq_row_copies_; }

    // The device copy of every weight of g (uploaded on first sight, shared by all executables).
    void upload_weights(const graph::Graph& g) {
        uint64_t total = 0, done = 0;
        std::vector<TensorId> todo;
        for (size_t i = 0; i < g.tensors().size(); ++i) {
            const graph::Tensor& w = g.tensors()[i];
            if (w.kind != TensorKind::Weight || weights_.count(key(w))) continue;
            if (std::find_if(todo.begin(), todo.end(), [&](TensorId j) { return key(g.tensor(j)) == key(w); }) != todo.end())
                continue;
            todo.push_back(static_cast<TensorId>(i));
            total += bytes_of(w);
        }
        if (todo.empty()) return;
        std::string why;
        if (!vk_->fits(total, &why))
            throw Error(fmt::format("vulkan: the weights ({} bytes) do not fit in device memory: {}", total, why));
        for (TensorId id : todo) {
            const graph::Tensor& w = g.tensor(id);
            // A stack of matrices (MoE experts, per-head projections) is packed on the device
            // whatever its stride in the file.
            vk::Tensor d = w.ne2 > 1 ? vk_->tensor(w.wtype, {w.ne0, w.ne1, w.ne2}, w.name)
                                     : vk_->tensor(w.wtype, {w.ne0, w.ne1}, w.name);
            const uint64_t mat = matrix_bytes(w);
            if (w.ne2 > 1 && w.matrix_stride() != mat) {
                std::vector<uint8_t> packed(bytes_of(w));
                for (int64_t i = 0; i < w.ne2; ++i)
                    std::memcpy(packed.data() + mat * static_cast<uint64_t>(i),
                                static_cast<const uint8_t*>(w.data) + w.matrix_stride() * static_cast<uint64_t>(i), mat);
                vk_->upload(d, packed.data(), packed.size());
            } else {
                vk_->upload(d, w.data, bytes_of(w));
            }
            weights_.emplace(key(w), d);
            done += bytes_of(w);
            weight_bytes_ += bytes_of(w);
            if (progress_) progress_(done, total);
        }
        vk_->submit();
    }
    const vk::Tensor& weight(const graph::Tensor& w) const { return weights_.at(key(w)); }

    // Every executable's values live in ONE device workspace, and the rounded inputs of its
    // quantized matmuls in one scratch, each grown to the largest graph compiled: runs never
    // overlap (a backend is driven by one thread at a time, see kiln::Context) and run() copies
    // the outputs to the host before it returns, so nothing of one run is needed by the next.
    // When either grows, every executable re-points its views at the new buffer (the old one is
    // freed once no recording holds it).
    void reserve(uint64_t workspace_bytes, int64_t xq_elements) {
        bool grown = false;
        if (!workspace_.valid() || workspace_bytes > workspace_bytes_) {
            const int64_t words = std::max<int64_t>(16, static_cast<int64_t>((workspace_bytes + 3) / 4) + 16);
            workspace_ = vk_->tensor(TensorType::F32, {words}, fmt::format("workspace ({} bytes)", workspace_bytes));
            workspace_bytes_ = workspace_bytes;
            grown = true;
        }
        if (xq_elements > xq_elements_) {
            xq_scratch_ = vk_->tensor(TensorType::F32, {xq_elements}, "rounded matmul input");
            xq_elements_ = xq_elements;
            grown = true;
        }
        if (grown)
            for (VkExecutable* e : executables_) e->bind();
    }
    const vk::Tensor& workspace() const { return workspace_; }
    const vk::Tensor& xq_scratch() const { return xq_scratch_; }
    void add(VkExecutable* e) { executables_.push_back(e); }
    void remove(VkExecutable* e) { executables_.erase(std::find(executables_.begin(), executables_.end(), e)); }

private:
    using Key = std::tuple<const void*, int, int64_t, int64_t, int64_t, uint64_t>;
    static Key key(const graph::Tensor& w) { return {w.data, static_cast<int>(w.wtype), w.ne0, w.ne1, w.ne2, w.nb2}; }
    static uint64_t matrix_bytes(const graph::Tensor& w) { return w.row_bytes() * static_cast<uint64_t>(w.ne1); }  // packed
    static uint64_t bytes_of(const graph::Tensor& w) { return matrix_bytes(w) * static_cast<uint64_t>(std::max<int64_t>(1, w.ne2)); }
    std::unique_ptr<vk::Backend> vk_;
    std::function<void(uint64_t, uint64_t)> progress_;
    bool seq_row_copies_ = false;
    std::map<Key, vk::Tensor> weights_;
    uint64_t weight_bytes_ = 0;
    vk::Tensor workspace_, xq_scratch_;
    uint64_t workspace_bytes_ = 0;
    int64_t xq_elements_ = 0;
    std::vector<VkExecutable*> executables_;  // alive, of this backend
public:
    // Bytes of the pools' pages: all of them, or those held.
    uint64_t pool_bytes(bool held) const {
        uint64_t b = 0;
        for (const auto& w : pools_)
            if (auto p = w.lock()) b += static_cast<uint64_t>(held ? p->held() : p->capacity()) * p->page_bytes();
        return b;
    }

private:
    std::vector<std::weak_ptr<VkKvPool>> pools_;  // the KV page pools (each goes with its last cache)
};

int VkExecutable::xq_group(const Node& n) const {
    // Matmuls against quantized weights read x rounded as the reference's integer dot products
    // round it (vk::Backend::quantize_x).
    if (n.op != Op::MatMul && n.op != Op::MoeMatMul && n.op != Op::HeadMatMul) return 0;
    const int group = vk::Backend::activation_group(g_.tensor(n.src[0]).wtype);
    return group > 0 && g_.tensor(n.src[1]).ne0 % group == 0 ? group : 0;
}

VkExecutable::VkExecutable(VulkanGraphBackend& be, graph::Graph g) : be_(be), vk_(be.vk()), g_(std::move(g)) {
    vulkan_check_graph(g_, KvType::F16, KvType::F16);
    be_.upload_weights(g_);
    const int64_t align =
        std::max<int64_t>(64, static_cast<int64_t>(vk_.device().min_storage_buffer_offset_alignment));
    plan_ = graph::plan_buffers(g_, align);
    int64_t xq_elements = 0;
    for (const Node& n : g_.nodes()) {
        if (xq_group(n)) xq_elements = std::max(xq_elements, g_.tensor(n.src[1]).n_elements());
        if (n.op == Op::StoreKV || n.op == Op::Attention) {
            kv_tokens_ = g_.tensor(n.src[0]).ne1;
            const std::pair<int, bool> l{n.attn.layer, n.attn.v_in_k};
            if (std::find(kv_layers_.begin(), kv_layers_.end(), l) == kv_layers_.end()) kv_layers_.push_back(l);
        }
    }
    be_.reserve(static_cast<uint64_t>(std::max<int64_t>(0, plan_.workspace_bytes)), xq_elements);
    for (size_t i = 0; i < g_.tensors().size(); ++i) {
        const graph::Tensor& x = g_.tensors()[i];
        if (x.kind == TensorKind::Output)
            outputs_[static_cast<TensorId>(i)].resize(static_cast<size_t>(x.n_elements()));
    }
    bind();
    be_.add(this);
}

VkExecutable::~VkExecutable() { be_.remove(this); }

void VkExecutable::bind() {
    const vk::Tensor& workspace = be_.workspace();
    const auto& ts = g_.tensors();
    tensors_.resize(ts.size());
    for (size_t i = 0; i < ts.size(); ++i) {
        const graph::Tensor& x = ts[i];
        if (x.kind == TensorKind::Weight) {
            tensors_[i] = be_.weight(x);
        } else if (plan_.offset[i] >= 0) {
            const TensorType type = x.dtype == graph::DType::I32 ? TensorType::I32 : TensorType::F32;
            tensors_[i] = vk_.view(workspace, static_cast<uint64_t>(plan_.offset[i]), type, {x.ne0, x.ne1},
                                   x.name.empty() ? fmt::format("%{}", i) : x.name);
        }
    }
    views_.resize(g_.nodes().size());
    for (size_t ni = 0; ni < g_.nodes().size(); ++ni) {
        const Node& n = g_.nodes()[ni];
        NodeViews& v = views_[ni];
        auto reshape = [&](TensorId id, int64_t d0, int64_t d1) {
            const vk::Tensor& base = t(id);
            return vk_.view(base, 0, TensorType::F32, {d0, d1, g_.tensor(id).ne1}, base.name());
        };
        if ((v.xq_group = xq_group(n)) > 0) {
            const graph::Tensor& x = g_.tensor(n.src[1]);
            v.xq = vk_.view(be_.xq_scratch(), 0, TensorType::F32, {x.ne0, x.ne1}, "rounded matmul input");
        }
        switch (n.op) {
            case Op::Rope:
                v.a = reshape(n.src[0], n.rope.head_dim, n.rope.n_head);
                v.c = reshape(n.dst, n.rope.head_dim, n.rope.n_head);
                break;
            case Op::RmsNorm:
                if (n.i0 > 0) {  // per group (QK-norm): rows of i0 elements
                    v.a = vk_.view(t(n.src[0]), 0, TensorType::F32, {n.i0, g_.tensor(n.src[0]).n_elements() / n.i0});
                    v.c = vk_.view(t(n.dst), 0, TensorType::F32, {n.i0, g_.tensor(n.dst).n_elements() / n.i0});
                }
                break;
            case Op::StoreKV:
                v.a = reshape(n.src[0], n.attn.head_dim_k, n.attn.n_head_kv);
                if (!n.attn.v_in_k) v.b = reshape(n.src[1], n.attn.head_dim_v, n.attn.n_head_kv);
                break;
            case Op::Attention:
                v.a = reshape(n.src[0], n.attn.head_dim_k, n.attn.n_head);
                v.c = reshape(n.dst, n.attn.head_dim_v, n.attn.n_head);
                break;
            case Op::Rows: {
                if (v.a.valid()) break;  // not in the workspace: made once
                // A gather of rows [i0, i0 + count) by fixed ids: no alignment asked of the row's offset.
                const int64_t count = g_.tensor(n.dst).ne1;
                std::vector<int32_t> ids(static_cast<size_t>(count));
                for (int64_t r = 0; r < count; ++r) ids[static_cast<size_t>(r)] = static_cast<int32_t>(n.i0 + r);
                v.a = vk_.tensor(TensorType::I32, {count}, fmt::format("rows {}..{}", n.i0, n.i0 + count));
                vk_.upload(v.a, ids.data(), v.a.bytes());
                break;
            }
            default: break;
        }
    }
    if (!seq_.empty()) bind_seq();
}

void VkExecutable::bind_seq() {
    const uint64_t align = std::max<uint64_t>(16, vk_.device().min_storage_buffer_offset_alignment);
    const auto& nodes = g_.nodes();
    seq_.assign(nodes.size(), SeqNode{});
    // The node's tensor as [d0, d1, 1] per token, or through the scratch.
    struct Side {
        TensorId id;
        int64_t d0, d1;
        vk::Tensor NodeViews::*view;
        vk::Tensor SeqNode::*row;
    };
    std::vector<std::pair<size_t, std::vector<Side>>> todo;
    uint64_t scratch_bytes = 0;
    for (size_t ni = 0; ni < nodes.size(); ++ni) {
        const Node& n = nodes[ni];
        std::vector<Side> sides;
        if (n.op == Op::StoreKV) {
            sides.push_back({n.src[0], n.attn.head_dim_k, n.attn.n_head_kv, &NodeViews::a, &SeqNode::a2});
            if (!n.attn.v_in_k) sides.push_back({n.src[1], n.attn.head_dim_v, n.attn.n_head_kv, &NodeViews::b, &SeqNode::b2});
        } else if (n.op == Op::Attention) {
            sides.push_back({n.src[0], n.attn.head_dim_k, n.attn.n_head, &NodeViews::a, &SeqNode::a2});
            sides.push_back({n.dst, n.attn.head_dim_v, n.attn.n_head, &NodeViews::c, &SeqNode::c2});
        } else {
            continue;
        }
        SeqNode& s = seq_[ni];
        uint64_t need = 0;
        for (const Side& d : sides) {
            const uint64_t row = static_cast<uint64_t>(d.d0 * d.d1) * 4;
            if (t(d.id).offset() % align || row % align || be_.seq_row_copies()) s.copy = true;
            need += (row + align - 1) / align * align;
        }
        scratch_bytes = std::max(scratch_bytes, need);
        todo.emplace_back(ni, std::move(sides));
    }
    bool any_copy = false;
    for (const auto& [ni, sides] : todo) any_copy |= seq_[ni].copy;
    if (any_copy && (!seq_scratch_.valid() || seq_scratch_.bytes() < scratch_bytes))
        seq_scratch_ = vk_.tensor(TensorType::F32, {static_cast<int64_t>(scratch_bytes / 4)}, "rows of one sequence");
    for (const auto& [ni, sides] : todo) {
        SeqNode& s = seq_[ni];
        if (s.copy) {
            uint64_t at = 0;
            for (const Side& d : sides) {
                s.scratch.*d.view = vk_.view(seq_scratch_, at, TensorType::F32, {d.d0, d.d1, 1}, "row of one sequence");
                s.*d.row = vk_.view(seq_scratch_, at, TensorType::F32, {d.d0 * d.d1, 1}, "row of one sequence");
                at += (static_cast<uint64_t>(d.d0 * d.d1) * 4 + align - 1) / align * align;
            }
        } else {
            s.rows.resize(static_cast<size_t>(kv_tokens_));
            for (int64_t tok = 0; tok < kv_tokens_; ++tok)
                for (const Side& d : sides)
                    s.rows[static_cast<size_t>(tok)].*d.view =
                        vk_.view(t(d.id), static_cast<uint64_t>(tok * d.d0 * d.d1) * 4, TensorType::F32, {d.d0, d.d1, 1},
                                 t(d.id).name());
        }
    }
}

void VkExecutable::set_input(TensorId id, const void* data, size_t bytes) {
    const graph::Tensor& x = g_.tensor(id);
    if (x.kind != TensorKind::Input) throw Error(fmt::format("vulkan backend: tensor {} is not an input", id));
    const size_t want = static_cast<size_t>(x.n_elements()) * 4;
    if (bytes != want) throw Error(fmt::format("vulkan backend: input '{}' takes {} bytes, got {}", x.name, want, bytes));
    vk_.upload(t(id), data, bytes);  // recorded: runs in order before the ops of run()
}

const float* VkExecutable::output(TensorId id) const {
    auto it = outputs_.find(id);
    if (it == outputs_.end()) throw Error(fmt::format("vulkan backend: tensor {} is not an output", id));
    return it->second.data();
}

VkKv& VkExecutable::check_kv(KvBuffers* kv_in, int64_t base, int64_t n_tok, int64_t seq) const {
    auto which = [&] { return seq < 0 ? std::string("the run") : fmt::format("sequence {}", seq); };  // errors only
    if (!kv_in) throw Error(fmt::format("vulkan backend: {} needs a KV cache", which()));
    auto* kv = dynamic_cast<VkKv*>(kv_in);
    if (!kv || kv->owner() != &vk_)
        throw Error(fmt::format("vulkan backend: {} is not a KV cache of this backend's device", which()));
    const KvLayout& L = kv->layout();
    if (base < 0 || base + n_tok > L.n_ctx)
        throw Error(fmt::format("vulkan backend: KV slots [{}, {}) of {} are outside the cache of {}", base, base + n_tok,
                                which(), L.n_ctx));
    for (const auto& [layer, v_in_k] : kv_layers_)
        if (layer < 0 || static_cast<size_t>(layer) >= L.layers.size() || L.layers[static_cast<size_t>(layer)].v_in_k != v_in_k)
            throw Error(fmt::format("vulkan backend: KV layer {} does not match the layout of {}", layer, which()));
    return *kv;
}

void VkExecutable::kv_node(const Node& n, const NodeViews& v, VkKv& kv, int64_t base) {
    const int64_t n_tok = v.a.ne(2);
    const int layer = n.attn.layer;
    const bool ring = kv.ring(layer);
    const vk::KvPages pages = kv.pages();
    const vk::KvPages* pg = ring ? nullptr : &pages;  // a full layer's rows are in the pool's pages
    if (n.op == Op::StoreKV) {
        vk_.kv_write(v.a, kv.k(layer), static_cast<uint32_t>(base), ring, kv.layout().type_k, pg);
        if (!n.attn.v_in_k) vk_.kv_write(v.b, kv.v(layer), static_cast<uint32_t>(base), ring, kv.layout().type_v, pg);
    } else {
        vk::AttentionRun r;
        r.pos0 = static_cast<uint32_t>(base);
        r.n_kv = static_cast<uint32_t>(base + n_tok);
        r.ring = ring;
        r.k_type = kv.layout().type_k;
        r.v_type = kv.layout().type_v;
        const vk::Tensor* sinks = n.src[1] != graph::kNone ? &t(n.src[1]) : nullptr;
        vk_.attention(v.a, kv.k(layer), kv.v(layer), v.c, n.attn, r, sinks, pg);
    }
}

void VkExecutable::kv_node_seq(const Node& n, size_t ni, int64_t tok, VkKv& kv, int64_t pos) {
    const SeqNode& s = seq_[ni];
    if (!s.copy) return kv_node(n, s.rows[static_cast<size_t>(tok)], kv, pos);
    if (n.op == Op::StoreKV) {
        vk_.copy_rows(t(n.src[0]), tok, s.a2, 0, 1);
        if (!n.attn.v_in_k) vk_.copy_rows(t(n.src[1]), tok, s.b2, 0, 1);
        kv_node(n, s.scratch, kv, pos);
    } else {
        vk_.copy_rows(t(n.src[0]), tok, s.a2, 0, 1);
        kv_node(n, s.scratch, kv, pos);
        vk_.copy_rows(s.c2, 0, t(n.dst), tok, 1);
    }
}

void VkExecutable::run(const RunArgs& args) {
    // Everything is checked before anything is recorded.
    const bool seq = !args.seq_kv.empty() && kv_tokens_ > 0;
    VkKv* kv = nullptr;
    if (seq) {
        // One token per sequence: matmuls and element-wise ops run once over the batch, each
        // StoreKV / Attention once per token on that token's cache at its position.
        if (static_cast<int64_t>(args.seq_kv.size()) != kv_tokens_ || args.seq_pos.size() != args.seq_kv.size())
            throw Error(fmt::format("vulkan backend: {} sequences ({} positions) given for a batch of {} tokens",
                                    args.seq_kv.size(), args.seq_pos.size(), kv_tokens_));
        for (size_t i = 0; i < args.seq_kv.size(); ++i) check_kv(args.seq_kv[i], args.seq_pos[i], 1, static_cast<int64_t>(i));
        if (seq_.empty()) bind_seq();  // once per executable (allocates: warm-up)
    } else if (kv_tokens_ > 0) {
        kv = &check_kv(args.kv, args.kv_base, kv_tokens_, -1);
    }
    // The positions the batch writes get their pages (missing ones taken, shared ones copied, the
    // page tables written) before anything of the pass is recorded: once per page of tokens.
    if (seq)
        for (size_t i = 0; i < args.seq_kv.size(); ++i) args.seq_kv[i]->prepare(args.seq_pos[i], args.seq_pos[i] + 1);
    else if (kv)
        kv->prepare(args.kv_base, args.kv_base + kv_tokens_);
    const int64_t base = args.kv_base;
    const auto& nodes = g_.nodes();
    for (size_t ni = 0; ni < nodes.size(); ++ni) {
        const Node& n = nodes[ni];
        const NodeViews& v = views_[ni];
        switch (n.op) {
            case Op::GetRows: vk_.get_rows(t(n.src[0]), t(n.src[1]), t(n.dst)); break;
            case Op::MatMul: vk_.matmul(t(n.src[0]), x_of(n, v), t(n.dst)); break;
            case Op::Add: vk_.add(t(n.src[0]), t(n.src[1]), t(n.dst)); break;
            case Op::Mul: vk_.mul(t(n.src[0]), t(n.src[1]), t(n.dst)); break;
            case Op::RmsNorm: {
                const vk::Tensor* w = n.src[1] != graph::kNone ? &t(n.src[1]) : nullptr;
                if (n.i0 > 0) vk_.rms_norm(v.a, w, v.c, n.f);
                else vk_.rms_norm(t(n.src[0]), w, t(n.dst), n.f);
                break;
            }
            case Op::Rope: vk_.rope(v.a, t(n.src[1]), v.c, n.rope); break;
            case Op::StoreKV:
            case Op::Attention:
                if (!seq) {
                    kv_node(n, v, *kv, base);
                    break;
                }
                for (size_t i = 0; i < args.seq_kv.size(); ++i)
                    kv_node_seq(n, ni, static_cast<int64_t>(i), static_cast<VkKv&>(*args.seq_kv[i]), args.seq_pos[i]);
                break;
            case Op::SwiGLU: vk_.swiglu(t(n.src[0]), t(n.src[1]), t(n.dst)); break;
            case Op::GeGLU: vk_.geglu(t(n.src[0]), t(n.src[1]), t(n.dst)); break;
            case Op::SwiGLUOai: vk_.swiglu_oai(t(n.src[0]), t(n.src[1]), t(n.dst), n.f, n.f1); break;
            case Op::Softcap: vk_.softcap(t(n.src[0]), n.f, t(n.dst)); break;
            case Op::Silu: vk_.silu(t(n.src[0]), t(n.dst)); break;
            case Op::Scale: vk_.scale(t(n.src[0]), n.f, t(n.dst)); break;
            case Op::Rows: vk_.get_rows(t(n.src[0]), v.a, t(n.dst)); break;
            case Op::Sigmoid: vk_.sigmoid(t(n.src[0]), t(n.dst)); break;
            case Op::Softmax: vk_.softmax(t(n.src[0]), t(n.dst)); break;
            case Op::NormalizeSum: vk_.normalize_sum(t(n.src[0]), t(n.dst)); break;
            case Op::TopK:
                vk_.top_k(t(n.src[0]), n.src[1] != graph::kNone ? &t(n.src[1]) : nullptr, t(n.dst), n.topk);
                break;
            case Op::Gather: vk_.gather(t(n.src[0]), t(n.src[1]), t(n.dst)); break;
            case Op::MoeMatMul:
                vk_.moe_matmul(t(n.src[0]), x_of(n, v), &t(n.src[2]), n.src[3] != graph::kNone ? &t(n.src[3]) : nullptr,
                               t(n.dst));
                break;
            case Op::HeadMatMul: vk_.moe_matmul(t(n.src[0]), x_of(n, v), nullptr, nullptr, t(n.dst)); break;
            case Op::MoeCombine: vk_.moe_combine(t(n.src[0]), t(n.src[1]), t(n.dst)); break;
            case Op::SliceHeads:
                vk_.slice_heads(t(n.src[0]), t(n.dst), n.slice.n_head, n.slice.head_dim, n.slice.first, n.slice.count);
                break;
            case Op::ConcatHeads: vk_.concat_heads(t(n.src[0]), t(n.src[1]), t(n.dst), n.slice.n_head); break;
            default: unsupported(g_, n, "");
        }
    }
    // The first read submits everything recorded (inputs, the whole pass, the copy back) at once.
    bool first = true;
    for (auto& [id, host] : outputs_) {
        vk_.read(t(id), host.data(), host.size() * 4);
        first = false;
    }
    if (first) vk_.submit();
}

void VkKvPool::trim() {
    std::lock_guard lk(book_->mu);
    const int64_t used = cap_ - static_cast<int64_t>(free_.size());
    const int64_t spare = cap_ - used;
    if (spare == 0 || spare < cap_ / 8) return;
    // Every held page at or above `used` moves to a free page below it.
    std::vector<int64_t> to(static_cast<size_t>(cap_), -1);
    std::vector<uint32_t> holes;
    for (uint32_t f : free_)
        if (f < used) holes.push_back(f);
    for (int64_t t = used; t < cap_; ++t) {
        if (refs_[static_cast<size_t>(t)] == 0) continue;
        const uint32_t f = holes.back();
        holes.pop_back();
        copy_page(static_cast<uint32_t>(t), f);
        refs_[f] = refs_[static_cast<size_t>(t)];
        to[static_cast<size_t>(t)] = f;
    }
    for (VkKv* c : members_) c->remap(to);
    for (VkPageRef* r : book_->out)
        if (to[r->page] >= 0) r->page = static_cast<uint32_t>(to[r->page]);
    refs_.resize(static_cast<size_t>(used));
    free_.clear();
    cap_ = used;
    resize(used);  // last: a layer left larger (out of memory) still holds every page
}

}  // namespace

size_t vulkan_kv_layer_bytes(const KvLayout& L, size_t il) {
    if (L.is_ring(il)) return L.layer_bytes(il);
    const int64_t P = vulkan_page_tokens(L);
    const auto rows = static_cast<size_t>((L.n_ctx + P - 1) / P * P);
    return rows * (L.k_row(il).row_bytes() + (L.layers[il].v_in_k ? 0 : L.v_row(il).row_bytes()));
}

size_t vulkan_kv_bytes(const KvLayout& L) {
    size_t b = 0;
    for (size_t il = 0; il < L.layers.size(); ++il) b += vulkan_kv_layer_bytes(L, il);
    return b;
}

const vk::ContextStats* vulkan_stats(const Backend& b) {
    const auto* v = dynamic_cast<const VulkanGraphBackend*>(&b);
    return v ? &v->vk().stats() : nullptr;
}

size_t vulkan_pipeline_variants(const Backend& b, std::string_view shader) {
    const auto* v = dynamic_cast<const VulkanGraphBackend*>(&b);
    return v ? v->vk().context().pipeline_variants(shader) : 0;
}

uint64_t vulkan_weight_bytes(const Backend& b) {
    const auto* v = dynamic_cast<const VulkanGraphBackend*>(&b);
    return v ? v->weight_bytes() : 0;
}

uint64_t vulkan_device_bytes(const Backend& b) {
    const auto* v = dynamic_cast<const VulkanGraphBackend*>(&b);
    if (!v) return 0;
    vk::Context& c = v->vk().context();
    return c.heap_used(c.heap_of(vk::MemoryKind::Device));
}

uint64_t vulkan_kv_pool_bytes(const Backend& b) {
    const auto* v = dynamic_cast<const VulkanGraphBackend*>(&b);
    return v ? v->pool_bytes(false) : 0;
}

uint64_t vulkan_kv_pool_held_bytes(const Backend& b) {
    const auto* v = dynamic_cast<const VulkanGraphBackend*>(&b);
    return v ? v->pool_bytes(true) : 0;
}

void vulkan_set_progress(Backend& b, std::function<void(uint64_t, uint64_t)> progress) {
    if (auto* v = dynamic_cast<VulkanGraphBackend*>(&b)) v->set_progress(std::move(progress));
}

std::optional<uint32_t> vulkan_select_device(const VulkanOptions& o) {
    vk::BackendOptions bo;
    bo.device = o.device;
    bo.require = o.require;
    bo.validation = o.validation;
    return vk::Backend::select(bo);
}

std::unique_ptr<Backend> make_vulkan_backend(const VulkanOptions& o) {
    vk::BackendOptions bo;
    bo.device = o.device;
    bo.require = o.require;
    bo.validation = o.validation;
    std::unique_ptr<vk::Backend> vk = vk::Backend::open(bo);
    if (!vk) return nullptr;
    return std::make_unique<VulkanGraphBackend>(std::move(vk), o);
}

}  // namespace kiln::backend
