// The memory plan (kiln/memory.h): what a model and its contexts take, against what is available,
// before anything large is allocated. Context allocates exactly the KV layout computed here.
#include "runtime/memory_plan.h"

#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>

#include <fmt/format.h>

#include "backend/vulkan/device.h"
#include "backend/vulkan/graph_executor.h"
#include "kiln/error.h"
#include "kiln/memory.h"
#include "model/model_impl.h"

namespace kiln {

namespace runtime {

int64_t default_n_ctx(const model::HParams& hp) { return hp.n_ctx_train > 0 ? std::min<int64_t>(hp.n_ctx_train, 4096) : 4096; }

backend::KvLayout kv_layout(const model::Architecture& arch, int64_t n_ctx, int64_t n_batch, KvType type_k, KvType type_v) {
    backend::KvLayout layout;
    layout.n_ctx = n_ctx;
    layout.type_k = type_k;
    layout.type_v = type_v;
    for (KvLayer l : arch.kv_layers()) {
        // A sliding-window layer keeps a ring of the window plus what one batch adds.
        if (l.window > 0) l.n_slots = std::min(n_ctx, l.window + std::min(n_batch, n_ctx) - 1);
        layout.layers.push_back(l);
    }
    return layout;
}

KvStats kv_stats(const backend::KvLayout& L) {
    KvStats st;
    st.type_k = L.type_k;
    st.type_v = L.type_v;
    st.n_ctx = L.n_ctx;
    for (size_t il = 0; il < L.layers.size(); ++il) {
        const size_t row = L.slot_bytes(il);
        if (L.is_ring(il)) {
            ++st.n_sliding_layers;
            st.sliding_slots = L.slots(il);
            st.sliding_bytes += L.layer_bytes(il);
            st.sliding_bytes_per_token = row;
        } else {
            ++st.n_full_layers;
            st.full_bytes += L.layer_bytes(il);
            st.full_bytes_per_token = row;
        }
    }
    return st;
}

// "Key:   1234 kB" lines of a /proc file, in bytes.
std::optional<size_t> proc_kb(const char* path, std::string_view key) {
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line))
        if (line.size() > key.size() && line.compare(0, key.size(), key) == 0 && line[key.size()] == ':') {
            unsigned long long kb = 0;
            if (std::sscanf(line.c_str() + key.size() + 1, "%llu", &kb) == 1) return static_cast<size_t>(kb) * 1024;
        }
    return std::nullopt;
}

ProcessMemory process_memory() {
    ProcessMemory m;
    m.rss = proc_kb("/proc/self/status", "VmRSS").value_or(0);
    m.rss_anon = proc_kb("/proc/self/status", "RssAnon").value_or(m.rss);
    m.vm_size = proc_kb("/proc/self/status", "VmSize").value_or(0);
    m.peak_rss = proc_kb("/proc/self/status", "VmHWM").value_or(m.rss);
    return m;
}

size_t mapping_rss(const void* start) {
    if (!start) return 0;
    const auto want = reinterpret_cast<uintptr_t>(start);
    std::ifstream in("/proc/self/smaps");
    std::string line;
    bool inside = false;
    while (std::getline(in, line)) {
        unsigned long long lo = 0, hi = 0;
        // A mapping's header: "lo-hi perms offset dev inode path"; its fields follow as "Key: N kB".
        if (std::sscanf(line.c_str(), "%llx-%llx ", &lo, &hi) == 2 && line.find(':') > line.find(' ')) {
            inside = lo == want;
            continue;
        }
        unsigned long long kb = 0;
        if (inside && std::sscanf(line.c_str(), "Rss: %llu kB", &kb) == 1) return static_cast<size_t>(kb) * 1024;
    }
    return 0;
}

}  // namespace runtime

namespace {

constexpr int64_t kMaxPlanCtx = int64_t{1} << 24;  // what -c accepts

struct Available {
    size_t bytes = 0;
    std::string source;
};

std::optional<size_t> read_number(const std::string& path) {
    std::ifstream in(path);
    std::string s;
    if (!(in >> s) || s == "max") return std::nullopt;
    try {
        return static_cast<size_t>(std::stoull(s));
    } catch (...) {
        return std::nullopt;
    }
}

// What the CPU may still give this process, plus what it holds already (so that a plan's total,
// which counts the process itself, compares directly). `held` is what the plan counts as present
// in this process's address space already (its RSS and the mapped weights).
Available cpu_available(const runtime::ProcessMemory& pm, size_t held) {
    Available a;
    if (auto avail = runtime::proc_kb("/proc/meminfo", "MemAvailable")) {
        // File pages (the mapped model among them) count as available already: the kernel can
        // reclaim them. The process's anonymous memory is ours and counted in the plan.
        a.bytes = *avail + pm.rss_anon;
        a.source = "MemAvailable";
    } else {
        a.bytes = SIZE_MAX;
        a.source = "unknown (no /proc/meminfo)";
    }
    // cgroup v2: the limit of the group this process runs in (containers, systemd slices).
    std::ifstream cg("/proc/self/cgroup");
    for (std::string line; std::getline(cg, line);)
        if (line.rfind("0::", 0) == 0) {
            const std::string dir = "/sys/fs/cgroup" + line.substr(3);
            const auto max = read_number(dir + "/memory.max");
            const auto cur = read_number(dir + "/memory.current");
            if (max && cur) {
                const size_t b = (*max > *cur ? *max - *cur : 0) + pm.rss_anon;
                if (b < a.bytes) a = {b, "cgroup memory.max"};
            }
        }
    // ulimit -v: every allocation still to come must fit in the address space that is left.
    struct rlimit rl{};
    if (::getrlimit(RLIMIT_AS, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        // Kept free: the stacks and allocator arenas of threads still to start (a backend's pool).
        constexpr size_t kThreadsReserve = size_t{64} << 20;
        const size_t lim = static_cast<size_t>(rl.rlim_cur);
        const size_t b = (lim > pm.vm_size + kThreadsReserve ? lim - pm.vm_size - kThreadsReserve : 0) + held;
        if (b < a.bytes) a = {b, "address-space limit (ulimit -v)"};
    }
    return a;
}

// Everything of the plan that depends on n_ctx, for one context: the KV cache (and on the CPU the
// attention scores kept beside it).
struct CtxCost {
    const model::Architecture* arch = nullptr;
    int64_t n_batch = 512;
    int n_threads = 1;
    bool cpu = true;
    size_t per_context(int64_t n_ctx, KvType k, KvType v) const {
        const backend::KvLayout L = runtime::kv_layout(*arch, n_ctx, n_batch, k, v);
        // Vulkan: whole device pages (n_ctx rounded up to one) and the page table.
        return cpu ? L.bytes() + backend::cpu_kv_scores_bytes(n_ctx, n_threads) : backend::vulkan_kv_bytes(L);
    }
    bool valid(KvType k, KvType v) const {
        const backend::KvLayout L = runtime::kv_layout(*arch, 1, 1, k, v);
        for (size_t il = 0; il < L.layers.size(); ++il)
            if (!L.k_row(il).valid() || !L.v_row(il).valid()) return false;
        return true;
    }
};

// The largest n_ctx in [1, kMaxPlanCtx] with fixed + n_parallel * per_context(n) <= available (0: none).
int64_t largest_ctx(const CtxCost& cost, KvType k, KvType v, size_t fixed, int n_parallel, size_t available) {
    if (!cost.valid(k, v)) return 0;
    auto fits = [&](int64_t n) {
        const size_t need = fixed + static_cast<size_t>(n_parallel) * cost.per_context(n, k, v);
        return need <= available;
    };
    if (!fits(1)) return 0;
    int64_t lo = 1, hi = kMaxPlanCtx;
    if (fits(hi)) return hi;
    while (hi - lo > 1) {
        const int64_t mid = lo + (hi - lo) / 2;
        (fits(mid) ? lo : hi) = mid;
    }
    return lo;
}

std::string kv_types_flags(KvType k, KvType v) {
    return fmt::format("-ctk {} -ctv {}", kv_type_name(k), kv_type_name(v));
}

}  // namespace

std::string format_bytes(size_t b) {
    const double d = static_cast<double>(b);
    if (b >= (size_t{1} << 30)) return fmt::format("{:.2f} GiB", d / (1 << 30));
    if (b >= (size_t{1} << 20)) return fmt::format("{:.1f} MiB", d / (1 << 20));
    return fmt::format("{:.1f} KiB", d / 1024);
}

size_t peak_resident_bytes() { return runtime::process_memory().peak_rss; }

MemoryPlan plan_memory(const Model& model, const MemoryPlanOptions& o) {
    const Model::Impl& m = *model.impl();
    const model::Architecture& arch = *m.arch;
    const model::HParams& hp = arch.hparams();
    if (o.backend != "cpu" && o.backend != "vulkan" && o.backend != "auto")
        throw Error(fmt::format("unknown backend '{}' (available: cpu, vulkan, auto)", o.backend));
    if (o.n_parallel < 1) throw Error(fmt::format("the plan needs at least one context, got {}", o.n_parallel));
    if (o.n_batch <= 0) throw Error(fmt::format("n_batch must be positive, got {}", o.n_batch));

    MemoryPlan p;
    p.n_ctx = o.n_ctx > 0 ? o.n_ctx : runtime::default_n_ctx(hp);
    p.n_ctx_train = hp.n_ctx_train;
    p.n_parallel = o.n_parallel;
    p.kv_type_k = o.kv_type_k;
    p.kv_type_v = o.kv_type_v;
    p.cache_bytes = o.cache_bytes;
    const int n_threads = o.n_threads > 0 ? o.n_threads : model.default_threads();

    // Where the model will live.
    std::optional<uint32_t> device;
    if (o.backend != "cpu") {
        backend::VulkanOptions vo;
        vo.device = o.device;
        vo.require = o.backend == "vulkan" || o.device >= 0;
        device = backend::vulkan_select_device(vo);
    }
    p.backend = device ? "vulkan" : "cpu";

    CtxCost cost;
    cost.arch = &arch;
    cost.n_batch = std::min(o.n_batch, p.n_ctx);
    cost.n_threads = n_threads;
    cost.cpu = !device;
    if (!cost.valid(o.kv_type_k, o.kv_type_v)) {
        // The message of the layer whose heads the type cannot hold.
        const backend::KvLayout L = runtime::kv_layout(arch, 1, 1, o.kv_type_k, o.kv_type_v);
        for (size_t il = 0; il < L.layers.size(); ++il) {
            L.k_row(il).check(fmt::format("layer {} keys", il));
            L.v_row(il).check(fmt::format("layer {} values", il));
        }
    }

    // KV by layer kind, for every context.
    const backend::KvLayout L = runtime::kv_layout(arch, p.n_ctx, cost.n_batch, o.kv_type_k, o.kv_type_v);
    const auto n_par = static_cast<size_t>(o.n_parallel);
    for (size_t il = 0; il < L.layers.size(); ++il) {
        const std::string kind = L.is_ring(il) ? "sliding" : L.layers[il].v_in_k ? "mla" : "full";
        auto it = std::find_if(p.kv.begin(), p.kv.end(), [&](const MemoryPlan::KvKind& k) { return k.kind == kind; });
        if (it == p.kv.end()) {
            p.kv.push_back({kind, 0, L.slots(il), L.slot_bytes(il), 0});
            it = p.kv.end() - 1;
        }
        ++it->n_layers;
        it->bytes += (device ? backend::vulkan_kv_layer_bytes(L, il) : L.layer_bytes(il)) * n_par;
    }
    p.kv_bytes = (device ? backend::vulkan_kv_bytes(L) : L.bytes()) * n_par;

    // Compute scratch: the graphs a context compiles (decode, a prompt batch; a server's batched
    // decode step of every slot).
    const int64_t nb = cost.n_batch;
    if (!device) {
        backend::CpuComputeBytes c = backend::cpu_compute_bytes(arch.build({1, 1}), n_threads);
        if (nb > 1) c.max_with(backend::cpu_compute_bytes(arch.build({nb, 1}), n_threads));
        if (o.n_parallel > 1) c.max_with(backend::cpu_compute_bytes(arch.build({o.n_parallel, o.n_parallel}), n_threads));
        const size_t logits = static_cast<size_t>(hp.n_vocab) * sizeof(float) + static_cast<size_t>(nb) * sizeof(int32_t);
        // Each CPU context has its own backend (its thread pool and buffers).
        p.scratch_bytes = (c.total(n_threads) + logits) * n_par + backend::cpu_kv_scores_bytes(p.n_ctx, n_threads) * n_par;
    } else {
        size_t ws = static_cast<size_t>(graph::plan_buffers(arch.build({nb, 1})).workspace_bytes);
        if (o.n_parallel > 1)
            ws = std::max(ws, static_cast<size_t>(graph::plan_buffers(arch.build({o.n_parallel, o.n_parallel})).workspace_bytes));
        p.scratch_bytes = ws;  // one backend per device, shared by the contexts
    }
    const size_t scratch_fixed = p.scratch_bytes - (device ? 0 : backend::cpu_kv_scores_bytes(p.n_ctx, n_threads) * n_par);

    Available avail;
    // Vulkan: the largest n_ctx whose KV rows of each full layer bind as one buffer (whole pages of
    // 256 positions: a context's pages of a layer lie in one buffer of the device's page pool).
    uint64_t bind_range = 0;
    auto bind_cap_for = [&](KvType k, KvType v) {
        if (bind_range == 0) return kMaxPlanCtx;
        int64_t cap = kMaxPlanCtx;
        const backend::KvLayout one = runtime::kv_layout(arch, 1, 1, k, v);
        for (size_t il = 0; il < one.layers.size(); ++il) {
            const size_t row = std::max(one.k_row(il).row_bytes(), one.v_row(il).row_bytes());
            if (row > 0 && one.layers[il].window <= 0) cap = std::min<int64_t>(cap, static_cast<int64_t>(bind_range / row));
        }
        const int64_t page = backend::KvLayout{}.page_tokens;
        return cap >= page ? cap / page * page : cap;
    };
    int64_t bind_cap = kMaxPlanCtx;
    if (!device) {
        const runtime::ProcessMemory pm = runtime::process_memory();
        const size_t model_pages = runtime::mapping_rss(m.file->mapping());
        p.where = "CPU (RAM)";
        p.process_bytes = pm.rss > model_pages ? pm.rss - model_pages : 0;
        p.weights_bytes = m.file->file_size();
        avail = cpu_available(pm, p.process_bytes + p.weights_bytes);
    } else {
        const std::vector<vk::DeviceInfo> devices = vk::list_devices();
        const vk::DeviceInfo& d = devices.at(*device);
        p.where = fmt::format("Vulkan device {} ({})", *device, d.name);
        p.weights_bytes = arch.weight_bytes();
        for (const vk::MemoryHeap& h : d.heaps)
            if (h.device_local && h.budget > avail.bytes) avail.bytes = h.budget;
        avail.source = d.memory_budget ? "device-local heap budget (VK_EXT_memory_budget)" : "device-local heap size";
        // Each layer's K and V rows are bound as one storage buffer: at most the device's range.
        bind_range = d.max_storage_buffer_range;
        p.max_buffer_bytes = bind_range;
        bind_cap = bind_cap_for(o.kv_type_k, o.kv_type_v);
        if (p.n_ctx > bind_cap)
            p.warnings.push_back(fmt::format("-c {} needs more than the {} one buffer of this device binds for a layer's KV rows: "
                                             "-c {} is the most it takes",
                                             p.n_ctx, format_bytes(bind_range), bind_cap));
    }
    p.available_bytes = avail.bytes;
    p.available_source = avail.source;
    p.total_bytes = p.process_bytes + p.weights_bytes + p.kv_bytes + p.scratch_bytes + p.cache_bytes;
    p.fits = p.total_bytes <= p.available_bytes && p.n_ctx <= bind_cap;

    const size_t fixed = p.process_bytes + p.weights_bytes + scratch_fixed + p.cache_bytes;
    cost.n_batch = nb;
    // The contexts suggested (the largest that fits, per KV type) leave kSuggestionSlack of what is
    // available unplanned: the process's own memory (its heap, measured before planning) differs by
    // a few pages from one run to the next with the flags and the build, and a context one run
    // names must fit in the next (an exact suggestion was off by one page's tokens).
    constexpr size_t kSuggestionSlack = size_t{1} << 20;
    const size_t suggest = p.available_bytes > kSuggestionSlack ? p.available_bytes - kSuggestionSlack : 0;
    for (KvType t : {KvType::F16, KvType::Q8_0, KvType::Q4_0})
        p.max_ctx.push_back({t, std::min(bind_cap_for(t, t), largest_ctx(cost, t, t, fixed, o.n_parallel, suggest))});
    p.largest_ = std::min(bind_cap, largest_ctx(cost, o.kv_type_k, o.kv_type_v, fixed, o.n_parallel, suggest));

    if (hp.n_ctx_train > 0 && p.n_ctx > hp.n_ctx_train && hp.rope_scaling == model::RopeScaling::None)
        p.warnings.push_back(fmt::format(
            "-c {} is beyond the {} tokens the model was trained with and it has no RoPE scaling: expect the output to "
            "degrade past {} tokens (--rope-scaling yarn --rope-scale {:g} --yarn-orig-ctx {} extends it, if the model "
            "card says so)",
            p.n_ctx, hp.n_ctx_train, hp.n_ctx_train,
            std::ceil(static_cast<double>(p.n_ctx) / static_cast<double>(hp.n_ctx_train)), hp.n_ctx_train));
    return p;
}

std::string MemoryPlan::refusal() const {
    if (fits) return {};
    std::string parts = fmt::format("weights {}, KV {}", format_bytes(weights_bytes), format_bytes(kv_bytes));
    if (scratch_bytes) parts += ", compute " + format_bytes(scratch_bytes);
    if (cache_bytes) parts += ", prefix cache " + format_bytes(cache_bytes);
    if (process_bytes) parts += ", this process " + format_bytes(process_bytes);
    std::string what = fmt::format("-c {}", n_ctx);
    if (n_parallel > 1) what += fmt::format(" x {} slots", n_parallel);
    const std::string types = kv_type_k == kv_type_v ? kv_type_name(kv_type_k) : kv_types_flags(kv_type_k, kv_type_v);
    std::string s = total_bytes <= available_bytes
                        ? fmt::format("does not fit the device's buffers: {} ({}) puts more than {} of KV rows in one layer, the "
                                      "most one buffer of the device binds",
                                      what, types, format_bytes(max_buffer_bytes))
                        : fmt::format("does not fit in memory: {} ({}) needs {} ({}) but {} is available ({})", what, types,
                                      format_bytes(total_bytes), parts, format_bytes(available_bytes), available_source);
    if (largest_ > 0) s += fmt::format("; the largest -c that fits is {}", largest_);
    else s += "; no context fits: the model alone needs more than is available";
    for (const MaxCtx& m : max_ctx)
        if (m.n_ctx >= n_ctx && (m.type != kv_type_k || m.type != kv_type_v)) {
            s += fmt::format("; {} would make -c {} fit", kv_types_flags(m.type, m.type), n_ctx);
            break;
        }
    return s;
}

}  // namespace kiln
