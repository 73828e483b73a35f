// kiln::ServingEngine (kiln/serving.h) driven directly, and JSON-schema output through
// kiln::Generator (GenerateOptions::json_schema): both run the one per-sequence step of
// engine/runtime/sequence.h. Two concurrent requests must share decode steps and each give the tokens
// a lone Generator gives (greedy); JSON output must parse and follow the schema.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "kiln/kiln.h"
#include "model/synthetic.h"
#include "support/shared.h"

namespace {

// The synthetic story model (greedy: "once upon a time there was a ..."), one file per process,
// kept while the process runs (a prefix cache reads the file's header for its identity).
struct StoryFile {
    std::string path = kiln::test::temp_path("serving-story-" + std::to_string(::getpid()) + ".gguf").string();
    kiln::Model model = [this] {
        kiln::SyntheticLlama s;
        s.story = true;
        s.type = kiln::TensorType::F32;
        kiln::write_synthetic_llama(path, s);
        return kiln::Model::load(path);
    }();
    ~StoryFile() { std::filesystem::remove(path); }
};

const kiln::Model& story() {
    static const StoryFile f;
    return f.model;
}

kiln::ContextOptions ctx_options() {
    kiln::ContextOptions co;
    co.n_ctx = 256;
    co.n_threads = 1;
    return co;
}

kiln::GenerateOptions greedy(int64_t max_tokens) {
    kiln::GenerateOptions o;
    o.sampler.temperature = 0;
    o.max_tokens = max_tokens;
    o.n_logprobs = 0;  // records each generated token
    return o;
}

std::vector<int32_t> tokens_of(const kiln::GenerateResult& r) {
    std::vector<int32_t> t;
    for (const kiln::TokenLogprobs& l : r.logprobs) t.push_back(l.token);
    return t;
}

}  // namespace

TEST(ServingEngine, TwoConcurrentRequestsBatchAndMatchALoneGenerator) {
    const kiln::Tokenizer& tok = story().tokenizer();
    const std::vector<int32_t> prompts[2] = {tok.encode("once upon a", true, true), tok.encode("the kiln was hot and", true, true)};
    constexpr int64_t kMax = 48;

    // References: each prompt alone through a Generator.
    kiln::GenerateResult alone[2];
    for (int i = 0; i < 2; ++i) {
        kiln::Context ctx(story(), ctx_options());
        kiln::Generator gen(ctx);
        alone[i] = gen.generate(prompts[i], greedy(kMax));
        ASSERT_EQ(alone[i].stop, kiln::StopReason::MaxTokens);
        ASSERT_EQ(alone[i].n_generated, kMax);
        ASSERT_EQ(tokens_of(alone[i]).size(), static_cast<size_t>(kMax));
    }
    ASSERT_NE(alone[0].text, alone[1].text);

    kiln::ServingOptions so;
    so.context = ctx_options();
    so.n_parallel = 2;
    so.cache.mem_bytes = 0;  // no prefix cache: every request decodes its prompt
    kiln::ServingEngine engine(story(), so);
    EXPECT_EQ(engine.n_parallel(), 2);
    EXPECT_EQ(engine.n_ctx(), 256);
    EXPECT_STREQ(engine.backend_name(), "cpu");

    // Each request holds its first piece of text until the other has one too: then both are in
    // their decode loops and hand in their tokens together (a loaded machine may still stall one
    // thread past the batch leader's wait, so a few tries). A step that carried both shows as more
    // tokens than steps.
    bool batched = false;
    for (int attempt = 0; attempt < 12 && !batched; ++attempt) {
        kiln::ServingMetrics& m = engine.metrics();
        const uint64_t steps0 = m.batch_steps.load(), toks0 = m.batch_tokens.load();
        kiln::GenerateResult got[2];
        std::atomic<int> generating{0};
        auto run = [&](int i) {
            std::string streamed;
            got[i] = engine.generate(prompts[i], greedy(kMax), [&](std::string_view p) {
                if (streamed.empty()) {
                    ++generating;
                    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
                    while (generating.load() < 2 && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
                }
                streamed += p;
                return true;
            });
            EXPECT_EQ(streamed, got[i].text);
        };
        std::thread a(run, 0), b(run, 1);
        a.join();
        b.join();
        for (int i = 0; i < 2; ++i) {
            EXPECT_EQ(got[i].stop, kiln::StopReason::MaxTokens);
            EXPECT_EQ(got[i].n_generated, kMax);
            EXPECT_EQ(tokens_of(got[i]), tokens_of(alone[i])) << "request " << i;
            EXPECT_EQ(got[i].text, alone[i].text) << "request " << i;
        }
        const uint64_t steps = m.batch_steps.load() - steps0, toks = m.batch_tokens.load() - toks0;
        EXPECT_EQ(toks, 2 * static_cast<uint64_t>(kMax - 1));  // every token but the last of each is decoded in a step
        batched = toks > steps;
    }
    EXPECT_TRUE(batched) << "no decode step carried both requests";
    EXPECT_EQ(engine.metrics().batch_max.load(), 2u);
    EXPECT_EQ(engine.metrics().active.load(), 0);

    // A prompt the slot holds already is reused (all but its last token).
    const kiln::GenerateResult again = engine.generate(prompts[0], greedy(4));
    EXPECT_EQ(again.n_reused, static_cast<int64_t>(prompts[0].size()) - 1);
    const std::vector<int32_t> first = tokens_of(alone[0]);
    EXPECT_EQ(tokens_of(again), std::vector<int32_t>(first.begin(), first.begin() + 4));
}

TEST(ServingEngine, StopCancelsAndRefusesNewWork) {
    kiln::ServingOptions so;
    so.context = ctx_options();
    so.max_queue = 0;
    kiln::ServingEngine engine(story(), so);
    const std::vector<int32_t> prompt = story().tokenizer().encode("once upon", true, true);
    EXPECT_THROW(engine.generate({}, greedy(1)), kiln::Error);
    EXPECT_THROW(engine.generate(std::vector<int32_t>(256, prompt[1]), greedy(1)), kiln::Error);
    {
        kiln::ServingEngine::Admission one(engine);
        EXPECT_EQ(engine.metrics().queued.load(), 1);
        EXPECT_THROW(kiln::ServingEngine::Admission two(engine), kiln::Error);  // 1 slot, no queue
    }
    EXPECT_EQ(engine.metrics().queued.load(), 0);
    // Stopped within a token of the callback that stops it; no callback after.
    int pieces = 0;
    const kiln::GenerateResult r = engine.generate(prompt, greedy(40), [&](std::string_view) {
        if (++pieces == 3) engine.stop();
        return true;
    });
    EXPECT_EQ(r.stop, kiln::StopReason::Cancelled);
    EXPECT_EQ(pieces, 3);
    EXPECT_TRUE(engine.stopping());
    EXPECT_THROW(kiln::ServingEngine::Admission after(engine), kiln::Error);
    EXPECT_EQ(engine.generate(prompt, greedy(4)).stop, kiln::StopReason::Cancelled);
}

TEST(Generator, JsonSchemaOutputParsesAndFollowsTheSchema) {
    const std::string schema = R"({"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer"},
        "ok": {"type": "boolean"},
        "color": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "minItems": 2, "maxItems": 2},
        "kind": {"const": "pot"}},
      "required": ["name", "age", "extra"]})";
    kiln::Context ctx(story(), ctx_options());
    kiln::Generator gen(ctx);
    kiln::GenerateOptions o = greedy(-1);
    o.json_schema = schema;
    o.stop = {"a"};  // stop strings do not apply to JSON output
    std::string streamed;
    const kiln::GenerateResult r = gen.generate(story().tokenizer().encode("once upon", true, true), o, [&](std::string_view p) {
        streamed += p;
        return true;
    });
    EXPECT_EQ(r.stop, kiln::StopReason::EndOfGeneration) << kiln::stop_reason_name(r.stop);
    EXPECT_EQ(r.text, streamed);
    const nlohmann::ordered_json j = nlohmann::ordered_json::parse(r.text, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << r.text;
    ASSERT_TRUE(j.is_object()) << r.text;
    std::vector<std::string> keys;
    for (const auto& [k, v] : j.items()) keys.push_back(k);
    EXPECT_EQ(keys, (std::vector<std::string>{"name", "age", "ok", "color", "tags", "kind", "extra"})) << r.text;
    ASSERT_TRUE(j["name"].is_string());
    EXPECT_LE(j["name"].get<std::string>().size(), 12u);
    EXPECT_FALSE(j["name"].get<std::string>().empty()) << r.text;  // the story model has words to say
    ASSERT_TRUE(j["age"].is_number_integer()) << r.text;
    EXPECT_GE(j["age"].get<int64_t>(), 1);
    EXPECT_LE(j["age"].get<int64_t>(), 9999);
    EXPECT_TRUE(j["ok"].is_boolean());
    EXPECT_TRUE(j["color"] == "red" || j["color"] == "green" || j["color"] == "blue") << r.text;
    ASSERT_TRUE(j["tags"].is_array());
    EXPECT_EQ(j["tags"].size(), 2u);
    for (const auto& t : j["tags"]) EXPECT_LE(t.get<std::string>().size(), 5u);
    EXPECT_EQ(j["kind"], "pot");
    EXPECT_TRUE(j["extra"].is_string());
    // Every token generated went into the context, none after.
    EXPECT_EQ(ctx.n_past(), r.n_prompt + r.n_generated);

    // The same through the serving engine (its slot runs the same step) and as a chat reply.
    kiln::ServingOptions so;
    so.context = ctx_options();
    kiln::ServingEngine engine(story(), so);
    EXPECT_EQ(engine.generate(story().tokenizer().encode("once upon", true, true), o).text, r.text);
    const kiln::ChatFormat format = kiln::ChatFormat::builtin(story(), "chatml");
    kiln::ChatPrompt p;
    p.text = "once upon";
    p.tokens = story().tokenizer().encode(p.text, true, true);
    std::string events;
    const kiln::GenerateResult c = gen.chat(format, p, o, [&](const kiln::ReplyEvent& e) {
        EXPECT_EQ(e.kind, kiln::ReplyEvent::Kind::Text);  // read as plain text
        events += e.text;
        return true;
    });
    EXPECT_EQ(c.reply.content, r.text);
    EXPECT_EQ(events, r.text);

    // max_tokens cuts it short: a prefix of the whole, stop reason MaxTokens.
    kiln::GenerateOptions cut = o;
    cut.max_tokens = 5;
    const kiln::GenerateResult s = gen.generate(story().tokenizer().encode("once upon", true, true), cut);
    EXPECT_EQ(s.stop, kiln::StopReason::MaxTokens);
    EXPECT_EQ(s.n_generated, 5);
    EXPECT_TRUE(r.text.starts_with(s.text)) << s.text;

    // A schema that is not an object is refused before any work.
    for (const char* bad : {"[1, 2]", "{not json", "\"string\""}) {
        kiln::GenerateOptions b = o;
        b.json_schema = bad;
        EXPECT_THROW(gen.generate(story().tokenizer().encode("once", true, true), b), kiln::Error) << bad;
    }
}

// kv_bytes_held (kiln serve's kiln_kv_bytes{holder="slots"}): a slot holds the KV pages its
// tokens use, not its whole context, and the count follows each request up and down.
TEST(ServingEngine, KvHeldFollowsTheTokensInThePages) {
    const kiln::Tokenizer& tok = story().tokenizer();
    kiln::ServingOptions so;
    so.context = ctx_options();
    so.context.n_ctx = 1024;  // four pages of 256 positions
    kiln::ServingEngine engine(story(), so);
    ASSERT_EQ(engine.n_ctx(), 1024);
    const size_t page = engine.kv_bytes_per_context() / 4;
    ASSERT_GT(page, 0u);
    EXPECT_EQ(engine.kv_bytes_held(), 0u);

    const std::vector<int32_t> short_prompt = tok.encode("once upon a", true, true);
    std::string text;
    while (tok.encode(text, true, true).size() < 560) text += "the kiln was hot and once upon a time there was ";
    const std::vector<int32_t> long_prompt = tok.encode(text, true, true);
    ASSERT_LT(long_prompt.size() + 20, 768u);

    ASSERT_EQ(engine.generate(short_prompt, greedy(20)).n_generated, 20);
    EXPECT_EQ(engine.kv_bytes_held(), page) << short_prompt.size() + 20 << " tokens: one page";
    ASSERT_EQ(engine.generate(long_prompt, greedy(20)).n_generated, 20);
    EXPECT_EQ(engine.kv_bytes_held(), 3 * page) << long_prompt.size() + 20 << " tokens: three pages";
    // The slot drops the long prompt (its full pages stay in the prefix cache, not in the slot).
    ASSERT_EQ(engine.generate(short_prompt, greedy(20)).n_generated, 20);
    EXPECT_EQ(engine.kv_bytes_held(), page);
}
