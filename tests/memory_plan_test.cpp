// The memory plan (kiln/memory.h, `kiln fit`): its numbers against what a run really takes (peak
// RSS of `kiln run`), refusal before allocation under an address-space limit, serve's automatic
// context, and the plan's KV against the KV a Context allocates.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kiln/kiln.h"
#include "kiln/memory.h"
#include "support/reference.h"
#include "support/run.h"
#include "support/shared.h"
#include "support/vulkan.h"

namespace kiln::test {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using reference::models_dir;
using reference::test_name;

struct Measured {
    int code = -1;
    size_t peak_rss = 0;  // bytes
    std::string err;
};

// Runs `kiln ARGS` with stdout discarded, stderr captured, optionally under RLIMIT_AS = as_limit
// bytes; the child's own peak RSS from wait4.
Measured run_measured(const std::vector<std::string>& args, size_t as_limit = 0) {
    static int counter = 0;
    const fs::path err_path = temp_path("plan-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + ".err");
    const std::string bin = kiln_binary();
    std::vector<std::string> argv_s = {bin};
    argv_s.insert(argv_s.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (std::string& a : argv_s) argv.push_back(a.data());
    argv.push_back(nullptr);
    Measured m;
    const pid_t pid = ::fork();
    if (pid == 0) {
        FILE* e = std::freopen(err_path.c_str(), "w", stderr);
        FILE* o = std::freopen("/dev/null", "w", stdout);
        FILE* i = std::freopen("/dev/null", "r", stdin);
        (void)e, (void)o, (void)i;
        if (as_limit) {
            struct rlimit rl{as_limit, as_limit};
            ::setrlimit(RLIMIT_AS, &rl);
        }
        ::execv(bin.c_str(), argv.data());
        ::_exit(127);
    }
    int status = 0;
    struct rusage ru{};
    if (pid > 0 && ::wait4(pid, &status, 0, &ru) == pid) {
        m.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        m.peak_rss = static_cast<size_t>(ru.ru_maxrss) * 1024;
    }
    std::ifstream in(err_path);
    m.err.assign(std::istreambuf_iterator<char>(in), {});
    fs::remove(err_path);
    return m;
}

json fit_json(const std::vector<std::string>& args) {
    std::vector<std::string> a = {"fit"};
    a.insert(a.end(), args.begin(), args.end());
    a.push_back("--json");
    const RunResult r = run_kiln(a, "fit");
    EXPECT_TRUE(r.code == 0 || r.code == 2) << r.err;
    return json::parse(r.out);
}

std::vector<std::string> shared_model_files() {
    std::vector<std::string> out;
    if (!have_shared("models")) return {"(no ../shared/models)"};
    for (const auto& e : fs::directory_iterator(models_dir()))
        if (e.path().extension() == ".gguf") out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
}

// A prompt of about 100-150 tokens for every tokenizer of ../shared/models.
fs::path prompt_file() {
    const fs::path p = temp_path("plan-prompt.txt");
    std::ofstream o(p);
    for (int i = 0; i < 8; ++i) o << "the quick brown fox jumps over it ";
    return p;
}

class PlanRss : public ::testing::TestWithParam<std::string> {};

// For every model of ../shared/models at three contexts: the peak RSS of `kiln run` (a prompt of
// one full batch, a few tokens generated; the "peak memory" line it prints) is within 10 % of
// `kiln fit`'s total for the same flags (2 MiB at least: the models are tiny).
TEST_P(PlanRss, PeakRssOfRunIsWithinTenPercentOfFit) {
    KILN_REQUIRE_SHARED("models");
    const std::string model = (models_dir() / GetParam()).string();
    const std::string prompt = prompt_file().string();
    for (const char* ctx : {"512", "4096", "16384"}) {
        const json plan = fit_json({"-m", model, "-c", ctx, "-b", "64"});
        ASSERT_TRUE(plan["fits"].get<bool>()) << plan.dump();
        const Measured run = run_measured({"run", "-m", model, "-c", ctx, "-b", "64", "-f", prompt, "-n", "4"});
        ASSERT_EQ(run.code, 0) << run.err;
        // The run's own peak (VmHWM, which starts afresh at exec): wait4's ru_maxrss would count
        // this test process's memory, copied into the child by fork.
        std::smatch pm;
        ASSERT_TRUE(std::regex_search(run.err, pm, std::regex(R"(peak memory\s*=\s*([0-9.]+) MiB resident)"))) << run.err;
        const double peak = std::stod(pm[1]) * (1 << 20);
        EXPECT_LE(peak, static_cast<double>(run.peak_rss) + (1 << 20)) << "the run's VmHWM is above wait4's peak RSS";
        const double total = plan["total_bytes"].get<double>();
        // Within 10 %, or 2 MiB on these ~15 MB models: gemma3-tiny's run measures 1.3 MiB (8-9 %)
        // above its plan on a quiet machine and up to 11 % under ctest -j2 (per-thread malloc
        // arenas); what the plan misses there is not found yet.
        const double tolerance = std::max(0.10 * total, 2.0 * (1 << 20));
        EXPECT_NEAR(peak, total, tolerance) << GetParam() << " -c " << ctx << ": peak RSS " << peak << " B, fit total " << total
                                            << " B (" << peak / total << "x)";
        // The parts add up.
        size_t kinds = 0;
        for (const json& k : plan["kv"]) kinds += k["bytes"].get<size_t>();
        EXPECT_EQ(kinds, plan["kv_bytes"].get<size_t>());
        EXPECT_EQ(plan["total_bytes"].get<size_t>(), plan["weights_bytes"].get<size_t>() + plan["kv_bytes"].get<size_t>() +
                                                         plan["scratch_bytes"].get<size_t>() + plan["process_bytes"].get<size_t>() +
                                                         plan["cache_bytes"].get<size_t>());
    }
}

INSTANTIATE_TEST_SUITE_P(SharedModels, PlanRss, ::testing::ValuesIn(shared_model_files()),
                         [](const auto& info) { return test_name(info.param); });

// -c far beyond memory under `ulimit -v`: refused by the plan with its numbers before the KV cache is
// allocated (an attempted allocation would fail with the backend's "out of memory allocating"), and
// the context the refusal names as the largest that fits does run under the same limit.
TEST(MemoryPlan, OverLargeContextIsRefusedBeforeAnyLargeAllocation) {
    KILN_REQUIRE_SHARED("models");
    const std::string model = (models_dir() / "deepseek2-lite-tiny.f32.gguf").string();
    const size_t limit = size_t{512} << 20;
    const Measured big = run_measured({"run", "-m", model, "-c", "16777216", "-p", "hi", "-n", "2"}, limit);
    EXPECT_NE(big.code, 0);
    EXPECT_NE(big.err.find("does not fit in memory: -c 16777216 (f16) needs 65."), std::string::npos) << big.err;
    EXPECT_NE(big.err.find("address-space limit (ulimit -v)"), std::string::npos) << big.err;
    EXPECT_EQ(big.err.find("out of memory allocating"), std::string::npos) << big.err;
    EXPECT_LT(big.peak_rss, size_t{100} << 20) << "the refused run touched " << big.peak_rss << " bytes";
    std::smatch m;
    ASSERT_TRUE(std::regex_search(big.err, m, std::regex("the largest -c that fits is ([0-9]+)"))) << big.err;
    const int64_t largest = std::stoll(m[1]);
    EXPECT_GT(largest, 10000);
    EXPECT_LT(largest, 16777216);
    const Measured ok = run_measured({"run", "-m", model, "-c", std::to_string(largest), "-p", "hi", "-n", "2", "-q"}, limit);
    EXPECT_EQ(ok.code, 0) << ok.err;
    // The same plan from kiln fit (exit status 2: it does not fit) suggests the quantized KV types.
    const RunResult fit = run_kiln({"fit", "-m", model, "-c", "16777216"});
    EXPECT_TRUE(fit.code == 0 || fit.code == 2) << fit.err;
    EXPECT_NE(fit.out.find("largest context that fits: f16 "), std::string::npos) << fit.out;
}

// A quantized KV type that makes the asked context fit is named in the refusal.
TEST(MemoryPlan, RefusalNamesTheKvTypeThatWouldFit) {
    KILN_REQUIRE_SHARED("models");
    const std::string model = (models_dir() / "deepseek2-lite-tiny.f32.gguf").string();
    const size_t limit = size_t{512} << 20;
    const Measured probe = run_measured({"run", "-m", model, "-c", "16777216", "-p", "hi"}, limit);
    std::smatch m;
    ASSERT_TRUE(std::regex_search(probe.err, m, std::regex("the largest -c that fits is ([0-9]+)"))) << probe.err;
    // Just above the f16 limit: q8_0 rows (about half the bytes) fit.
    const std::string asked = std::to_string(std::stoll(m[1]) * 11 / 10);
    const Measured r = run_measured({"run", "-m", model, "-c", asked, "-p", "hi", "-n", "1"}, limit);
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.err.find("-ctk q8_0 -ctv q8_0 would make -c " + asked + " fit"), std::string::npos) << r.err;
    const Measured q8 = run_measured({"run", "-m", model, "-c", asked, "-ctk", "q8_0", "-ctv", "q8_0", "-p", "hi", "-n", "1", "-q"}, limit);
    EXPECT_EQ(q8.code, 0) << q8.err;
}

// The plan's KV is the KV a Context allocates, kind by kind (full, sliding ring, MLA latent).
TEST(MemoryPlan, KvOfThePlanIsWhatAContextAllocates) {
    KILN_REQUIRE_SHARED("models");
    for (const char* name : {"gemma3-tiny.q8_0.gguf", "glm4.7-flash-tiny.q8_0.gguf", "llama-tiny.q4_0.gguf", "gpt-oss-tiny.q8_0.gguf"}) {
        LoadOptions lo;
        lo.touch_weights = false;
        const Model model = Model::load((models_dir() / name).string(), lo);
        for (KvType t : {KvType::F16, KvType::Q8_0, KvType::Q4_0}) {
            MemoryPlanOptions po;
            po.n_ctx = 3000;
            po.kv_type_k = po.kv_type_v = t;
            po.n_batch = 100;
            const MemoryPlan plan = plan_memory(model, po);
            ContextOptions co;
            co.n_ctx = 3000;
            co.kv_type_k = co.kv_type_v = t;
            co.n_batch = 100;
            const Context ctx(model, co);
            EXPECT_EQ(plan.kv_bytes, ctx.kv_bytes()) << name << " " << kv_type_name(t);
            const KvStats st = ctx.kv_stats();
            size_t sliding = 0;
            for (const MemoryPlan::KvKind& k : plan.kv)
                if (k.kind == "sliding") {
                    sliding += k.bytes;
                    EXPECT_EQ(k.tokens, st.sliding_slots) << name;
                }
            EXPECT_EQ(sliding, st.sliding_bytes) << name;
            EXPECT_TRUE(plan.fits);
            // More contexts: n_parallel times the KV, and never a larger context that fits.
            po.n_parallel = 4;
            const MemoryPlan four = plan_memory(model, po);
            EXPECT_EQ(four.kv_bytes, 4 * plan.kv_bytes);
            EXPECT_LE(four.largest_ctx(), plan.largest_ctx());
        }
        // Largest contexts by type: q4_0 rows are smaller than q8_0 rows, smaller than f16 rows.
        const MemoryPlan p = plan_memory(model, {});
        ASSERT_EQ(p.max_ctx.size(), 3u);
        EXPECT_LE(p.max_ctx[0].n_ctx, p.max_ctx[1].n_ctx) << name;
        EXPECT_LE(p.max_ctx[1].n_ctx, p.max_ctx[2].n_ctx) << name;
    }
}

// A context beyond the trained one without RoPE scaling is warned about; --rope-scaling yarn
// silences it and changes the logits (the override reaches the graph).
TEST(MemoryPlan, ContextBeyondTrainingWarnsAndRopeFlagsOverrideTheFile) {
    KILN_REQUIRE_SHARED("models");
    const std::string model = (models_dir() / "llama-tiny.f32.gguf").string();  // trained 4096, no scaling
    RunResult r = run_kiln({"fit", "-m", model, "-c", "10000"});
    EXPECT_EQ(r.code, 0) << r.err;
    EXPECT_NE(r.out.find("beyond the 4096 tokens the model was trained with"), std::string::npos) << r.out;
    r = run_kiln({"fit", "-m", model, "-c", "10000", "--rope-scaling", "yarn", "--rope-scale", "4"});
    EXPECT_EQ(r.out.find("beyond the"), std::string::npos) << r.out;
    r = run_kiln({"fit", "-m", model, "--rope-scaling", "cubic"});
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.err.find("unknown RoPE scaling 'cubic' (none, linear or yarn)"), std::string::npos) << r.err;
    r = run_kiln({"fit", "-m", model, "--rope-scale", "2"});
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.err.find("--rope-scale needs a scaling type"), std::string::npos) << r.err;

    const std::vector<int32_t> tokens = {1, 300, 301, 302, 303, 304, 305, 306, 307, 308, 309, 310};
    auto logits = [&](const LoadOptions& lo) {
        const Model m = Model::load(model, lo);
        ContextOptions co;
        co.n_ctx = 64;
        Context ctx(m, co);
        ctx.decode(tokens);
        return std::vector<float>(ctx.logits().begin(), ctx.logits().end());
    };
    LoadOptions plain, linear1, linear4;
    linear1.rope_scaling = linear4.rope_scaling = "linear";
    linear1.rope_scale = 1.0f;
    linear4.rope_scale = 4.0f;
    const auto a = logits(plain), b = logits(linear1), c = logits(linear4);
    EXPECT_EQ(a, b) << "linear scaling by 1 is no scaling";
    EXPECT_NE(a, c) << "linear scaling by 4 must move the logits";
}

// --rope-scaling yarn on a model whose file has no scaling (Qwen2.5 to 128K, as its model card
// asks): the logits equal llama.cpp's on the same weights with the YaRN keys written into the file
// (tests/data/overrides: qwen2-tiny.f32 with factor 4 and an original context of 32, so the 64
// positions reach past it), within the f32 bounds of ../shared/models/README.md, one batch and
// token by token.
TEST(MemoryPlan, YarnOverrideMatchesLlamaCppWithTheKeysInTheFile) {
    KILN_REQUIRE_SHARED("models");
    const reference::Reference ref =
        reference::load(fs::path(__FILE__).parent_path() / "data" / "overrides" / "qwen2-tiny.f32.yarn4-orig32.json");
    LoadOptions lo;
    lo.rope_scaling = "yarn";
    lo.rope_scale = 4.0f;
    lo.yarn_orig_ctx = 32;
    const Model model = Model::load((models_dir() / "qwen2-tiny.f32.gguf").string(), lo);
    ContextOptions co;
    co.n_ctx = 128;
    Context ctx(model, co);
    for (const bool batch : {true, false}) {
        const auto ours = batch ? reference::run_batch(ctx, ref.tokens) : reference::run_token_by_token(ctx, ref.tokens);
        const reference::Measured m = reference::compare(ref, ours, 1e-2);
        EXPECT_LE(m.max_abs, 3e-3 * ref.max_abs_logit) << (batch ? "one batch" : "token by token");
        EXPECT_EQ(m.argmax_wrong, 0) << m.first_wrong;
        EXPECT_GT(m.argmax_checked, 32);
    }
    // Without the override the same weights give other logits (the scaling is really applied).
    const Model plain = Model::load((models_dir() / "qwen2-tiny.f32.gguf").string());
    Context pc(plain, co);
    const reference::Measured m = reference::compare(ref, reference::run_batch(pc, ref.tokens), 1e-2);
    EXPECT_GT(m.max_abs, 3e-2 * ref.max_abs_logit);
}

// kiln serve without -c takes the trained context when it fits, the largest that fits (said on
// stderr) when it does not, and refuses a -c that does not fit before listening.
TEST(MemoryPlan, ServeChoosesTheLargestContextThatFits) {
    KILN_REQUIRE_SHARED("models");
    const std::string model = (models_dir() / "deepseek2-lite-tiny.f32.gguf").string();  // trained 8192
    // Stops right after choosing: an unbindable host ends serve once the plan is made.
    Measured r = run_measured({"serve", "-m", model, "--host", "256.0.0.1", "--port", "0", "--cache-dir", "none"});
    EXPECT_NE(r.err.find("context 8192 tokens per slot (the model's trained context"), std::string::npos) << r.err;
    // Under an address-space limit that holds fewer tokens than trained, with 8 slots.
    r = run_measured({"serve", "-m", model, "-np", "8", "--host", "256.0.0.1", "--port", "0", "--cache-dir", "none"}, size_t{512} << 20);
    std::smatch m;
    ASSERT_TRUE(std::regex_search(r.err, m, std::regex("context ([0-9]+) tokens per slot \\(the largest that fits, trained 8192"))) << r.err;
    const int64_t n = std::stoll(m[1]);
    EXPECT_GT(n, 0);
    EXPECT_LT(n, 8192);
    EXPECT_EQ(n % 256, 0);
    r = run_measured({"serve", "-m", model, "-np", "8", "-c", "8192", "--host", "256.0.0.1", "--port", "0", "--cache-dir", "none"}, size_t{512} << 20);
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.err.find("does not fit in memory: -c 8192 x 8 slots"), std::string::npos) << r.err;
}

// On Vulkan (lavapipe in CI): the same KV as the CPU plan, weights as uploaded, the device heap as
// what is available, and no context whose layer's KV rows exceed the largest buffer the device binds.
TEST(MemoryPlan, VulkanPlanCountsTheDeviceAndItsBufferLimit) {
    KILN_REQUIRE_SHARED("models");
    KILN_REQUIRE_VULKAN();
    LoadOptions lo;
    lo.touch_weights = false;
    const Model model = Model::load((models_dir() / "glm4.7-flash-dims.q8_0.gguf").string(), lo);  // K rows of 576
    MemoryPlanOptions po;
    po.n_ctx = 4096;
    const MemoryPlan cpu = plan_memory(model, po);
    po.backend = "vulkan";
    const MemoryPlan vk = plan_memory(model, po);
    EXPECT_EQ(vk.backend, "vulkan");
    EXPECT_EQ(vk.kv_bytes, cpu.kv_bytes);
    EXPECT_EQ(vk.process_bytes, 0u);
    EXPECT_GT(vk.max_buffer_bytes, 0u);
    EXPECT_TRUE(vk.fits) << vk.refusal();
    // 576 f16 values a row: the largest context puts at most max_buffer_bytes in a layer.
    const int64_t largest = vk.max_ctx[0].n_ctx;
    EXPECT_LE(static_cast<uint64_t>(largest) * 576 * 2, vk.max_buffer_bytes);
    po.n_ctx = 1 + static_cast<int64_t>(vk.max_buffer_bytes / (576 * 2));
    const MemoryPlan over = plan_memory(model, po);
    if (over.total_bytes <= over.available_bytes) {
        EXPECT_FALSE(over.fits);
        EXPECT_NE(over.refusal().find("does not fit the device's buffers"), std::string::npos) << over.refusal();
        EXPECT_NE(over.refusal().find("-ctk q8_0 -ctv q8_0 would make"), std::string::npos) << over.refusal();
    }
}

}  // namespace
}  // namespace kiln::test
