// One token's sampling at Qwen3's vocabulary (151936), per combination of parameters: the sampler
// selects (never sorts the vocabulary), so each case should stay well under 0.5 ms a token (issue 14).
// Logits like a language model's: a broad body around 0, a few dozen tokens well above it.
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "kiln/sampler.h"

namespace {

constexpr int32_t kVocab = 151936;

std::vector<float> model_like_logits(bool flat) {
    std::mt19937 rng(42);
    std::normal_distribution<float> body(0.0f, flat ? 1.0f : 2.5f);
    std::vector<float> l(kVocab);
    for (float& x : l) x = body(rng);
    if (!flat) {
        std::uniform_int_distribution<int32_t> pick(0, kVocab - 1);
        for (int i = 0; i < 40; ++i) l[static_cast<size_t>(pick(rng))] = 12.0f + static_cast<float>(i) * 0.2f;
    }
    return l;
}

void run(benchmark::State& state, kiln::SamplerParams p, bool flat = false) {
    const std::vector<float> logits = model_like_logits(flat);
    p.seed = 1;
    kiln::Sampler s(p, kVocab);
    for (int32_t t = 0; t < 64; ++t) s.accept(t * 997 % kVocab);  // a history for the penalties
    for (auto _ : state) benchmark::DoNotOptimize(s.sample(logits));
    state.SetItemsProcessed(state.iterations());
}

kiln::SamplerParams params(float temp, int top_k, float top_p, float min_p) {
    kiln::SamplerParams p;
    p.temperature = temp;
    p.top_k = top_k;
    p.top_p = top_p;
    p.min_p = min_p;
    return p;
}

kiln::SamplerParams with_penalties(kiln::SamplerParams p) {
    p.repeat_penalty = 1.1f;
    p.presence_penalty = 0.5f;
    p.frequency_penalty = 0.3f;
    return p;
}

// Each combination of parameters, on model-like logits (a few dozen tokens well above the rest) and
// on a flat distribution (the hardest for top-p and min-p: they keep most of the vocabulary).
// /v1/messages' defaults (Anthropic: temperature 1, no truncation): the whole vocabulary is drawn from.
void BM_SamplerTempOnly(benchmark::State& st) { run(st, params(1.0f, 0, 1.0f, 0.0f)); }
void BM_SamplerTempOnlyFlat(benchmark::State& st) { run(st, params(0.7f, 0, 1.0f, 0.0f), true); }
void BM_SamplerGreedy(benchmark::State& st) { run(st, params(0.0f, 0, 1.0f, 0.0f)); }
// kiln run / the OpenAI routes' defaults: top-k 40, top-p 0.95, min-p 0.05, temperature 0.8.
void BM_SamplerDefaults(benchmark::State& st) { run(st, params(0.8f, 40, 0.95f, 0.05f)); }
// Top-k up to Sampler::kSmallK gathers its survivors, above it cuts by bins: both sides of 1024.
void BM_SamplerTopK(benchmark::State& st) { run(st, params(0.8f, static_cast<int>(st.range(0)), 1.0f, 0.0f)); }
void BM_SamplerTopKFlat(benchmark::State& st) { run(st, params(0.8f, static_cast<int>(st.range(0)), 1.0f, 0.0f), true); }
void BM_SamplerTopP(benchmark::State& st) { run(st, params(1.0f, 0, 0.95f, 0.0f)); }
void BM_SamplerTopPFlat(benchmark::State& st) { run(st, params(1.0f, 0, 0.95f, 0.0f), true); }
void BM_SamplerTopPFlatTemp(benchmark::State& st) { run(st, params(0.7f, 0, 0.95f, 0.0f), true); }
void BM_SamplerMinP(benchmark::State& st) { run(st, params(1.0f, 0, 1.0f, 0.05f)); }
void BM_SamplerMinPFlat(benchmark::State& st) { run(st, params(1.0f, 0, 1.0f, 0.001f), true); }
void BM_SamplerTopKTopP(benchmark::State& st) { run(st, params(1.0f, 1000, 0.9f, 0.0f)); }
void BM_SamplerTopKTopPFlat(benchmark::State& st) { run(st, params(1.0f, 100000, 0.95f, 0.0f), true); }
void BM_SamplerPenaltiesOnly(benchmark::State& st) { run(st, with_penalties(params(1.0f, 0, 1.0f, 0.0f))); }
void BM_SamplerPenaltiesAll(benchmark::State& st) { run(st, with_penalties(params(0.7f, 50, 0.9f, 0.02f))); }
// Everything at once, with a large top-k, on the flat distribution.
void BM_SamplerAllCombinedFlat(benchmark::State& st) { run(st, with_penalties(params(0.7f, 100000, 0.95f, 0.001f)), true); }

}  // namespace

BENCHMARK(BM_SamplerTempOnly)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_SamplerTempOnlyFlat)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_SamplerGreedy)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_SamplerDefaults)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_SamplerTopK)->Arg(1)->Arg(40)->Arg(1024)->Arg(1025)->Arg(5000)->Arg(100000)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_SamplerTopKFlat)->Arg(1024)->Arg(1025)->Arg(100000)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_SamplerTopP)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_SamplerTopPFlat)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_SamplerTopPFlatTemp)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_SamplerMinP)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_SamplerMinPFlat)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_SamplerTopKTopP)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_SamplerTopKTopPFlat)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_SamplerPenaltiesOnly)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_SamplerPenaltiesAll)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_SamplerAllCombinedFlat)->Unit(benchmark::kMicrosecond);
