// The one place that turns a model and context options into memory: the KV layout a Context
// allocates and the plan (kiln/memory.h) that `kiln fit`, the commands and Context check first.
#pragma once

#include <cstdint>

#include "backend/backend.h"
#include "kiln/context.h"
#include "model/architecture.h"

namespace kiln::runtime {

// n_ctx when ContextOptions::n_ctx is 0: the trained context, at most 4096.
int64_t default_n_ctx(const model::HParams& hp);

// The KV cache of one context: every layer of the architecture, a sliding-window layer as a ring
// of its window plus what one batch adds.
backend::KvLayout kv_layout(const model::Architecture& arch, int64_t n_ctx, int64_t n_batch, KvType type_k, KvType type_v);

// Bytes by layer kind of a layout.
KvStats kv_stats(const backend::KvLayout& layout);

// This process's memory now (from /proc/self/status; 0 where unreadable).
struct ProcessMemory {
    size_t rss = 0, rss_anon = 0, vm_size = 0, peak_rss = 0;
};
ProcessMemory process_memory();
// Resident bytes of this process's mapping that starts at `start` (from /proc/self/smaps; 0 when
// not found).
size_t mapping_rss(const void* start);

}  // namespace kiln::runtime
