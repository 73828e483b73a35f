// kiln public API: a prefix cache shared by the contexts of one model, in memory and on disk.
//
//   kiln::PrefixCache cache(model, {.mem_bytes = 2ull << 30, .dir = "/home/me/.cache/kiln"});
//   kiln::Context ctx(model, {.n_ctx = 32768});
//   int64_t n = cache.restore(ctx, prompt, prompt.size() - 1);  // the cached prefix's KV taken in
//   ctx.decode(std::span(prompt).subspan(n));                     // the rest computed
//   cache.save(ctx, prompt);                                      // its full blocks kept for the next one
//   cache.flush();                                                // at exit: every block to disk
//
// The cache keeps fixed-size blocks of block_tokens tokens. A block is keyed by the chain of every
// token id up to its end and the identity of what produced its rows (the model file, the KV types,
// the layer shapes and windows, RoPE settings), and holds the K (and V) rows of every layer for its
// tokens: a full layer's all, a sliding-window layer's last min(window, block_tokens) (what the
// window of a later token needs), an MLA layer's latent. Blocks are immutable; a request takes the
// longest chain of cached blocks. On the CPU, where a context's full layers live in pages, a block
// of ContextOptions::kv_page_tokens tokens (256 both by default) IS a page: restore makes the
// context read the cached page by reference (any number of contexts share one copy; a context
// copies a page only before writing into it), save hands the context's pages to the cache the same
// way. On Vulkan, where they live in pages of a device pool, a block of the contexts' page size
// also keeps a reference to the device page it was saved from, and a context of the same pool
// restores it by reference likewise (its rows stay in host memory too, for the disk and for other
// contexts; once no context of that pool is left, the device page goes). Otherwise (other block
// sizes) the rows are copied in and out. Unused blocks go
// least recently used first when the memory budget is full; with a directory they are written
// there first, and a request whose prefix is on disk reads them back. Files are written under a
// temporary name and renamed, carry the identity, the tokens and a checksum: a corrupt, truncated
// or foreign file is ignored (reported once) and its tokens recomputed. Several processes may
// share one directory.
//
// Restoring never changes a logit: the rows are the bytes the context computed (bit for bit the
// same logits as decoding the prefix in the same chunks). Thread-safe: one cache may serve
// contexts in several threads (a context itself is used by one thread at a time).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "kiln/context.h"
#include "kiln/model.h"

namespace kiln {

struct PrefixCacheOptions {
    size_t mem_bytes = size_t{2048} << 20;  // host memory for blocks (0: none kept; with a directory, straight to disk)
    int64_t block_tokens = 256;             // tokens per block
    std::string dir;                        // disk tier ("": none); created when missing
    uint64_t disk_bytes = uint64_t{20} << 30;  // files in dir beyond this are deleted, oldest first
    // Messages (a file ignored, a directory that cannot be used): each reported once. Default: stderr.
    std::function<void(const std::string&)> log;
};

struct PrefixCacheStats {
    uint64_t mem_blocks = 0, mem_bytes = 0;    // blocks held in memory now
    uint64_t disk_blocks = 0, disk_bytes = 0;  // block files in the directory now (any process's)
    uint64_t mem_hits = 0, disk_hits = 0;      // blocks restored from each tier
    uint64_t mem_hit_tokens = 0, disk_hit_tokens = 0;
    uint64_t disk_read_bytes = 0, disk_written_bytes = 0;
    uint64_t disk_writes = 0;    // block files written
    uint64_t disk_rejected = 0;  // files ignored: corrupt, truncated, foreign
    uint64_t evictions = 0;      // blocks dropped from memory
};

class PrefixCache {
public:
    // Throws kiln::Error on bad options (block_tokens < 1). A directory that cannot be created or
    // written is reported and the disk tier turned off.
    PrefixCache(const Model& model, PrefixCacheOptions options = {});
    ~PrefixCache();  // writes nothing: flush() first to keep the memory tier
    PrefixCache(const PrefixCache&) = delete;
    PrefixCache& operator=(const PrefixCache&) = delete;

    // ctx holds tokens[0, ctx.n_past()) (the caller's promise; e.g. after Context::truncate).
    // Extends it with the longest chain of cached blocks of `tokens` that ends at most at
    // max_tokens and that its sliding-window layers can continue from; returns ctx.n_past() after
    // (unchanged when nothing longer is cached). The logits are invalidated when it restores.
    // Throws kiln::Error when ctx is of another model or holds more than `tokens`.
    int64_t restore(Context& ctx, std::span<const int32_t> tokens, int64_t max_tokens);
    // Keeps every full block of tokens[0, ctx.n_past()) (what ctx holds) that is not cached yet.
    // Returns the blocks added.
    size_t save(Context& ctx, std::span<const int32_t> tokens);
    // Writes every block in memory that has no file yet (e.g. at shutdown). Returns the files written.
    size_t flush();

    PrefixCacheStats stats() const;
    const PrefixCacheOptions& options() const;
    bool disk_enabled() const;

    struct Impl;

private:
    // ctx's KV cache, once ctx is known to be of this model and to hold at most `tokens`.
    runtime::KvCache& checked_kv(Context& ctx, std::span<const int32_t> tokens) const;
    std::unique_ptr<Impl> impl_;
};

}  // namespace kiln
