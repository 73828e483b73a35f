#include "runtime/kv_cache.h"

#include <algorithm>

#include <fmt/format.h>

#include "kiln/error.h"

namespace kiln::runtime {

KvCache::KvCache(backend::Backend& be, backend::KvLayout layout, bool up_front) : layout_(std::move(layout)), up_front_(up_front) {
    if (layout_.n_ctx <= 0) throw Error(fmt::format("KV cache: context size must be positive, got {}", layout_.n_ctx));
    buffers_ = be.alloc_kv(layout_);
    if (up_front_) buffers_->prepare(0, layout_.n_ctx);
}

void KvCache::advance(int64_t n) {
    if (n < 0 || n_past_ + n > layout_.n_ctx)
        throw Error(fmt::format("KV cache: {} tokens after {} do not fit in a context of {}", n, n_past_, layout_.n_ctx));
    n_past_ += n;
    written_end_ = std::max(written_end_, n_past_);
}

void KvCache::truncate(int64_t n_keep) {
    if (n_keep < 0 || n_keep > n_past_)
        throw Error(fmt::format("KV cache: cannot keep {} tokens of {}", n_keep, n_past_));
    n_past_ = n_keep;
    if (n_keep == 0) window_floor_ = written_end_ = 0;
    if (!up_front_) buffers_->release_from(n_keep);
}

void KvCache::clear() {
    n_past_ = window_floor_ = written_end_ = 0;
    if (!up_front_) buffers_->release_from(0);
}

int64_t KvCache::held_from(size_t layer, bool windowed) const {
    const int64_t ring_first = layout_.is_ring(layer) ? std::max<int64_t>(0, written_end_ - layout_.slots(layer)) : 0;
    return windowed ? std::max(ring_first, window_floor_) : ring_first;
}

namespace {
// Calls f(slot, offset into the packed rows, count) for the slot runs of positions [pos, pos + n)
// in a layer of `slots` slots (a ring wraps once at most: n <= slots).
template <class F>
void slot_runs(int64_t slots, int64_t pos, int64_t n, F&& f) {
    int64_t done = 0;
    while (done < n) {
        const int64_t slot = (pos + done) % slots;
        const int64_t run = std::min(n - done, slots - slot);
        f(slot, done, run);
        done += run;
    }
}
}  // namespace

void KvCache::read_positions(size_t layer, bool v, int64_t pos, int64_t n, void* dst) {
    if (layer >= layout_.layers.size() || pos < 0 || n < 0 || pos + n > n_past_ || pos < held_from(layer, false) ||
        n > layout_.slots(layer))
        throw Error(fmt::format("KV cache: positions [{}, {}) of layer {} are not held ({} tokens, {} slots)", pos, pos + n,
                                layer, n_past_, layer < layout_.layers.size() ? layout_.slots(layer) : 0));
    const size_t row = (v ? layout_.v_row(layer) : layout_.k_row(layer)).row_bytes();
    slot_runs(layout_.slots(layer), pos, n, [&](int64_t slot, int64_t off, int64_t run) {
        buffers_->read_rows(layer, v, slot, run, static_cast<uint8_t*>(dst) + row * static_cast<size_t>(off));
    });
}

void KvCache::write_positions(size_t layer, bool v, int64_t pos, int64_t n, const void* src) {
    if (layer >= layout_.layers.size() || pos < 0 || n < 0 || pos + n > layout_.n_ctx || n > layout_.slots(layer))
        throw Error(fmt::format("KV cache: positions [{}, {}) of layer {} do not fit (context {}, {} slots)", pos, pos + n,
                                layer, layout_.n_ctx, layer < layout_.layers.size() ? layout_.slots(layer) : 0));
    const size_t row = (v ? layout_.v_row(layer) : layout_.k_row(layer)).row_bytes();
    slot_runs(layout_.slots(layer), pos, n, [&](int64_t slot, int64_t off, int64_t run) {
        buffers_->write_rows(layer, v, slot, run, static_cast<const uint8_t*>(src) + row * static_cast<size_t>(off));
    });
}

void KvCache::restored(int64_t n_past, int64_t window_floor) {
    if (n_past < 0 || n_past > layout_.n_ctx || window_floor < 0 || window_floor > n_past)
        throw Error(fmt::format("KV cache: cannot restore {} tokens (window floor {}) in a context of {}", n_past, window_floor,
                                layout_.n_ctx));
    n_past_ = written_end_ = n_past;
    window_floor_ = window_floor;
}

}  // namespace kiln::runtime
