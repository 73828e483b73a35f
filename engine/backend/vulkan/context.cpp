#include "backend/vulkan/context.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>

#include <fmt/format.h>

#include "backend/vulkan/shaders.h"
#include "kiln/error.h"

namespace kiln::vk {

namespace {

std::string mib(uint64_t bytes) { return fmt::format("{:.1f} MiB", static_cast<double>(bytes) / (1 << 20)); }

const char* kind_name(MemoryKind k) {
    switch (k) {
        case MemoryKind::Device: return "device-local";
        case MemoryKind::Upload: return "upload staging";
        default: return "readback";
    }
}

}  // namespace

// The logical device, shared by the Context and every Buffer (so it outlives both).
class DeviceCore {
public:
    std::shared_ptr<Instance> instance;
    VkPhysicalDevice physical = VK_NULL_HANDLE;
    VkDevice device = VK_NULL_HANDLE;
    DeviceInfo info;
    VkPhysicalDeviceMemoryProperties memory{};
    uint32_t queue_family = 0;
    uint32_t type_for[3] = {0, 0, 0};  // memory type per MemoryKind
    std::mutex mutex;
    std::vector<uint64_t> used;  // bytes kiln allocated, per heap

    ~DeviceCore() {
        if (device) {
            api().vkDeviceWaitIdle(device);
            api().vkDestroyDevice(device, nullptr);
        }
    }

    uint32_t heap_of(MemoryKind k) const { return memory.memoryTypes[type_for[static_cast<int>(k)]].heapIndex; }

    uint64_t available(uint32_t heap) {
        std::lock_guard<std::mutex> lock(mutex);
        const uint64_t size = memory.memoryHeaps[heap].size;
        if (info.memory_budget) {
            auto mem = make<VkPhysicalDeviceMemoryProperties2>(VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MEMORY_PROPERTIES_2);
            auto budget = make<VkPhysicalDeviceMemoryBudgetPropertiesEXT>(VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MEMORY_BUDGET_PROPERTIES_EXT);
            mem.pNext = &budget;
            api().vkGetPhysicalDeviceMemoryProperties2(physical, &mem);
            // heapBudget covers this process's own usage (heapUsage) plus what it may still take.
            const uint64_t b = std::min(budget.heapBudget[heap], size);
            const uint64_t u = std::max(budget.heapUsage[heap], used[heap]);
            if (b) return b > u ? b - u : 0;
        }
        return size > used[heap] ? size - used[heap] : 0;
    }
};

Buffer::~Buffer() {
    if (!core_) return;
    Api& a = api();
    if (mapped_) a.vkUnmapMemory(core_->device, memory_);
    if (buffer_) a.vkDestroyBuffer(core_->device, buffer_, nullptr);
    if (memory_) {
        a.vkFreeMemory(core_->device, memory_, nullptr);
        std::lock_guard<std::mutex> lock(core_->mutex);
        core_->used[heap_] -= allocated_;
    }
}

// ---- device --------------------------------------------------------------------------------

namespace {

// The first memory type with all of `want`, preferring one with `prefer` and without `avoid`.
int find_type(const VkPhysicalDeviceMemoryProperties& m, VkMemoryPropertyFlags want, VkMemoryPropertyFlags prefer,
              VkMemoryPropertyFlags avoid) {
    int best = -1, best_score = -1;
    for (uint32_t i = 0; i < m.memoryTypeCount; ++i) {
        const auto f = m.memoryTypes[i].propertyFlags;
        if ((f & want) != want) continue;
        const int score = ((f & prefer) == prefer ? 2 : 0) + ((f & avoid) ? 0 : 1);
        if (score > best_score) best = static_cast<int>(i), best_score = score;
    }
    return best;
}

}  // namespace

Context::Context(uint32_t device_index, bool validation) : core_(std::make_shared<DeviceCore>()) {
    Api& a = api();
    core_->instance = Instance::get(validation);
    const auto& pds = core_->instance->physical_devices();
    if (device_index >= pds.size())
        throw Error(fmt::format("Vulkan: device {} does not exist ({} present)", device_index, pds.size()));
    core_->physical = pds[device_index];
    core_->info = describe(core_->physical, device_index);
    const DeviceInfo& info = core_->info;
    if (!info.usable) throw Error(fmt::format("Vulkan: device {} ({}) {}", device_index, info.name, info.unusable_reason));

    uint32_t nq = 0;
    a.vkGetPhysicalDeviceQueueFamilyProperties(core_->physical, &nq, nullptr);
    std::vector<VkQueueFamilyProperties> families(nq);
    a.vkGetPhysicalDeviceQueueFamilyProperties(core_->physical, &nq, families.data());
    for (uint32_t i = 0; i < nq; ++i)
        if (families[i].queueFlags & VK_QUEUE_COMPUTE_BIT) {
            core_->queue_family = i;
            break;
        }

    // Features for later shader variants, enabled when present; the plain shaders need none.
    auto feats = make<VkPhysicalDeviceFeatures2>(VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2);
    auto s16 = make<VkPhysicalDevice16BitStorageFeatures>(VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_16BIT_STORAGE_FEATURES);
    auto s8 = make<VkPhysicalDevice8BitStorageFeatures>(VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_8BIT_STORAGE_FEATURES);
    auto f16 = make<VkPhysicalDeviceShaderFloat16Int8Features>(VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_FLOAT16_INT8_FEATURES);
    feats.pNext = &s16;
    s16.pNext = &s8;
    s8.pNext = &f16;
    // Integer dot product (the matmul_vec_dot variants): core in Vulkan 1.3, an extension before.
    auto dot = make<VkPhysicalDeviceShaderIntegerDotProductFeatures>(VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_SHADER_INTEGER_DOT_PRODUCT_FEATURES);
    std::vector<const char*> extensions;
    if (info.integer_dot_product) {
        f16.pNext = &dot;
        dot.shaderIntegerDotProduct = VK_TRUE;
        if (info.api_version < VK_API_VERSION_1_3) extensions.push_back(VK_KHR_SHADER_INTEGER_DOT_PRODUCT_EXTENSION_NAME);
    }
    s16.storageBuffer16BitAccess = info.fp16_storage;
    s8.storageBuffer8BitAccess = info.int8_storage;
    f16.shaderFloat16 = info.fp16_arithmetic;
    f16.shaderInt8 = info.int8_arithmetic;

    const float priority = 1.0f;
    auto qci = make<VkDeviceQueueCreateInfo>(VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO);
    qci.queueFamilyIndex = core_->queue_family;
    qci.queueCount = 1;
    qci.pQueuePriorities = &priority;
    auto dci = make<VkDeviceCreateInfo>(VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO);
    dci.pNext = &feats;
    dci.queueCreateInfoCount = 1;
    dci.pQueueCreateInfos = &qci;
    dci.enabledExtensionCount = static_cast<uint32_t>(extensions.size());
    dci.ppEnabledExtensionNames = extensions.data();
    check(a.vkCreateDevice(core_->physical, &dci, nullptr, &core_->device), "vkCreateDevice");
    a.vkGetDeviceQueue(core_->device, core_->queue_family, 0, &queue_);

    a.vkGetPhysicalDeviceMemoryProperties(core_->physical, &core_->memory);
    core_->used.assign(core_->memory.memoryHeapCount, 0);
    const auto& m = core_->memory;
    const int dev = find_type(m, VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT, 0, VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT);
    const int up = find_type(m, VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT, 0,
                             VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT);
    int down = find_type(m, VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT,
                         VK_MEMORY_PROPERTY_HOST_CACHED_BIT, VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT);
    if (up < 0 || down < 0) throw Error(fmt::format("Vulkan: {} has no host-visible coherent memory", info.name));
    core_->type_for[0] = static_cast<uint32_t>(dev >= 0 ? dev : up);
    core_->type_for[1] = static_cast<uint32_t>(up);
    core_->type_for[2] = static_cast<uint32_t>(down);

    auto pci = make<VkCommandPoolCreateInfo>(VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO);
    pci.flags = VK_COMMAND_POOL_CREATE_TRANSIENT_BIT;
    pci.queueFamilyIndex = core_->queue_family;
    check(a.vkCreateCommandPool(core_->device, &pci, nullptr, &cmd_pool_), "vkCreateCommandPool");
    auto cai = make<VkCommandBufferAllocateInfo>(VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO);
    cai.commandPool = cmd_pool_;
    cai.level = VK_COMMAND_BUFFER_LEVEL_PRIMARY;
    cai.commandBufferCount = 1;
    check(a.vkAllocateCommandBuffers(core_->device, &cai, &cmd_), "vkAllocateCommandBuffers");
    auto fci = make<VkFenceCreateInfo>(VK_STRUCTURE_TYPE_FENCE_CREATE_INFO);
    check(a.vkCreateFence(core_->device, &fci, nullptr, &fence_), "vkCreateFence");
    auto cci = make<VkPipelineCacheCreateInfo>(VK_STRUCTURE_TYPE_PIPELINE_CACHE_CREATE_INFO);
    check(a.vkCreatePipelineCache(core_->device, &cci, nullptr, &cache_), "vkCreatePipelineCache");
}

Context::~Context() {
    Api& a = api();
    VkDevice dev = core_->device;
    if (recording_) {
        a.vkEndCommandBuffer(cmd_);
        recording_ = false;
    }
    a.vkDeviceWaitIdle(dev);
    keep_alive_.clear();
    ring_.reset();
    readback_.reset();
    for (auto& [name, variants] : pipelines_)
        for (auto& [spec, p] : variants) a.vkDestroyPipeline(dev, p->pipeline, nullptr);
    for (auto& [n, l] : layouts_) {
        a.vkDestroyPipelineLayout(dev, l.second, nullptr);
        a.vkDestroyDescriptorSetLayout(dev, l.first, nullptr);
    }
    for (auto& [name, m] : modules_) a.vkDestroyShaderModule(dev, m, nullptr);
    for (VkDescriptorPool p : pools_) a.vkDestroyDescriptorPool(dev, p, nullptr);
    if (cache_) a.vkDestroyPipelineCache(dev, cache_, nullptr);
    if (fence_) a.vkDestroyFence(dev, fence_, nullptr);
    if (cmd_pool_) a.vkDestroyCommandPool(dev, cmd_pool_, nullptr);
    // core_ (the VkDevice) goes when the last Buffer holding it does.
}

const DeviceInfo& Context::info() const { return core_->info; }
bool Context::validation() const { return core_->instance->validation(); }
uint64_t Context::validation_messages() const { return core_->instance->validation_messages(); }

// ---- memory --------------------------------------------------------------------------------

uint64_t Context::heap_used(uint32_t heap) const {
    std::lock_guard<std::mutex> lock(core_->mutex);
    return heap < core_->used.size() ? core_->used[heap] : 0;
}

uint64_t Context::heap_available(uint32_t heap) const { return core_->available(heap); }

uint32_t Context::heap_of(MemoryKind kind) const { return core_->heap_of(kind); }

void Context::check_fits(uint64_t bytes, MemoryKind kind, const std::string& what, bool one_allocation) const {
    const DeviceInfo& info = core_->info;
    if (one_allocation && bytes > info.max_allocation_size)
        throw Error(fmt::format("Vulkan: {} needs {} in one allocation but {} allows at most {}", what, mib(bytes),
                                info.name, mib(info.max_allocation_size)));
    const uint32_t heap = heap_of(kind);
    const uint64_t avail = heap_available(heap);
    if (bytes > avail)
        throw Error(fmt::format("Vulkan: out of device memory: {} needs {} of {} memory but heap {} of {} has {} "
                                "left ({} in size, {} already taken by kiln)",
                                what, mib(bytes), kind_name(kind), heap, info.name, mib(avail),
                                mib(core_->memory.memoryHeaps[heap].size), mib(heap_used(heap))));
}

std::shared_ptr<Buffer> Context::create_buffer(uint64_t bytes, MemoryKind kind, const std::string& what) {
    Api& a = api();
    bytes = std::max<uint64_t>((bytes + 15) & ~uint64_t{15}, 16);
    check_fits(bytes, kind, what);
    ++stats_.buffers;

    static std::atomic<uint64_t> next_id{1};
    std::shared_ptr<Buffer> b(new Buffer());
    b->id_ = next_id.fetch_add(1, std::memory_order_relaxed);
    b->core_ = core_;
    b->kind_ = kind;
    auto bci = make<VkBufferCreateInfo>(VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO);
    bci.size = bytes;
    bci.usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT | VK_BUFFER_USAGE_TRANSFER_DST_BIT;
    bci.sharingMode = VK_SHARING_MODE_EXCLUSIVE;
    check(a.vkCreateBuffer(core_->device, &bci, nullptr, &b->buffer_), "vkCreateBuffer");

    VkMemoryRequirements req{};
    a.vkGetBufferMemoryRequirements(core_->device, b->buffer_, &req);
    uint32_t type = core_->type_for[static_cast<int>(kind)];
    if (!(req.memoryTypeBits & (1u << type))) {
        // The preferred type cannot hold this buffer: any type with the same essential flags.
        const VkMemoryPropertyFlags need = kind == MemoryKind::Device ? 0 : VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT |
                                                                               VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
        bool found = false;
        for (uint32_t i = 0; i < core_->memory.memoryTypeCount && !found; ++i)
            if ((req.memoryTypeBits & (1u << i)) && (core_->memory.memoryTypes[i].propertyFlags & need) == need)
                type = i, found = true;
        if (!found) throw Error(fmt::format("Vulkan: no memory type can hold {} on {}", what, core_->info.name));
    }
    b->heap_ = core_->memory.memoryTypes[type].heapIndex;
    if (req.size > bytes) check_fits(req.size, kind, what);

    auto mai = make<VkMemoryAllocateInfo>(VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO);
    mai.allocationSize = req.size;
    mai.memoryTypeIndex = type;
    const VkResult r = a.vkAllocateMemory(core_->device, &mai, nullptr, &b->memory_);
    if (r == VK_ERROR_OUT_OF_DEVICE_MEMORY || r == VK_ERROR_OUT_OF_HOST_MEMORY)
        throw Error(fmt::format("Vulkan: out of device memory: the driver refused {} for {} ({} already taken by kiln "
                                "on heap {})",
                                mib(req.size), what, mib(heap_used(b->heap_)), b->heap_));
    check(r, "vkAllocateMemory");
    b->allocated_ = req.size;
    {
        std::lock_guard<std::mutex> lock(core_->mutex);
        core_->used[b->heap_] += b->allocated_;
    }
    check(a.vkBindBufferMemory(core_->device, b->buffer_, b->memory_, 0), "vkBindBufferMemory");
    if (kind != MemoryKind::Device)
        check(a.vkMapMemory(core_->device, b->memory_, 0, VK_WHOLE_SIZE, 0, &b->mapped_), "vkMapMemory");
    b->size_ = bytes;
    return b;
}

// ---- pipelines -----------------------------------------------------------------------------

VkShaderModule Context::shader_module(std::string_view name) {
    if (auto it = modules_.find(name); it != modules_.end()) return it->second;
    const EmbeddedShader* s = find_shader(name);
    if (!s) throw Error(fmt::format("Vulkan: no shader named '{}' is embedded in this build", name));
    auto ci = make<VkShaderModuleCreateInfo>(VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO);
    ci.codeSize = s->n_words * sizeof(uint32_t);
    ci.pCode = s->words;
    VkShaderModule m = VK_NULL_HANDLE;
    check(api().vkCreateShaderModule(core_->device, &ci, nullptr, &m),
          ("vkCreateShaderModule(" + std::string(name) + ")").c_str());
    modules_.emplace(std::string(name), m);
    return m;
}

VkDescriptorSetLayout Context::set_layout(uint32_t n_bindings) {
    if (auto it = layouts_.find(n_bindings); it != layouts_.end()) return it->second.first;
    Api& a = api();
    std::vector<VkDescriptorSetLayoutBinding> b(n_bindings);
    for (uint32_t i = 0; i < n_bindings; ++i) {
        b[i].binding = i;
        b[i].descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER;
        b[i].descriptorCount = 1;
        b[i].stageFlags = VK_SHADER_STAGE_COMPUTE_BIT;
    }
    auto li = make<VkDescriptorSetLayoutCreateInfo>(VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO);
    li.bindingCount = n_bindings;
    li.pBindings = b.data();
    VkDescriptorSetLayout sl = VK_NULL_HANDLE;
    check(a.vkCreateDescriptorSetLayout(core_->device, &li, nullptr, &sl), "vkCreateDescriptorSetLayout");
    VkPushConstantRange pcr{VK_SHADER_STAGE_COMPUTE_BIT, 0, kPushConstantBytes};
    auto pli = make<VkPipelineLayoutCreateInfo>(VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO);
    pli.setLayoutCount = 1;
    pli.pSetLayouts = &sl;
    pli.pushConstantRangeCount = 1;
    pli.pPushConstantRanges = &pcr;
    VkPipelineLayout pl = VK_NULL_HANDLE;
    const VkResult r = a.vkCreatePipelineLayout(core_->device, &pli, nullptr, &pl);
    if (r != VK_SUCCESS) a.vkDestroyDescriptorSetLayout(core_->device, sl, nullptr);
    check(r, "vkCreatePipelineLayout");
    layouts_[n_bindings] = {sl, pl};
    return sl;
}

const Pipeline& Context::pipeline(std::string_view name, std::span<const uint32_t> spec, uint32_t n_bindings) {
    auto named = pipelines_.find(name);
    if (named != pipelines_.end())
        for (const auto& [s, p] : named->second)
            if (std::equal(s.begin(), s.end(), spec.begin(), spec.end())) return *p;
    if (spec.empty() || spec[0] == 0 || spec[0] > core_->info.max_workgroup_invocations)
        throw Error(fmt::format("Vulkan: pipeline {}: workgroup size {} is outside 1..{}", name,
                                spec.empty() ? 0 : spec[0], core_->info.max_workgroup_invocations));
    if (n_bindings > kMaxBindings)
        throw Error(fmt::format("Vulkan: pipeline {} has {} buffers, more than {}", name, n_bindings, kMaxBindings));

    const VkShaderModule module = shader_module(name);
    const VkDescriptorSetLayout sl = set_layout(n_bindings);
    std::vector<VkSpecializationMapEntry> entries(spec.size());
    for (uint32_t i = 0; i < spec.size(); ++i) entries[i] = {i, i * 4u, 4};
    VkSpecializationInfo si{};
    si.mapEntryCount = static_cast<uint32_t>(entries.size());
    si.pMapEntries = entries.data();
    si.dataSize = spec.size() * sizeof(uint32_t);
    si.pData = spec.data();

    auto ci = make<VkComputePipelineCreateInfo>(VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO);
    ci.stage.sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO;
    ci.stage.stage = VK_SHADER_STAGE_COMPUTE_BIT;
    ci.stage.module = module;
    ci.stage.pName = "main";
    ci.stage.pSpecializationInfo = &si;
    ci.layout = layouts_[n_bindings].second;
    auto p = std::make_unique<Pipeline>();
    check(api().vkCreateComputePipelines(core_->device, cache_, 1, &ci, nullptr, &p->pipeline),
          ("vkCreateComputePipelines(" + std::string(name) + ")").c_str());
    p->layout = ci.layout;
    p->set_layout = sl;
    p->n_bindings = n_bindings;
    p->workgroup_size = spec[0];
    ++stats_.pipelines;
    if (named == pipelines_.end()) named = pipelines_.emplace(std::string(name), decltype(named->second){}).first;
    named->second.emplace_back(std::vector<uint32_t>(spec.begin(), spec.end()), std::move(p));
    return *named->second.back().second;
}

// ---- recording -----------------------------------------------------------------------------

bool Context::SetKey::operator==(const SetKey& o) const {
    if (layout != o.layout || n != o.n) return false;
    for (uint32_t i = 0; i < n; ++i)
        if (id[i] != o.id[i] || offset[i] != o.offset[i] || size[i] != o.size[i]) return false;
    return true;
}

size_t Context::SetKeyHash::operator()(const SetKey& k) const {
    uint64_t h = 1469598103934665603ull;  // FNV-1a over the words
    auto mix = [&h](uint64_t v) {
        h ^= v;
        h *= 1099511628211ull;
    };
    mix(reinterpret_cast<uint64_t>(k.layout));
    mix(k.n);
    for (uint32_t i = 0; i < k.n; ++i) {
        mix(k.id[i]);
        mix(k.offset[i]);
        mix(k.size[i]);
    }
    return static_cast<size_t>(h);
}

void Context::begin_if_needed() {
    if (recording_) return;
    auto bi = make<VkCommandBufferBeginInfo>(VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO);
    bi.flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT;
    check(api().vkBeginCommandBuffer(cmd_, &bi), "vkBeginCommandBuffer");
    recording_ = true;
    reads_.clear();
    writes_.clear();
}

void Context::barrier() {
    auto mb = make<VkMemoryBarrier>(VK_STRUCTURE_TYPE_MEMORY_BARRIER);
    mb.srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT;
    mb.dstAccessMask = VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_READ_BIT |
                       VK_ACCESS_TRANSFER_WRITE_BIT;
    const VkPipelineStageFlags stages = VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT;
    api().vkCmdPipelineBarrier(cmd_, stages, stages, 0, 1, &mb, 0, nullptr, 0, nullptr);
    reads_.clear();
    writes_.clear();
    ++stats_.barriers;
}

void Context::track(VkBuffer buffer, uint64_t offset, uint64_t size, bool write) {
    auto overlaps = [&](const std::vector<Range>& v) {
        return std::any_of(v.begin(), v.end(), [&](const Range& r) {
            return r.buffer == buffer && offset < r.end && r.begin < offset + size;
        });
    };
    // read after write, write after write, write after read
    if (overlaps(writes_) || (write && overlaps(reads_))) barrier();
}

VkDescriptorSet Context::allocate_set(VkDescriptorSetLayout layout) {
    Api& a = api();
    constexpr uint32_t kSets = 256, kDescriptors = 256 * 8;
    for (;;) {
        if (pool_index_ == pools_.size()) {
            VkDescriptorPoolSize ps{VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, kDescriptors};
            auto pci = make<VkDescriptorPoolCreateInfo>(VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO);
            pci.maxSets = kSets;
            pci.poolSizeCount = 1;
            pci.pPoolSizes = &ps;
            VkDescriptorPool pool = VK_NULL_HANDLE;
            check(a.vkCreateDescriptorPool(core_->device, &pci, nullptr, &pool), "vkCreateDescriptorPool");
            pools_.push_back(pool);
        }
        auto ai = make<VkDescriptorSetAllocateInfo>(VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO);
        ai.descriptorPool = pools_[pool_index_];
        ai.descriptorSetCount = 1;
        ai.pSetLayouts = &layout;
        VkDescriptorSet set = VK_NULL_HANDLE;
        const VkResult r = a.vkAllocateDescriptorSets(core_->device, &ai, &set);
        if (r == VK_SUCCESS) return set;
        if (r != VK_ERROR_OUT_OF_POOL_MEMORY && r != VK_ERROR_FRAGMENTED_POOL) check(r, "vkAllocateDescriptorSets");
        ++pool_index_;  // this pool is full until the cache is dropped: use (or make) the next one
    }
}

void Context::dispatch(const Pipeline& p, std::span<const Binding> bindings, const void* push, uint32_t push_bytes,
                       uint32_t gx, uint32_t gy, uint32_t gz) {
    if (bindings.size() != p.n_bindings)
        throw Error(fmt::format("Vulkan: dispatch with {} buffers for a pipeline of {}", bindings.size(), p.n_bindings));
    if (push_bytes > kPushConstantBytes) throw Error("Vulkan: push constants larger than 128 bytes");
    const auto* lim = core_->info.max_workgroup_count;
    if (gx > lim[0] || gy > lim[1] || gz > lim[2])
        throw Error(fmt::format("Vulkan: dispatch of {}x{}x{} workgroups passes the device limit {}x{}x{}", gx, gy, gz,
                                lim[0], lim[1], lim[2]));
    if (gx == 0 || gy == 0 || gz == 0) return;
    Api& a = api();
    begin_if_needed();

    SetKey key;
    key.layout = p.set_layout;
    key.n = static_cast<uint32_t>(bindings.size());
    for (size_t i = 0; i < bindings.size(); ++i) {
        key.id[i] = bindings[i].buffer->id();
        key.offset[i] = bindings[i].offset;
        key.size[i] = bindings[i].size;
    }
    VkDescriptorSet set = VK_NULL_HANDLE;
    if (auto it = sets_.find(key); it != sets_.end()) {
        set = it->second;
    } else {
        set = allocate_set(p.set_layout);
        VkDescriptorBufferInfo infos[kMaxBindings];  // n_bindings <= kMaxBindings (checked at creation)
        VkWriteDescriptorSet writes[kMaxBindings];
        for (size_t i = 0; i < bindings.size(); ++i) {
            const Binding& b = bindings[i];
            infos[i] = {b.buffer->handle(), b.offset, b.size};
            writes[i] = make<VkWriteDescriptorSet>(VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET);
            writes[i].dstSet = set;
            writes[i].dstBinding = static_cast<uint32_t>(i);
            writes[i].descriptorCount = 1;
            writes[i].descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER;
            writes[i].pBufferInfo = &infos[i];
        }
        a.vkUpdateDescriptorSets(core_->device, static_cast<uint32_t>(bindings.size()), writes, 0, nullptr);
        sets_.emplace(key, set);
        ++stats_.descriptor_sets;
    }

    for (const Binding& b : bindings) track(b.buffer->handle(), b.offset, b.size, b.written);
    for (const Binding& b : bindings) {
        (b.written ? writes_ : reads_).push_back({b.buffer->handle(), b.offset, b.offset + b.size});
        keep_alive_.push_back(b.buffer);
    }
    a.vkCmdBindPipeline(cmd_, VK_PIPELINE_BIND_POINT_COMPUTE, p.pipeline);
    a.vkCmdBindDescriptorSets(cmd_, VK_PIPELINE_BIND_POINT_COMPUTE, p.layout, 0, 1, &set, 0, nullptr);
    if (push_bytes) a.vkCmdPushConstants(cmd_, p.layout, VK_SHADER_STAGE_COMPUTE_BIT, 0, push_bytes, push);
    a.vkCmdDispatch(cmd_, gx, gy, gz);
    ++stats_.dispatches;
}

void Context::copy(const std::shared_ptr<Buffer>& src, uint64_t src_offset, const std::shared_ptr<Buffer>& dst,
                   uint64_t dst_offset, uint64_t bytes) {
    if (!bytes) return;
    begin_if_needed();
    track(src->handle(), src_offset, bytes, false);
    track(dst->handle(), dst_offset, bytes, true);
    reads_.push_back({src->handle(), src_offset, src_offset + bytes});
    writes_.push_back({dst->handle(), dst_offset, dst_offset + bytes});
    keep_alive_.push_back(src);
    keep_alive_.push_back(dst);
    VkBufferCopy region{src_offset, dst_offset, bytes};
    api().vkCmdCopyBuffer(cmd_, src->handle(), dst->handle(), 1, &region);
    ++stats_.copies;
}

void Context::fill(const std::shared_ptr<Buffer>& dst, uint64_t dst_offset, uint64_t bytes, uint32_t value) {
    if (!bytes) return;
    if (bytes % 4 || dst_offset % 4) throw Error("Vulkan: fill needs a 4-byte aligned range");
    begin_if_needed();
    track(dst->handle(), dst_offset, bytes, true);
    writes_.push_back({dst->handle(), dst_offset, dst_offset + bytes});
    keep_alive_.push_back(dst);
    api().vkCmdFillBuffer(cmd_, dst->handle(), dst_offset, bytes, value);
    ++stats_.copies;
}

void Context::upload(const std::shared_ptr<Buffer>& dst, uint64_t dst_offset, const void* data, uint64_t bytes) {
    if (!ring_) ring_ = create_buffer(kRingBytes, MemoryKind::Upload, "the upload staging ring");
    const auto* src = static_cast<const uint8_t*>(data);
    while (bytes) {
        const uint64_t chunk = std::min(bytes, ring_->size());
        if (ring_head_ + chunk > ring_->size()) submit();  // frees the whole ring
        std::memcpy(ring_->mapped() + ring_head_, src, chunk);
        copy(ring_, ring_head_, dst, dst_offset, chunk);
        ring_head_ = (ring_head_ + chunk + 15) & ~uint64_t{15};
        src += chunk;
        dst_offset += chunk;
        bytes -= chunk;
    }
}

void Context::download(const std::shared_ptr<Buffer>& src, uint64_t src_offset, void* data, uint64_t bytes) {
    if (!readback_) readback_ = create_buffer(kReadbackBytes, MemoryKind::Readback, "the readback buffer");
    auto* out = static_cast<uint8_t*>(data);
    do {
        const uint64_t chunk = std::min(bytes, readback_->size());
        copy(src, src_offset, readback_, 0, chunk);
        auto mb = make<VkMemoryBarrier>(VK_STRUCTURE_TYPE_MEMORY_BARRIER);
        mb.srcAccessMask = VK_ACCESS_TRANSFER_WRITE_BIT;
        mb.dstAccessMask = VK_ACCESS_HOST_READ_BIT;
        api().vkCmdPipelineBarrier(cmd_, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_PIPELINE_STAGE_HOST_BIT, 0, 1, &mb, 0,
                                   nullptr, 0, nullptr);
        submit();
        std::memcpy(out, readback_->mapped(), chunk);
        out += chunk;
        src_offset += chunk;
        bytes -= chunk;
    } while (bytes);
}

void Context::submit() {
    if (!recording_) return;
    Api& a = api();
    recording_ = false;
    check(a.vkEndCommandBuffer(cmd_), "vkEndCommandBuffer");
    auto si = make<VkSubmitInfo>(VK_STRUCTURE_TYPE_SUBMIT_INFO);
    si.commandBufferCount = 1;
    si.pCommandBuffers = &cmd_;
    VkResult r = a.vkQueueSubmit(queue_, 1, &si, fence_);
    if (r == VK_SUCCESS) {
        ++stats_.submits;
        // Long graphs on slow devices (lavapipe) can take a while: wait in slices, forever.
        do r = a.vkWaitForFences(core_->device, 1, &fence_, VK_TRUE, 1'000'000'000ull);
        while (r == VK_TIMEOUT);
    }
    // Whatever happened, the recording's resources are free again.
    a.vkResetFences(core_->device, 1, &fence_);
    a.vkResetCommandPool(core_->device, cmd_pool_, 0);
    if (sets_.size() > kMaxCachedSets) {  // nothing is in flight now: drop the cached sets
        for (VkDescriptorPool p : pools_) a.vkResetDescriptorPool(core_->device, p, 0);
        pool_index_ = 0;
        sets_.clear();
    }
    keep_alive_.clear();
    ring_head_ = 0;
    reads_.clear();
    writes_.clear();
    check(r, "vkQueueSubmit / vkWaitForFences");
}

}  // namespace kiln::vk
