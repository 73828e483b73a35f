// kiln devices [--json] [--device N]: the Vulkan devices kiln sees, what each offers, and which one
// it would run on. No loader, no driver or no device is not an error here: it is said plainly
// (kiln then runs on the CPU).
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "kiln/devices.h"
#include "cli/args.h"
#include "cli/command.h"
#include "kiln/error.h"

namespace kiln::cli {
namespace {

std::string gib(uint64_t b) {
    if (b >= (1ull << 30)) return fmt::format("{:.2f} GiB", static_cast<double>(b) / (1ull << 30));
    return fmt::format("{:.0f} MiB", static_cast<double>(b) / (1ull << 20));
}

const char* yes(bool b) { return b ? "yes" : "no"; }

nlohmann::json to_json(const DeviceInfo& d) {
    nlohmann::json heaps = nlohmann::json::array();
    for (const auto& h : d.heaps) heaps.push_back({{"size", h.size}, {"budget", h.budget}, {"device_local", h.device_local}});
    return {
        {"index", d.index},
        {"name", d.name},
        {"type", device_type_name(d.type)},
        {"vendor_id", d.vendor_id},
        {"device_id", d.device_id},
        {"api_version", d.api_version_string()},
        {"driver", d.driver_name},
        {"driver_info", d.driver_info},
        {"memory_heaps", heaps},
        {"memory_budget_extension", d.memory_budget},
        {"subgroup", {{"size", d.subgroup_size}, {"min", d.subgroup_min}, {"max", d.subgroup_max},
                      {"arithmetic", d.subgroup_arithmetic}, {"shuffle", d.subgroup_shuffle}}},
        {"fp16", {{"storage", d.fp16_storage}, {"arithmetic", d.fp16_arithmetic}}},
        {"int8", {{"storage", d.int8_storage}, {"arithmetic", d.int8_arithmetic}}},
        {"bf16", d.bf16},
        {"integer_dot_product", {{"supported", d.integer_dot_product}, {"accelerated", d.integer_dot_accelerated}}},
        {"cooperative_matrix", {{"khr", d.cooperative_matrix}, {"nv", d.cooperative_matrix_nv}}},
        {"limits", {{"max_storage_buffer_range", d.max_storage_buffer_range},
                    {"max_allocation_size", d.max_allocation_size},
                    {"max_workgroup_invocations", d.max_workgroup_invocations},
                    {"max_shared_memory", d.max_shared_memory}}},
        {"usable", d.usable},
        {"unusable_reason", d.unusable_reason},
    };
}

void print_text(const DeviceInfo& d, bool chosen) {
    fmt::print("[{}] {}{}\n", d.index, d.name, chosen ? "   <- kiln runs here" : "");
    fmt::print("    type            {}\n", device_type_name(d.type));
    fmt::print("    vulkan          {} ({} {})\n", d.api_version_string(), d.driver_name.empty() ? "driver" : d.driver_name,
               d.driver_info);
    fmt::print("    vendor/device   0x{:04x} / 0x{:04x}\n", d.vendor_id, d.device_id);
    for (size_t i = 0; i < d.heaps.size(); ++i) {
        const auto& h = d.heaps[i];
        fmt::print("    memory heap {}   {}{}{}\n", i, gib(h.size), h.device_local ? " device-local" : " host",
                   d.memory_budget ? fmt::format(", budget {}", gib(h.budget)) : "");
    }
    fmt::print("    subgroup        {} (min {}, max {}), arithmetic {}, shuffle {}\n", d.subgroup_size, d.subgroup_min,
               d.subgroup_max, yes(d.subgroup_arithmetic), yes(d.subgroup_shuffle));
    fmt::print("    fp16            storage {}, arithmetic {}\n", yes(d.fp16_storage), yes(d.fp16_arithmetic));
    fmt::print("    int8            storage {}, arithmetic {}\n", yes(d.int8_storage), yes(d.int8_arithmetic));
    fmt::print("    bf16            {}\n", yes(d.bf16));
    fmt::print("    int dot product {}{}\n", yes(d.integer_dot_product),
               d.integer_dot_product ? (d.integer_dot_accelerated ? " (accelerated)" : " (not accelerated)") : "");
    fmt::print("    coop. matrix    {}{}\n", yes(d.cooperative_matrix || d.cooperative_matrix_nv),
               d.cooperative_matrix ? " (KHR)" : d.cooperative_matrix_nv ? " (NV)" : "");
    fmt::print("    limits          storage buffer {}, allocation {}, workgroup {} invocations, shared {} KiB\n",
               gib(d.max_storage_buffer_range), gib(d.max_allocation_size), d.max_workgroup_invocations,
               d.max_shared_memory / 1024);
    if (!d.usable) fmt::print("    unusable        {}\n", d.unusable_reason);
}

int run_devices(const std::vector<std::string>& argv) {
    bool json = false;
    int device = -1;
    Args args("devices", "[--json] [--device N]");
    args.flag({"--json"}, &json, "print one JSON object");
    args.option({"--device"}, &device, "N", "check that device N can be used and mark it");
    if (!args.parse(argv)) return 0;

    std::vector<DeviceInfo> devices;
    std::string problem;
    try {
        devices = list_devices();
    } catch (const Error& e) {
        problem = e.what();
    }
    // The device kiln would take: the one asked for, else the default rule (GPUs only).
    std::optional<uint32_t> chosen;
    if (problem.empty()) chosen = select_device(devices, device, false);  // throws for a bad --device
    else if (device >= 0) throw Error(fmt::format("--device {}: {}", device, problem));
    std::optional<uint32_t> best;  // what `--backend vulkan` (Vulkan required) would take
    if (problem.empty() && !devices.empty()) {
        try {
            best = select_device(devices, -1, true);
        } catch (const Error&) {
        }
    }

    if (json) {
        nlohmann::json j;
        j["vulkan"] = problem.empty();
        if (!problem.empty()) j["error"] = problem;
        j["devices"] = nlohmann::json::array();
        for (const auto& d : devices) j["devices"].push_back(to_json(d));
        j["selected"] = chosen ? nlohmann::json(*chosen) : nlohmann::json(nullptr);
        j["best_if_required"] = best ? nlohmann::json(*best) : nlohmann::json(nullptr);
        fmt::print("{}\n", j.dump(2));
        return 0;
    }
    if (!problem.empty()) {
        fmt::print("No Vulkan: {}\nkiln runs on the CPU.\n", problem);
        return 0;
    }
    if (devices.empty()) {
        fmt::print("No Vulkan device: the Vulkan loader and a driver are installed but report no device.\n"
                   "kiln runs on the CPU.\n");
        return 0;
    }
    for (const auto& d : devices) print_text(d, chosen && *chosen == d.index);
    if (chosen)
        fmt::print("\nkiln uses device {} ({}){}.\n", *chosen, devices[*chosen].name,
                   device >= 0 ? " as asked by --device" : " by default");
    else if (best)
        fmt::print("\nNo GPU: kiln runs on the CPU by default; with Vulkan required it would use device {} ({}, a {} "
                   "device).\n",
                   *best, devices[*best].name, device_type_name(devices[*best].type));
    else
        fmt::print("\nNo usable Vulkan device: kiln runs on the CPU.\n");
    return 0;
}

}  // namespace

KILN_COMMAND("devices", "list the Vulkan devices, what each supports, and which one kiln uses", run_devices);

}  // namespace kiln::cli
