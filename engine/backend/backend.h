// Backend: executes graphs (engine/graph/graph.h). A backend compiles a graph once per batch shape
// (planning all of its buffers then) and runs the result for every batch of that shape; a run
// allocates nothing (but a paged KV cache's next page, once per page of tokens). The KV cache
// memory belongs to the backend (it lives where the attention runs); engine/runtime/ keeps the
// bookkeeping (which slots are used).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "graph/graph.h"
#include "kiln/types.h"

namespace kiln::backend {

// One slot's K (or V) row of a layer: n_head heads of `dim` elements, one after another. An F32 or
// F16 head is its values. A Q8_0 or Q4_0 head (kernels/kv_quant.h) is its codes (dim bytes, or
// dim / 2), then its f16 scales (kv_blocks(dim)), padded to 4 bytes so that every head starts on
// a 32-bit word (the Vulkan shaders read words; that is why dim must be a multiple of 4 for Q8_0
// and of 8 for Q4_0).
struct KvRowFormat {
    KvType type = KvType::F16;
    int64_t n_head = 0, dim = 0;

    int64_t blocks_per_head() const;  // scales per head (0 unless quantized)
    size_t head_code_bytes() const;   // a head's codes (its values for F32/F16)
    size_t head_bytes() const;        // a head, scales and padding included
    size_t row_bytes() const { return static_cast<size_t>(n_head) * head_bytes(); }
    bool valid() const;  // dim suits the type
    // Throws kiln::Error naming `what` unless valid().
    void check(const std::string& what) const;
};

// The KV cache of a context: one kiln::KvLayer per layer (kiln/types.h). A full layer has n_ctx
// slots and keeps the token at position p in slot p; a sliding-window layer is a ring of its
// n_slots < n_ctx slots (position p in slot p % n_slots).
struct KvLayout {
    std::vector<KvLayer> layers;
    int64_t n_ctx = 0;
    KvType type_k = KvType::F16, type_v = KvType::F16;  // an MLA layer (v_in_k) stores K only
    // Paged KV (a backend that pages, KvBuffers::page_tokens() > 0): the rows of every layer that
    // is not a ring live in pages of page_tokens positions (a power of two), taken as the sequence
    // grows. Page j holds positions [j * page_tokens, ...) of all those layers, layer by layer
    // (K rows, then V rows unless MLA); the last page of a context holds only up to n_ctx.
    int64_t page_tokens = 256;

    KvRowFormat k_row(size_t layer) const;
    KvRowFormat v_row(size_t layer) const;  // an MLA layer's V lies in its K rows: k_row's format
    int64_t slots(size_t layer) const;  // slots of that layer (n_ctx for a full one)
    bool is_ring(size_t layer) const { return slots(layer) < n_ctx; }
    size_t slot_bytes(size_t layer) const;  // K (+ V) bytes of one slot of that layer
    size_t layer_bytes(size_t layer) const;
    // The bytes of one K (v false) or V row of `layer`; throws kiln::Error naming `who` unless
    // slots [slot, slot + n) of that layer exist (and it stores V rows when v).
    size_t checked_row_bytes(size_t layer, bool v, int64_t slot, int64_t n, const char* who) const;
    size_t bytes() const;  // total memory of K and V over all layers

    // Pages (see page_tokens): the positions page j holds, the offset of layer il's K (v false) or
    // V rows in it and its bytes. Only for layers that are not rings.
    int64_t n_pages() const { return (n_ctx + page_tokens - 1) / page_tokens; }
    int64_t page_rows(int64_t j) const { return std::min(page_tokens, n_ctx - j * page_tokens); }
    size_t page_offset(int64_t j, size_t layer, bool v) const;
    size_t page_bytes(int64_t j) const;
};

// A page of KV rows (KvLayout::page_tokens): its memory, shared by every sequence that reads it
// (and by the prefix cache). A page held by more than one owner is never written: a sequence
// that writes into it first takes a private copy.
using KvPage = std::shared_ptr<uint8_t>;
// A page of `bytes` (64-byte aligned, not initialised). Throws kiln::Error when out of memory.
KvPage make_kv_page(size_t bytes);
// Bytes of every KvPage alive in this process (sequences' pages and the prefix cache's blocks).
size_t kv_page_bytes_live();

// A page of KV rows in device memory held by reference outside its cache (the prefix cache's
// blocks, on Vulkan): the page is not freed while one lives, and nobody writes it while shared (a
// cache that writes into it copies it first). Opaque: only the backend that made it reads it.
struct KvDevicePage {
    virtual ~KvDevicePage() = default;
};

// Backend-owned KV memory for one context.
class KvBuffers {
public:
    virtual ~KvBuffers() = default;
    virtual const KvLayout& layout() const = 0;
    // Copies the K rows (v false) or V rows (v true; not of an MLA layer) of slots [slot, slot + n)
    // of `layer` to / from host memory, packed (n * the row format's row_bytes()). The bytes are the
    // same on every backend (KvRowFormat), so rows read from one backend can be written to another.
    // On a device, write_rows is recorded in order with the next run; read_rows waits for it.
    virtual void read_rows(size_t layer, bool v, int64_t slot, int64_t n, void* dst) = 0;
    virtual void write_rows(size_t layer, bool v, int64_t slot, int64_t n, const void* src) = 0;

    // Paging. A backend that does not page keeps these defaults: page_tokens() 0, and every row of
    // layout() held from the start.
    // Positions per host page (KvPage: page() / set_page() exchange them with the prefix cache), 0
    // when there are none. The Vulkan backend pages too, in device memory (its pages are not host
    // KvPages, so it reports 0 here; see device_page below): prepare, release_from and bytes_held
    // work as below.
    virtual int64_t page_tokens() const { return 0; }
    // Makes positions [first, end) of the paged layers writable: takes the pages they lie in that
    // are missing, and replaces a shared one among them by a private copy. A run does this itself
    // for the positions it writes. Throws kiln::Error when the positions are outside the cache or
    // memory runs out (nothing is changed then).
    virtual void prepare(int64_t first, int64_t end) { (void)first, (void)end; }
    // Lets go of the pages that hold no position before n (freed unless shared).
    virtual void release_from(int64_t n) { (void)n; }
    // Page j (nullptr when not taken). Its rows must not be written by anyone while shared.
    virtual KvPage page(int64_t j) const { (void)j; return nullptr; }
    // Reads page j from p from now on (shared, by reference): p must have the layout's page_bytes(j)
    // in its layout. Throws kiln::Error unless paged and j < n_pages().
    virtual void set_page(int64_t j, KvPage p);
    // Device pages (Vulkan), shared by reference with the prefix cache as the CPU's KvPages are:
    // positions per page (0: none); page j held by reference (nullptr when not held); page j
    // read from p from now on (false, and nothing changed, when p is not a page of this cache's
    // pool, or that pool is gone).
    virtual int64_t device_page_tokens() const { return 0; }
    virtual std::shared_ptr<KvDevicePage> device_page(int64_t j) { (void)j; return nullptr; }
    virtual bool set_device_page(int64_t j, const std::shared_ptr<KvDevicePage>& p) { (void)j, (void)p; return false; }
    // Memory these buffers hold now: rings, pages (shared ones too) or everything.
    virtual size_t bytes_held() const { return layout().bytes(); }
    // The most they hold, every page taken (Vulkan: whole pages, see vulkan_kv_bytes).
    virtual size_t bytes_max() const { return layout().bytes(); }
};

struct RunArgs {
    KvBuffers* kv = nullptr;  // required when the graph has StoreKV/Attention nodes
    int64_t kv_base = 0;      // cache slot of the batch's first token; token t goes to slot kv_base + t
    // Several sequences in one batch (decode steps of many contexts, see kiln::decode_batch): when
    // not empty, token t belongs to the cache seq_kv[t] at position seq_pos[t], and kv / kv_base are
    // not used. Backends that cannot do this throw.
    std::span<KvBuffers* const> seq_kv;
    std::span<const int64_t> seq_pos;
};

// A compiled graph: its buffers are planned and allocated; run() can be called any number of times.
class Executable {
public:
    virtual ~Executable() = default;
    virtual const graph::Graph& graph() const = 0;
    // Copies `bytes` into the input tensor `id` (exactly its size).
    virtual void set_input(graph::TensorId id, const void* data, size_t bytes) = 0;
    virtual void run(const RunArgs& args) = 0;
    // An output tensor's data after run() (ne1 rows of ne0 floats), valid until the next run of
    // any executable of the same backend (they may share one workspace).
    virtual const float* output(graph::TensorId id) const = 0;
};

class Backend {
public:
    virtual ~Backend() = default;
    virtual const char* name() const = 0;
    virtual std::unique_ptr<Executable> compile(graph::Graph g) = 0;
    virtual std::unique_ptr<KvBuffers> alloc_kv(const KvLayout& layout) = 0;
};

// The CPU backend: kernels/ on one thread pool of n_threads (0: all hardware threads).
std::unique_ptr<Backend> make_cpu_backend(int n_threads);

// What a CPU backend of n_threads reserves to run graph g (bytes): the planned workspace of the
// graph's values, the matmul scratch, the grouped-matmul gather room, the per-thread solo scratch
// and flash-attention tiles. A backend keeps the largest of each over the graphs it compiled; the
// memory planner (runtime/memory_plan.cpp) takes the same maxima without compiling anything.
struct CpuComputeBytes {
    size_t workspace = 0, scratch = 0, aux = 0, solo_per_thread = 0, flash_per_thread = 0, split = 0;
    void max_with(const CpuComputeBytes& o);
    size_t total(int n_threads) const;
};
CpuComputeBytes cpu_compute_bytes(const graph::Graph& g, int n_threads);
// Floats of the parts decode's split attention keeps for an attention of n_tok tokens (0: a batch
// with more query rows per KV head than one pass takes).
size_t split_attention_floats(const graph::AttentionParams& p, int64_t n_tok, int n_threads);
// The per-thread attention scores a CPU KV cache of n_ctx tokens keeps beside its rows.
size_t cpu_kv_scores_bytes(int64_t n_ctx, int n_threads);

// The CPU backend's attention over a batch of at least this many tokens (a prompt) runs in tiles
// of query rows against blocks of keys (kernels/flash_attn.h); smaller batches (decode) take one
// (token, head) at a time. Measured (kiln_bench PromptAttentionBatch, 2 threads): tiled is already
// 3-4x faster at 2 tokens; 8 is kept because a smaller batch has too few tiles (KV heads x tiles
// of at least 16 rows: 16 for GQA 32:8 or MLA 20:1 at 8 tokens) to keep a many-core pool busy,
// where the per-row path has a work item per (token, head). The setter is for tests and
// benchmarks (n < 2 means 2: a batch of one token always takes the per-row path); it applies to
// every CPU backend of the process.
constexpr int64_t kCpuTiledAttentionMinTokens = 8;
void set_cpu_tiled_attention_min_tokens(int64_t n);
int64_t cpu_tiled_attention_min_tokens();
// Attention ops the CPU backends of this process have run tiled (tests check which path ran).
int64_t cpu_tiled_attention_runs();
// Attention ops of a few tokens (decode) the CPU backends ran split: every query head of a KV head
// in one pass over its keys, the keys in chunks over the threads, the chunks' parts merged.
int64_t cpu_split_attention_runs();
// Benchmarks: false sends decode to the per-(token, head) paths it took before (default true).
void set_cpu_split_attention(bool on);

}  // namespace kiln::backend
