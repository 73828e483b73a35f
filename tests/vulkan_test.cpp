// Vulkan backend: the shader build step, device listing and selection, and the Context
// (memory, staging, readback), `kiln devices`. Without a Vulkan device the device tests skip LOUDLY.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "backend/vulkan/context.h"
#include "backend/vulkan/shaders.h"
#include "kiln/error.h"
#include "support/run.h"

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
