// KV cache sizes and row formats (backend.h), shared by every backend.
#include <atomic>
#include <cstdlib>

#include <fmt/format.h>

#include "backend/backend.h"
#include "kernels/kv_quant.h"
#include "kiln/error.h"

namespace kiln::backend {

int64_t KvRowFormat::blocks_per_head() const { return kv_type_quantized(type) ? kernels::kv_blocks(dim) : 0; }

size_t KvRowFormat::head_code_bytes() const {
    const auto n = static_cast<size_t>(dim);
    switch (type) {
        case KvType::F32: return n * 4;
        case KvType::F16: return n * 2;
        case KvType::Q8_0: return n;
        case KvType::Q4_0: return n / 2;
    }
    return 0;
}

size_t KvRowFormat::head_bytes() const {
    if (!kv_type_quantized(type)) return head_code_bytes();
    return (head_code_bytes() + static_cast<size_t>(blocks_per_head()) * 2 + 3) / 4 * 4;
}

namespace {
int64_t dim_multiple(KvType t) { return t == KvType::Q8_0 ? 4 : t == KvType::Q4_0 ? 8 : 1; }
}  // namespace

bool KvRowFormat::valid() const { return n_head > 0 && dim > 0 && dim % dim_multiple(type) == 0; }

void KvRowFormat::check(const std::string& what) const {
    const int64_t multiple = dim_multiple(type);
    if (!valid())
        throw Error(fmt::format("{}: a {} KV cache needs heads whose size is a multiple of {}, got {} heads of {}", what,
                                kv_type_name(type), multiple, n_head, dim));
}

size_t KvLayout::slot_bytes(size_t layer) const {
    return k_row(layer).row_bytes() + (layers.at(layer).v_in_k ? 0 : v_row(layer).row_bytes());
}

KvRowFormat KvLayout::k_row(size_t layer) const {
    const KvLayer& l = layers.at(layer);
    return KvRowFormat{type_k, l.n_head_kv, l.head_dim_k};
}

KvRowFormat KvLayout::v_row(size_t layer) const {
    const KvLayer& l = layers.at(layer);
    return l.v_in_k ? k_row(layer) : KvRowFormat{type_v, l.n_head_kv, l.head_dim_v};
}

int64_t KvLayout::slots(size_t layer) const {
    const int64_t n = layers.at(layer).n_slots;
    return n > 0 && n < n_ctx ? n : n_ctx;
}

size_t KvLayout::layer_bytes(size_t layer) const {
    return static_cast<size_t>(slots(layer)) * slot_bytes(layer);
}

size_t KvLayout::checked_row_bytes(size_t layer, bool v, int64_t slot, int64_t n, const char* who) const {
    if (layer >= layers.size() || (v && layers[layer].v_in_k) || slot < 0 || n < 0 || slot + n > slots(layer))
        throw Error(fmt::format("{}: no {} rows [{}, {}) in KV layer {} ({} layers, {} slots)", who, v ? "V" : "K", slot,
                                slot + n, layer, layers.size(), layer < layers.size() ? slots(layer) : 0));
    return (v ? v_row(layer) : k_row(layer)).row_bytes();
}

size_t KvLayout::bytes() const {
    size_t total = 0;
    for (size_t il = 0; il < layers.size(); ++il) total += layer_bytes(il);
    return total;
}

size_t KvLayout::page_offset(int64_t j, size_t layer, bool v) const {
    const auto rows = static_cast<size_t>(page_rows(j));
    size_t off = 0;
    for (size_t il = 0; il < layer; ++il)
        if (!is_ring(il)) off += rows * slot_bytes(il);
    return v ? off + rows * k_row(layer).row_bytes() : off;
}

size_t KvLayout::page_bytes(int64_t j) const { return page_offset(j, layers.size(), false); }

namespace {
std::atomic<size_t> g_page_bytes{0};
}  // namespace

KvPage make_kv_page(size_t bytes) {
    const size_t n = std::max<size_t>(64, (bytes + 63) / 64 * 64);
    void* p = std::aligned_alloc(64, n);
    if (!p) throw Error(fmt::format("KV cache: out of memory taking a page of {} bytes", n));
    g_page_bytes.fetch_add(n, std::memory_order_relaxed);
    return KvPage(static_cast<uint8_t*>(p), [n](uint8_t* q) {
        std::free(q);
        g_page_bytes.fetch_sub(n, std::memory_order_relaxed);
    });
}

size_t kv_page_bytes_live() { return g_page_bytes.load(std::memory_order_relaxed); }

void KvBuffers::set_page(int64_t j, KvPage) {
    throw Error(fmt::format("KV cache: page {} given to buffers that do not page", j));
}

}  // namespace kiln::backend
