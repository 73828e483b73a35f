// kiln::PrefixCache: a prefix restored from memory or from disk gives the same logits, bit for bit
// on the CPU, as the context that computed it (the same tokens decoded in the same chunks), for
// every architecture of the shared models (gemma3's and gpt-oss's sliding-window rings, MLA);
// files that are corrupt, truncated or another model's are ignored and the tokens recomputed.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "kiln/kiln.h"
#include "support/shared.h"
#include "support/vulkan.h"

namespace fs = std::filesystem;

namespace {

fs::path model_path(const std::string& name) { return kiln::test::shared_dir() / "models" / (name + ".gguf"); }

std::vector<int32_t> prompt(const kiln::Model& m, size_t n) {
    std::vector<int32_t> t;
    const auto v = static_cast<int32_t>(m.info().n_vocab);
    for (size_t i = 0; i < n; ++i) t.push_back(1 + static_cast<int32_t>((i * 37 + i * i * 11) % static_cast<size_t>(v - 2)));
    return t;
}

kiln::ContextOptions ctx_options(kiln::KvType kv, const std::string& backend = "cpu") {
    kiln::ContextOptions o;
    o.n_ctx = 128;
    o.n_threads = 2;
    o.n_batch = 8;  // gemma3's window of 16: rings of 23 slots; gpt-oss's window of 8: rings of 15
    o.kv_type_k = o.kv_type_v = kv;
    o.backend = backend;
    return o;
}

std::vector<float> all_logits(const kiln::Context& ctx) {
    std::vector<float> out;
    for (int64_t i = 0; i < ctx.n_logits(); ++i) out.insert(out.end(), ctx.logits(i).begin(), ctx.logits(i).end());
    return out;
}

// Decodes tokens[0, split) into ctx, then the rest with every row's logits.
std::vector<float> decode_split(kiln::Context& ctx, const std::vector<int32_t>& tokens, size_t split) {
    ctx.decode(std::span<const int32_t>(tokens.data(), split));
    ctx.decode(std::span<const int32_t>(tokens.data() + split, tokens.size() - split), true);
    return all_logits(ctx);
}

void expect_bitwise(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
    ASSERT_EQ(got.size(), want.size()) << what;
    size_t diff = 0, first = 0;
    for (size_t i = 0; i < got.size(); ++i)
        if (std::memcmp(&got[i], &want[i], 4) != 0 && diff++ == 0) first = i;
    EXPECT_EQ(diff, 0u) << what << ": " << diff << " logits differ, first at " << first << " (" << got[first] << " vs "
                        << want[first] << ")";
}

fs::path fresh_dir(const std::string& name) {
    const fs::path d = kiln::test::temp_path("prefix-cache-" + name + "-" + std::to_string(::getpid()));
    fs::remove_all(d);
    return d;
}

std::vector<fs::path> block_files(const fs::path& dir) {
    std::vector<fs::path> out;
    for (const auto& e : fs::recursive_directory_iterator(dir))
        if (e.is_regular_file() && e.path().extension() == ".kvb") out.push_back(e.path());
    std::sort(out.begin(), out.end());
    return out;
}

struct Case {
    std::string model;
    kiln::KvType kv;
    int64_t block;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.model << " KV " << kiln::kv_type_name(c.kv) << " blocks of " << c.block; }

class PrefixCacheModels : public ::testing::TestWithParam<Case> {};

// 64 tokens: the context that computes them saves its blocks after 48 (its rings still hold the
// last window); a fresh context restores 48 from memory, another (a new cache on the same
// directory: a restart) from disk; the last 16 tokens' logits equal the computing context's.
TEST_P(PrefixCacheModels, RestoreIsBitExact) {
    KILN_REQUIRE_SHARED("models");
    const Case c = GetParam();
    const kiln::Model model = kiln::Model::load(model_path(c.model).string());
    const std::vector<int32_t> tokens = prompt(model, 64);
    const size_t split = 48;

    kiln::PrefixCacheOptions po;
    po.block_tokens = c.block;
    po.dir = fresh_dir(c.model + "-" + std::to_string(c.block)).string();
    std::vector<std::string> logged;
    po.log = [&](const std::string& m) { logged.push_back(m); };

    kiln::Context cold(model, ctx_options(c.kv));
    cold.decode(std::span<const int32_t>(tokens.data(), split));
    std::vector<float> want;
    {
        kiln::PrefixCache cache(model, po);
        EXPECT_EQ(cache.save(cold, tokens), static_cast<size_t>(split / c.block));
        EXPECT_EQ(cache.save(cold, tokens), 0u);  // nothing new
        cold.decode(std::span<const int32_t>(tokens.data() + split, tokens.size() - split), true);
        want = all_logits(cold);

        kiln::Context warm(model, ctx_options(c.kv));
        ASSERT_EQ(cache.restore(warm, tokens, static_cast<int64_t>(tokens.size()) - 1), static_cast<int64_t>(split));
        EXPECT_EQ(warm.n_past(), static_cast<int64_t>(split));
        EXPECT_EQ(warm.n_logits(), 0);
        warm.decode(std::span<const int32_t>(tokens.data() + split, tokens.size() - split), true);
        expect_bitwise(all_logits(warm), want, c.model + " from memory");
        const kiln::PrefixCacheStats s = cache.stats();
        EXPECT_EQ(s.mem_hit_tokens, split);
        EXPECT_EQ(s.disk_hits, 0u);
        EXPECT_EQ(cache.flush(), static_cast<size_t>(split / c.block));
        EXPECT_EQ(cache.flush(), 0u);
    }
    EXPECT_EQ(block_files(po.dir).size(), static_cast<size_t>(split / c.block));
    {
        kiln::PrefixCache cache(model, po);  // a restart: nothing in memory
        kiln::Context warm(model, ctx_options(c.kv));
        ASSERT_EQ(cache.restore(warm, tokens, static_cast<int64_t>(tokens.size()) - 1), static_cast<int64_t>(split));
        warm.decode(std::span<const int32_t>(tokens.data() + split, tokens.size() - split), true);
        expect_bitwise(all_logits(warm), want, c.model + " from disk");
        const kiln::PrefixCacheStats s = cache.stats();
        EXPECT_EQ(s.disk_hit_tokens, split);
        EXPECT_EQ(s.disk_rejected, 0u);
        EXPECT_GT(s.disk_read_bytes, 0u);
    }
    EXPECT_TRUE(logged.empty()) << logged.front();
    fs::remove_all(po.dir);
}

std::string case_name(const ::testing::TestParamInfo<Case>& i) {
    std::string s = i.param.model + "_" + kiln::kv_type_name(i.param.kv) + "_b" + std::to_string(i.param.block);
    for (char& ch : s)
        if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
    return s;
}

INSTANTIATE_TEST_SUITE_P(
    Shared, PrefixCacheModels,
    ::testing::Values(Case{"llama-tiny.f32", kiln::KvType::F16, 16}, Case{"llama-tiny.q4_k_m", kiln::KvType::Q4_0, 16},
                      Case{"qwen2-tiny.f32", kiln::KvType::F16, 16}, Case{"qwen2-tiny.q8_0", kiln::KvType::Q8_0, 8},
                      // window 16: blocks of 16 hold a whole window, blocks of 8 half of one
                      Case{"gemma3-tiny.f32", kiln::KvType::F16, 16}, Case{"gemma3-tiny.f32", kiln::KvType::F16, 8},
                      Case{"gemma3-tiny.q8_0", kiln::KvType::Q8_0, 16}, Case{"gpt-oss-tiny.f32", kiln::KvType::F16, 16},
                      Case{"gpt-oss-tiny.mxfp4_moe", kiln::KvType::F32, 4}, Case{"deepseek2-lite-tiny.f32", kiln::KvType::F16, 16},
                      Case{"glm4.7-flash-tiny.f32", kiln::KvType::F16, 16}, Case{"glm4.7-flash-dims.q8_0", kiln::KvType::Q8_0, 16}),
    case_name);

// A ring that has moved past a block's window cannot continue from it: only a block whose last
// window is still in the ring is kept with it, and restore picks the longest prefix it can continue.
TEST(PrefixCache, SlidingWindowNeedsTheWindowRows) {
    KILN_REQUIRE_SHARED("models");
    const kiln::Model model = kiln::Model::load(model_path("gemma3-tiny.f32").string());
    const std::vector<int32_t> tokens = prompt(model, 64);
    kiln::PrefixCacheOptions po;
    po.block_tokens = 16;
    kiln::PrefixCache cache(model, po);
    kiln::Context full(model, ctx_options(kiln::KvType::F16));
    full.decode(tokens);  // the rings (23 slots) hold positions 41..63
    EXPECT_EQ(cache.save(full, tokens), 4u);
    kiln::Context a(model, ctx_options(kiln::KvType::F16));
    // Ends at 48 and 32 lack their windows: nothing shorter than 64 can be continued.
    EXPECT_EQ(cache.restore(a, tokens, 63), 0);
    EXPECT_EQ(a.n_past(), 0);
    EXPECT_EQ(cache.restore(a, tokens, 64), 64);
    // Saving again from a context that holds block 48's window upgrades it.
    kiln::Context b(model, ctx_options(kiln::KvType::F16));
    b.decode(std::span<const int32_t>(tokens.data(), 48));
    EXPECT_EQ(cache.save(b, tokens), 1u);
    kiln::Context d(model, ctx_options(kiln::KvType::F16));
    EXPECT_EQ(cache.restore(d, tokens, 63), 48);
    // After a restore the ring holds only the window: truncating further back keeps nothing.
    EXPECT_EQ(d.truncate(40), 0);
}

// Contexts that already hold part of the prompt get only the blocks beyond it; the logits match
// the computing context bit for bit.
TEST(PrefixCache, ExtendsWhatTheContextHolds) {
    KILN_REQUIRE_SHARED("models");
    const kiln::Model model = kiln::Model::load(model_path("llama-tiny.f32").string());
    const std::vector<int32_t> tokens = prompt(model, 64);
    kiln::PrefixCacheOptions po;
    po.block_tokens = 16;
    kiln::PrefixCache cache(model, po);
    kiln::Context cold(model, ctx_options(kiln::KvType::F16));
    const std::vector<float> want = decode_split(cold, tokens, 48);
    cache.save(cold, tokens);
    kiln::Context warm(model, ctx_options(kiln::KvType::F16));
    warm.decode(std::span<const int32_t>(tokens.data(), 20));
    EXPECT_EQ(cache.restore(warm, tokens, 48), 48);
    EXPECT_EQ(cache.stats().mem_hit_tokens, 48u - 16u);  // blocks 1 and 2 (block 0 was held)
    warm.decode(std::span<const int32_t>(tokens.data() + 48, 16), true);
    expect_bitwise(all_logits(warm), want, "extended");
    // Another model's context is refused.
    const kiln::Model other = kiln::Model::load(model_path("qwen2-tiny.f32").string());
    kiln::Context o(other, ctx_options(kiln::KvType::F16));
    EXPECT_THROW(cache.restore(o, tokens, 48), kiln::Error);
    EXPECT_THROW(cache.save(o, tokens), kiln::Error);
    // A context holding more than the tokens given is the caller's error.
    EXPECT_THROW(cache.restore(warm, std::span<const int32_t>(tokens.data(), 10), 10), kiln::Error);
    kiln::PrefixCacheOptions zero;
    zero.block_tokens = 0;
    EXPECT_THROW(kiln::PrefixCache(model, zero), kiln::Error);
}

// Every way a file can be unusable: each is reported once, its block recomputed, never used.
TEST(PrefixCache, BadFilesAreIgnored) {
    KILN_REQUIRE_SHARED("models");
    const kiln::Model model = kiln::Model::load(model_path("qwen2-tiny.f32").string());
    const std::vector<int32_t> tokens = prompt(model, 64);
    kiln::PrefixCacheOptions po;
    po.block_tokens = 16;
    po.mem_bytes = 0;  // every block straight to disk
    po.dir = fresh_dir("bad").string();
    std::vector<std::string> logged;
    po.log = [&](const std::string& m) { logged.push_back(m); };
    kiln::Context cold(model, ctx_options(kiln::KvType::F16));
    const std::vector<float> want = decode_split(cold, tokens, 48);
    {
        kiln::PrefixCache cache(model, po);
        cache.save(cold, tokens);
        EXPECT_EQ(cache.stats().mem_blocks, 0u);
        EXPECT_EQ(cache.stats().disk_writes, 4u);
    }
    // Which file is which block: restore with a growing limit.
    auto restored = [&](int64_t limit) {
        kiln::PrefixCache cache(model, po);
        kiln::Context ctx(model, ctx_options(kiln::KvType::F16));
        return cache.restore(ctx, tokens, limit);
    };
    ASSERT_EQ(restored(64), 64);
    std::vector<fs::path> files = block_files(po.dir);
    ASSERT_EQ(files.size(), 4u);
    auto newest_after = [&](auto&& touch) {  // reading a file marks it: the file of block 0 is the one read last by restored(16)
        touch();
        fs::path best;
        for (const auto& f : block_files(po.dir))
            if (best.empty() || fs::last_write_time(f) > fs::last_write_time(best)) best = f;
        return best;
    };
    const fs::path block0 = newest_after([&] { ASSERT_EQ(restored(16), 16); });

    auto bytes_of = [](const fs::path& p) {
        std::ifstream in(p, std::ios::binary);
        return std::vector<char>(std::istreambuf_iterator<char>(in), {});
    };
    auto write = [](const fs::path& p, const std::vector<char>& b) {
        std::ofstream out(p, std::ios::binary | std::ios::trunc);
        out.write(b.data(), static_cast<std::streamsize>(b.size()));
    };
    const std::vector<char> good = bytes_of(block0);

    // Corrupt: one byte of the rows flipped.
    std::vector<char> bad = good;
    bad[bad.size() / 2] ^= 0x10;
    write(block0, bad);
    logged.clear();
    EXPECT_EQ(restored(64), 0);
    ASSERT_EQ(logged.size(), 1u);
    EXPECT_NE(logged[0].find("checksum"), std::string::npos) << logged[0];
    // Truncated.
    write(block0, std::vector<char>(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(good.size() / 3)));
    logged.clear();
    EXPECT_EQ(restored(64), 0);
    ASSERT_EQ(logged.size(), 1u);
    EXPECT_NE(logged[0].find("bytes"), std::string::npos) << logged[0];
    // Empty, and not a block file at all.
    write(block0, {});
    EXPECT_EQ(restored(64), 0);
    write(block0, std::vector<char>(200, 'x'));
    EXPECT_EQ(restored(64), 0);
    // Foreign: another model's block under this name.
    {
        const kiln::Model llama = kiln::Model::load(model_path("llama-tiny.f32").string());
        kiln::PrefixCacheOptions lo = po;
        lo.dir = fresh_dir("bad-foreign").string();
        kiln::PrefixCache lc(llama, lo);
        kiln::Context lctx(llama, ctx_options(kiln::KvType::F16));
        const std::vector<int32_t> lt = prompt(llama, 16);
        lctx.decode(lt);
        lc.save(lctx, lt);
        const std::vector<fs::path> lf = block_files(lo.dir);
        ASSERT_EQ(lf.size(), 1u);
        write(block0, bytes_of(lf[0]));
        fs::remove_all(lo.dir);
    }
    logged.clear();
    EXPECT_EQ(restored(64), 0);
    ASSERT_EQ(logged.size(), 1u);
    EXPECT_NE(logged[0].find("another model"), std::string::npos) << logged[0];
    // The same file again in one cache is reported once.
    {
        kiln::PrefixCache cache(model, po);
        logged.clear();
        for (int i = 0; i < 3; ++i) {
            kiln::Context ctx(model, ctx_options(kiln::KvType::F16));
            EXPECT_EQ(cache.restore(ctx, tokens, 64), 0);
        }
        EXPECT_EQ(logged.size(), 1u);
        EXPECT_EQ(cache.stats().disk_rejected, 3u);
        // Computing and saving the block again replaces the bad file; the logits are the cold ones.
        kiln::Context ctx(model, ctx_options(kiln::KvType::F16));
        const std::vector<float> again = decode_split(ctx, tokens, 48);
        expect_bitwise(again, want, "recomputed");
        cache.save(ctx, tokens);
    }
    EXPECT_EQ(restored(64), 64);
    // An unusable directory: memory only, reported.
    {
        kiln::PrefixCacheOptions no = po;
        no.dir = (block0 / "sub").string();  // under a file
        logged.clear();
        kiln::PrefixCache cache(model, no);
        EXPECT_FALSE(cache.disk_enabled());
        EXPECT_EQ(logged.size(), 1u);
    }
    fs::remove_all(po.dir);
}

// The directory stays within disk_bytes (oldest files deleted); memory within mem_bytes (least
// recently used evicted, to disk).
TEST(PrefixCache, Budgets) {
    KILN_REQUIRE_SHARED("models");
    const kiln::Model model = kiln::Model::load(model_path("llama-tiny.f32").string());
    const std::vector<int32_t> tokens = prompt(model, 64);
    kiln::Context ctx(model, ctx_options(kiln::KvType::F16));
    ctx.decode(tokens);
    kiln::PrefixCacheOptions po;
    po.block_tokens = 16;
    po.dir = fresh_dir("budget").string();
    uint64_t block_bytes = 0;
    {
        kiln::PrefixCache cache(model, po);
        cache.save(ctx, tokens);
        block_bytes = cache.stats().mem_bytes / 4;
        EXPECT_EQ(cache.flush(), 4u);
        EXPECT_EQ(cache.stats().disk_blocks, 4u);
    }
    fs::remove_all(po.dir);
    po.mem_bytes = block_bytes * 2;  // two blocks in memory
    po.disk_bytes = block_bytes * 3;  // about two files (a file is a little larger than its rows)
    kiln::PrefixCache cache(model, po);
    cache.save(ctx, tokens);
    kiln::PrefixCacheStats s = cache.stats();
    EXPECT_EQ(s.mem_blocks, 2u);
    EXPECT_EQ(s.evictions, 2u);
    EXPECT_EQ(s.disk_writes, 2u);
    cache.flush();
    s = cache.stats();
    EXPECT_LE(s.disk_bytes, po.disk_bytes);
    EXPECT_EQ(block_files(po.dir).size(), s.disk_blocks);
    EXPECT_LT(s.disk_blocks, 4u);
    fs::remove_all(po.dir);
}

// Two caches (two servers) writing the same blocks into one directory at once: every file stays
// whole, and a third reads them all.
TEST(PrefixCache, TwoWritersOneDirectory) {
    KILN_REQUIRE_SHARED("models");
    const kiln::Model model = kiln::Model::load(model_path("llama-tiny.f32").string());
    const std::vector<int32_t> tokens = prompt(model, 64);
    kiln::PrefixCacheOptions po;
    po.block_tokens = 4;
    po.mem_bytes = 0;
    po.dir = fresh_dir("two").string();
    std::vector<std::string> logged;
    po.log = [&](const std::string& m) { logged.push_back(m); };
    kiln::Context cold(model, ctx_options(kiln::KvType::F16));
    const std::vector<float> want = decode_split(cold, tokens, 48);
    auto writer = [&] {
        kiln::PrefixCache cache(model, po);
        for (int i = 0; i < 5; ++i) cache.save(cold, tokens);
    };
    std::thread t1(writer), t2(writer);
    t1.join();
    t2.join();
    EXPECT_EQ(block_files(po.dir).size(), 16u);
    for (const auto& e : fs::directory_iterator(*fs::directory_iterator(po.dir)))
        EXPECT_EQ(e.path().extension(), ".kvb") << "left behind: " << e.path();
    kiln::PrefixCache reader(model, po);
    kiln::Context warm(model, ctx_options(kiln::KvType::F16));
    ASSERT_EQ(reader.restore(warm, tokens, 48), 48);
    warm.decode(std::span<const int32_t>(tokens.data() + 48, 16), true);
    expect_bitwise(all_logits(warm), want, "two writers");
    EXPECT_TRUE(logged.empty());
    fs::remove_all(po.dir);
}

// Vulkan: rows read from and written to device memory. A prefix restored on the device gives the
// device's own logits bit for bit; one computed on the CPU and restored on the device agrees within
// the bounds the Vulkan model tests use.
TEST(PrefixCache, Vulkan) {
    KILN_REQUIRE_SHARED("models");
    KILN_REQUIRE_VULKAN();
    for (const std::string name : {"gemma3-tiny.f32", "glm4.7-flash-tiny.f32", "llama-tiny.f32"}) {
        SCOPED_TRACE(name);
        const kiln::Model model = kiln::Model::load(model_path(name).string());
        const std::vector<int32_t> tokens = prompt(model, 64);
        for (kiln::KvType kv : {kiln::KvType::F16, kiln::KvType::Q8_0}) {
            kiln::PrefixCacheOptions po;
            po.block_tokens = 16;
            kiln::PrefixCache cache(model, po);
            kiln::Context cold(model, ctx_options(kv, "vulkan"));
            cold.decode(std::span<const int32_t>(tokens.data(), 48));
            EXPECT_EQ(cache.save(cold, tokens), 3u);
            cold.decode(std::span<const int32_t>(tokens.data() + 48, 16), true);
            const std::vector<float> want = all_logits(cold);
            kiln::Context warm(model, ctx_options(kv, "vulkan"));
            ASSERT_EQ(cache.restore(warm, tokens, 63), 48);
            warm.decode(std::span<const int32_t>(tokens.data() + 48, 16), true);
            expect_bitwise(all_logits(warm), want, name + " vulkan");

            // Blocks of the CPU restored on the device (the rows are the same bytes).
            kiln::PrefixCache cpu_cache(model, po);
            kiln::Context cpu(model, ctx_options(kv));
            cpu.decode(std::span<const int32_t>(tokens.data(), 48));
            cpu_cache.save(cpu, tokens);
            kiln::Context mixed(model, ctx_options(kv, "vulkan"));
            ASSERT_EQ(cpu_cache.restore(mixed, tokens, 63), 48);
            mixed.decode(std::span<const int32_t>(tokens.data() + 48, 16), true);
            const std::vector<float> got = all_logits(mixed);
            float max_abs = 0, max_d = 0;
            for (size_t i = 0; i < got.size(); ++i) {
                max_abs = std::max(max_abs, std::abs(want[i]));
                max_d = std::max(max_d, std::abs(got[i] - want[i]));
            }
            EXPECT_LE(max_d, 3e-3f * max_abs + 1e-4f) << "CPU rows restored on Vulkan";
        }
    }
}

}  // namespace
