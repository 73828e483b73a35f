#include "backend/vulkan/backend.h"

#include <algorithm>
#include <array>
#include <iterator>
#include <span>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

#include <fmt/format.h>

#include "backend/backend.h"
#include "kernels/rope.h"
#include "kiln/error.h"

namespace kiln::vk {

namespace {

constexpr uint32_t kMatvecTokens = 8;   // NCOL in matmul_vec.glsl
constexpr uint32_t kTile = 64;          // BM = BN in matmul_tiled.comp
constexpr uint32_t kTiledWorkgroup = 256;
constexpr int64_t kAttnMaxDk = Backend::kAttentionMaxDk;  // DMAX in attention.comp
constexpr int64_t kAttnMaxRows = 8;     // 2 * RPAIRS in attention.comp: output dimensions per thread
// Split-K attention (Auto, on GPUs): for at most kSplitMaxTokens query tokens when (token, head)
// pairs are fewer than kSplitTargetGroups workgroups and the keys make at least two chunks of
// kSplitMinChunk; then as many chunks as bring the workgroups to about kSplitTargetGroups.
constexpr int64_t kSplitMaxTokens = 8;
constexpr int64_t kSplitTargetGroups = 512;
constexpr int64_t kSplitMinChunk = 256;

uint32_t u32(int64_t v, const char* what) {
    if (v < 0 || v > 0xffffffffll) throw Error(fmt::format("Vulkan: {} = {} does not fit 32 bits", what, v));
    return static_cast<uint32_t>(v);
}

uint32_t ceil_div(uint64_t a, uint64_t b) { return static_cast<uint32_t>((a + b - 1) / b); }

void require_type(const Tensor& t, TensorType want, const char* op, const char* role) {
    if (!t.valid()) throw Error(fmt::format("vk {}: {} is not a tensor", op, role));
    if (t.type() != want)
        throw Error(fmt::format("vk {}: {} '{}' is {} but must be {}", op, role, t.name(), t.shape_string(),
                                type_name(want)));
}

void require_same_count(const Tensor& a, const Tensor& b, const char* op) {
    if (a.n_elements() != b.n_elements())
        throw Error(fmt::format("vk {}: '{}' {} and '{}' {} differ in size", op, a.name(), a.shape_string(), b.name(),
                                b.shape_string()));
}

}  // namespace

std::string Tensor::shape_string() const {
    size_t dims = 4;
    while (dims > 2 && ne_[dims - 1] == 1) --dims;
    return fmt::format("{} {}", type_name(type_), kiln::shape_string(std::span<const int64_t>(ne_.data(), dims)));
}

// ---- lifetime ------------------------------------------------------------------------------

std::optional<uint32_t> Backend::select(const BackendOptions& o) {
    const bool required = o.require || o.device >= 0;
    std::vector<DeviceInfo> devices;
    try {
        devices = list_devices();
    } catch (const Error&) {
        if (required) throw;
        return std::nullopt;  // no loader or driver: the CPU it is
    }
    return select_device(devices, o.device, o.require);
}

std::unique_ptr<Backend> Backend::open(const BackendOptions& o) {
    std::shared_ptr<Instance> inst;
    try {
        inst = Instance::get(o.validation);  // held so that list_devices and the Backend share it
    } catch (const Error&) {
        if (o.require || o.device >= 0) throw;
        return nullptr;
    }
    const auto index = select(o);
    if (!index) return nullptr;
    return std::make_unique<Backend>(*index, o.validation);
}

Backend::Backend(uint32_t device_index, bool validation) : ctx_(std::make_unique<Context>(device_index, validation)) {
    const DeviceInfo& d = ctx_->info();
    // Plain kernels: sizes every device takes (the spec guarantees 128 invocations per workgroup).
    const uint32_t max_wg = d.max_workgroup_invocations;
    wg_elementwise_ = std::min<uint32_t>(256, max_wg);
    wg_rows_ = std::min<uint32_t>(256, max_wg);
    wg_matvec_ = 64;
    wg_attention_ = 64;
    // Split-K fills a GPU's compute units when (token, head) pairs are too few. A CPU device
    // (lavapipe) has fewer cores than heads already, and there splitting measured slower
    // (MLA 20:1 at 32K: 1.4 s single pass, 2.4 s in 2 chunks, 4.3 s in 26), so Auto keeps the
    // single pass on it; AttentionKernel::Split still forces it (tests).
    split_auto_ = d.type != DeviceType::Cpu;
    matvec_.subgroup = d.subgroup_arithmetic;
    // Not on lavapipe, which reports the dot product but runs it as plain integer arithmetic
    // ("not accelerated"); set_matvec_options forces it there (tests).
    matvec_.integer_dot = d.integer_dot_product && d.integer_dot_accelerated;
    // KILN_VK_INTEGER_DOT=0 / 1 overrides that choice (to compare the two paths on a GPU).
    if (const char* e = std::getenv("KILN_VK_INTEGER_DOT")) {
        const std::string v = e;
        if (v != "0" && v != "1") throw Error(fmt::format("KILN_VK_INTEGER_DOT must be 0 or 1, not '{}'", v));
        if (v == "1" && !d.integer_dot_product)
            throw Error(fmt::format("KILN_VK_INTEGER_DOT=1, but {} has no integer dot product (shaderIntegerDotProduct)",
                                    d.name));
        matvec_.integer_dot = v == "1";
    }
}

void Backend::set_matvec_options(const MatvecOptions& o) {
    if (o.subgroup && !ctx_->info().subgroup_arithmetic)
        throw Error(fmt::format("vk matmul: {} has no subgroup arithmetic in compute shaders", ctx_->info().name));
    if (o.integer_dot && !ctx_->info().integer_dot_product)
        throw Error(fmt::format("vk matmul: {} has no integer dot product (shaderIntegerDotProduct)", ctx_->info().name));
    if (o.rows == 0 || wg_matvec_ % o.rows)
        throw Error(fmt::format("vk matmul: {} rows per workgroup do not divide the workgroup of {}", o.rows, wg_matvec_));
    matvec_ = o;
}

Backend::~Backend() = default;

// ---- tensors and memory --------------------------------------------------------------------

Tensor Backend::tensor(TensorType type, std::initializer_list<int64_t> ne, const std::string& name) {
    if (!type_traits(static_cast<uint32_t>(type))) throw Error("vk tensor: unknown tensor type");
    if (ne.size() < 1 || ne.size() > 4) throw Error("vk tensor: a tensor has 1 to 4 dimensions");
    Tensor t;
    t.type_ = type;
    size_t i = 0;
    for (int64_t v : ne) {
        if (v <= 0) throw Error(fmt::format("vk tensor '{}': dimension {} is {} (must be positive)", name, i, v));
        t.ne_[i++] = v;
    }
    const auto rb = row_bytes(type, static_cast<uint64_t>(t.ne_[0]));
    if (!rb)
        throw Error(fmt::format("vk tensor '{}': a row of {} elements is not a whole number of {} blocks of {}", name,
                                t.ne_[0], type_name(type), traits(type).block_size));
    t.row_bytes_ = *rb;
    t.name_ = name.empty() ? t.shape_string() : name;
    const uint64_t bytes = t.bytes();
    const DeviceInfo& d = ctx_->info();
    if (bytes > d.max_storage_buffer_range)
        throw Error(fmt::format("vk tensor '{}' ({}) is {} bytes, more than {} can bind in one buffer ({} bytes)",
                                t.name_, t.shape_string(), bytes, d.name, d.max_storage_buffer_range));
    // 16 bytes of slack: shaders read whole 32-bit words, the last one may pass the data's end.
    t.buffer_ = ctx_->create_buffer(bytes + 16, MemoryKind::Device, fmt::format("tensor '{}'", t.name_));
    return t;
}

bool Backend::fits(uint64_t bytes, std::string* why) const {
    try {
        ctx_->check_fits(bytes, MemoryKind::Device, fmt::format("a plan of {} bytes", bytes), false);
        return true;
    } catch (const Error& e) {
        if (why) *why = e.what();
        return false;
    }
}

uint64_t Backend::device_memory_available() const { return ctx_->heap_available(ctx_->heap_of(MemoryKind::Device)); }

void Backend::upload(const Tensor& t, const void* data, uint64_t bytes) {
    if (!t.valid()) throw Error("vk upload: not a tensor");
    if (bytes != t.bytes())
        throw Error(fmt::format("vk upload: tensor '{}' ({}) holds {} bytes, {} were given", t.name(), t.shape_string(),
                                t.bytes(), bytes));
    ctx_->upload(t.buffer_, t.offset_, data, bytes);
}

void Backend::copy_rows(const Tensor& src, int64_t src_row, const Tensor& dst, int64_t dst_row, int64_t count) {
    if (!src.valid() || !dst.valid()) throw Error("vk copy_rows: not a tensor");
    if (src.row_bytes() != dst.row_bytes())
        throw Error(fmt::format("vk copy_rows: rows of '{}' ({} bytes) and '{}' ({} bytes) differ", src.name(),
                                src.row_bytes(), dst.name(), dst.row_bytes()));
    if (count <= 0 || src_row < 0 || dst_row < 0 || src_row + count > src.n_rows() || dst_row + count > dst.n_rows())
        throw Error(fmt::format("vk copy_rows: {} rows from row {} of '{}' ({} rows) to row {} of '{}' ({} rows)", count,
                                src_row, src.name(), src.n_rows(), dst_row, dst.name(), dst.n_rows()));
    const uint64_t rb = src.row_bytes();
    ctx_->copy(src.buffer_, src.offset_ + rb * static_cast<uint64_t>(src_row), dst.buffer_,
               dst.offset_ + rb * static_cast<uint64_t>(dst_row), rb * static_cast<uint64_t>(count));
}

void Backend::fill(const Tensor& t, uint32_t word) {
    if (!t.valid()) throw Error("vk fill: not a tensor");
    ctx_->fill(t.buffer_, t.offset_, (t.bytes() + 3) & ~uint64_t{3}, word);
}

void Backend::read(const Tensor& t, void* data, uint64_t bytes) {
    if (!t.valid()) throw Error("vk read: not a tensor");
    if (bytes != t.bytes())
        throw Error(fmt::format("vk read: tensor '{}' ({}) holds {} bytes, {} were asked", t.name(), t.shape_string(),
                                t.bytes(), bytes));
    ctx_->download(t.buffer_, t.offset_, data, bytes);
}

namespace {
void check_byte_range(const Tensor& t, uint64_t offset, uint64_t bytes, const char* what) {
    if (!t.valid()) throw Error(fmt::format("vk {}: not a tensor", what));
    if (offset > t.bytes() || bytes > t.bytes() - offset)
        throw Error(fmt::format("vk {}: bytes [{}, {}) pass the end of tensor '{}' ({} bytes)", what, offset, offset + bytes,
                                t.name(), t.bytes()));
}
}  // namespace

void Backend::write_bytes(const Tensor& t, uint64_t offset, const void* data, uint64_t bytes) {
    check_byte_range(t, offset, bytes, "write_bytes");
    if (bytes) ctx_->upload(t.buffer_, t.offset_ + offset, data, bytes);
}

void Backend::read_bytes(const Tensor& t, uint64_t offset, void* data, uint64_t bytes) {
    check_byte_range(t, offset, bytes, "read_bytes");
    if (bytes) ctx_->download(t.buffer_, t.offset_ + offset, data, bytes);
}

std::vector<float> Backend::read_f32(const Tensor& t) {
    require_type(t, TensorType::F32, "read_f32", "the tensor");
    std::vector<float> out(static_cast<size_t>(t.n_elements()));
    read(t, out.data(), t.bytes());
    return out;
}

Tensor Backend::view_rows(const Tensor& t, int64_t first, int64_t count) const {
    if (!t.valid()) throw Error("vk view_rows: not a tensor");
    if (first < 0 || count <= 0 || first + count > t.n_rows())
        throw Error(fmt::format("vk view_rows: rows [{}, {}) of '{}' ({} rows)", first, first + count, t.name(),
                                t.n_rows()));
    Tensor v = t;
    v.offset_ = t.offset_ + static_cast<uint64_t>(first) * t.row_bytes_;
    if (v.offset_ % ctx_->info().min_storage_buffer_offset_alignment)
        throw Error(fmt::format("vk view_rows: row {} of '{}' starts at byte {}, not a multiple of the device's "
                                "storage-buffer alignment {}",
                                first, t.name(), v.offset_, ctx_->info().min_storage_buffer_offset_alignment));
    v.ne_ = {t.ne_[0], count, 1, 1};
    v.name_ = fmt::format("{}[rows {}..{}]", t.name_, first, first + count);
    return v;
}

Tensor Backend::view(const Tensor& t, uint64_t offset, TensorType type, std::initializer_list<int64_t> ne,
                     const std::string& name) const {
    if (!t.valid()) throw Error("vk view: not a tensor");
    if (ne.size() < 1 || ne.size() > 4) throw Error("vk view: a tensor has 1 to 4 dimensions");
    Tensor v;
    v.type_ = type;
    size_t i = 0;
    for (int64_t d : ne) {
        if (d <= 0) throw Error(fmt::format("vk view '{}': dimension {} is {} (must be positive)", name, i, d));
        v.ne_[i++] = d;
    }
    const auto rb = row_bytes(type, static_cast<uint64_t>(v.ne_[0]));
    if (!rb) throw Error(fmt::format("vk view '{}': rows of {} elements do not fit {} blocks", name, v.ne_[0], type_name(type)));
    v.row_bytes_ = *rb;
    v.buffer_ = t.buffer_;
    v.offset_ = t.offset_ + offset;
    v.name_ = name.empty() ? v.shape_string() : name;
    if (v.offset_ % ctx_->info().min_storage_buffer_offset_alignment)
        throw Error(fmt::format("vk view '{}': byte {} is not a multiple of the storage-buffer alignment {}", v.name_,
                                v.offset_, ctx_->info().min_storage_buffer_offset_alignment));
    if (v.offset_ + v.bytes() > t.buffer_->size())
        throw Error(fmt::format("vk view '{}' ({} bytes at {}) passes the end of '{}'", v.name_, v.bytes(), v.offset_,
                                t.name_));
    return v;
}

Binding Backend::bind(const Tensor& t, bool written) const {
    // The data plus the slack for word reads, within the buffer and the device's range limit.
    const uint64_t room = t.buffer_->size() - t.offset_;
    uint64_t range = std::min<uint64_t>(((t.bytes() + 3) & ~uint64_t{3}) + 16, room);
    range = std::min<uint64_t>(range, ctx_->info().max_storage_buffer_range);
    return Binding{t.buffer_, t.offset_, range, written};
}

void Backend::groups_for(uint64_t n_groups, uint32_t* gx, uint32_t* gy) const {
    const uint32_t max_x = ctx_->info().max_workgroup_count[0];
    *gx = static_cast<uint32_t>(std::min<uint64_t>(std::max<uint64_t>(n_groups, 1), max_x));
    *gy = ceil_div(std::max<uint64_t>(n_groups, 1), *gx);
}

void Backend::submit() { ctx_->submit(); }

// ---- matmul and get_rows -------------------------------------------------------------------

bool Backend::supports_matmul(TensorType t) {
    switch (t) {
        case TensorType::F32: case TensorType::F16: case TensorType::BF16:
        case TensorType::Q4_0: case TensorType::Q4_1: case TensorType::Q5_0: case TensorType::Q5_1:
        case TensorType::Q8_0: case TensorType::Q2_K: case TensorType::Q3_K: case TensorType::Q4_K:
        case TensorType::Q5_K: case TensorType::Q6_K: case TensorType::IQ4_NL: case TensorType::IQ4_XS:
        case TensorType::MXFP4:
            return true;
        default: return false;
    }
}

bool Backend::supports_integer_dot(TensorType t) {
    return t == TensorType::Q8_0 || t == TensorType::Q4_0 || t == TensorType::Q4_K || t == TensorType::Q6_K;
}

namespace {

struct MatmulPush {
    uint32_t K, N, n_tok, row_bytes, x_stride, y_stride, xs_off;
};

// Specialization constants 0..3 of the shaders that read a weight type, then `extra` more.
template <size_t N = 0>
std::array<uint32_t, 4 + N> type_spec(uint32_t wg, TensorType t, std::array<uint32_t, N> extra = {}) {
    const auto& tr = traits(t);
    std::array<uint32_t, 4 + N> s{wg, static_cast<uint32_t>(t), tr.block_size, tr.type_size};
    for (size_t i = 0; i < N; ++i) s[4 + i] = extra[i];
    return s;
}

}  // namespace

Binding Backend::x_codes(const Tensor& x, TensorType weight_type, uint32_t* xs_off) {
    // x's 8-bit codes (a quarter word per element) then one f32 scale per group (32 elements, 256
    // for the K-quants), in a workspace sized for kMatvecTokens rows of groups of 32 so that decode
    // grows it only for a larger row.
    const int64_t K = x.ne(0), n = x.n_rows(), G = activation_group(weight_type);
    const uint64_t n_groups = static_cast<uint64_t>(K / G * n);
    const uint64_t words = static_cast<uint64_t>(K / 4 * n) + n_groups;
    const uint64_t room = static_cast<uint64_t>(K) * kMatvecTokens / 4 * 9 / 8 * sizeof(uint32_t);
    if (!x_codes_ || x_codes_->size() < words * sizeof(uint32_t))
        x_codes_ = ctx_->create_buffer(std::max(room, words * sizeof(uint32_t)) + 16, MemoryKind::Device,
                                       "the integer-dot matvec's x codes");
    *xs_off = u32(K / 4 * n, "x code words");
    const uint32_t qc[3] = {static_cast<uint32_t>(n_groups), *xs_off, static_cast<uint32_t>(G)};
    const Binding qb[] = {bind(x, false), Binding{x_codes_, 0, words * sizeof(uint32_t), true}};
    const auto& qp = ctx_->pipeline("quantize_q8", {wg_elementwise_}, 2);
    uint32_t gx, gy;
    groups_for(ceil_div(n_groups, wg_elementwise_), &gx, &gy);
    ctx_->dispatch(qp, qb, qc, sizeof qc, gx, gy);
    return Binding{x_codes_, 0, words * sizeof(uint32_t), false};
}

void Backend::matmul(const Tensor& w, const Tensor& x, const Tensor& y, MatmulKernel kernel) {
    if (!w.valid()) throw Error("vk matmul: the weight is not a tensor");
    if (!supports_matmul(w.type()))
        throw Error(fmt::format("vk matmul: weight '{}' is {}, a type the Vulkan shaders do not read", w.name(),
                                w.shape_string()));
    require_type(x, TensorType::F32, "matmul", "x");
    require_type(y, TensorType::F32, "matmul", "y");
    const int64_t K = w.ne(0), N = w.n_rows(), n = x.n_rows();
    if (x.ne(0) != K)
        throw Error(fmt::format("vk matmul: x '{}' {} has rows of {} but weight '{}' {} has rows of {}", x.name(),
                                x.shape_string(), x.ne(0), w.name(), w.shape_string(), K));
    if (y.ne(0) != N || y.n_rows() != n)
        throw Error(fmt::format("vk matmul: y '{}' is {} but must be [{}, {}] for weight '{}' {} and x {}", y.name(),
                                y.shape_string(), N, n, w.name(), w.shape_string(), x.shape_string()));
    if (K % 4) throw Error(fmt::format("vk matmul: rows of {} elements; the shaders need a multiple of 4", K));
    MatmulPush pc{u32(K, "K"), u32(N, "N"), u32(n, "n_tok"), u32(static_cast<int64_t>(w.row_bytes()), "row bytes"),
                  u32(K, "K"), u32(N, "N"), 0};
    Binding b[] = {bind(w, false), bind(x, false), bind(y, true)};
    if (kernel == MatmulKernel::Auto) kernel = n <= kMatvecTokens ? MatmulKernel::Vector : MatmulKernel::Tiled;
    if (kernel == MatmulKernel::Vector) {
        const bool dot = matvec_.integer_dot && supports_integer_dot(w.type());
        if (dot) {
            pc.x_stride = u32(K / 4, "K / 4");
            b[1] = x_codes(x, w.type(), &pc.xs_off);
        }
        const auto spec = type_spec<1>(wg_matvec_, w.type(), {matvec_.rows});
        const char* shader = dot ? (matvec_.subgroup ? "matmul_vec_dot_subgroup" : "matmul_vec_dot")
                                 : (matvec_.subgroup ? "matmul_vec_subgroup" : "matmul_vec");
        const auto& p = ctx_->pipeline(shader, spec, 3);
        const uint32_t max_x = ctx_->info().max_workgroup_count[0];
        const uint64_t row_groups = ceil_div(static_cast<uint64_t>(N), matvec_.rows);
        const uint32_t gx = static_cast<uint32_t>(std::min<uint64_t>(row_groups, max_x));
        ctx_->dispatch(p, b, &pc, sizeof pc, gx, ceil_div(static_cast<uint64_t>(n), kMatvecTokens),
                       ceil_div(row_groups, gx));
    } else {
        const auto& p = ctx_->pipeline("matmul_tiled", type_spec(kTiledWorkgroup, w.type()), 3);
        ctx_->dispatch(p, b, &pc, sizeof pc, ceil_div(static_cast<uint64_t>(N), kTile),
                       ceil_div(static_cast<uint64_t>(n), kTile));
    }
}

void Backend::get_rows(const Tensor& table, const Tensor& ids, const Tensor& out) {
    if (!table.valid()) throw Error("vk get_rows: the table is not a tensor");
    if (!supports_matmul(table.type()))
        throw Error(fmt::format("vk get_rows: table '{}' is {}, a type the Vulkan shaders do not read", table.name(),
                                table.shape_string()));
    require_type(ids, TensorType::I32, "get_rows", "ids");
    require_type(out, TensorType::F32, "get_rows", "out");
    const int64_t K = table.ne(0), n = ids.n_elements();
    if (out.ne(0) != K || out.n_rows() != n)
        throw Error(fmt::format("vk get_rows: out '{}' is {} but must be [{}, {}]", out.name(), out.shape_string(), K, n));
    if (K % 4) throw Error(fmt::format("vk get_rows: rows of {} elements; the shader needs a multiple of 4", K));
    struct {
        uint32_t K, n_rows, n_ids, row_bytes, o_stride;
    } pc{u32(K, "K"), u32(table.n_rows(), "table rows"), u32(n, "ids"),
         u32(static_cast<int64_t>(table.row_bytes()), "row bytes"), u32(K, "K")};
    const Binding b[] = {bind(table, false), bind(ids, false), bind(out, true)};
    const auto& p = ctx_->pipeline("get_rows", type_spec(wg_matvec_, table.type()), 3);
    uint32_t gx, gy;
    groups_for(static_cast<uint64_t>(n), &gx, &gy);
    ctx_->dispatch(p, b, &pc, sizeof pc, gx, gy);
}

// ---- row ops -------------------------------------------------------------------------------

void Backend::rms_norm(const Tensor& x, const Tensor* weight, const Tensor& out, float eps) {
    require_type(x, TensorType::F32, "rms_norm", "x");
    require_type(out, TensorType::F32, "rms_norm", "out");
    require_same_count(x, out, "rms_norm");
    const int64_t K = x.ne(0);
    if (weight) {
        require_type(*weight, TensorType::F32, "rms_norm", "weight");
        if (weight->n_elements() != K)
            throw Error(fmt::format("vk rms_norm: weight '{}' {} must have {} elements (the rows of x)",
                                    weight->name(), weight->shape_string(), K));
    }
    struct {
        uint32_t K, n_rows, x_stride, o_stride;
        float eps;
    } pc{u32(K, "K"), u32(x.n_rows(), "rows"), u32(K, "K"), u32(K, "K"), eps};
    const Binding b[] = {bind(x, false), bind(weight ? *weight : x, false), bind(out, true)};
    const auto& p = ctx_->pipeline("rms_norm", {wg_rows_, weight ? 1u : 0u}, 3);
    uint32_t gx, gy;
    groups_for(static_cast<uint64_t>(x.n_rows()), &gx, &gy);
    ctx_->dispatch(p, b, &pc, sizeof pc, gx, gy);
}

void Backend::softmax(const Tensor& x, const Tensor& out, float scale) {
    require_type(x, TensorType::F32, "softmax", "x");
    require_type(out, TensorType::F32, "softmax", "out");
    require_same_count(x, out, "softmax");
    const int64_t K = x.ne(0);
    struct {
        uint32_t K, n_rows, x_stride, o_stride;
        float scale;
    } pc{u32(K, "K"), u32(x.n_rows(), "rows"), u32(K, "K"), u32(K, "K"), scale};
    const Binding b[] = {bind(x, false), bind(out, true)};
    const auto& p = ctx_->pipeline("softmax", {wg_rows_}, 2);
    uint32_t gx, gy;
    groups_for(static_cast<uint64_t>(x.n_rows()), &gx, &gy);
    ctx_->dispatch(p, b, &pc, sizeof pc, gx, gy);
}

void Backend::rope(const Tensor& x, const Tensor& positions, const Tensor& out, const graph::RopeParams& rp) {
    require_type(x, TensorType::F32, "rope", "x");
    require_type(positions, TensorType::I32, "rope", "positions");
    require_type(out, TensorType::F32, "rope", "out");
    require_same_count(x, out, "rope");
    const int64_t head_dim = x.ne(0), n_head = x.ne(1), n_tok = x.ne(2) * x.ne(3);
    const int64_t n_dims = rp.n_dims ? rp.n_dims : head_dim;
    if (head_dim % 2 || n_dims % 2 || n_dims > head_dim)
        throw Error(fmt::format("vk rope: head_dim {} and n_dims {} must be even, n_dims <= head_dim", head_dim, n_dims));
    if ((rp.head_dim && rp.head_dim != head_dim) || (rp.n_head && rp.n_head != n_head))
        throw Error(fmt::format("vk rope: x '{}' is {}, not {} heads of {}", x.name(), x.shape_string(), rp.n_head,
                                rp.head_dim));
    if (positions.n_elements() != n_tok)
        throw Error(fmt::format("vk rope: {} positions for {} tokens (x is {})", positions.n_elements(), n_tok,
                                x.shape_string()));
    // YaRN's correction range of pair indices, as the CPU backend takes it.
    float corr[2] = {0.0f, 0.0f};
    if (rp.ext_factor != 0.0f) {
        graph::RopeParams full = rp;
        full.n_dims = static_cast<int>(n_dims);
        graph::rope_yarn_corr_dims(full, corr);
    }
    // The frequency table of this (n_dims, base, scale, YaRN ramp), made once in double precision.
    // YaRN's angle pos * theta_i * (freq_scale * (1 - mix_i) + mix_i) is linear in pos too.
    const std::array<float, 6> key{static_cast<float>(n_dims), rp.freq_base, rp.freq_scale, rp.ext_factor, corr[0], corr[1]};
    auto it = rope_freqs_.find(key);
    if (it == rope_freqs_.end()) {
        std::vector<float> f(static_cast<size_t>(n_dims / 2));
        for (size_t i = 0; i < f.size(); ++i) {
            const double theta = std::pow(static_cast<double>(rp.freq_base), -2.0 * static_cast<double>(i) / static_cast<double>(n_dims));
            double factor = rp.freq_scale;
            if (rp.ext_factor != 0.0f) {
                const double mix = kernels::rope_yarn_mix(static_cast<int>(i), corr, rp.ext_factor);
                factor = factor * (1.0 - mix) + mix;
            }
            f[i] = static_cast<float>(theta * factor);
        }
        Tensor t = tensor(TensorType::F32, {n_dims / 2},
                          fmt::format("rope frequencies {}:{}:{}:{}:{}:{}", n_dims, rp.freq_base, rp.freq_scale,
                                      rp.ext_factor, corr[0], corr[1]));
        upload(t, f.data(), t.bytes());
        it = rope_freqs_.emplace(key, t).first;
    }
    struct {
        uint32_t head_dim, n_head, n_tok, n_dims;
        float mscale;
    } pc{u32(head_dim, "head_dim"), u32(n_head, "n_head"), u32(n_tok, "n_tok"), u32(n_dims, "n_dims"), rp.attn_factor};
    const Binding b[] = {bind(x, false), bind(positions, false), bind(out, true), bind(it->second, false)};
    const auto& p = ctx_->pipeline("rope", {wg_elementwise_, rp.mode == graph::RopeMode::Neox ? 1u : 0u}, 4);
    uint32_t gx, gy;
    groups_for(ceil_div(static_cast<uint64_t>(head_dim / 2 * n_head * n_tok), wg_elementwise_), &gx, &gy);
    ctx_->dispatch(p, b, &pc, sizeof pc, gx, gy);
}

// ---- elementwise ---------------------------------------------------------------------------

void Backend::elementwise(const char* shader, std::initializer_list<const Tensor*> in, const Tensor& out,
                          const void* push, uint32_t push_bytes) {
    Binding b[4];  // no allocation per op
    if (in.size() + 1 > std::size(b)) throw Error(fmt::format("vk {}: too many inputs", shader));
    size_t n = 0;
    for (const Tensor* t : in) b[n++] = bind(*t, false);
    b[n++] = bind(out, true);
    const auto& p = ctx_->pipeline(shader, {wg_elementwise_}, static_cast<uint32_t>(n));
    uint32_t gx, gy;
    groups_for(ceil_div(static_cast<uint64_t>(out.n_elements()), wg_elementwise_), &gx, &gy);
    ctx_->dispatch(p, std::span<const Binding>(b, n), push, push_bytes, gx, gy);
}

void Backend::add(const Tensor& a, const Tensor& b, const Tensor& out) {
    for (auto [t, role] : {std::pair{&a, "a"}, {&b, "b"}, {&out, "out"}}) require_type(*t, TensorType::F32, "add", role);
    require_same_count(a, out, "add");
    if (a.n_elements() % b.n_elements())
        throw Error(fmt::format("vk add: b '{}' {} does not repeat evenly over a '{}' {}", b.name(), b.shape_string(),
                                a.name(), a.shape_string()));
    const uint32_t pc[2] = {u32(a.n_elements(), "n"), u32(b.n_elements(), "nb")};
    elementwise("add", {&a, &b}, out, pc, sizeof pc);
}

void Backend::mul(const Tensor& a, const Tensor& b, const Tensor& out) {
    for (auto [t, role] : {std::pair{&a, "a"}, {&b, "b"}, {&out, "out"}}) require_type(*t, TensorType::F32, "mul", role);
    require_same_count(a, out, "mul");
    if (a.n_elements() % b.n_elements())
        throw Error(fmt::format("vk mul: b '{}' {} does not repeat evenly over a '{}' {}", b.name(), b.shape_string(),
                                a.name(), a.shape_string()));
    const uint32_t pc[2] = {u32(a.n_elements(), "n"), u32(b.n_elements(), "nb")};
    elementwise("mul", {&a, &b}, out, pc, sizeof pc);
}

void Backend::scale(const Tensor& a, float s, const Tensor& out) {
    require_type(a, TensorType::F32, "scale", "a");
    require_type(out, TensorType::F32, "scale", "out");
    require_same_count(a, out, "scale");
    struct {
        uint32_t n;
        float s;
    } pc{u32(a.n_elements(), "n"), s};
    elementwise("scale", {&a}, out, &pc, sizeof pc);
}

void Backend::unary(const char* shader, const Tensor& a, const Tensor& out) {
    require_type(a, TensorType::F32, shader, "a");
    require_type(out, TensorType::F32, shader, "out");
    require_same_count(a, out, shader);
    const uint32_t n = u32(a.n_elements(), "n");
    elementwise(shader, {&a}, out, &n, sizeof n);
}

void Backend::silu(const Tensor& a, const Tensor& out) { unary("silu", a, out); }

void Backend::gelu(const Tensor& a, const Tensor& out) { unary("gelu", a, out); }

void Backend::swiglu(const Tensor& gate, const Tensor& up, const Tensor& out) {
    for (auto [t, role] : {std::pair{&gate, "gate"}, {&up, "up"}, {&out, "out"}})
        require_type(*t, TensorType::F32, "swiglu", role);
    require_same_count(gate, up, "swiglu");
    require_same_count(gate, out, "swiglu");
    const uint32_t n = u32(gate.n_elements(), "n");
    elementwise("swiglu", {&gate, &up}, out, &n, sizeof n);
}

// ---- KV cache and attention ----------------------------------------------------------------

namespace {

uint32_t kv_type_code(KvType t) { return t == KvType::Q8_0 ? 1u : t == KvType::Q4_0 ? 2u : 0u; }

// Checks that `cache` holds heads of `dim` elements of `type` and returns their format.
backend::KvRowFormat kv_format(const Tensor& cache, KvType type, int64_t dim, const char* op, const char* role) {
    if (type != KvType::F16 && !kv_type_quantized(type))
        throw Error(fmt::format("vk {}: a {} KV cache is not supported (f16, q8_0, q4_0 are)", op, kv_type_name(type)));
    const backend::KvRowFormat f{type, cache.ne(1), dim};
    if (!f.valid()) f.check(fmt::format("vk {}: {}", op, role));  // formats only to throw: decode allocates nothing
    require_type(cache, type == KvType::F16 ? TensorType::F16 : TensorType::I8, op, role);
    if (cache.ne(0) * static_cast<int64_t>(type == KvType::F16 ? 2 : 1) != static_cast<int64_t>(f.head_bytes()))
        throw Error(fmt::format("vk {}: {} '{}' {} does not hold {} heads of {} elements", op, role, cache.name(),
                                cache.shape_string(), kv_type_name(type), dim));
    return f;
}

}  // namespace

Tensor Backend::kv_cache(KvType type, int64_t head_dim, int64_t n_kv_head, int64_t n_ctx, const std::string& name) {
    if (type == KvType::F16) return tensor(TensorType::F16, {head_dim, n_kv_head, n_ctx}, name);
    if (!kv_type_quantized(type))
        throw Error(fmt::format("vk kv_cache: a {} KV cache is not supported (f16, q8_0, q4_0 are)", kv_type_name(type)));
    const backend::KvRowFormat f{type, n_kv_head, head_dim};
    f.check(fmt::format("vk kv_cache '{}'", name));
    return tensor(TensorType::I8, {static_cast<int64_t>(f.head_bytes()), n_kv_head, n_ctx}, name);
}

namespace {
// The positions a paged cache's table reaches (KvPages); throws unless it is one.
int64_t paged_positions(const KvPages& pg, bool ring, const char* op) {
    if (!pg.table || !pg.table->valid() || pg.table->type() != TensorType::I32 || pg.shift > 30)
        throw Error(fmt::format("vk {}: a paged cache needs an I32 page table and pages of at most 2^30 rows", op));
    if (ring) throw Error(fmt::format("vk {}: a ring cache is not paged", op));
    return pg.table->n_elements() << pg.shift;
}
}  // namespace

void Backend::kv_write(const Tensor& src, const Tensor& cache, uint32_t pos, bool ring, KvType type, const KvPages* pages) {
    require_type(src, TensorType::F32, "kv_write", "src");
    const int64_t dim = src.ne(0), n_ctx = cache.ne(2) * cache.ne(3), n_tok = src.ne(2) * src.ne(3);
    const backend::KvRowFormat f = kv_format(cache, type, dim, "kv_write", "cache");
    if (src.ne(1) != cache.ne(1))
        throw Error(fmt::format("vk kv_write: src '{}' {} and cache '{}' {} differ in heads", src.name(),
                                src.shape_string(), cache.name(), cache.shape_string()));
    if (type == KvType::F16 && (dim * cache.ne(1)) % 2)
        throw Error(fmt::format("vk kv_write: cache rows of {} halves; the shader needs an even width", dim * cache.ne(1)));
    // A paged cache's positions are those of its table (its rows are the pool's pages).
    const int64_t positions = pages ? paged_positions(*pages, ring, "kv_write") : n_ctx;
    if (ring ? n_tok > n_ctx : static_cast<int64_t>(pos) + n_tok > positions)
        throw Error(fmt::format("vk kv_write: positions {}..{} pass the {}cache '{}' of {} positions", pos,
                                static_cast<int64_t>(pos) + n_tok - 1, ring ? "ring " : pages ? "paged " : "", cache.name(),
                                positions));
    Binding b[] = {bind(src, false), bind(cache, true), bind(pages ? *pages->table : src, false)};
    const uint32_t paged = pages ? 1u : 0u, shift = pages ? pages->shift : 0u;
    uint32_t gx, gy;
    if (type == KvType::F16) {
        const int64_t width = dim * cache.ne(1);
        const uint32_t pc[7] = {u32(width, "width"), u32(n_tok, "n_tok"), pos, u32(width, "width"), u32(n_ctx, "slots"),
                                paged, shift};
        const auto& p = ctx_->pipeline("kv_write", {wg_elementwise_}, 3);
        groups_for(ceil_div(static_cast<uint64_t>(width / 2 * n_tok), wg_elementwise_), &gx, &gy);
        ctx_->dispatch(p, b, pc, sizeof pc, gx, gy);
        return;
    }
    const auto n_blocks = static_cast<uint32_t>(f.blocks_per_head());
    const uint32_t scale_words = (n_blocks + 1) / 2;
    const uint32_t pc[12] = {u32(dim, "dim"), u32(cache.ne(1), "heads"), u32(n_tok, "n_tok"), pos,
                             u32(dim * cache.ne(1), "src stride"), u32(n_ctx, "slots"),
                             static_cast<uint32_t>(f.head_bytes() / 4), static_cast<uint32_t>(f.head_code_bytes() / 4),
                             n_blocks, scale_words, paged, shift};
    const auto& p = ctx_->pipeline("kv_write_quant", {wg_elementwise_, type == KvType::Q4_0 ? 1u : 0u}, 3);
    groups_for(ceil_div(static_cast<uint64_t>(n_tok * cache.ne(1)) * scale_words, wg_elementwise_), &gx, &gy);
    ctx_->dispatch(p, b, pc, sizeof pc, gx, gy);
}

void Backend::attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& out,
                        const graph::AttentionParams& ap, const AttentionRun& r, const Tensor* sinks, const KvPages* pages) {
    require_type(q, TensorType::F32, "attention", "q");
    require_type(out, TensorType::F32, "attention", "out");
    const int64_t Dk = q.ne(0), n_head = q.ne(1), n_tok = q.ne(2) * q.ne(3);
    const int64_t Dv = out.ne(0), n_kv_head = k_cache.ne(1), n_ctx = k_cache.ne(2) * k_cache.ne(3);
    if ((ap.head_dim_k && ap.head_dim_k != Dk) || (ap.head_dim_v && ap.head_dim_v != Dv) || (ap.n_head && ap.n_head != n_head) ||
        (ap.n_head_kv && ap.n_head_kv != n_kv_head))
        throw Error(fmt::format("vk attention: q {}, k_cache {} and out {} are not {} heads of K {} / V {} over {} KV heads",
                                q.shape_string(), k_cache.shape_string(), out.shape_string(), ap.n_head, ap.head_dim_k,
                                ap.head_dim_v, ap.n_head_kv));
    if (ap.window < 0) throw Error(fmt::format("vk attention: window {} is negative", ap.window));
    const auto window = static_cast<uint32_t>(ap.window);
    const backend::KvRowFormat kf = kv_format(k_cache, r.k_type, Dk, "attention", "k_cache");
    if (ap.v_in_k && (v_cache.buffer_ != k_cache.buffer_ || v_cache.offset_ != k_cache.offset_ || Dv <= 0 || Dv > Dk))
        throw Error(fmt::format("vk attention: MLA reads V ({} of each K head of {}) from the K cache itself", Dv, Dk));
    // MLA: a value is the head of its K head, stored in K's format.
    const backend::KvRowFormat vf =
        ap.v_in_k ? kf : kv_format(v_cache, r.v_type, Dv, "attention", "v_cache");
    if (v_cache.ne(1) != n_kv_head || v_cache.ne(2) * v_cache.ne(3) != n_ctx)
        throw Error(fmt::format("vk attention: k_cache {} and v_cache {} differ in heads or positions",
                                k_cache.shape_string(), v_cache.shape_string()));
    if (n_head % n_kv_head)
        throw Error(fmt::format("vk attention: {} query heads are not a multiple of {} KV heads", n_head, n_kv_head));
    if (out.ne(0) != Dv || out.ne(1) != n_head || out.ne(2) * out.ne(3) != n_tok)
        throw Error(fmt::format("vk attention: out '{}' is {} but must be [{}, {}, {}]", out.name(), out.shape_string(),
                                Dv, n_head, n_tok));
    if (Dk % 2 || Dk > kAttnMaxDk || Dv % 2 || Dv > kAttnMaxRows * wg_attention_)
        throw Error(fmt::format("vk attention: head dims Dk {} and Dv {} must be even, Dk <= {}, Dv <= {}", Dk, Dv,
                                kAttnMaxDk, kAttnMaxRows * wg_attention_));
    if (r.ring) {
        if (window == 0 || static_cast<int64_t>(window) + n_tok - 1 > n_ctx)
            throw Error(fmt::format("vk attention: a ring of {} rows cannot hold a window of {} and a batch of {}",
                                    n_ctx, window, n_tok));
    }
    const int64_t positions = pages ? paged_positions(*pages, r.ring, "attention") : n_ctx;
    if (!r.ring && r.n_kv > positions)
        throw Error(fmt::format("vk attention: n_kv {} passes the {}cache of {} positions", r.n_kv, pages ? "paged " : "",
                                positions));
    if (sinks) {
        require_type(*sinks, TensorType::F32, "attention", "sinks");
        if (sinks->n_elements() != n_head)
            throw Error(fmt::format("vk attention: sinks '{}' {} for {} heads", sinks->name(), sinks->shape_string(), n_head));
    }
    // The positions any token of the batch may see: [k0, k_end).
    const uint32_t k0 = (window > 0 && r.pos0 + 1 > window) ? r.pos0 + 1 - window : 0;
    const uint64_t k_end = std::min<uint64_t>(uint64_t{r.pos0} + static_cast<uint64_t>(n_tok), r.n_kv);
    const uint64_t span = k_end > k0 ? k_end - k0 : 0;
    // Split-K's chunks: enough for about kSplitTargetGroups workgroups, each of at least
    // kSplitMinChunk keys (at least two when asked for).
    const uint64_t pairs = static_cast<uint64_t>(n_tok * n_head);
    const uint64_t max_chunks = ceil_div(span, static_cast<uint64_t>(kSplitMinChunk));
    const uint64_t want_chunks = std::min<uint64_t>(ceil_div(static_cast<uint64_t>(kSplitTargetGroups), pairs), max_chunks);
    uint64_t n_chunks = 1;
    if (r.kernel == AttentionKernel::Split)
        n_chunks = r.split_chunks ? r.split_chunks : std::max<uint64_t>(2, want_chunks);
    else if (r.kernel == AttentionKernel::Auto && split_auto_ && n_tok <= kSplitMaxTokens &&
             pairs < static_cast<uint64_t>(kSplitTargetGroups) && max_chunks >= 2)
        n_chunks = want_chunks;
    n_chunks = std::max<uint64_t>(1, std::min<uint64_t>(n_chunks, std::max<uint64_t>(span, 1)));
    const bool split = r.kernel == AttentionKernel::Split || n_chunks > 1;
    const uint64_t chunk = std::max<uint64_t>(1, ceil_div(span, n_chunks));
    const uint64_t rows = static_cast<uint64_t>(n_tok * n_head) * n_chunks;

    const float scale = ap.scale;
    struct {
        uint32_t Dk, Dv, n_head, n_kv_head, n_tok, pos0, n_kv, window, q_stride, o_stride;
        float scale, softcap;
        uint32_t n_slots, k_row, k_head, v_row, v_head, k_scale, v_scale;
        uint32_t n_chunks, chunk, k0, acc_off;
        uint32_t paged, page_shift;
    } pc{u32(Dk, "Dk"), u32(Dv, "Dv"), u32(n_head, "n_head"), u32(n_kv_head, "n_kv_head"), u32(n_tok, "n_tok"),
         r.pos0, r.n_kv, window, u32(Dk * n_head, "q stride"), u32(Dv * n_head, "out stride"), scale,
         ap.softcap, u32(n_ctx, "slots"), u32(static_cast<int64_t>(kf.row_bytes() / 4), "k row"),
         u32(static_cast<int64_t>(kf.head_bytes() / 4), "k head"), u32(static_cast<int64_t>(vf.row_bytes() / 4), "v row"),
         u32(static_cast<int64_t>(vf.head_bytes() / 4), "v head"), u32(static_cast<int64_t>(kf.head_code_bytes() / 4), "k scales"),
         u32(static_cast<int64_t>(vf.head_code_bytes() / 4), "v scales"),
         static_cast<uint32_t>(n_chunks), static_cast<uint32_t>(chunk), k0, u32(static_cast<int64_t>(2 * rows), "acc offset"),
         pages ? 1u : 0u, pages ? pages->shift : 0u};
    const Tensor& table = pages ? *pages->table : q;  // bound, not read, when not paged
    const bool want_tiled = r.kernel == AttentionKernel::Tiled ||
                            (r.kernel == AttentionKernel::Auto && n_tok >= kTiledMinTokens);
    if (want_tiled) {
        if (r.f16_tiles == 1 && !ctx_->info().fp16_arithmetic)
            throw Error(fmt::format("vk attention: f16 tiles need fp16 arithmetic (shaderFloat16), which {} lacks",
                                    ctx_->info().name));
        // Auto: 16-bit tiles hold an f16 cache exactly; a quantized cache's values would be rounded.
        const bool f16 = r.f16_tiles == 1 || (r.f16_tiles < 0 && ctx_->info().fp16_arithmetic &&
                                               kf.type == KvType::F16 && vf.type == KvType::F16);
        const auto [R, TK] = tiled_attention_shape(Dk, Dv, ap.v_in_k, f16);
        if (R == 0 && r.kernel == AttentionKernel::Tiled)
            throw Error(fmt::format("vk attention: no tile of heads K {} / V {} fits the {} bytes of shared memory", Dk,
                                    Dv, ctx_->info().max_shared_memory));
        if (R > 0) {
            const Binding b[] = {bind(q, false), bind(k_cache, false), bind(v_cache, false), bind(out, true),
                                 bind(sinks ? *sinks : q, false), bind(table, false)};
            const auto& p = ctx_->pipeline(f16 ? "attention_tiled_f16" : "attention_tiled",
                                           {wg_attention_tiled_, sinks ? 1u : 0u, 0u, kv_type_code(kf.type),
                                            kv_type_code(vf.type), R, TK, static_cast<uint32_t>(Dk),
                                            static_cast<uint32_t>(Dv), ap.v_in_k ? 1u : 0u},
                                           6);
            uint32_t gx, gy;
            groups_for(static_cast<uint64_t>(n_kv_head) * ceil_div(static_cast<uint64_t>(n_tok * (n_head / n_kv_head)), R),
                       &gx, &gy);
            ctx_->dispatch(p, b, &pc, sizeof pc, gx, gy);
            return;
        }
    }
    Binding part = bind(out, true);  // unused by the single pass
    if (split) {
        const uint64_t bytes = (2 * rows + rows * static_cast<uint64_t>(Dv)) * sizeof(float);
        if (!attn_part_ || attn_part_->size() < bytes)
            // At least what any split Auto chooses needs (fewer than 2 * kSplitTargetGroups rows of
            // at most kAttentionMaxDv + 2 floats), so that decoding never grows it mid-generation.
            attn_part_ = ctx_->create_buffer(
                std::max<uint64_t>(bytes, 2 * kSplitTargetGroups * (kAttentionMaxDv + 2) * sizeof(float)),
                MemoryKind::Device, "the split-K attention partials");
        part = Binding{attn_part_, 0, bytes, true};
    }
    const Binding b[] = {bind(q, false), bind(k_cache, false), bind(v_cache, false), bind(out, !split),
                         bind(sinks ? *sinks : q, false), part, bind(table, false)};
    const auto& p = ctx_->pipeline(
        "attention", {wg_attention_, sinks ? 1u : 0u, split ? 1u : 0u, kv_type_code(kf.type), kv_type_code(vf.type)}, 7);
    uint32_t gx, gy;
    groups_for(rows, &gx, &gy);
    ctx_->dispatch(p, b, &pc, sizeof pc, gx, gy);
    if (!split) return;
    const uint32_t cc[6] = {pc.Dv, pc.n_head, pc.n_tok, pc.n_chunks, pc.acc_off, pc.o_stride};
    const Binding cb[] = {Binding{attn_part_, 0, part.size, false}, bind(out, true)};
    const auto& pcomb = ctx_->pipeline("attention_combine", {wg_attention_}, 2);
    groups_for(static_cast<uint64_t>(n_tok * n_head), &gx, &gy);
    ctx_->dispatch(pcomb, cb, cc, sizeof cc, gx, gy);
}

std::pair<uint32_t, uint32_t> Backend::tiled_attention_shape(int64_t Dk, int64_t Dv, bool mla, bool f16) const {
    // attention_tiled.glsl's shared memory: Q rows (f32), K tile, V tile (none for MLA), each row
    // padded by one word, the scores, three floats per row, the cache row of each key.
    const uint64_t el = f16 ? 2 : 4, pad = f16 ? 2 : 1;
    const uint64_t limit = ctx_->info().max_shared_memory;
    static constexpr std::pair<uint32_t, uint32_t> kShapes[] = {{32, 32}, {16, 32}, {16, 16}, {8, 16}, {8, 8}, {4, 8}, {2, 8}, {1, 8}};
    for (const auto& [R, TK] : kShapes) {
        const uint64_t bytes =
            4 * R * (Dk + 1) + el * (TK * (Dk + pad) + (mla ? 1 : TK * (Dv + pad))) + 4 * (R * TK + 3 * R) + 4 * TK;
        // R <= the workgroup (a thread per row) and at most 64 accumulators per thread.
        if (bytes <= limit && R <= wg_attention_tiled_ && R * static_cast<uint64_t>(Dv) <= 64u * wg_attention_tiled_)
            return {R, TK};
    }
    return {0, 0};
}

// ---- gated activations and MoE routing -----------------------------------------------------

void Backend::geglu(const Tensor& gate, const Tensor& up, const Tensor& out) {
    for (auto [t, role] : {std::pair{&gate, "gate"}, {&up, "up"}, {&out, "out"}})
        require_type(*t, TensorType::F32, "geglu", role);
    require_same_count(gate, up, "geglu");
    require_same_count(gate, out, "geglu");
    const uint32_t n = u32(gate.n_elements(), "n");
    elementwise("geglu", {&gate, &up}, out, &n, sizeof n);
}

void Backend::swiglu_oai(const Tensor& gate, const Tensor& up, const Tensor& out, float alpha, float limit) {
    for (auto [t, role] : {std::pair{&gate, "gate"}, {&up, "up"}, {&out, "out"}})
        require_type(*t, TensorType::F32, "swiglu_oai", role);
    require_same_count(gate, up, "swiglu_oai");
    require_same_count(gate, out, "swiglu_oai");
    struct {
        uint32_t n;
        float alpha, limit;
    } pc{u32(gate.n_elements(), "n"), alpha, limit};
    elementwise("swiglu_oai", {&gate, &up}, out, &pc, sizeof pc);
}

void Backend::softcap(const Tensor& a, float cap, const Tensor& out) {
    require_type(a, TensorType::F32, "softcap", "a");
    require_type(out, TensorType::F32, "softcap", "out");
    require_same_count(a, out, "softcap");
    if (!(cap > 0.0f)) throw Error(fmt::format("vk softcap: the cap {} must be positive", cap));
    struct {
        uint32_t n;
        float cap;
    } pc{u32(a.n_elements(), "n"), cap};
    elementwise("softcap", {&a}, out, &pc, sizeof pc);
}

void Backend::sigmoid(const Tensor& a, const Tensor& out) { unary("sigmoid", a, out); }

void Backend::normalize_sum(const Tensor& x, const Tensor& out) {
    require_type(x, TensorType::F32, "normalize_sum", "x");
    require_type(out, TensorType::F32, "normalize_sum", "out");
    require_same_count(x, out, "normalize_sum");
    const uint32_t pc[2] = {u32(x.ne(0), "K"), u32(x.n_rows(), "rows")};
    const Binding b[] = {bind(x, false), bind(out, true)};
    const auto& p = ctx_->pipeline("normalize_sum", {wg_elementwise_}, 2);
    uint32_t gx, gy;
    groups_for(ceil_div(static_cast<uint64_t>(x.n_rows()), wg_elementwise_), &gx, &gy);
    ctx_->dispatch(p, b, pc, sizeof pc, gx, gy);
}

void Backend::top_k(const Tensor& scores, const Tensor* bias, const Tensor& ids, const graph::TopKParams& tp) {
    require_type(scores, TensorType::F32, "top_k", "scores");
    require_type(ids, TensorType::I32, "top_k", "ids");
    const int64_t n = scores.ne(0), n_tok = scores.n_rows();
    if (tp.k <= 0 || tp.k > n || ids.ne(0) != tp.k || ids.n_rows() != n_tok)
        throw Error(fmt::format("vk top_k: ids '{}' {} must be [{}, {}] (k of rows of {})", ids.name(), ids.shape_string(),
                                tp.k, n_tok, n));
    const bool grouped = tp.n_group > 1 && tp.n_group_used < tp.n_group;
    if (grouped && (tp.n_group > kTopKMaxGroups || n % tp.n_group || tp.n_group_used < 1))
        throw Error(fmt::format("vk top_k: {} of {} groups over {} experts (at most {} equal groups)", tp.n_group_used,
                                tp.n_group, n, kTopKMaxGroups));
    if (bias) {
        require_type(*bias, TensorType::F32, "top_k", "bias");
        if (bias->n_elements() != n)
            throw Error(fmt::format("vk top_k: bias '{}' {} for rows of {}", bias->name(), bias->shape_string(), n));
    }
    const uint32_t pc[5] = {u32(n, "n"), u32(n_tok, "n_tok"), u32(tp.k, "k"), u32(std::max(1, tp.n_group), "groups"),
                            u32(std::max(1, tp.n_group_used), "groups used")};
    const Binding b[] = {bind(scores, false), bind(bias ? *bias : scores, false), bind(ids, true)};
    const auto& p = ctx_->pipeline("top_k", {wg_elementwise_, bias ? 1u : 0u}, 3);
    uint32_t gx, gy;
    groups_for(ceil_div(static_cast<uint64_t>(n_tok), wg_elementwise_), &gx, &gy);
    ctx_->dispatch(p, b, pc, sizeof pc, gx, gy);
}

int Backend::activation_group(TensorType t) { return activation_grid(t); }

void Backend::quantize_x(const Tensor& x, const Tensor& out, int group) {
    require_type(x, TensorType::F32, "quantize_x", "x");
    require_type(out, TensorType::F32, "quantize_x", "out");
    require_same_count(x, out, "quantize_x");
    if (group <= 0 || x.ne(0) % group)
        throw Error(fmt::format("vk quantize_x: rows of {} are not whole groups of {}", x.ne(0), group));
    const uint64_t n_groups = static_cast<uint64_t>(x.n_elements() / group);
    const uint32_t pc[2] = {u32(static_cast<int64_t>(n_groups), "groups"), u32(group, "group")};
    const Binding b[] = {bind(x, false), bind(out, true)};
    const auto& p = ctx_->pipeline("quantize_x", {wg_elementwise_}, 2);
    uint32_t gx, gy;
    groups_for(ceil_div(n_groups, wg_elementwise_), &gx, &gy);
    ctx_->dispatch(p, b, pc, sizeof pc, gx, gy);
}

void Backend::gather(const Tensor& x, const Tensor& ids, const Tensor& out) {
    require_type(x, TensorType::F32, "gather", "x");
    require_type(ids, TensorType::I32, "gather", "ids");
    require_type(out, TensorType::F32, "gather", "out");
    const int64_t n_tok = x.n_rows();
    if (ids.n_rows() != n_tok || out.ne(0) != ids.ne(0) || out.n_rows() != n_tok)
        throw Error(fmt::format("vk gather: x {}, ids {} and out {} do not match", x.shape_string(), ids.shape_string(),
                                out.shape_string()));
    const uint32_t pc[3] = {u32(x.ne(0), "K"), u32(ids.ne(0), "k"), u32(n_tok, "n_tok")};
    elementwise("gather", {&x, &ids}, out, pc, sizeof pc);
}

MatmulKernel Backend::moe_kernel(int64_t n_tok, int64_t S, int64_t G) {
    if (n_tok <= kMatvecTokens) return MatmulKernel::Vector;
    // Experts: on a GPU, tiles pay once their slots fill half of the narrowest tile (16 columns);
    // below, the work on empty columns costs more than the weight reads it saves. Lavapipe, which
    // is compute-bound rather than bandwidth-bound, measured the tiles slower up to 16 slots per
    // expert (BM_VulkanMoePrompt: 0.33x at 4, 0.79x at 16, 1.19x at 32); it keeps this rule anyway,
    // so that CI runs the kernel a GPU runs (no user runs models on lavapipe: the CPU backend is
    // theirs).
    return G == 0 || S * n_tok >= 8 * G ? MatmulKernel::Tiled : MatmulKernel::Vector;
}

bool Backend::matmul_makes_codes(TensorType w, int64_t n_tok) const {
    return n_tok <= kMatvecTokens && matvec_.integer_dot && supports_integer_dot(w);
}

bool Backend::moe_matmul_makes_codes(const Tensor& w, const Tensor& x, const Tensor* ids) const {
    const int64_t G = w.ne(2) * w.ne(3);
    return moe_kernel(x.n_rows(), ids ? ids->ne(0) : G, ids ? G : 0) == MatmulKernel::Vector && matvec_.integer_dot &&
           supports_integer_dot(w.type());
}

void Backend::moe_matmul(const Tensor& w, const Tensor& x, const Tensor* ids, const Tensor* bias, const Tensor& y,
                         MatmulKernel kernel) {
    if (!w.valid()) throw Error("vk moe_matmul: the weight is not a tensor");
    if (!supports_matmul(w.type()))
        throw Error(fmt::format("vk moe_matmul: weight '{}' is {}, a type the Vulkan shaders do not read", w.name(),
                                w.shape_string()));
    require_type(x, TensorType::F32, "moe_matmul", "x");
    require_type(y, TensorType::F32, "moe_matmul", "y");
    const int64_t K = w.ne(0), R = w.ne(1), G = w.ne(2) * w.ne(3), n_tok = x.n_rows();
    if (ids) require_type(*ids, TensorType::I32, "moe_matmul", "ids");
    const int64_t S = ids ? ids->ne(0) : G;
    if (ids && ids->n_rows() != n_tok)
        throw Error(fmt::format("vk moe_matmul: ids {} for {} tokens", ids->shape_string(), n_tok));
    if (x.ne(0) != K && x.ne(0) != S * K)
        throw Error(fmt::format("vk moe_matmul: x '{}' {} has rows of neither {} nor {} x {} (weight '{}' {})", x.name(),
                                x.shape_string(), K, S, K, w.name(), w.shape_string()));
    if (y.ne(0) != S * R || y.n_rows() != n_tok)
        throw Error(fmt::format("vk moe_matmul: y '{}' is {} but must be [{}, {}]", y.name(), y.shape_string(), S * R, n_tok));
    if (K % 4) throw Error(fmt::format("vk moe_matmul: rows of {} elements; the shader needs a multiple of 4", K));
    if (bias) {
        require_type(*bias, TensorType::F32, "moe_matmul", "bias");
        if (bias->n_elements() != R * G)
            throw Error(fmt::format("vk moe_matmul: bias '{}' {} must be [{}, {}]", bias->name(), bias->shape_string(), R, G));
    }
    uint32_t pc[9] = {u32(K, "K"), u32(R, "R"), u32(S, "S"), u32(n_tok, "n_tok"), u32(G, "G"),
                      u32(static_cast<int64_t>(w.row_bytes()), "row bytes"), u32(x.ne(0), "x stride"),
                      x.ne(0) == K ? 0u : u32(K, "K"),  // x shared by the slots, or one input per slot
                      0};
    Binding b[] = {bind(w, false), bind(x, false), bind(ids ? *ids : x, false), bind(bias ? *bias : x, false),
                   bind(y, true)};
    if (kernel == MatmulKernel::Auto) kernel = moe_kernel(n_tok, S, ids ? G : 0);
    if (kernel == MatmulKernel::Tiled) {
        if (ids) {
            if (G > kMoeMaxExperts)
                throw Error(fmt::format("vk moe_matmul: weight '{}' {} stacks {} experts; the routing shader takes at most {}",
                                        w.name(), w.shape_string(), G, kMoeMaxExperts));
            // The slots of each expert, listed: offsets and counts of G + 1 lists (the last one
            // for ids out of range), then the slot indices.
            const uint64_t n_slots = static_cast<uint64_t>(S * n_tok);
            const uint64_t bytes = (2 * static_cast<uint64_t>(G + 1) + n_slots) * sizeof(uint32_t);
            if (!moe_route_ || moe_route_->size() < bytes)
                moe_route_ = ctx_->create_buffer(bytes, MemoryKind::Device, "the MoE routing lists");
            const uint32_t rc[2] = {u32(S * n_tok, "slots"), u32(G, "G")};
            const Binding rb[] = {bind(*ids, false), Binding{moe_route_, 0, bytes, true}};
            ctx_->dispatch(ctx_->pipeline("moe_route", {wg_elementwise_}, 2), rb, rc, sizeof rc, 1);
            b[2] = Binding{moe_route_, 0, bytes, false};
        }
        // Columns (slots) per tile: 16, 32 or 64, the fewest that hold a matrix's average, so that
        // experts with few slots waste little work on empty columns. Column tiles per matrix run
        // side by side: all of them per head; for experts, about twice the average (the rest are
        // walked in turn by the same workgroups).
        const uint64_t avg = ids ? ceil_div(static_cast<uint64_t>(S * n_tok), static_cast<uint64_t>(G)) : n_tok;
        const uint32_t bn = avg <= 16 ? 16 : avg <= 32 ? 32 : 64;
        const uint32_t tiles = ceil_div(static_cast<uint64_t>(n_tok), bn);
        const uint32_t per = ids ? std::min(tiles, ceil_div(2 * avg, bn)) : tiles;
        const auto spec = type_spec<3>(kTiledWorkgroup, w.type(), {ids ? 1u : 0u, bias ? 1u : 0u, bn});
        const auto& p = ctx_->pipeline("moe_matmul_tiled", spec, 5);
        ctx_->dispatch(p, b, pc, 8 * sizeof(uint32_t), ceil_div(static_cast<uint64_t>(R), kTile), std::max(per, 1u),
                       static_cast<uint32_t>(G) + (ids ? 1u : 0u));
        return;
    }
    const bool dot = matvec_.integer_dot && supports_integer_dot(w.type());
    if (dot) {  // x as 8-bit codes: strides in words
        pc[6] /= 4;
        pc[7] /= 4;
        b[1] = x_codes(x, w.type(), &pc[8]);
    }
    const auto spec = type_spec<2>(wg_matvec_, w.type(), {ids ? 1u : 0u, bias ? 1u : 0u});
    const char* shader = dot ? (matvec_.subgroup ? "moe_matmul_dot_subgroup" : "moe_matmul_dot")
                             : (matvec_.subgroup ? "moe_matmul_subgroup" : "moe_matmul");
    const auto& p = ctx_->pipeline(shader, spec, 5);
    uint32_t gx, gy;
    groups_for(static_cast<uint64_t>(R * S * n_tok), &gx, &gy);
    ctx_->dispatch(p, b, pc, sizeof pc, gx, gy);
}

void Backend::moe_combine(const Tensor& y, const Tensor& w, const Tensor& out) {
    for (auto [t, role] : {std::pair{&y, "y"}, {&w, "w"}, {&out, "out"}}) require_type(*t, TensorType::F32, "moe_combine", role);
    const int64_t E = out.ne(0), n_tok = out.n_rows(), S = w.ne(0);
    if (w.n_rows() != n_tok || y.n_elements() != S * E * n_tok)
        throw Error(fmt::format("vk moe_combine: y {}, w {} and out {} do not match", y.shape_string(), w.shape_string(),
                                out.shape_string()));
    const uint32_t pc[3] = {u32(E, "E"), u32(S, "S"), u32(n_tok, "n_tok")};
    elementwise("moe_combine", {&y, &w}, out, pc, sizeof pc);
}

void Backend::slice_heads(const Tensor& x, const Tensor& out, int n_head, int head_dim, int first, int count) {
    require_type(x, TensorType::F32, "slice_heads", "x");
    require_type(out, TensorType::F32, "slice_heads", "out");
    const int64_t n_tok = x.n_rows();
    if (n_head <= 0 || first < 0 || count <= 0 || first + count > head_dim ||
        x.ne(0) != static_cast<int64_t>(n_head) * head_dim || out.ne(0) != static_cast<int64_t>(n_head) * count ||
        out.n_rows() != n_tok)
        throw Error(fmt::format("vk slice_heads: x {} ({} heads of {}) -> [{}, {}) per head into out {}",
                                x.shape_string(), n_head, head_dim, first, first + count, out.shape_string()));
    const uint32_t pc[6] = {u32(n_head, "n_head"), u32(head_dim, "head_dim"), u32(first, "first"), u32(count, "count"),
                            u32(n_tok, "n_tok"), u32(x.ne(0), "x stride")};
    elementwise("slice_heads", {&x}, out, pc, sizeof pc);
}

void Backend::concat_heads(const Tensor& a, const Tensor& b, const Tensor& out, int n_head) {
    for (auto [t, role] : {std::pair{&a, "a"}, {&b, "b"}, {&out, "out"}}) require_type(*t, TensorType::F32, "concat_heads", role);
    const int64_t n_tok = a.n_rows();
    if (n_head <= 0 || a.ne(0) % n_head || b.ne(0) % n_head || b.n_rows() != n_tok || out.ne(0) != a.ne(0) + b.ne(0) ||
        out.n_rows() != n_tok)
        throw Error(fmt::format("vk concat_heads: a {}, b {} and out {} do not match ({} heads)", a.shape_string(),
                                b.shape_string(), out.shape_string(), n_head));
    const uint32_t pc[4] = {u32(n_head, "n_head"), u32(a.ne(0) / n_head, "da"), u32(b.ne(0) / n_head, "db"),
                            u32(n_tok, "n_tok")};
    elementwise("concat_heads", {&a, &b}, out, pc, sizeof pc);
}

}  // namespace kiln::vk
