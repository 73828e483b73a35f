// KV cache bookkeeping for one sequence: the backend holds the memory (one K and one V row per slot
// and layer, f16 by default), this class knows how many slots are used. Token i of the sequence
// lives in slot i, so n_past() is also the position of the next token. The full layers' rows live
// in pages taken as the sequence grows (a run takes them) and let go when it shrinks: on the CPU
// pages of host memory, on Vulkan pages of a device pool shared by the backend's caches; either may
// be shared with the prefix cache by reference.
#pragma once

#include <cstdint>
#include <memory>

#include "backend/backend.h"

namespace kiln::runtime {

class KvCache {
public:
    // up_front: every page is taken now and kept (truncate and clear let none go).
    KvCache(backend::Backend& be, backend::KvLayout layout, bool up_front = false);

    const backend::KvLayout& layout() const { return layout_; }
    int64_t n_ctx() const { return layout_.n_ctx; }
    int64_t n_past() const { return n_past_; }
    int64_t n_free() const { return layout_.n_ctx - n_past_; }
    size_t bytes() const { return buffers_->bytes_max(); }  // the most it can hold (every page taken)
    size_t bytes_held() const { return buffers_->bytes_held(); }  // what it holds now
    backend::KvBuffers& buffers() { return *buffers_; }

    // Marks n more slots as used (after a batch was written). Throws when that overflows.
    void advance(int64_t n);
    // Forgets every token (the rings are reused as they are, the pages let go).
    void clear();
    // Keeps the first n_keep tokens and frees the slots after them (their rows are overwritten by
    // the next tokens: token i always lives in slot i; the pages after n_keep's are let go).
    // n_keep must be in [0, n_past()].
    void truncate(int64_t n_keep);

    // Positions below this are not held by the sliding-window layers (beyond their ring's own
    // limit): a prefix restored from the prefix cache brings only each window's last rows. 0 after
    // clear() or decoding from an empty cache.
    int64_t window_floor() const { return window_floor_; }
    // The first position whose rows `layer` holds: 0 for a full layer, else the ring's oldest
    // slot and window_floor(), whichever is later (a full-sized layer with a window counts its
    // floor too).
    int64_t held_from(size_t layer, bool windowed) const;
    // Copies the K (v false) or V rows of positions [pos, pos + n) of `layer` to / from packed host
    // memory (a ring keeps position p in slot p % slots). Reading needs positions the layer holds;
    // writing needs n <= its slots. Throws kiln::Error otherwise.
    void read_positions(size_t layer, bool v, int64_t pos, int64_t n, void* dst);
    void write_positions(size_t layer, bool v, int64_t pos, int64_t n, const void* src);
    // After rows were written: the sequence is n_past tokens, the windowed layers hold positions
    // from window_floor on.
    void restored(int64_t n_past, int64_t window_floor);

private:
    backend::KvLayout layout_;
    std::unique_ptr<backend::KvBuffers> buffers_;
    int64_t n_past_ = 0;
    int64_t window_floor_ = 0;
    bool up_front_ = false;
    int64_t written_end_ = 0;  // the most tokens held since clear(): a ring's slots hold the positions
                               // before it (truncate() does not bring overwritten rows back)
};

}  // namespace kiln::runtime
