// KV cache bookkeeping for one sequence: the backend holds the memory (one K and one V row per slot
// and layer, f16 by default), this class knows how many slots are used. Token i of the sequence
// lives in slot i, so n_past() is also the position of the next token.
#pragma once

#include <cstdint>
#include <memory>

#include "backend/backend.h"

namespace kiln::runtime {

class KvCache {
public:
    KvCache(backend::Backend& be, backend::KvLayout layout);

    const backend::KvLayout& layout() const { return layout_; }
    int64_t n_ctx() const { return layout_.n_ctx; }
    int64_t n_past() const { return n_past_; }
    int64_t n_free() const { return layout_.n_ctx - n_past_; }
    size_t bytes() const { return layout_.bytes(); }
    backend::KvBuffers& buffers() { return *buffers_; }

    // Marks n more slots as used (after a batch was written). Throws when that overflows.
    void advance(int64_t n);
    // Forgets every token (the memory is reused as is).
    void clear() { n_past_ = 0; }
    // Keeps the first n_keep tokens and frees the slots after them (their rows are overwritten by
    // the next tokens: token i always lives in slot i). n_keep must be in [0, n_past()].
    void truncate(int64_t n_keep);

private:
    backend::KvLayout layout_;
    std::unique_ptr<backend::KvBuffers> buffers_;
    int64_t n_past_ = 0;
};

}  // namespace kiln::runtime
