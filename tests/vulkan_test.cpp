// Vulkan backend: device listing and selection, memory checks, recording and submission, and every
// shader against a scalar CPU reference computed here (kiln::dequantize_row + double accumulation).
//
// Inputs are random and never zero; weights are quantized from random floats with
// kiln::quantize_row (random valid blocks for the types without a quantizer); outputs are poisoned
// with NaN before each run so an element a shader forgets to write fails. Without a Vulkan device
// the device tests skip LOUDLY (CI has lavapipe, so they run there). Shapes are kept moderate:
// lavapipe runs shaders on the CPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <numbers>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "backend/vulkan/backend.h"
#include "backend/vulkan/context.h"
#include "backend/vulkan/shaders.h"
#include "kiln/error.h"
#include "quant/quant.h"
#include "support/run.h"
#include "support/vulkan.h"
#include "support/random.h"

namespace {

using kiln::TensorType;
using kiln::vk::Backend;
using kiln::vk::MatmulKernel;
using kiln::vk::Tensor;

constexpr uint32_t kPoison = 0x7fc00000u;  // quiet NaN

// ---- the shared backend --------------------------------------------------------------------

// One backend (validation on) for every test of this file, the matmul cases included.
class VulkanTest : public kiln::test::VulkanOpsSuite<VulkanTest> {};

// ---- random data and references ------------------------------------------------------------

using kiln::test::random_nonzero_floats;  // relative errors need nonzero values

void put_f16(std::vector<uint8_t>& b, size_t at, float v) {
    const uint16_t h = kiln::fp32_to_fp16(v);
    std::memcpy(b.data() + at, &h, 2);
}

// n_rows rows of k elements of type t: quantized from random floats, or random valid blocks.
std::vector<uint8_t> random_weights(TensorType t, int64_t k, int64_t n_rows, uint32_t seed) {
    const uint64_t rb = *kiln::row_bytes(t, static_cast<uint64_t>(k));
    std::vector<uint8_t> out(rb * static_cast<uint64_t>(n_rows));
    const auto& tr = kiln::traits(t);
    if (tr.can_quantize) {
        const auto f = random_nonzero_floats(static_cast<size_t>(k * n_rows), seed);
        for (int64_t r = 0; r < n_rows; ++r) kiln::quantize_row(t, f.data() + r * k, out.data() + r * rb, k);
        return out;
    }
    std::mt19937 rng(seed);
    for (auto& b : out) b = static_cast<uint8_t>(rng());
    std::uniform_real_distribution<float> scale(0.002f, 0.02f);
    const size_t nb = out.size() / tr.type_size;
    for (size_t i = 0; i < nb; ++i) {
        const size_t blk = i * tr.type_size;
        switch (t) {
            case TensorType::Q2_K: put_f16(out, blk + 80, scale(rng) * 4); put_f16(out, blk + 82, scale(rng) * 4); break;
            case TensorType::Q3_K: put_f16(out, blk + 108, scale(rng)); break;
            case TensorType::IQ4_XS: put_f16(out, blk, scale(rng) * 0.1f); break;
            default: ADD_FAILURE() << "no random block recipe for " << tr.name;
        }
    }
    return out;
}

std::vector<float> dequantize(TensorType t, const std::vector<uint8_t>& data, int64_t k, int64_t n_rows) {
    const uint64_t rb = *kiln::row_bytes(t, static_cast<uint64_t>(k));
    std::vector<float> out(static_cast<size_t>(k * n_rows));
    for (int64_t r = 0; r < n_rows; ++r) kiln::dequantize_row(t, data.data() + r * rb, out.data() + r * k, k);
    return out;
}

// max |got - want| / max |want|: the error relative to the output's scale. NaN anywhere: infinity.
double rel_error(const std::vector<float>& got, const std::vector<double>& want) {
    EXPECT_EQ(got.size(), want.size());
    double err = 0, scale = 0;
    for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
        if (!std::isfinite(got[i])) return INFINITY;
        err = std::max(err, std::fabs(static_cast<double>(got[i]) - want[i]));
        scale = std::max(scale, std::fabs(want[i]));
    }
    return scale > 0 ? err / scale : err;
}

Tensor upload_i32(Backend& vk, const std::vector<int32_t>& v, const char* name) {
    Tensor t = vk.tensor(TensorType::I32, {static_cast<int64_t>(v.size())}, name);
    vk.upload(t, v.data(), t.bytes());
    return t;
}

Tensor poisoned(Backend& vk, TensorType t, std::initializer_list<int64_t> ne, const char* name) {
    Tensor x = vk.tensor(t, ne, name);
    vk.fill(x, kPoison);
    return x;
}

void report(const std::string& what, double err) {
    std::printf("    [max rel error] %-40s %.3g\n", what.c_str(), err);
    ::testing::Test::RecordProperty(what, std::to_string(err));
}

}  // namespace

// ---- build: the embedded SPIR-V ------------------------------------------------------------

TEST(VulkanShaders, EveryShaderIsEmbeddedAsSpirv) {
    size_t n = 0;
    for (const auto* s = kiln::vk::embedded_shaders(); s->name; ++s, ++n) {
        SCOPED_TRACE(s->name);
        ASSERT_GE(s->n_words, 5u);
        EXPECT_EQ(s->words[0], 0x07230203u);  // SPIR-V magic
        EXPECT_EQ(kiln::vk::find_shader(s->name), s);
    }
    EXPECT_GE(n, 1u);
    EXPECT_EQ(kiln::vk::find_shader("no_such_shader"), nullptr);
}

// ---- devices: listing and the selection rules ----------------------------------------------

namespace {

kiln::vk::DeviceInfo fake(uint32_t index, kiln::vk::DeviceType type, const char* name, bool usable = true) {
    kiln::vk::DeviceInfo d;
    d.index = index;
    d.type = type;
    d.name = name;
    d.usable = usable;
    if (!usable) d.unusable_reason = "needs Vulkan 1.2, the driver offers 1.1.0";
    return d;
}

std::string error_of(auto&& fn) {
    try {
        fn();
    } catch (const kiln::Error& e) {
        return e.what();
    }
    return "(no error)";
}

}  // namespace

TEST(VulkanDevices, SelectionRules) {
    using kiln::vk::DeviceType;
    using kiln::vk::select_device;
    const std::vector<kiln::vk::DeviceInfo> all = {
        fake(0, DeviceType::Cpu, "llvmpipe"), fake(1, DeviceType::IntegratedGpu, "igpu"),
        fake(2, DeviceType::DiscreteGpu, "dgpu"), fake(3, DeviceType::DiscreteGpu, "dgpu2")};
    EXPECT_EQ(select_device(all, -1, false), 2u);  // first discrete GPU
    EXPECT_EQ(select_device(all, -1, true), 2u);
    EXPECT_EQ(select_device(all, 0, false), 0u);   // --device N takes any kind
    EXPECT_EQ(select_device(all, 3, false), 3u);

    const std::vector<kiln::vk::DeviceInfo> igpu = {fake(0, DeviceType::Cpu, "llvmpipe"),
                                                    fake(1, DeviceType::IntegratedGpu, "igpu")};
    EXPECT_EQ(select_device(igpu, -1, false), 1u);  // then integrated

    const std::vector<kiln::vk::DeviceInfo> cpu_only = {fake(0, DeviceType::Cpu, "llvmpipe")};
    EXPECT_EQ(select_device(cpu_only, -1, false), std::nullopt);  // default: the CPU backend
    EXPECT_EQ(select_device(cpu_only, -1, true), 0u);             // Vulkan required: lavapipe will do

    const std::vector<kiln::vk::DeviceInfo> mixed = {fake(0, DeviceType::DiscreteGpu, "old", false),
                                                     fake(1, DeviceType::VirtualGpu, "virt"),
                                                     fake(2, DeviceType::Cpu, "llvmpipe")};
    EXPECT_EQ(select_device(mixed, -1, false), std::nullopt);  // the unusable GPU is skipped
    EXPECT_EQ(select_device(mixed, -1, true), 1u);             // virtual before CPU
    EXPECT_NE(error_of([&] { select_device(mixed, 0, false); }).find("needs Vulkan 1.2"), std::string::npos);

    const std::string oob = error_of([&] { select_device(all, 7, false); });
    EXPECT_NE(oob.find("--device 7: no such Vulkan device"), std::string::npos) << oob;
    EXPECT_NE(oob.find("[2] dgpu (discrete GPU)"), std::string::npos) << oob;
    const std::string none = error_of([&] { select_device({}, -1, true); });
    EXPECT_NE(none.find("no Vulkan device is present"), std::string::npos) << none;
}

// The Context alone (no ops): a device chosen as `--backend vulkan` would, memory accounting,
// the budget check, upload through the staging ring, fill and readback.
TEST(VulkanContext, MemoryUploadFillReadback) {
    std::vector<kiln::vk::DeviceInfo> devices;
    std::optional<uint32_t> index;
    try {
        devices = kiln::vk::list_devices();
        index = kiln::vk::select_device(devices, -1, true);
    } catch (const kiln::Error& e) {
        std::fprintf(stderr, "\n*** SKIPPED: no Vulkan device (%s) ***\n\n", e.what());
        GTEST_SKIP() << "no Vulkan device: " << e.what();
    }
    kiln::vk::Context ctx(*index, true);
    const auto& d = ctx.info();
    EXPECT_EQ(d.name, devices[*index].name);
    EXPECT_TRUE(d.usable);
    EXPECT_GE(d.api_version, VK_API_VERSION_1_2);
    EXPECT_GT(d.device_local_bytes(), 0u);
    EXPECT_GT(d.subgroup_size, 0u);

    using kiln::vk::MemoryKind;
    const uint32_t heap = ctx.heap_of(MemoryKind::Device);
    const uint64_t used = ctx.heap_used(heap), avail = ctx.heap_available(heap);
    const uint64_t huge = std::max(avail, d.max_allocation_size) + (1ull << 20);
    const std::string e = error_of([&] { ctx.create_buffer(huge, MemoryKind::Device, "tensor 'huge'"); });
    EXPECT_NE(e.find("tensor 'huge'"), std::string::npos) << e;
    EXPECT_NE(e.find("MiB"), std::string::npos) << e;
    EXPECT_EQ(ctx.heap_used(heap), used);

    const size_t n = 3'000'001;
    std::vector<uint32_t> data(n);
    for (size_t i = 0; i < n; ++i) data[i] = static_cast<uint32_t>(i * 2654435761u);
    auto buf = ctx.create_buffer(n * 4, MemoryKind::Device, "roundtrip");
    EXPECT_GE(ctx.heap_used(heap), used + n * 4);
    ctx.upload(buf, 0, data.data(), n * 4);
    std::vector<uint32_t> back(n);
    const auto submits = ctx.stats().submits;
    ctx.download(buf, 0, back.data(), n * 4);
    EXPECT_EQ(ctx.stats().submits - submits, 1u);  // upload, copy back: one submit
    EXPECT_TRUE(back == data);
    ctx.fill(buf, 4 * 10, 4 * 5, 0xdeadbeefu);
    ctx.download(buf, 0, back.data(), 4 * 20);
    for (size_t i = 0; i < 20; ++i) EXPECT_EQ(back[i], i >= 10 && i < 15 ? 0xdeadbeefu : data[i]) << i;
    EXPECT_EQ(ctx.validation_messages(), 0u);
    const uint64_t with = ctx.heap_used(heap);
    buf.reset();
    EXPECT_GE(with - ctx.heap_used(heap), n * 4);  // given back
}

TEST_F(VulkanTest, DeviceIsListedWithItsProperties) {
    const auto devices = kiln::vk::list_devices();
    ASSERT_FALSE(devices.empty());
    const auto& d = vk().device();
    ASSERT_LT(d.index, devices.size());
    EXPECT_EQ(devices[d.index].name, d.name);
    EXPECT_TRUE(d.usable);
    EXPECT_GE(d.api_version, VK_API_VERSION_1_2);
    EXPECT_FALSE(d.heaps.empty());
    EXPECT_GT(d.device_local_bytes(), 0u);
    EXPECT_GT(d.subgroup_size, 0u);
    EXPECT_GE(d.max_workgroup_invocations, 128u);
    EXPECT_GE(d.max_storage_buffer_range, 1u << 27);
    std::printf("    device: [%u] %s (%s, %s %s), validation layer %s\n", d.index, d.name.c_str(),
                kiln::vk::device_type_name(d.type), d.driver_name.c_str(), d.driver_info.c_str(),
                vk().context().validation() ? "on" : "not installed");
}

TEST(VulkanDevices, CliListsDevicesOrSaysThereAreNone) {
    const auto text = kiln::test::run_kiln({"devices"}, "devices");
    ASSERT_EQ(text.code, 0) << text.err;
    const auto js = kiln::test::run_kiln({"devices", "--json"}, "devices");
    ASSERT_EQ(js.code, 0) << js.err;
    const auto j = nlohmann::json::parse(js.out);
    ASSERT_TRUE(j.contains("devices"));
    if (!j["vulkan"].get<bool>()) {
        EXPECT_NE(text.out.find("No Vulkan"), std::string::npos) << text.out;
        EXPECT_NE(text.out.find("kiln runs on the CPU"), std::string::npos) << text.out;
    }
    for (const auto& d : j["devices"]) {
        const std::string name = d["name"];
        EXPECT_NE(text.out.find(name), std::string::npos) << text.out;
        for (const char* key : {"type", "driver", "memory_heaps", "subgroup", "fp16", "int8", "bf16",
                                "integer_dot_product", "cooperative_matrix", "api_version"})
            EXPECT_TRUE(d.contains(key)) << key;
        EXPECT_GT(d["subgroup"]["size"].get<int>(), 0);
        EXPECT_FALSE(d["memory_heaps"].empty());
    }
    for (const char* field : {"subgroup", "fp16", "int8", "bf16", "int dot product", "coop. matrix", "memory heap 0"}) {
        if (!j["devices"].empty()) {
            EXPECT_NE(text.out.find(field), std::string::npos) << field;
        }
    }

    const auto bad = kiln::test::run_kiln({"devices", "--device", "99"}, "devices");
    EXPECT_EQ(bad.code, 1);
    EXPECT_NE(bad.err.find("--device 99"), std::string::npos) << bad.err;

    // No loader: said plainly, exit 0 (the CPU backend still works).
    ::setenv("KILN_VULKAN_LOADER", "/nonexistent/libvulkan.so.1", 1);
    const auto none = kiln::test::run_kiln({"devices"}, "devices");
    const auto none_js = kiln::test::run_kiln({"devices", "--json"}, "devices");
    ::unsetenv("KILN_VULKAN_LOADER");
    EXPECT_EQ(none.code, 0) << none.err;
    EXPECT_NE(none.out.find("No Vulkan: no Vulkan loader"), std::string::npos) << none.out;
    EXPECT_NE(none.out.find("kiln runs on the CPU"), std::string::npos) << none.out;
    ASSERT_EQ(none_js.code, 0);
    const auto nj = nlohmann::json::parse(none_js.out);
    EXPECT_FALSE(nj["vulkan"].get<bool>());
    EXPECT_TRUE(nj["devices"].empty());
    EXPECT_NE(nj["error"].get<std::string>().find("libvulkan"), std::string::npos);
}

// ---- memory, recording, submission ---------------------------------------------------------

TEST_F(VulkanTest, OutOfMemoryIsRefusedBeforeAllocating) {
    auto& ctx = vk().context();
    const uint32_t heap = ctx.heap_of(kiln::vk::MemoryKind::Device);
    const uint64_t used = ctx.heap_used(heap);
    const uint64_t avail = vk().device_memory_available();
    ASSERT_GT(avail, 0u);

    std::string why;
    EXPECT_TRUE(vk().fits(1 << 20, &why)) << why;
    EXPECT_FALSE(vk().fits(avail + (1ull << 20), &why));
    EXPECT_NE(why.find("out of device memory"), std::string::npos) << why;
    EXPECT_NE(why.find("MiB"), std::string::npos) << why;

    // A buffer past the budget (or past one allocation's limit) is refused with numbers, and
    // nothing is left allocated.
    const uint64_t huge = std::max(avail, vk().device().max_allocation_size) + (1ull << 20);
    const std::string e = error_of([&] { ctx.create_buffer(huge, kiln::vk::MemoryKind::Device, "tensor 'huge'"); });
    EXPECT_NE(e.find("tensor 'huge'"), std::string::npos) << e;
    EXPECT_NE(e.find("MiB"), std::string::npos) << e;
    EXPECT_EQ(ctx.heap_used(heap), used);

    // A tensor larger than one storage binding can address is refused by name.
    const int64_t n = static_cast<int64_t>(vk().device().max_storage_buffer_range / 4) + 1024;
    const std::string big = error_of([&] { vk().tensor(TensorType::F32, {n}, "too_wide"); });
    EXPECT_NE(big.find("too_wide"), std::string::npos) << big;
    EXPECT_EQ(ctx.heap_used(heap), used);

    // Allocation is counted, and given back.
    {
        Tensor t = vk().tensor(TensorType::F32, {1 << 18}, "counted");
        EXPECT_GE(ctx.heap_used(heap), used + (1u << 20));
    }
    EXPECT_EQ(ctx.heap_used(heap), used);
}

TEST_F(VulkanTest, UploadFillAndReadBack) {
    const auto v = random_nonzero_floats(100003, 1);
    Tensor t = f32(v, {100003}, "roundtrip");
    EXPECT_EQ(vk().read_f32(t), v);
    vk().fill(t, kPoison);
    for (float f : vk().read_f32(t)) ASSERT_TRUE(std::isnan(f));

    // Larger than the staging ring and the readback buffer: streamed in chunks.
    const int64_t n = (80 << 20) / 4;
    std::vector<float> big(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) big[static_cast<size_t>(i)] = static_cast<float>(i % 1000003) + 0.5f;
    Tensor b = f32(big, {n}, "streamed");
    EXPECT_TRUE(vk().read_f32(b) == big);

    const std::string e = error_of([&] { vk().upload(t, v.data(), 12); });
    EXPECT_NE(e.find("roundtrip"), std::string::npos) << e;
}

TEST_F(VulkanTest, AGraphIsOneSubmitWithBarriersOnlyWhereNeeded) {
    const int64_t n = 5000;
    const auto a = random_nonzero_floats(n, 2), b = random_nonzero_floats(n, 3);
    Tensor ta = f32(a, {n}, "a"), tb = f32(b, {n}, "b");
    vk().submit();
    Tensor s1 = vk().tensor(TensorType::F32, {n}, "s1"), s2 = vk().tensor(TensorType::F32, {n}, "s2");
    Tensor out = vk().tensor(TensorType::F32, {n}, "out");

    const auto before = vk().stats();
    vk().scale(ta, 2.0f, s1);  // independent of the next: no barrier between them
    vk().silu(tb, s2);
    vk().add(s1, s2, out);     // reads both: one barrier
    vk().mul(out, ta, out);    // in place, after add: one barrier
    const auto mid = vk().stats();
    EXPECT_EQ(mid.submits, before.submits);  // recorded, not run
    EXPECT_EQ(mid.dispatches - before.dispatches, 4u);
    EXPECT_EQ(mid.barriers - before.barriers, 2u);
    const auto got = vk().read_f32(out);  // the read joins the same submit
    EXPECT_EQ(vk().stats().submits - before.submits, 1u);

    std::vector<double> want(n);
    for (int64_t i = 0; i < n; ++i) {
        const double x = b[i], silu = x / (1 + std::exp(-x));
        want[i] = (2.0 * a[i] + silu) * a[i];
    }
    const double err = rel_error(got, want);
    report("graph scale+silu+add+mul", err);
    EXPECT_LT(err, 1e-5);

    // The same pass again (a next token): every dispatch finds its descriptor set written already.
    const auto again = vk().stats();
    vk().scale(ta, 2.0f, s1);
    vk().silu(tb, s2);
    vk().add(s1, s2, out);
    vk().mul(out, ta, out);
    EXPECT_EQ(vk().stats().descriptor_sets, again.descriptor_sets);
    EXPECT_LT(rel_error(vk().read_f32(out), want), 1e-5);
    // A new tensor is a new buffer: its set is written, not one of a dropped buffer's.
    Tensor out2 = vk().tensor(TensorType::F32, {n}, "out2");
    vk().add(s1, s2, out2);
    EXPECT_EQ(vk().stats().descriptor_sets, again.descriptor_sets + 1);
}

// ---- matmul --------------------------------------------------------------------------------

namespace {

struct MatmulCase {
    TensorType type;
    double tol;
};
void PrintTo(const MatmulCase& c, std::ostream* os) { *os << kiln::type_name(c.type); }

// Every weight type the shaders read. Weights are exact (dequantized the same way on both sides),
// so the f32 tolerance applies to all of them.
const MatmulCase kMatmulCases[] = {
    {TensorType::F32, 1e-4},  {TensorType::F16, 1e-4},  {TensorType::BF16, 1e-4},   {TensorType::Q8_0, 1e-4},
    {TensorType::Q4_0, 1e-4}, {TensorType::Q4_1, 1e-4}, {TensorType::Q5_0, 1e-4},   {TensorType::Q5_1, 1e-4},
    {TensorType::Q2_K, 1e-4}, {TensorType::Q3_K, 1e-4}, {TensorType::Q4_K, 1e-4},   {TensorType::Q5_K, 1e-4},
    {TensorType::Q6_K, 1e-4}, {TensorType::IQ4_NL, 1e-4}, {TensorType::IQ4_XS, 1e-4}, {TensorType::MXFP4, 1e-4},
};

std::vector<double> matmul_ref(const std::vector<float>& w, const std::vector<float>& x, int64_t K, int64_t N,
                               int64_t n) {
    std::vector<double> y(static_cast<size_t>(N * n));
    for (int64_t t = 0; t < n; ++t)
        for (int64_t r = 0; r < N; ++r) {
            double s = 0;
            for (int64_t k = 0; k < K; ++k) s += static_cast<double>(w[r * K + k]) * x[t * K + k];
            y[t * N + r] = s;
        }
    return y;
}

}  // namespace

class VulkanMatmul : public VulkanTest, public ::testing::WithParamInterface<MatmulCase> {};

TEST_P(VulkanMatmul, MatchesTheReferenceForEveryTokenCountAndKernel) {
    const auto [type, tol] = GetParam();
    const int64_t K = 512, N = 257;  // N: not a multiple of any workgroup or tile
    const auto wq = random_weights(type, K, N, 10 + static_cast<uint32_t>(type));
    const auto wf = dequantize(type, wq, K, N);
    Tensor w = vk().tensor(type, {K, N}, "w");
    vk().upload(w, wq.data(), wq.size());
    for (int64_t n : {1, 7, 64}) {
        const auto x = random_nonzero_floats(static_cast<size_t>(K * n), 100 + static_cast<uint32_t>(n));
        const auto want = matmul_ref(wf, x, K, N, n);
        Tensor tx = f32(x, {K, n}, "x");
        for (MatmulKernel kernel : {MatmulKernel::Vector, MatmulKernel::Tiled, MatmulKernel::Auto}) {
            Tensor y = poisoned(vk(), TensorType::F32, {N, n}, "y");
            vk().matmul(w, tx, y, kernel);
            const double err = rel_error(vk().read_f32(y), want);
            const char* kname = kernel == MatmulKernel::Vector ? "vec" : kernel == MatmulKernel::Tiled ? "tiled" : "auto";
            report(std::string("matmul ") + kiln::type_name(type) + " n=" + std::to_string(n) + " " + kname, err);
            EXPECT_LT(err, tol) << kiln::type_name(type) << " n=" << n << " " << kname;
        }
        // Every matrix-vector variant: plain and subgroup reductions, 1, 2 and 4 rows per workgroup
        // (N = 257 leaves the last workgroup's rows partly past the end).
        const kiln::vk::MatvecOptions saved = vk().matvec_options();
        for (bool subgroup : {false, true}) {
            if (subgroup && !vk().device().subgroup_arithmetic) {
                std::printf("    (no subgroup arithmetic on this device: the subgroup variant is not tested)\n");
                continue;
            }
            for (uint32_t rows : {1u, 2u, 4u}) {
                vk().set_matvec_options({subgroup, rows});
                Tensor y = poisoned(vk(), TensorType::F32, {N, n}, "y");
                vk().matmul(w, tx, y, MatmulKernel::Vector);
                const double err = rel_error(vk().read_f32(y), want);
                const std::string vname = std::string(subgroup ? "vec subgroup" : "vec plain") + " rows " + std::to_string(rows);
                report(std::string("matmul ") + kiln::type_name(type) + " n=" + std::to_string(n) + " " + vname, err);
                EXPECT_LT(err, tol) << kiln::type_name(type) << " n=" << n << " " << vname;
            }
        }
        vk().set_matvec_options(saved);
    }
}

TEST_F(VulkanTest, MatvecVariantIsChosenByDeviceFeaturesAndCheckedWhenSet) {
    EXPECT_EQ(vk().matvec_options().subgroup, vk().device().subgroup_arithmetic);
    EXPECT_EQ(vk().matvec_options().rows, 1u);
    const kiln::vk::MatvecOptions saved = vk().matvec_options();
    EXPECT_THROW(vk().set_matvec_options({false, 3}), kiln::Error);  // 3 does not divide 64
    EXPECT_THROW(vk().set_matvec_options({false, 0}), kiln::Error);
    if (!vk().device().subgroup_arithmetic) {
        EXPECT_THROW(vk().set_matvec_options({true, 1}), kiln::Error);
    }
    vk().set_matvec_options(saved);
}

TEST_F(VulkanTest, IntegerDotMatvecIsChosenByDeviceFeaturesAndRefusedWithout) {
    const auto& d = vk().device();
    // On by default only where the packed signed 4x8 dot product is accelerated (not lavapipe).
    EXPECT_EQ(vk().matvec_options().integer_dot, d.integer_dot_product && d.integer_dot_accelerated);
    const kiln::vk::MatvecOptions saved = vk().matvec_options();
    if (d.integer_dot_product) {
        EXPECT_NO_THROW(vk().set_matvec_options({false, 1, true}));
        EXPECT_TRUE(vk().matvec_options().integer_dot);
    } else {
        EXPECT_THROW(vk().set_matvec_options({false, 1, true}), kiln::Error);
        std::printf("    (no integer dot product on this device: forcing the variant is refused)\n");
    }
    EXPECT_THROW(vk().set_matvec_options({false, 3, true}), kiln::Error);
    vk().set_matvec_options(saved);
    EXPECT_TRUE(kiln::vk::Backend::supports_integer_dot(TensorType::Q8_0));
    EXPECT_TRUE(kiln::vk::Backend::supports_integer_dot(TensorType::Q4_0));
    EXPECT_TRUE(kiln::vk::Backend::supports_integer_dot(TensorType::Q4_K));
    EXPECT_TRUE(kiln::vk::Backend::supports_integer_dot(TensorType::Q6_K));
    EXPECT_FALSE(kiln::vk::Backend::supports_integer_dot(TensorType::Q5_K));
    EXPECT_FALSE(kiln::vk::Backend::supports_integer_dot(TensorType::F16));
}

namespace {

// x with each group of G rounded to 8-bit codes and back (quantize_x, the CPU kernels).
std::vector<float> round8(const std::vector<float>& x, size_t G) {
    std::vector<float> r(x.size());
    for (size_t b = 0; b < x.size(); b += G) {
        float amax = 0.0f;
        for (size_t i = 0; i < G; ++i) amax = std::max(amax, std::fabs(x[b + i]));
        const float d = amax / 127.0f, id = amax > 0.0f ? 127.0f / amax : 0.0f;
        for (size_t i = 0; i < G; ++i) r[b + i] = std::nearbyint(x[b + i] * id) * d;
    }
    return r;
}

}  // namespace

// The integer-dot-product matvec (forced where the device has the feature but does not prefer it,
// e.g. lavapipe) against the reference on x rounded per 32 (256 for the K-quants) as the CPU kernels
// round it: from a raw x (quantize_q8 rounds it) and from an x quantize_x already rounded
// (re-rounding changes nothing). Weight types without an integer-dot shader (Q5_K here) keep the
// float path and stay exact on a raw x.
TEST_F(VulkanTest, IntegerDotMatvecMatchesTheReferenceOnRoundedActivations) {
    if (!vk().device().integer_dot_product) GTEST_SKIP() << "no integer dot product on this device";
    const int64_t K = 512, N = 257;
    const kiln::vk::MatvecOptions saved = vk().matvec_options();
    for (TensorType type : {TensorType::Q8_0, TensorType::Q4_0, TensorType::Q4_K, TensorType::Q6_K, TensorType::Q5_K}) {
        const bool dot = kiln::vk::Backend::supports_integer_dot(type);
        const int G = kiln::vk::Backend::activation_group(type);
        const auto wq = random_weights(type, K, N, 30 + static_cast<uint32_t>(type));
        const auto wf = dequantize(type, wq, K, N);
        Tensor w = vk().tensor(type, {K, N}, "w");
        vk().upload(w, wq.data(), wq.size());
        for (int64_t n : {1, 3, 8}) {
            const auto x = random_nonzero_floats(static_cast<size_t>(K * n), 200 + static_cast<uint32_t>(n), -2.0f, 2.0f);
            // The float path (Q5_K) uses x as given; the integer-dot one rounds it first (so a raw
            // x far from the rounded reference would show that the variant did not run).
            const auto want_rounded = matmul_ref(wf, round8(x, static_cast<size_t>(G)), K, N, n);
            const auto want_raw = dot ? want_rounded : matmul_ref(wf, x, K, N, n);
            Tensor tx = f32(x, {K, n}, "x");
            Tensor tr = vk().tensor(TensorType::F32, {K, n}, "x rounded");
            vk().quantize_x(tx, tr, G);
            for (bool subgroup : {false, true}) {
                if (subgroup && !vk().device().subgroup_arithmetic) continue;
                for (uint32_t rows : {1u, 4u}) {
                    vk().set_matvec_options({subgroup, rows, true});
                    for (const Tensor* in : {&tx, &tr}) {
                        Tensor y = poisoned(vk(), TensorType::F32, {N, n}, "y");
                        vk().matmul(w, *in, y, MatmulKernel::Vector);
                        const double err = rel_error(vk().read_f32(y), in == &tx ? want_raw : want_rounded);
                        const std::string vname = std::string(dot ? "dot " : "float (integer_dot on) ") + (subgroup ? "subgroup" : "plain") + " rows " +
                                                  std::to_string(rows) + (in == &tx ? " raw x" : " rounded x");
                        report(std::string("matmul ") + kiln::type_name(type) + " n=" + std::to_string(n) + " " + vname,
                               err);
                        EXPECT_LT(err, 1e-5) << kiln::type_name(type) << " n=" << n << " " << vname;
                    }
                }
            }
        }
    }
    vk().set_matvec_options(saved);
}

INSTANTIATE_TEST_SUITE_P(Vulkan, VulkanMatmul, ::testing::ValuesIn(kMatmulCases),
                         [](const auto& info) { return std::string(kiln::type_name(info.param.type)); });

TEST_F(VulkanTest, MatmulF32WithRowsNotAMultipleOfTheTileDepth) {
    const int64_t K = 300, N = 70, n = 9;  // K % 16 != 0 exercises the tiled kernel's tail
    const auto wf = random_nonzero_floats(static_cast<size_t>(K * N), 7), x = random_nonzero_floats(static_cast<size_t>(K * n), 8);
    Tensor w = f32(wf, {K, N}, "w"), tx = f32(x, {K, n}, "x");
    for (MatmulKernel kernel : {MatmulKernel::Vector, MatmulKernel::Tiled}) {
        Tensor y = poisoned(vk(), TensorType::F32, {N, n}, "y");
        vk().matmul(w, tx, y, kernel);
        const double err = rel_error(vk().read_f32(y), matmul_ref(wf, x, K, N, n));
        report(kernel == MatmulKernel::Vector ? "matmul f32 K=300 vec" : "matmul f32 K=300 tiled", err);
        EXPECT_LT(err, 1e-4);
    }
    const std::string e = error_of([&] { vk().matmul(w, vk().tensor(TensorType::F32, {K + 4, n}), vk().tensor(TensorType::F32, {N, n})); });
    EXPECT_NE(e.find("has rows of 300"), std::string::npos) << e;
}

// ---- get_rows ------------------------------------------------------------------------------

TEST_F(VulkanTest, GetRowsDecodesEveryType) {
    const int64_t K = 512, rows = 37;
    const std::vector<int32_t> ids = {0, 36, 5, 5, 17, 1, 30};
    for (const auto& c : kMatmulCases) {
        const auto tq = random_weights(c.type, K, rows, 50 + static_cast<uint32_t>(c.type));
        const auto tf = dequantize(c.type, tq, K, rows);
        Tensor table = vk().tensor(c.type, {K, rows}, "table");
        vk().upload(table, tq.data(), tq.size());
        Tensor tid = upload_i32(vk(), ids, "ids");
        Tensor out = poisoned(vk(), TensorType::F32, {K, static_cast<int64_t>(ids.size())}, "out");
        vk().get_rows(table, tid, out);
        const auto got = vk().read_f32(out);
        std::vector<double> want;
        for (int32_t id : ids)
            for (int64_t k = 0; k < K; ++k) want.push_back(tf[static_cast<size_t>(id * K + k)]);
        const double err = rel_error(got, want);
        report(std::string("get_rows ") + kiln::type_name(c.type), err);
        EXPECT_LT(err, 1e-6) << kiln::type_name(c.type);
    }
    // An id outside the table reads as NaN, never as another row.
    Tensor table = f32(random_nonzero_floats(64 * 3, 9), {64, 3}, "small");
    Tensor tid = upload_i32(vk(), {2, 3, -1}, "ids");
    Tensor out = poisoned(vk(), TensorType::F32, {64, 3}, "out");
    vk().fill(out, 0);
    vk().get_rows(table, tid, out);
    const auto got = vk().read_f32(out);
    EXPECT_FALSE(std::isnan(got[0]));
    EXPECT_TRUE(std::isnan(got[64]));
    EXPECT_TRUE(std::isnan(got[128]));
}

// ---- row ops: rms_norm, softmax, rope ------------------------------------------------------

TEST_F(VulkanTest, RmsNormWithAndWithoutWeightAndInPlace) {
    for (int64_t n : {1, 7, 64}) {
        const int64_t K = 1001;
        const auto x = random_nonzero_floats(static_cast<size_t>(K * n), 20 + static_cast<uint32_t>(n), -3, 3);
        const auto w = random_nonzero_floats(static_cast<size_t>(K), 21);
        const float eps = 1e-5f;
        std::vector<double> plain(x.size()), weighted(x.size());
        for (int64_t r = 0; r < n; ++r) {
            double ss = 0;
            for (int64_t k = 0; k < K; ++k) ss += static_cast<double>(x[r * K + k]) * x[r * K + k];
            const double s = 1.0 / std::sqrt(ss / static_cast<double>(K) + eps);
            for (int64_t k = 0; k < K; ++k) {
                plain[r * K + k] = x[r * K + k] * s;
                weighted[r * K + k] = x[r * K + k] * s * w[k];
            }
        }
        Tensor tx = f32(x, {K, n}, "x"), tw = f32(w, {K}, "w");
        Tensor a = poisoned(vk(), TensorType::F32, {K, n}, "a"), b = poisoned(vk(), TensorType::F32, {K, n}, "b");
        vk().rms_norm(tx, nullptr, a, eps);
        vk().rms_norm(tx, &tw, b, eps);
        const double e1 = rel_error(vk().read_f32(a), plain), e2 = rel_error(vk().read_f32(b), weighted);
        vk().rms_norm(tx, &tw, tx, eps);  // in place
        const double e3 = rel_error(vk().read_f32(tx), weighted);
        report("rms_norm n=" + std::to_string(n), std::max({e1, e2, e3}));
        EXPECT_LT(e1, 1e-5);
        EXPECT_LT(e2, 1e-5);
        EXPECT_LT(e3, 1e-5);
    }
}

TEST_F(VulkanTest, SoftmaxWithScale) {
    for (int64_t n : {1, 7, 64}) {
        const int64_t K = 1000;
        const auto x = random_nonzero_floats(static_cast<size_t>(K * n), 30 + static_cast<uint32_t>(n), -10, 10);
        std::vector<double> want(x.size());
        for (int64_t r = 0; r < n; ++r) {
            double m = -INFINITY, s = 0;
            for (int64_t k = 0; k < K; ++k) m = std::max(m, 0.5 * x[r * K + k]);
            for (int64_t k = 0; k < K; ++k) s += std::exp(0.5 * x[r * K + k] - m);
            for (int64_t k = 0; k < K; ++k) want[r * K + k] = std::exp(0.5 * x[r * K + k] - m) / s;
        }
        Tensor tx = f32(x, {K, n}, "x");
        Tensor y = poisoned(vk(), TensorType::F32, {K, n}, "y");
        vk().softmax(tx, y, 0.5f);
        const double err = rel_error(vk().read_f32(y), want);
        report("softmax n=" + std::to_string(n), err);
        EXPECT_LT(err, 1e-5);
    }
}

namespace {

// x [head_dim, n_head, n_tok], the reference rotation in double from float frequencies as the
// backend makes them.
std::vector<double> rope_ref(const std::vector<float>& x, const std::vector<int32_t>& pos, int64_t hd, int64_t nh,
                             int64_t n_dims, bool neox, double base, double fscale) {
    std::vector<double> y(x.begin(), x.end());
    const int64_t n_tok = static_cast<int64_t>(pos.size());
    for (int64_t t = 0; t < n_tok; ++t)
        for (int64_t h = 0; h < nh; ++h)
            for (int64_t i = 0; i < n_dims / 2; ++i) {
                const float f = static_cast<float>(fscale * std::pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(n_dims)));
                const double theta = static_cast<double>(static_cast<float>(pos[t]) * f);
                const int64_t a = neox ? i : 2 * i, b = neox ? i + n_dims / 2 : 2 * i + 1;
                const size_t o = static_cast<size_t>((t * nh + h) * hd);
                const double x0 = x[o + a], x1 = x[o + b];
                y[o + a] = x0 * std::cos(theta) - x1 * std::sin(theta);
                y[o + b] = x0 * std::sin(theta) + x1 * std::cos(theta);
            }
    return y;
}

}  // namespace

TEST_F(VulkanTest, RopeNormalAndNeoxWithPartialDimsAndLinearScaling) {
    struct Case {
        bool neox;
        int64_t head_dim, n_dims;
        float base, scale;
    };
    for (const Case c : {Case{false, 64, 64, 10000.f, 1.f}, Case{true, 64, 64, 1000000.f, 1.f},
                         Case{true, 80, 32, 10000.f, 0.25f}, Case{false, 128, 96, 500000.f, 0.5f}}) {
        for (int64_t n : {1, 7, 64}) {
            const int64_t nh = 5;
            const auto x = random_nonzero_floats(static_cast<size_t>(c.head_dim * nh * n), 40 + static_cast<uint32_t>(n));
            std::vector<int32_t> pos(static_cast<size_t>(n));
            std::mt19937 rng(static_cast<uint32_t>(n));
            for (auto& p : pos) p = static_cast<int32_t>(rng() % 4096);
            const auto want = rope_ref(x, pos, c.head_dim, nh, c.n_dims, c.neox, c.base, c.scale);
            Tensor tx = f32(x, {c.head_dim, nh, n}, "x"), tp = upload_i32(vk(), pos, "pos");
            Tensor y = poisoned(vk(), TensorType::F32, {c.head_dim, nh, n}, "y");
            kiln::graph::RopeParams rp;
            rp.mode = c.neox ? kiln::graph::RopeMode::Neox : kiln::graph::RopeMode::Normal;
            rp.n_dims = static_cast<int>(c.n_dims);
            rp.freq_base = c.base;
            rp.freq_scale = c.scale;
            vk().rope(tx, tp, y, rp);
            const double err = rel_error(vk().read_f32(y), want);
            vk().rope(tx, tp, tx, rp);  // in place
            const double err2 = rel_error(vk().read_f32(tx), want);
            report(std::string("rope ") + (c.neox ? "neox" : "normal") + " hd=" + std::to_string(c.head_dim) +
                       " dims=" + std::to_string(c.n_dims) + " n=" + std::to_string(n),
                   std::max(err, err2));
            EXPECT_LT(err, 1e-4);
            EXPECT_LT(err2, 1e-4);
        }
    }
}

// ---- elementwise ---------------------------------------------------------------------------

TEST_F(VulkanTest, ElementwiseOps) {
    for (int64_t n : {1, 7, 64}) {
        const int64_t K = 1003, N = K * n;
        const auto a = random_nonzero_floats(static_cast<size_t>(N), 60, -6, 6), b = random_nonzero_floats(static_cast<size_t>(N), 61, -6, 6);
        const auto row = random_nonzero_floats(static_cast<size_t>(K), 62);
        Tensor ta = f32(a, {K, n}, "a"), tb = f32(b, {K, n}, "b");
        Tensor trow = f32(row, {K}, "row");
        struct Op {
            const char* name;
            std::function<void(const Tensor&)> run;
            std::function<double(size_t)> ref;
        };
        const std::vector<Op> ops = {
            {"add", [&](const Tensor& o) { vk().add(ta, tb, o); }, [&](size_t i) { return double(a[i]) + b[i]; }},
            {"add broadcast", [&](const Tensor& o) { vk().add(ta, trow, o); },
             [&](size_t i) { return double(a[i]) + row[i % K]; }},
            {"mul", [&](const Tensor& o) { vk().mul(ta, tb, o); }, [&](size_t i) { return double(a[i]) * b[i]; }},
            {"mul broadcast", [&](const Tensor& o) { vk().mul(ta, trow, o); },
             [&](size_t i) { return double(a[i]) * row[i % K]; }},
            {"scale", [&](const Tensor& o) { vk().scale(ta, -0.37f, o); }, [&](size_t i) { return double(a[i]) * double(-0.37f); }},
            {"silu", [&](const Tensor& o) { vk().silu(ta, o); },
             [&](size_t i) { return double(a[i]) / (1 + std::exp(-double(a[i]))); }},
            {"gelu", [&](const Tensor& o) { vk().gelu(ta, o); },
             [&](size_t i) {
                 const double x = a[i];
                 return 0.5 * x * (1 + std::tanh(std::sqrt(2 / std::numbers::pi) * (x + 0.044715 * x * x * x)));
             }},
            {"swiglu", [&](const Tensor& o) { vk().swiglu(ta, tb, o); },
             [&](size_t i) { return double(a[i]) / (1 + std::exp(-double(a[i]))) * b[i]; }},
        };
        for (const auto& op : ops) {
            Tensor o = poisoned(vk(), TensorType::F32, {K, n}, "o");
            op.run(o);
            std::vector<double> want(static_cast<size_t>(N));
            for (size_t i = 0; i < want.size(); ++i) want[i] = op.ref(i);
            const double err = rel_error(vk().read_f32(o), want);
            report(std::string(op.name) + " n=" + std::to_string(n), err);
            EXPECT_LT(err, 1e-5) << op.name;
        }
    }
    // gelu saturates cleanly far out.
    Tensor far = f32({-100.f, -20.f, 20.f, 100.f}, {4}, "far");
    vk().gelu(far, far);
    const auto g = vk().read_f32(far);
    EXPECT_NEAR(g[0], 0.0f, 1e-6f);
    EXPECT_NEAR(g[1], 0.0f, 1e-6f);
    EXPECT_FLOAT_EQ(g[2], 20.0f);
    EXPECT_FLOAT_EQ(g[3], 100.0f);
}

// ---- KV cache and attention ----------------------------------------------------------------

TEST_F(VulkanTest, KvWriteStoresHalvesAtTheirPositions) {
    const int64_t hd = 64, nkv = 4, n_ctx = 80;
    for (int64_t n : {1, 7, 64}) {
        const uint32_t pos = n == 64 ? 16 : 5;
        const auto src = random_nonzero_floats(static_cast<size_t>(hd * nkv * n), 70 + static_cast<uint32_t>(n), -4, 4);
        Tensor ts = f32(src, {hd, nkv, n}, "k");
        Tensor cache = poisoned(vk(), TensorType::F16, {hd, nkv, n_ctx}, "k_cache");
        vk().kv_write(ts, cache, pos);
        std::vector<uint16_t> got(static_cast<size_t>(hd * nkv * n_ctx));
        vk().read(cache, got.data(), cache.bytes());
        const size_t width = static_cast<size_t>(hd * nkv);
        int off_by_one_ulp = 0;
        for (size_t r = 0; r < static_cast<size_t>(n_ctx); ++r)
            for (size_t e = 0; e < width; ++e) {
                const uint16_t h = got[r * width + e];
                if (r < pos || r >= pos + static_cast<size_t>(n)) {  // untouched rows keep the poison
                    ASSERT_EQ(h, e % 2 ? (kPoison >> 16) : (kPoison & 0xffff)) << "row " << r;
                    continue;
                }
                const uint16_t want = kiln::fp32_to_fp16(src[(r - pos) * width + e]);
                ASSERT_LE(std::abs(int(h) - int(want)), 1) << "row " << r << " element " << e;
                off_by_one_ulp += h != want;
            }
        report("kv_write n=" + std::to_string(n) + " (elements 1 ulp off)", off_by_one_ulp);
        EXPECT_EQ(off_by_one_ulp, 0);  // round to nearest even, as the CPU does
    }
}

namespace {

// Reference attention over f16 caches (decoded), double accumulation.
std::vector<double> attention_ref(const std::vector<float>& q, const std::vector<uint16_t>& kc,
                                  const std::vector<uint16_t>& vc, int64_t Dk, int64_t Dv, int64_t nh, int64_t nkv,
                                  int64_t n_tok, const kiln::graph::AttentionParams& ap, const kiln::vk::AttentionRun& p) {
    std::vector<double> out(static_cast<size_t>(Dv * nh * n_tok), 0.0);
    const double scale = ap.scale;
    for (int64_t t = 0; t < n_tok; ++t)
        for (int64_t h = 0; h < nh; ++h) {
            const int64_t g = h / (nh / nkv), pos = p.pos0 + t;
            const int64_t hi = std::min<int64_t>(pos + 1, p.n_kv);
            const int64_t lo = ap.window ? std::max<int64_t>(0, pos + 1 - ap.window) : 0;
            std::vector<double> s;
            double m = -INFINITY;
            for (int64_t j = lo; j < hi; ++j) {
                double d = 0;
                for (int64_t e = 0; e < Dk; ++e)
                    d += static_cast<double>(q[static_cast<size_t>((t * nh + h) * Dk + e)]) *
                         kiln::fp16_to_fp32(kc[static_cast<size_t>((j * nkv + g) * Dk + e)]);
                s.push_back(d * scale);
                m = std::max(m, s.back());
            }
            double l = 0;
            for (double& x : s) l += (x = std::exp(x - m));
            for (int64_t e = 0; e < Dv; ++e) {
                double acc = 0;
                for (int64_t j = lo; j < hi; ++j)
                    acc += s[static_cast<size_t>(j - lo)] * kiln::fp16_to_fp32(vc[static_cast<size_t>((j * nkv + g) * Dv + e)]);
                out[static_cast<size_t>((t * nh + h) * Dv + e)] = l > 0 ? acc / l : 0.0;
            }
        }
    return out;
}

std::vector<uint16_t> random_halves(size_t n, uint32_t seed) {
    const auto f = random_nonzero_floats(n, seed, -2, 2);
    std::vector<uint16_t> h(n);
    for (size_t i = 0; i < n; ++i) h[i] = kiln::fp32_to_fp16(f[i]);
    return h;
}

}  // namespace

TEST_F(VulkanTest, AttentionCausalGqaSlidingWindowAgainstTheReference) {
    struct Case {
        int64_t Dk, Dv, nh, nkv, n_ctx;
        uint32_t window;
        const char* name;
    };
    for (const Case c : {Case{64, 64, 8, 2, 200, 0, "gqa 8/2 d64"}, Case{128, 128, 4, 4, 150, 0, "mha d128"},
                         Case{96, 64, 6, 1, 160, 0, "mqa dk96 dv64"}, Case{64, 64, 4, 2, 200, 50, "window 50"}}) {
        const auto kc = random_halves(static_cast<size_t>(c.Dk * c.nkv * c.n_ctx), 80);
        const auto vc = random_halves(static_cast<size_t>(c.Dv * c.nkv * c.n_ctx), 81);
        Tensor tk = vk().tensor(TensorType::F16, {c.Dk, c.nkv, c.n_ctx}, "k_cache");
        Tensor tv = vk().tensor(TensorType::F16, {c.Dv, c.nkv, c.n_ctx}, "v_cache");
        vk().upload(tk, kc.data(), tk.bytes());
        vk().upload(tv, vc.data(), tv.bytes());
        for (int64_t n : {1, 7, 64}) {
            kiln::graph::AttentionParams ap;
            ap.scale = 1.0f / std::sqrt(static_cast<float>(c.Dk));
            ap.window = static_cast<int>(c.window);
            kiln::vk::AttentionRun p;
            p.n_kv = static_cast<uint32_t>(n == 1 ? 139 : 137);  // > 2 tiles of keys, not a multiple of one
            p.pos0 = p.n_kv - static_cast<uint32_t>(n);
            const auto q = random_nonzero_floats(static_cast<size_t>(c.Dk * c.nh * n), 90 + static_cast<uint32_t>(n), -2, 2);
            Tensor tq = f32(q, {c.Dk, c.nh, n}, "q");
            Tensor out = poisoned(vk(), TensorType::F32, {c.Dv, c.nh, n}, "out");
            vk().attention(tq, tk, tv, out, ap, p);
            const double err = rel_error(vk().read_f32(out), attention_ref(q, kc, vc, c.Dk, c.Dv, c.nh, c.nkv, n, ap, p));
            report(std::string("attention ") + c.name + " n=" + std::to_string(n), err);
            EXPECT_LT(err, 1e-3) << c.name << " n=" << n;
        }
    }
}

TEST_F(VulkanTest, AttentionAfterKvWriteInOneSubmit) {
    // The decode step's tail: write this token's K and V, attend over the cache, one submit.
    const int64_t D = 64, nh = 4, nkv = 2, n_ctx = 64, n = 3;
    const uint32_t pos0 = 40;
    auto kc = random_halves(static_cast<size_t>(D * nkv * n_ctx), 110);
    auto vc = random_halves(static_cast<size_t>(D * nkv * n_ctx), 111);
    Tensor tk = vk().tensor(TensorType::F16, {D, nkv, n_ctx}, "k_cache"), tv = vk().tensor(TensorType::F16, {D, nkv, n_ctx}, "v_cache");
    vk().upload(tk, kc.data(), tk.bytes());
    vk().upload(tv, vc.data(), tv.bytes());
    vk().submit();
    const auto k = random_nonzero_floats(static_cast<size_t>(D * nkv * n), 112), v = random_nonzero_floats(static_cast<size_t>(D * nkv * n), 113);
    const auto q = random_nonzero_floats(static_cast<size_t>(D * nh * n), 114);
    Tensor tkn = f32(k, {D, nkv, n}, "k"), tvn = f32(v, {D, nkv, n}, "v");
    Tensor tq = f32(q, {D, nh, n}, "q");
    Tensor out = poisoned(vk(), TensorType::F32, {D, nh, n}, "out");
    const auto before = vk().stats().submits;
    vk().kv_write(tkn, tk, pos0);
    vk().kv_write(tvn, tv, pos0);
    kiln::graph::AttentionParams ap;
    ap.scale = 1.0f / std::sqrt(static_cast<float>(D));
    kiln::vk::AttentionRun p;
    p.pos0 = pos0;
    p.n_kv = pos0 + static_cast<uint32_t>(n);
    vk().attention(tq, tk, tv, out, ap, p);
    const auto got = vk().read_f32(out);
    EXPECT_EQ(vk().stats().submits - before, 1u);
    for (size_t i = 0; i < k.size(); ++i) {
        kc[static_cast<size_t>(pos0) * D * nkv + i] = kiln::fp32_to_fp16(k[i]);
        vc[static_cast<size_t>(pos0) * D * nkv + i] = kiln::fp32_to_fp16(v[i]);
    }
    const double err = rel_error(got, attention_ref(q, kc, vc, D, D, nh, nkv, n, ap, p));
    report("kv_write + attention, one submit", err);
    EXPECT_LT(err, 1e-3);
}
