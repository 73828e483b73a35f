#include "runtime/kv_cache.h"

#include <fmt/format.h>

#include "kiln/error.h"

namespace kiln::runtime {

KvCache::KvCache(backend::Backend& be, backend::KvLayout layout) : layout_(std::move(layout)) {
    if (layout_.n_ctx <= 0) throw Error(fmt::format("KV cache: context size must be positive, got {}", layout_.n_ctx));
    buffers_ = be.alloc_kv(layout_);
}

void KvCache::advance(int64_t n) {
    if (n < 0 || n_past_ + n > layout_.n_ctx)
        throw Error(fmt::format("KV cache: {} tokens after {} do not fit in a context of {}", n, n_past_, layout_.n_ctx));
    n_past_ += n;
}

void KvCache::truncate(int64_t n_keep) {
    if (n_keep < 0 || n_keep > n_past_)
        throw Error(fmt::format("KV cache: cannot keep {} tokens of {}", n_keep, n_past_));
    n_past_ = n_keep;
}

}  // namespace kiln::runtime
