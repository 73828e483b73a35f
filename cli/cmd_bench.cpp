// kiln bench: prompt processing (ppN) and generation (tgN) speed of a model, llama-bench style,
// with the decode speed set against the memory read bandwidth measured in the same run (a dense
// model's decode reads every weight once per token, so weight bytes x tokens/s can at best reach it).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/args.h"
#include "cli/command.h"
#include "cli/model_load.h"
#include "cli/progress.h"
#include "kiln/kiln.h"

namespace kiln::cli {
namespace {

using Clock = std::chrono::steady_clock;
double sec_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Bytes per second all threads together read from a buffer far larger than the caches (best of 3).
double read_bandwidth_gbs(int n_threads) {
    const size_t n = size_t{256} << 20 >> 3;  // 256 MiB of uint64
    std::vector<uint64_t> buf(n);
    for (size_t i = 0; i < n; ++i) buf[i] = i * 0x9E3779B97F4A7C15ull;
    n_threads = std::max(1, n_threads);
    std::vector<uint64_t> sums(static_cast<size_t>(n_threads));
    double best = 0;
    for (int rep = 0; rep < 3; ++rep) {
        const auto t0 = Clock::now();
        std::vector<std::thread> th;
        for (int t = 0; t < n_threads; ++t)
            th.emplace_back([&, t] {
                const size_t b = n * static_cast<size_t>(t) / static_cast<size_t>(n_threads);
                const size_t e = n * static_cast<size_t>(t + 1) / static_cast<size_t>(n_threads);
                uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
                size_t i = b;
                for (; i + 4 <= e; i += 4) {
                    s0 += buf[i];
                    s1 += buf[i + 1];
                    s2 += buf[i + 2];
                    s3 += buf[i + 3];
                }
                for (; i < e; ++i) s0 += buf[i];
                sums[static_cast<size_t>(t)] = s0 + s1 + s2 + s3;
            });
        for (auto& t : th) t.join();
        best = std::max(best, static_cast<double>(n * 8) / sec_since(t0) / 1e9);
    }
    uint64_t total = 0;
    for (uint64_t s : sums) total += s;
    if (total == 42) std::fputc(' ', stderr);  // keeps the sums alive
    return best;
}

struct Stat {
    double mean = 0, sd = 0;
};
Stat stat(const std::vector<double>& v) {
    Stat s;
    if (v.empty()) return s;
    for (double x : v) s.mean += x;
    s.mean /= static_cast<double>(v.size());
    if (v.size() > 1) {
        for (double x : v) s.sd += (x - s.mean) * (x - s.mean);
        s.sd = std::sqrt(s.sd / static_cast<double>(v.size() - 1));
    }
    return s;
}

int run_bench(const std::vector<std::string>& argv) {
    std::string model_path;
    int64_t n_prompt = 512, n_gen = 128, n_batch = 512, depth = 0;
    int threads = 0, reps = 3;
    bool json_out = false, quiet = false;
    ContextOptions co;
    co.kv_up_front = true;  // one sequence: its whole KV cache held from the start, as `kiln fit` counts it
    Args args("bench", "-m MODEL [-p 512] [-n 128] [-d DEPTH] [-b 512] [-r 3] [-t THREADS] [--backend cpu|vulkan|auto] [--json]");
    args.option({"-m", "--model"}, &model_path, "MODEL", "GGUF model file");
    args.option({"-p", "--n-prompt"}, &n_prompt, "N", "prompt tokens of the ppN test (default 512, 0 = skip)");
    args.option({"-n", "--n-gen"}, &n_gen, "N", "tokens of the tgN test, one forward pass each (default 128, 0 = skip)");
    args.option({"-d", "--depth"}, &depth, "N", "tokens already in the context before each test (default 0)");
    args.option({"-b", "--batch-size"}, &n_batch, "N", "prompt tokens per forward pass (default 512)");
    args.option({"-r", "--repetitions"}, &reps, "N", "repetitions of each test (default 3)");
    args.option({"-t", "--threads"}, &threads, "N", "CPU threads (default: all cores)");
    args.backend_options(&co);
    LoadOptions lo;
    args.rope_options(&lo);
    args.flag({"--json"}, &json_out, "print one JSON object instead of the table");
    args.flag({"-q", "--quiet"}, &quiet, "no progress bars");
    if (!args.parse(argv)) return 0;
    if (model_path.empty()) throw Error("kiln bench: no model given (-m MODEL.gguf)");
    if (n_prompt < 0 || n_gen < 0 || depth < 0) throw Error("kiln bench: -p, -n and -d must not be negative");
    if (n_prompt == 0 && n_gen == 0) throw Error("kiln bench: nothing to measure (-p and -n are both 0)");
    if (reps < 1) throw Error(fmt::format("kiln bench: -r {}: at least one repetition is needed", reps));
    if (n_batch < 1) throw Error(fmt::format("kiln bench: -b {}: the batch needs at least one token", n_batch));

    lo.n_threads = threads;
    Progress load_bar("loading", !quiet && !json_out);
    lo.progress = [&](float f) {
        load_bar.update(f);
        return true;
    };
    co.n_ctx = std::max(depth + n_prompt, depth + n_gen + 1);
    co.n_batch = n_batch;
    co.n_threads = threads;
    const Model model = load_checked("bench", model_path, lo, co);
    load_bar.done();
    const ModelInfo& info = model.info();
    Context ctx(model, co);
    if (ctx.n_ctx() < co.n_ctx)
        throw Error(fmt::format("kiln bench: the tests need {} positions, the context has {}", co.n_ctx, ctx.n_ctx()));

    auto token = [&](int64_t i) { return static_cast<int32_t>((i * 7919 + 17) % info.n_vocab); };
    std::vector<int32_t> depth_tokens(static_cast<size_t>(depth)), prompt(static_cast<size_t>(n_prompt));
    for (int64_t i = 0; i < depth; ++i) depth_tokens[static_cast<size_t>(i)] = token(i);
    for (int64_t i = 0; i < n_prompt; ++i) prompt[static_cast<size_t>(i)] = token(depth + i);
    // The depth is decoded once: each test then goes back to it by truncating what the previous
    // one added (the same cache content), unless a sliding-window ring lost rows the depth needs;
    // only then is it decoded again.
    double depth_sec = 0;
    auto at_depth = [&] {
        if (ctx.n_past() >= depth && ctx.truncate(depth) == depth) return;
        ctx.clear();
        if (depth == 0) return;
        const auto t0 = Clock::now();
        ctx.decode(depth_tokens);
        depth_sec = sec_since(t0);
    };

    // A warm-up pass of each shape first, so no test pays for compiling a graph.
    if (n_prompt > 0) {
        at_depth();
        ctx.decode(prompt);
    }
    if (n_gen > 0) {
        at_depth();
        const int32_t one = token(1);
        ctx.decode(std::span<const int32_t>(&one, 1));
    }

    struct Test {
        std::string name;
        int64_t n_tokens;
        std::vector<double> tps;
    };
    std::vector<Test> tests;
    const std::string at = depth > 0 ? fmt::format(" @ d{}", depth) : "";
    if (n_prompt > 0) tests.push_back({fmt::format("pp{}{}", n_prompt, at), n_prompt, {}});
    if (n_gen > 0) tests.push_back({fmt::format("tg{}{}", n_gen, at), n_gen, {}});
    Progress bar("benchmarking", !quiet && !json_out);
    const double total = static_cast<double>(tests.size() * static_cast<size_t>(reps));
    int done = 0;
    for (Test& t : tests) {
        const bool pp = t.name.rfind("pp", 0) == 0;
        for (int r = 0; r < reps; ++r) {
            at_depth();
            double sec = 0;
            if (pp) {
                const auto t0 = Clock::now();
                ctx.decode(prompt);
                sec = sec_since(t0);
            } else {
                int32_t tok = token(depth);
                const auto t0 = Clock::now();
                for (int64_t i = 0; i < n_gen; ++i) {
                    ctx.decode(std::span<const int32_t>(&tok, 1));
                    tok = token(depth + i + 1);
                }
                sec = sec_since(t0);
            }
            t.tps.push_back(static_cast<double>(t.n_tokens) / sec);
            bar.update(++done / total);
        }
    }
    bar.done();

    // Decode against the memory roofline: only meaningful where every weight is read per token
    // (mixture-of-experts models read just the chosen experts) and the weights live in host memory.
    const bool moe = info.arch == "deepseek2" || info.arch == "gpt-oss";
    const bool cpu = std::string(ctx.backend_name()) == "cpu";
    double bw = 0, tg_gbs = 0;
    for (const Test& t : tests)
        if (t.name.rfind("tg", 0) == 0) tg_gbs = static_cast<double>(info.weight_bytes) * stat(t.tps).mean / 1e9;
    if (cpu && tg_gbs > 0) bw = read_bandwidth_gbs(threads > 0 ? threads : static_cast<int>(std::thread::hardware_concurrency()));

    const std::string name = info.name.empty() ? model_path : info.name;
    if (json_out) {
        nlohmann::ordered_json j;
        j["model"] = name;
        j["arch"] = info.arch;
        j["weight_bytes"] = info.weight_bytes;
        j["n_params"] = info.n_params;
        j["backend"] = ctx.backend_name();
        j["threads"] = threads;
        j["type_k"] = kv_type_name(co.kv_type_k);
        j["type_v"] = kv_type_name(co.kv_type_v);
        j["depth"] = depth;
        if (depth_sec > 0) j["depth_tps"] = static_cast<double>(depth) / depth_sec;  // the (last) decode of the depth, one batch after another
        j["repetitions"] = reps;
        j["tests"] = nlohmann::ordered_json::array();
        for (const Test& t : tests) {
            const Stat s = stat(t.tps);
            j["tests"].push_back({{"test", t.name}, {"n_tokens", t.n_tokens}, {"tps", s.mean}, {"tps_sd", s.sd}, {"samples", t.tps}});
        }
        if (tg_gbs > 0) {
            j["decode_weight_gbs"] = tg_gbs;
            j["moe"] = moe;
            if (bw > 0) {
                j["read_bandwidth_gbs"] = bw;
                j["decode_of_bandwidth"] = tg_gbs / bw;
            }
        }
        fmt::print("{}\n", j.dump());
        return 0;
    }
    // As llama-bench: the KV cache types get columns when they are not the default.
    const bool kv_cols = co.kv_type_k != KvType::F16 || co.kv_type_v != KvType::F16;
    fmt::print("| model | size | params | backend | threads |{} test | t/s |\n|---|---:|---:|---|---:|{}---|---:|\n",
               kv_cols ? " type_k | type_v |" : "", kv_cols ? "---|---|" : "");
    for (const Test& t : tests) {
        const Stat s = stat(t.tps);
        fmt::print("| {} | {:.2f} MiB | {:.2f} M | {} | {} |{} {} | {:.2f} ± {:.2f} |\n", name,
                   static_cast<double>(info.weight_bytes) / (1024.0 * 1024.0), static_cast<double>(info.n_params) / 1e6,
                   ctx.backend_name(), threads > 0 ? threads : static_cast<int>(std::thread::hardware_concurrency()),
                   kv_cols ? fmt::format(" {} | {} |", kv_type_name(co.kv_type_k), kv_type_name(co.kv_type_v)) : "", t.name, s.mean, s.sd);
    }
    if (depth_sec > 0)
        fmt::print("\nthe depth: {} tokens decoded in {:.1f} s ({:.1f} t/s, batches of {})\n", depth, depth_sec,
                   static_cast<double>(depth) / depth_sec, n_batch);
    if (tg_gbs > 0) {
        if (moe)
            fmt::print("\ndecode reads the chosen experts only: {:.2f} GB/s would be every weight per token (an upper bound)\n", tg_gbs);
        else if (bw > 0)
            fmt::print("\ndecode: {:.2f} GB/s of weights = {:.2f} of the {:.2f} GB/s read bandwidth measured now{}\n", tg_gbs,
                       tg_gbs / bw, bw,
                       info.weight_bytes < (uint64_t{64} << 20) ? " (the weights fit in the caches: above 1 is possible)" : "");
        else
            fmt::print("\ndecode: {:.2f} GB/s of weights\n", tg_gbs);
    }
    return 0;
}

}  // namespace

KILN_COMMAND("bench", "prompt (ppN) and generation (tgN) speed, decode against the measured memory bandwidth", run_bench);

}  // namespace kiln::cli
