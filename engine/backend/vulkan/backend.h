// kiln::vk::Backend: the op-level API the model graph drives on a Vulkan device.
//
//   auto vk = kiln::vk::Backend::open({.require = true});    // or {.device = 1}; nullptr = use the CPU
//   Tensor w = vk->tensor(TensorType::Q4_K, {4096, 4096}, "blk.0.attn_q.weight");
//   vk->upload(w, bytes, n);                                  // staged, runs in order with the ops
//   Tensor x = vk->tensor(TensorType::F32, {4096, n_tok}), y = vk->tensor(TensorType::F32, {4096, n_tok});
//   vk->rms_norm(x, &norm_w, x, 1e-5f);
//   vk->matmul(w, x, y);                                      // ops are recorded, not run
//   vk->submit();                                             // ONE vkQueueSubmit, then a fence wait
//   std::vector<float> out = vk->read_f32(y);                 // (read() submits pending work itself)
//
// Shapes follow GGUF/ggml: ne[0] is the innermost (contiguous) dimension, so a weight of N rows
// of K elements is {K, N} and n_tok activations of width K are {K, n_tok}. Activations are f32;
// weights and embedding tables stay in their stored type (read by the shaders block by block);
// the KV cache is f16. Every op checks shapes and types and throws kiln::Error naming them.
//
// Memory: tensor() checks the size against the heap budget BEFORE allocating (fits() asks the
// same question without allocating), so a model that does not fit is refused with the numbers.
// Ops that read and write the same tensor (x -> x) are allowed where noted (elementwise ops,
// rms_norm, rope); barriers between dependent ops are inserted by the recorder.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "backend/vulkan/context.h"
#include "graph/graph.h"
#include "kiln/types.h"
#include "quant/types.h"

namespace kiln::vk {

// A device tensor: a range of a device buffer seen as up to four dimensions of one type (a
// weight, a KV cache, a view of the executor's workspace). Not graph::Tensor, which describes a
// node of the op graph (kind, dtype, a weight's host bytes): the graph executor makes these from
// those. Both size rows by quant/types.h's row_bytes and print shapes with kiln::shape_string.
class Tensor {
public:
    Tensor() = default;
    TensorType type() const { return type_; }
    const std::array<int64_t, 4>& ne() const { return ne_; }
    int64_t ne(int i) const { return ne_[static_cast<size_t>(i)]; }
    int64_t n_elements() const { return ne_[0] * ne_[1] * ne_[2] * ne_[3]; }
    int64_t n_rows() const { return ne_[1] * ne_[2] * ne_[3]; }
    uint64_t row_bytes() const { return row_bytes_; }
    uint64_t bytes() const { return row_bytes_ * static_cast<uint64_t>(n_rows()); }
    const std::string& name() const { return name_; }
    bool valid() const { return buffer_ != nullptr; }
    uint64_t offset() const { return offset_; }  // byte offset in its buffer (views)
    std::string shape_string() const;  // "q4_K [4096, 4096]"

private:
    friend class Backend;
    TensorType type_ = TensorType::F32;
    std::array<int64_t, 4> ne_{1, 1, 1, 1};
    uint64_t row_bytes_ = 0;
    std::string name_;
    std::shared_ptr<Buffer> buffer_;
    uint64_t offset_ = 0;
};

struct BackendOptions {
    int device = -1;          // --device N; -1: choose (see device.h)
    bool require = false;     // Vulkan was asked for: take the best device, lavapipe included
    bool validation = false;  // enable the validation layer when installed (tests)
};

enum class MatmulKernel { Auto, Vector, Tiled };

// The decode matrix-vector kernel's variant: the subgroupAdd reduction (devices with subgroup
// arithmetic in compute) or the plain shared-memory one, and weight rows per workgroup (a
// specialization constant; divides the workgroup size of 64). integer_dot: Q8_0, Q4_0, Q4_K and
// Q6_K weights are dotted with x's 8-bit codes (quantize_q8, per 32 or 256 like quantize_x) by 4x8-bit
// integer dot products, int32 per 32 elements (devices with shaderIntegerDotProduct; other weight
// types keep the float path). Default on where the device reports the packed signed 4x8 dot
// product as accelerated. moe_matmul's decode kernel follows subgroup and integer_dot (one row per
// workgroup).
struct MatvecOptions {
    bool subgroup = false;
    uint32_t rows = 1;
    bool integer_dot = false;
};

// Single: one workgroup per (token, head) over all its keys. Split: split-K (flash-decoding), the
// keys cut into chunks run by separate workgroups, then a combine pass. Auto: Split for a few
// tokens (decode) on a long context, where (token, head) pairs alone are too few workgroups to
// fill a GPU (not on a CPU device such as lavapipe, where it measured slower). Tiled
// (attention_tiled.glsl): query rows of a KV head taken R at a time, each tile of keys and values
// read once into shared memory for all of them (the one-row kernels read every key once per query
// row); Auto uses it for prompts (kTiledMinTokens tokens or more).
enum class AttentionKernel { Auto, Single, Split, Tiled };

// How one attention call runs, beside what the graph says of the attention itself
// (graph::AttentionParams: heads, head sizes, scale, window, softcap, MLA): where the batch sits
// in the cache, how the caches store their heads, and which kernel runs it.
struct AttentionRun {
    uint32_t pos0 = 0;    // cache position of the first query token
    uint32_t n_kv = 0;    // cache rows holding valid keys/values (usually pos0 + n_tok)
    // The caches are rings (a sliding-window layer): position j lives in row j % rows, and
    // n_kv may pass the rows (window + n_tok - 1 <= rows is required).
    bool ring = false;
    // How the caches store a head (backend::KvRowFormat): F16 caches are F16 tensors [D, n_kv_head,
    // rows]; Q8_0 / Q4_0 caches are I8 tensors [head bytes, n_kv_head, rows] (see kv_write).
    KvType k_type = KvType::F16, v_type = KvType::F16;
    AttentionKernel kernel = AttentionKernel::Auto;
    uint32_t split_chunks = 0;  // Split: the number of chunks (0: chosen from the shape)
    // Tiled: the key / value tiles in 16-bit shared memory (twice the keys fit): -1 for f16 caches
    // (exact there) where the device has fp16 arithmetic (shaderFloat16), 0 never, 1 always (a
    // quantized cache's values then rounded to halves; an error without shaderFloat16).
    int f16_tiles = -1;
};

// A paged KV cache (the graph backend's device pool of pages, graph_executor.cpp): the cache tensor
// is a pool of pages of 2^shift rows, and position j lives in row table[j >> shift] * 2^shift +
// (j & (2^shift - 1)). table: an I32 tensor of one page index per 2^shift positions (positions
// up to its size times 2^shift may be written and read).
struct KvPages {
    const Tensor* table = nullptr;
    uint32_t shift = 0;
};

class Backend {
public:
    // Picks a device by the rules of select_device(). Returns nullptr when none was chosen and
    // none was required (the caller runs on the CPU). Throws kiln::Error when Vulkan is required
    // (or a device named) and missing: no loader, no driver, no such device.
    static std::unique_ptr<Backend> open(const BackendOptions& options = {});
    // The index of the device open() would take (nullopt: none, the CPU), throwing as open() does;
    // opens nothing. Callers that share one Backend per device key it by this.
    static std::optional<uint32_t> select(const BackendOptions& options = {});
    Backend(uint32_t device_index, bool validation = false);
    ~Backend();

    const DeviceInfo& device() const { return ctx_->info(); }
    Context& context() { return *ctx_; }

    // ---- tensors and memory ----
    // A device-local tensor (contents undefined until uploaded or written by an op).
    Tensor tensor(TensorType type, std::initializer_list<int64_t> ne, const std::string& name = {});
    // Whether `bytes` more of device-local memory (in any number of tensors) can be allocated
    // now; `why` gets the numbers. The planner asks this before loading anything.
    bool fits(uint64_t bytes, std::string* why = nullptr) const;
    uint64_t device_memory_available() const;
    void upload(const Tensor& t, const void* data, uint64_t bytes);  // bytes == t.bytes()
    // Records the copy of rows [src_row, src_row + count) of src into dst from row dst_row (rows
    // as in view_rows, of equal bytes; no alignment asked of either offset).
    void copy_rows(const Tensor& src, int64_t src_row, const Tensor& dst, int64_t dst_row, int64_t count);
    void fill(const Tensor& t, uint32_t word);                        // every 32-bit word; tests poison with NaN
    // Submits what was recorded (with the copy back), waits, and copies the tensor out.
    void read(const Tensor& t, void* data, uint64_t bytes);
    // Bytes [offset, offset + bytes) of t's data: written (staged, in order with the recorded
    // work, as upload) or read (submits what was recorded and waits, as read).
    void write_bytes(const Tensor& t, uint64_t offset, const void* data, uint64_t bytes);
    void read_bytes(const Tensor& t, uint64_t offset, void* data, uint64_t bytes);
    std::vector<float> read_f32(const Tensor& t);
    // A tensor viewing rows [first, first + count) of t (the last dimension collapsed: t is seen
    // as n_rows() rows). The view's offset must meet the device's storage-buffer alignment.
    Tensor view_rows(const Tensor& t, int64_t first, int64_t count) const;
    // A tensor of `type` and shape `ne` viewing t's memory from byte `offset` on (a reshape when
    // offset is 0 and the sizes match; a slice of a workspace otherwise). Must lie within t's
    // buffer and meet the storage-buffer alignment.
    Tensor view(const Tensor& t, uint64_t offset, TensorType type, std::initializer_list<int64_t> ne,
                const std::string& name = {}) const;

    // ---- ops (recorded; run at submit) ----
    // y[N, n] = w[K, N] x[K, n]: w in any type of supports_matmul(), x and y f32.
    // Auto takes the matrix-vector kernel for n <= 8 tokens and the tiled one above.
    void matmul(const Tensor& w, const Tensor& x, const Tensor& y, MatmulKernel kernel = MatmulKernel::Auto);
    static bool supports_matmul(TensorType t);
    // Weight types of the integer-dot-product matvecs (MatvecOptions::integer_dot; the dense and
    // the MoE / per-head decode kernels): Q8_0, Q4_0, Q4_K, Q6_K.
    static bool supports_integer_dot(TensorType t);
    // The matrix-vector variant in use: by default the subgroup one where the device has
    // subgroup arithmetic, one row per workgroup. Setting an unsupported variant throws.
    const MatvecOptions& matvec_options() const { return matvec_; }
    void set_matvec_options(const MatvecOptions& o);
    // out[K, n] = rows ids[n] (I32) of table[K, rows] (any type of supports_matmul()).
    void get_rows(const Tensor& table, const Tensor& ids, const Tensor& out);
    // out = x / sqrt(mean(x^2) + eps) * weight, per row; weight [K] f32 or nullptr. out may be x.
    void rms_norm(const Tensor& x, const Tensor* weight, const Tensor& out, float eps);
    // x [head_dim, n_head, n_tok] f32, positions [n_tok] I32. out may be x. The heads are x's
    // shape: p.n_head and p.head_dim, where set (not 0), must agree with it; p.n_dims 0 rotates
    // the whole head. YaRN's correction dims come from p (graph::rope_yarn_corr_dims).
    void rope(const Tensor& x, const Tensor& positions, const Tensor& out, const graph::RopeParams& p);
    // out = softmax(x * scale) per row.
    void softmax(const Tensor& x, const Tensor& out, float scale = 1.0f);
    // out = a + b, a * b: b has a's element count or divides it (repeated: a bias, a norm weight).
    void add(const Tensor& a, const Tensor& b, const Tensor& out);
    void mul(const Tensor& a, const Tensor& b, const Tensor& out);
    void scale(const Tensor& a, float s, const Tensor& out);
    void silu(const Tensor& a, const Tensor& out);
    void gelu(const Tensor& a, const Tensor& out);  // tanh approximation
    void swiglu(const Tensor& gate, const Tensor& up, const Tensor& out);  // silu(gate) * up
    void geglu(const Tensor& gate, const Tensor& up, const Tensor& out);   // gelu_tanh(gate) * up
    // gpt-oss: x = min(gate, limit), y = clamp(up, +-limit); out = x * sigmoid(alpha x) * (y + 1).
    void swiglu_oai(const Tensor& gate, const Tensor& up, const Tensor& out, float alpha, float limit);
    void softcap(const Tensor& a, float cap, const Tensor& out);  // cap * tanh(a / cap)
    void sigmoid(const Tensor& a, const Tensor& out);
    // out = x / max(sum(x), 2^-14) per row.
    void normalize_sum(const Tensor& x, const Tensor& out);
    // ids [k, n] (I32) = the k largest of each row of scores [n_expert, n] (+ bias [n_expert] f32
    // when given), best first, ties to the lower index; group-limited when asked.
    void top_k(const Tensor& scores, const Tensor* bias, const Tensor& ids, const graph::TopKParams& p);
    static constexpr int kTopKMaxGroups = 64;  // MAX_GROUPS in top_k.comp
    // out = x with each group of `group` elements of every row (rows of x.ne(0), a multiple of
    // group) rounded to 8-bit codes and back: d = amax / 127, round to nearest even. The
    // activation rounding of the integer dot products of the CPU kernels and llama.cpp; the
    // graph executor applies it to the input of every matmul with a quantized weight (group
    // activation_group(type)). out may be x.
    void quantize_x(const Tensor& x, const Tensor& out, int group);
    // 32, 256 (K-quants) or 0 (float weights: x is used as is).
    static int activation_group(TensorType weight_type);
    // out [k, n] = x[t][ids[t][j]]; x [K, n] f32, ids [k, n] I32.
    void gather(const Tensor& x, const Tensor& ids, const Tensor& out);
    // Grouped matmul over a stack of G matrices w [K, R, G] (any type of supports_matmul()):
    // y [S * R, n] row t, slot s = w[g] x(t, s) (+ bias [R, G] row g), g = ids[t][s] (ids [S, n]
    // I32: MoE) or s (ids nullptr: per-head, S = G). x is [K, n] (shared by the slots) or
    // [S * K, n] (one input per slot). Only the chosen matrices are read. Vector: one output per
    // workgroup (decode's kernel). Tiled: moe_route lists the slots of each expert, then one tiled
    // product per matrix reads each expert once per tile of its slots. Auto: moe_kernel(). At most
    // kMoeMaxExperts matrices with ids.
    void moe_matmul(const Tensor& w, const Tensor& x, const Tensor* ids, const Tensor* bias, const Tensor& y,
                    MatmulKernel kernel = MatmulKernel::Auto);
    // What Auto runs for n_tok tokens of S slots over G experts (0: per-head matrices): Vector up
    // to 8 tokens and while experts average under 8 slots, Tiled above.
    static MatmulKernel moe_kernel(int64_t n_tok, int64_t S, int64_t G);
    // Whether matmul / moe_matmul (Auto) will run an integer-dot kernel, which rounds x to its
    // 8-bit codes itself (as quantize_x would, per activation_group): x then needs no quantize_x.
    bool matmul_makes_codes(TensorType w, int64_t n_tok) const;
    bool moe_matmul_makes_codes(const Tensor& w, const Tensor& x, const Tensor* ids) const;
    static constexpr int64_t kMoeMaxExperts = 1024;  // MAX_G in moe_route.comp
    // out [E, n] = sum_s w[t][s] y[t][s]; y [S * E, n], w [S, n].
    void moe_combine(const Tensor& y, const Tensor& w, const Tensor& out);
    // out [n_head * count, n]: per head of x's rows (n_head heads of head_dim), [first, first + count).
    void slice_heads(const Tensor& x, const Tensor& out, int n_head, int head_dim, int first, int count);
    // out [n_head * (da + db), n]: per head, a's head (da) then b's head (db).
    void concat_heads(const Tensor& a, const Tensor& b, const Tensor& out, int n_head);
    // Writes src [head_dim, n_kv_head, n_tok] f32 into cache positions pos .. pos + n_tok - 1 of
    // the cache: type F16, cache [head_dim, n_kv_head, n_ctx] F16 (rounded to nearest even); type
    // Q8_0 / Q4_0, cache [head bytes, n_kv_head, n_ctx] I8 holding backend::KvRowFormat heads
    // (quantized as kernels/kv_quant.h says; head_dim a multiple of 4 / 8). ring: the cache is a
    // ring of its rows (position j in row j % rows; n_tok <= rows), positions may pass them.
    // pages: the cache is a pool of pages written through pages->table (KvPages; not with ring).
    void kv_write(const Tensor& src, const Tensor& cache, uint32_t pos, bool ring = false, KvType type = KvType::F16,
                  const KvPages* pages = nullptr);
    // A cache tensor of n_ctx rows of n_kv_head heads of head_dim elements of `type` (F16 or I8).
    Tensor kv_cache(KvType type, int64_t head_dim, int64_t n_kv_head, int64_t n_ctx, const std::string& name);
    // q [Dk, n_head, n_tok] f32; k_cache [Dk, n_kv_head, n_ctx] F16 (or a quantized cache, r.k_type);
    // v_cache [Dv, n_kv_head, n_ctx] likewise (r.v_type); out [Dv, n_head, n_tok] f32. Causal (token t at r.pos0 + t sees cache rows
    // <= r.pos0 + t), grouped-query (n_head a multiple of n_kv_head), optional sliding window (p.window);
    // tiled online softmax (memory O(tile), not O(context)). Dk <= 576, Dv <= 512, both even.
    // The heads are the tensors' shapes: p's head counts and sizes, where set (not 0), must agree.
    // p.scale multiplies q.k. Optional: soft-capping, a ring cache (r.ring), MLA (v_cache = k_cache,
    // p.v_in_k: a value is the first Dv of its K head), sinks [n_head] f32 (one more softmax term per
    // head that takes no value); pages: both caches are pools of pages read through pages->table
    // (KvPages; not with a ring).
    void attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& out,
                   const graph::AttentionParams& p, const AttentionRun& r, const Tensor* sinks = nullptr,
                   const KvPages* pages = nullptr);
    static constexpr int64_t kAttentionMaxDk = 576;
    static constexpr int64_t kTiledMinTokens = 8;
    // The tiled attention's rows and keys per tile for these heads (the largest that fit the
    // device's shared memory); {0, 0} when none does.
    std::pair<uint32_t, uint32_t> tiled_attention_shape(int64_t Dk, int64_t Dv, bool mla, bool f16) const;
    static constexpr int64_t kAttentionMaxDv = 512;

    // Runs everything recorded: one vkQueueSubmit and a fence wait.
    void submit();
    const ContextStats& stats() const { return ctx_->stats(); }

private:
    Binding bind(const Tensor& t, bool written) const;
    // An f32 -> f32 op of one input whose push constant is its element count (silu, gelu, sigmoid).
    void unary(const char* shader, const Tensor& a, const Tensor& out);
    void elementwise(const char* shader, std::initializer_list<const Tensor*> in, const Tensor& out, const void* push,
                     uint32_t push_bytes);
    void groups_for(uint64_t n_groups, uint32_t* gx, uint32_t* gy) const;
    // Records quantize_q8 of x's rows (groups of activation_group(weight_type)) into x_codes_ for
    // the integer-dot shaders; returns the codes' binding and sets *xs_off to the scales' word.
    Binding x_codes(const Tensor& x, TensorType weight_type, uint32_t* xs_off);
    std::map<std::array<float, 6>, Tensor> rope_freqs_;  // per (n_dims, base, scale, YaRN ramp)
    std::shared_ptr<Buffer> attn_part_;         // split-K partials, grown when a shape needs more
    std::shared_ptr<Buffer> x_codes_;           // quantize_q8's codes and scales, grown likewise
    std::shared_ptr<Buffer> moe_route_;         // moe_route's lists of slots per expert, grown likewise
    MatvecOptions matvec_;
    bool split_auto_ = true;                    // Auto may choose split-K (not on CPU devices)
    uint32_t wg_elementwise_ = 256, wg_rows_ = 256, wg_matvec_ = 64, wg_attention_ = 64, wg_attention_tiled_ = 128;
    std::unique_ptr<Context> ctx_;
};

}  // namespace kiln::vk
