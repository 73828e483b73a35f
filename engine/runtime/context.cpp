// kiln::Context: one sequence on one backend. Owns its KV cache; the backend and the compiled graphs
// of the batch shapes seen (the decode shape is compiled once and reused for every token) are a
// runtime::SharedBackend, shared by the model's contexts on one Vulkan device, the context's own
// on the CPU (runtime/shared_backend.h).
#include <algorithm>
#include <map>
#include <mutex>
#include <numeric>
#include <optional>
#include <string_view>

#include <fmt/format.h>

#include "backend/backend.h"
#include "backend/vulkan/graph_executor.h"
#include "kiln/context.h"
#include "kiln/error.h"
#include "model/model_impl.h"
#include "kiln/memory.h"
#include "runtime/kv_cache.h"
#include "runtime/memory_plan.h"
#include "runtime/shared_backend.h"

namespace kiln {

namespace runtime {

namespace {
// Prompt chunk shapes other than the decode shape kept compiled (least recently used dropped).
constexpr size_t kMaxCachedShapes = 4;
}  // namespace

SharedBackend::SharedBackend(std::unique_ptr<backend::Backend> b, const model::Architecture& a)
    : backend(std::move(b)), arch(a), on_cpu(std::string_view(backend->name()) == "cpu") {}

SharedBackend::~SharedBackend() = default;

SharedBackend::Compiled SharedBackend::compile(int64_t n_tokens, int64_t n_outputs) {
    Compiled c;
    c.exe = backend->compile(arch.build({n_tokens, n_outputs}));
    const graph::Graph& g = c.exe->graph();
    c.tokens = g.find(model::kInputTokens);
    c.positions = g.find(model::kInputPositions);
    c.logits = g.find(model::kOutputLogits);
    return c;
}

SharedBackend::Compiled& SharedBackend::get(int64_t n_tokens, int64_t n_outputs) {
    const auto key = std::make_pair(n_tokens, n_outputs);
    auto it = compiled_.find(key);
    if (it == compiled_.end()) {
        if (compiled_.size() > kMaxCachedShapes) {
            auto victim = compiled_.end();
            for (auto c = compiled_.begin(); c != compiled_.end(); ++c)
                if (c->first.first != 1 && (victim == compiled_.end() || c->second.last_used < victim->second.last_used))
                    victim = c;
            if (victim != compiled_.end()) compiled_.erase(victim);
        }
        it = compiled_.emplace(key, compile(n_tokens, n_outputs)).first;
    }
    it->second.last_used = ++use_clock_;
    return it->second;
}

SharedBackend::Compiled& SharedBackend::get_batch(int64_t n) {
    auto it = batch_.find(n);
    if (it == batch_.end()) it = batch_.emplace(n, compile(n, n)).first;
    return it->second;
}

}  // namespace runtime

namespace {

// The Vulkan backend of `m` on the device `opt` asks for: the one its other contexts use, or a
// new one (nullptr: "auto" found no GPU). Throws kiln::Error when Vulkan was required and is
// missing.
std::shared_ptr<runtime::SharedBackend> vulkan_backend(const Model::Impl& m, const ContextOptions& opt) {
    backend::VulkanOptions vo;
    vo.device = opt.device;
    vo.require = opt.backend == "vulkan" || opt.device >= 0;
    const std::optional<uint32_t> index = backend::vulkan_select_device(vo);
    if (!index) return nullptr;
    std::lock_guard lk(m.backends_mu);
    std::weak_ptr<runtime::SharedBackend>& slot = m.vulkan_backends[*index];
    if (auto be = slot.lock()) return be;
    vo.device = static_cast<int>(*index);
    vo.require = true;
    std::unique_ptr<backend::Backend> b = backend::make_vulkan_backend(vo);
    if (!b) return nullptr;
    auto be = std::make_shared<runtime::SharedBackend>(std::move(b), *m.arch);
    slot = be;
    return be;
}

}  // namespace

struct Context::Impl {
    Model model;
    const Model::Impl& m;
    ContextOptions opt;
    // Shared with the model's other contexts on the same Vulkan device; this context's own on the
    // CPU (runtime/shared_backend.h). Every use holds be->mu.
    std::shared_ptr<runtime::SharedBackend> be;
    std::unique_ptr<runtime::KvCache> kv;

    std::vector<backend::KvBuffers*> batch_kv;  // scratch of decode_batch, grown on demand only
    std::vector<int64_t> batch_pos;
    std::vector<int32_t> batch_pos32;

    std::vector<int32_t> positions;  // n_batch, reused
    std::vector<float> logits;       // n_logit_rows * n_vocab, grown on demand only
    int64_t n_logit_rows = 0;

    Impl(const Model& mdl, const ContextOptions& o) : model(mdl), m(*mdl.impl()), opt(o) {}
    ~Impl() {
        // The KV cache is the backend's memory: freed under its lock (another context may be
        // recording on it).
        if (be && kv) {
            std::lock_guard lk(be->mu);
            kv.reset();
        }
    }

    // Whether decode_batch can run this context in one pass with c0 (on c0's backend).
    bool batches_with(const Impl& c0) const {
        return be == c0.be || (be->on_cpu && c0.be->on_cpu && opt.n_threads == c0.opt.n_threads);
    }
};

Context::Context(const Model& model, const ContextOptions& options) {
    impl_ = std::make_unique<Impl>(model, options);
    Impl& c = *impl_;
    const model::HParams& hp = c.m.arch->hparams();
    if (c.opt.backend != "cpu" && c.opt.backend != "vulkan" && c.opt.backend != "auto")
        throw Error(fmt::format("unknown backend '{}' (available: cpu, vulkan, auto)", c.opt.backend));
    if (c.opt.n_ctx <= 0) c.opt.n_ctx = runtime::default_n_ctx(hp);
    if (c.opt.n_batch <= 0) throw Error(fmt::format("n_batch must be positive, got {}", c.opt.n_batch));
    c.opt.n_batch = std::min(c.opt.n_batch, c.opt.n_ctx);
    if (c.opt.n_threads <= 0) c.opt.n_threads = model.default_threads();

    if (c.opt.backend != "cpu") c.be = vulkan_backend(c.m, c.opt);  // nullptr: "auto" found no GPU
    if (c.opt.kv_page_tokens < 1 || (c.opt.kv_page_tokens & (c.opt.kv_page_tokens - 1)) != 0 ||
        c.opt.kv_page_tokens > (int64_t{1} << 30))
        throw Error(fmt::format("kv_page_tokens must be a power of two from 1 to 2^30, got {}", c.opt.kv_page_tokens));
    backend::KvLayout layout = runtime::kv_layout(*c.m.arch, c.opt.n_ctx, c.opt.n_batch, c.opt.kv_type_k, c.opt.kv_type_v);
    layout.page_tokens = c.opt.kv_page_tokens;
    c.positions.resize(static_cast<size_t>(c.opt.n_batch));
    c.logits.resize(static_cast<size_t>(hp.n_vocab));
    auto start = [&] {
        std::lock_guard lk(c.be->mu);
        c.kv = std::make_unique<runtime::KvCache>(*c.be->backend, layout, c.opt.kv_up_front);
        // The decode shape is compiled up front (on a shared backend: by its first context, which
        // uploads the weights): generating a token never compiles or allocates. The progress
        // callback is this context's only while it is being created.
        if (c.opt.progress)
            backend::vulkan_set_progress(*c.be->backend, [p = c.opt.progress](uint64_t done, uint64_t total) {
                p(total ? static_cast<float>(static_cast<double>(done) / static_cast<double>(total)) : 1.0f);
            });
        try {
            c.be->get(1, 1);
        } catch (...) {
            backend::vulkan_set_progress(*c.be->backend, nullptr);
            c.kv.reset();
            throw;
        }
        backend::vulkan_set_progress(*c.be->backend, nullptr);
    };
    if (c.be && c.opt.backend == "auto") {
        // "auto" on a GPU: the whole model runs on Vulkan, or (an op, type or size the shaders do
        // not have, memory) the whole model runs on the CPU; backend_name() tells which.
        try {
            start();
            return;
        } catch (const Error&) {
            c.be.reset();
        }
    }
    if (!c.be && c.opt.check_memory) {
        // On the CPU: refused before its thread pool, buffers and KV cache are taken (the Vulkan
        // backend checks each allocation against the device's budget itself).
        MemoryPlanOptions po;
        po.n_ctx = c.opt.n_ctx;
        po.kv_type_k = c.opt.kv_type_k;
        po.kv_type_v = c.opt.kv_type_v;
        po.n_batch = c.opt.n_batch;
        po.n_threads = c.opt.n_threads;
        const MemoryPlan plan = plan_memory(c.model, po);
        if (!plan.fits) throw Error("this context " + plan.refusal());
    }
    if (!c.be) c.be = std::make_shared<runtime::SharedBackend>(backend::make_cpu_backend(c.opt.n_threads), *c.m.arch);
    try {
        start();
    } catch (...) {
        c.be.reset();  // nothing of this context stays on a shared backend
        throw;
    }
}

Context::~Context() = default;
Context::Context(Context&&) noexcept = default;
Context& Context::operator=(Context&&) noexcept = default;

void Context::decode(std::span<const int32_t> tokens, bool all_logits) {
    Impl& c = *impl_;
    const int64_t n = static_cast<int64_t>(tokens.size());
    if (n == 0) throw Error("decode: no tokens given");
    if (n > c.kv->n_free())
        throw Error(fmt::format("{} tokens do not fit in the context: {} of {} positions are used, {} free "
                                "(a larger context needs -c / ContextOptions::n_ctx)",
                                n, c.kv->n_past(), c.kv->n_ctx(), c.kv->n_free()));
    const int64_t n_vocab = c.m.arch->hparams().n_vocab;
    for (int64_t i = 0; i < n; ++i)
        if (tokens[i] < 0 || tokens[i] >= n_vocab)
            throw Error(fmt::format("decode: token {} (id {}) is outside the vocabulary of {}", i, tokens[i], n_vocab));

    const int64_t rows = all_logits ? n : 1;
    if (c.logits.size() < static_cast<size_t>(rows * n_vocab)) c.logits.resize(static_cast<size_t>(rows * n_vocab));
    c.n_logit_rows = 0;

    for (int64_t start = 0; start < n; start += c.opt.n_batch) {
        const int64_t len = std::min(c.opt.n_batch, n - start);
        const bool last_chunk = start + len == n;
        const int64_t n_out = all_logits ? len : (last_chunk ? 1 : 0);
        // One pass under the backend's lock: the inputs, the run and the logits copied out before
        // another context's pass can reuse the workspace.
        std::lock_guard lk(c.be->mu);
        runtime::SharedBackend::Compiled& comp = c.be->get(len, n_out);
        const int64_t base = c.kv->n_past();
        for (int64_t t = 0; t < len; ++t) c.positions[static_cast<size_t>(t)] = static_cast<int32_t>(base + t);
        comp.exe->set_input(comp.tokens, tokens.data() + start, static_cast<size_t>(len) * 4);
        comp.exe->set_input(comp.positions, c.positions.data(), static_cast<size_t>(len) * 4);
        backend::RunArgs args;
        args.kv = &c.kv->buffers();
        args.kv_base = base;
        comp.exe->run(args);
        c.kv->advance(len);
        if (n_out > 0) {
            const float* out = comp.exe->output(comp.logits);
            std::copy(out, out + n_out * n_vocab, c.logits.begin() + c.n_logit_rows * n_vocab);
            c.n_logit_rows += n_out;
        }
    }
}

size_t decode_batch(std::span<Context* const> contexts, std::span<const int32_t> tokens) {
    const size_t n = contexts.size();
    if (n == 0) throw Error("decode_batch: no contexts given");
    if (tokens.size() != n)
        throw Error(fmt::format("decode_batch: {} tokens for {} contexts (one token each)", tokens.size(), n));
    Context::Impl& c0 = *contexts[0]->impl_;
    const int64_t n_vocab = c0.m.arch->hparams().n_vocab;
    bool batched = true;
    for (size_t i = 0; i < n; ++i) {
        const Context::Impl& c = *contexts[i]->impl_;
        if (&c.m != &c0.m) throw Error(fmt::format("decode_batch: context {} runs another model than context 0", i));
        for (size_t j = 0; j < i; ++j)
            if (contexts[j] == contexts[i]) throw Error(fmt::format("decode_batch: contexts {} and {} are the same", j, i));
        if (c.kv->n_free() < 1)
            throw Error(fmt::format("decode_batch: context {} is full ({} of {} positions used)", i, c.kv->n_past(),
                                    c.kv->n_ctx()));
        if (tokens[i] < 0 || tokens[i] >= n_vocab)
            throw Error(fmt::format("decode_batch: token {} (id {}) is outside the vocabulary of {}", i, tokens[i], n_vocab));
        if (!c.batches_with(c0)) batched = false;
    }
    if (n == 1 || !batched) {
        for (size_t i = 0; i < n; ++i) contexts[i]->decode(tokens.subspan(i, 1));
        return n;
    }
    c0.batch_kv.resize(n);
    c0.batch_pos.resize(n);
    c0.batch_pos32.resize(n);
    for (size_t i = 0; i < n; ++i) {
        Context::Impl& c = *contexts[i]->impl_;
        c0.batch_kv[i] = &c.kv->buffers();
        c0.batch_pos[i] = c.kv->n_past();
        c0.batch_pos32[i] = static_cast<int32_t>(c.kv->n_past());
    }
    // On c0's backend (shared by all of them on Vulkan), under its lock.
    std::lock_guard lk(c0.be->mu);
    runtime::SharedBackend::Compiled& comp = c0.be->get_batch(static_cast<int64_t>(n));
    comp.exe->set_input(comp.tokens, tokens.data(), n * 4);
    comp.exe->set_input(comp.positions, c0.batch_pos32.data(), n * 4);
    backend::RunArgs args;
    args.seq_kv = c0.batch_kv;
    args.seq_pos = c0.batch_pos;
    comp.exe->run(args);
    const float* out = comp.exe->output(comp.logits);
    for (size_t i = 0; i < n; ++i) {
        Context::Impl& c = *contexts[i]->impl_;
        c.kv->advance(1);
        std::copy(out + static_cast<int64_t>(i) * n_vocab, out + static_cast<int64_t>(i + 1) * n_vocab, c.logits.begin());
        c.n_logit_rows = 1;
    }
    return 1;
}

std::span<const float> Context::logits(int64_t i) const {
    const Impl& c = *impl_;
    if (i < 0) i += c.n_logit_rows;
    if (i < 0 || i >= c.n_logit_rows)
        throw Error(fmt::format("logits: row {} requested, the last decode produced {}", i, c.n_logit_rows));
    const int64_t n_vocab = c.m.arch->hparams().n_vocab;
    return {c.logits.data() + i * n_vocab, static_cast<size_t>(n_vocab)};
}

int64_t Context::n_logits() const { return impl_->n_logit_rows; }
int64_t Context::n_past() const { return impl_->kv->n_past(); }
int64_t Context::n_ctx() const { return impl_->kv->n_ctx(); }
int64_t Context::n_vocab() const { return impl_->m.arch->hparams().n_vocab; }
size_t Context::kv_bytes() const { return impl_->kv->bytes(); }
size_t Context::kv_bytes_held() const {
    std::lock_guard lk(impl_->be->mu);
    return impl_->kv->bytes_held();
}

KvStats Context::kv_stats() const { return runtime::kv_stats(impl_->kv->layout()); }

std::string Context::kv_summary() const {
    const KvStats s = kv_stats();
    auto mib = [](size_t b) { return static_cast<double>(b) / (1024.0 * 1024.0); };
    const backend::KvLayout& L = impl_->kv->layout();
    const bool stores_v = std::any_of(L.layers.begin(), L.layers.end(), [](const auto& l) { return !l.v_in_k; });
    const std::string type = !stores_v                ? fmt::format("{} (MLA: K only)", kv_type_name(s.type_k))
                             : s.type_k == s.type_v ? std::string(kv_type_name(s.type_k))
                                                    : fmt::format("K {} V {}", kv_type_name(s.type_k), kv_type_name(s.type_v));
    std::string out = fmt::format("KV cache {} {:.2f} MiB:", type, mib(s.full_bytes + s.sliding_bytes));
    if (s.n_full_layers > 0)
        out += fmt::format(" {} full layers x {} tokens x {} B/token", s.n_full_layers, s.n_ctx, s.full_bytes_per_token);
    if (s.n_sliding_layers > 0)
        out += fmt::format("{} {} sliding-window layers x ring of {} tokens x {} B/token", s.n_full_layers > 0 ? "," : "",
                           s.n_sliding_layers, s.sliding_slots, s.sliding_bytes_per_token);
    return out;
}
const Model& Context::model() const { return impl_->model; }
const char* Context::backend_name() const { return impl_->be->backend->name(); }

int64_t Context::truncate(int64_t n_keep) {
    Impl& c = *impl_;
    if (n_keep < 0 || n_keep > c.kv->n_past())
        throw Error(fmt::format("truncate: cannot keep {} tokens of {}", n_keep, c.kv->n_past()));
    // A sliding-window layer keeps a ring of its last n_slots positions: the kept tokens' window
    // [n_keep - w, n_keep) must not have been overwritten since, else nothing can be kept.
    const backend::KvLayout& L = c.kv->layout();
    for (size_t il = 0; il < L.layers.size(); ++il) {
        const int64_t w = L.layers[il].window;
        if (w <= 0) continue;
        if (std::max<int64_t>(0, n_keep - w) < c.kv->held_from(il, true)) {
            n_keep = 0;
            break;
        }
    }
    c.kv->truncate(n_keep);
    c.n_logit_rows = 0;
    return n_keep;
}

runtime::KvCache& Context::kv_cache() { return *impl_->kv; }
std::mutex& Context::backend_mutex() { return impl_->be->mu; }
void Context::forget_logits() { impl_->n_logit_rows = 0; }

void Context::clear() {
    impl_->kv->clear();
    impl_->n_logit_rows = 0;
}

}  // namespace kiln
