// kiln::Generator and kiln::ChatFormat (the public API of kiln/generator.h and kiln/chat.h): greedy
// output against a hand-written argmax loop, max_tokens, stop strings, prefix reuse, cancellation,
// the thinking budget, and conversations rendered through the model's template.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <string>
#include <vector>

#include "chat/chat_template.h"
#include "gguf/gguf.h"
#include "kiln/kiln.h"
#include "model/synthetic.h"
#include "support/shared.h"

namespace {

// The synthetic story model: greedy decoding tells "once upon a time there was a ..." (no shared data needed).
const kiln::Model& story() {
    static const kiln::Model m = [] {
        kiln::SyntheticLlama s;
        s.story = true;
        s.type = kiln::TensorType::F32;
        // One file per process: ctest runs the tests of this file side by side, and rewriting a
        // file another process has mapped would pull the pages from under it.
        const std::string path = kiln::test::temp_path("generator-story-" + std::to_string(::getpid()) + ".gguf").string();
        kiln::write_synthetic_llama(path, s);
        kiln::Model m = kiln::Model::load(path);
        std::filesystem::remove(path);  // the mapping stays
        return m;
    }();
    return m;
}

kiln::ContextOptions small_ctx() {
    kiln::ContextOptions co;
    co.n_ctx = 128;
    co.n_threads = 2;
    return co;
}

kiln::GenerateOptions greedy(int64_t max_tokens) {
    kiln::GenerateOptions o;
    o.sampler.temperature = 0;
    o.max_tokens = max_tokens;
    return o;
}

std::vector<int32_t> story_prompt() { return story().tokenizer().encode("once upon", true, true); }

}  // namespace

TEST(Generator, GreedyOutputIsTheArgmaxChainAndStopsAtMaxTokens) {
    const kiln::Tokenizer& tok = story().tokenizer();
    const std::vector<int32_t> prompt = story_prompt();
    kiln::Context ctx(story(), small_ctx());
    kiln::Generator gen(ctx);
    std::string streamed;
    const kiln::GenerateResult r = gen.generate(prompt, greedy(6), [&](std::string_view p) {
        streamed += p;
        return true;
    });
    EXPECT_EQ(r.stop, kiln::StopReason::MaxTokens);
    EXPECT_EQ(r.n_generated, 6);
    EXPECT_EQ(r.n_prompt, static_cast<int64_t>(prompt.size()));
    EXPECT_EQ(r.n_reused, 0);
    EXPECT_EQ(r.text, streamed);
    EXPECT_EQ(r.text, " a pot was cool. once") << r.text;

    // The same by hand: decode, argmax, feed back.
    kiln::Context ref(story(), small_ctx());
    ref.decode(prompt);
    std::vector<int32_t> all = prompt;
    for (int i = 0; i < 6; ++i) {
        const auto row = ref.logits();
        const auto best = static_cast<int32_t>(std::max_element(row.begin(), row.end()) - row.begin());
        all.push_back(best);
        if (i < 5) ref.decode(std::span<const int32_t>(&best, 1));
    }
    EXPECT_EQ(tok.decode(prompt) + r.text, tok.decode(all));
    // The sixth token is not decoded: nothing would read its logits.
    EXPECT_EQ(gen.cached().size(), prompt.size() + 5);
    EXPECT_EQ(ctx.n_past(), static_cast<int64_t>(prompt.size() + 5));
}

TEST(Generator, StopStringEndsTheOutputBeforeIt) {
    kiln::Context ctx(story(), small_ctx());
    kiln::Generator gen(ctx);
    kiln::GenerateOptions o = greedy(20);
    o.stop = {"never", "cool"};
    const kiln::GenerateResult r = gen.generate(story_prompt(), o);  // " a pot was cool. once ..."
    EXPECT_EQ(r.stop, kiln::StopReason::StopString);
    EXPECT_EQ(r.stop_string, "cool");
    EXPECT_EQ(r.text, " a pot was ");
    EXPECT_EQ(r.n_generated, 4);
    EXPECT_STREQ(kiln::stop_reason_name(r.stop), "stop_string");
}

TEST(Generator, ThePromptAgainReusesTheCachedPrefix) {
    const std::vector<int32_t> prompt = story_prompt();
    kiln::Context ctx(story(), small_ctx());
    kiln::Generator gen(ctx);
    const kiln::GenerateResult a = gen.generate(prompt, greedy(5));
    const kiln::GenerateResult b = gen.generate(prompt, greedy(5));
    EXPECT_EQ(b.n_reused, static_cast<int64_t>(prompt.size()) - 1);  // the last token is decoded again for its logits
    EXPECT_EQ(b.text, a.text);
    // A prompt that continues what the context holds reuses all of it.
    std::vector<int32_t> longer = gen.cached();
    const size_t held = longer.size();
    const std::vector<int32_t> more = story().tokenizer().encode(" was", false, false);
    longer.insert(longer.end(), more.begin(), more.end());
    const kiln::GenerateResult c = gen.generate(longer, greedy(2));
    EXPECT_EQ(c.n_reused, static_cast<int64_t>(held));
    EXPECT_EQ(c.n_prompt, static_cast<int64_t>(longer.size()));
    gen.reset();
    EXPECT_TRUE(gen.cached().empty());
    EXPECT_EQ(ctx.n_past(), 0);
}

TEST(Generator, CancelStopsWithinAToken) {
    kiln::Context ctx(story(), small_ctx());
    kiln::Generator gen(ctx);
    std::atomic<bool> cancel{false};
    kiln::GenerateOptions o = greedy(20);
    o.cancel = &cancel;
    int pieces = 0;
    kiln::GenerateResult r = gen.generate(story_prompt(), o, [&](std::string_view) {
        if (++pieces == 2) cancel = true;
        return true;
    });
    EXPECT_EQ(r.stop, kiln::StopReason::Cancelled);
    EXPECT_EQ(r.n_generated, 2);
    // A callback that returns false cancels too, and is not called again.
    pieces = 0;
    r = gen.generate(story_prompt(), greedy(20), [&](std::string_view) {
        ++pieces;
        return false;
    });
    EXPECT_EQ(r.stop, kiln::StopReason::Cancelled);
    EXPECT_EQ(r.n_generated, 1);
    EXPECT_EQ(pieces, 1);
}

TEST(Generator, RefusesAnEmptyPromptOrOneThatFillsTheContext) {
    kiln::Context ctx(story(), small_ctx());
    kiln::Generator gen(ctx);
    EXPECT_THROW(gen.generate({}, greedy(1)), kiln::Error);
    const std::vector<int32_t> full(128, story_prompt()[1]);
    try {
        gen.generate(full, greedy(1));
        FAIL() << "no error";
    } catch (const kiln::Error& e) {
        EXPECT_NE(std::string(e.what()).find("the prompt is 128 tokens and the context holds 128"), std::string::npos) << e.what();
    }
}

TEST(ChatFormat, RendersMessagesAndToolsThroughTheModelsTemplate) {
    KILN_REQUIRE_SHARED("models");
    const std::string path = (kiln::test::shared_dir() / "models" / "qwen3-vocab-tiny.f16.gguf").string();
    const kiln::Model model = kiln::Model::load(path);
    const kiln::ChatFormat format = kiln::ChatFormat::from_model(model);
    EXPECT_EQ(format.origin(), "the model's");
    EXPECT_EQ(format.parser_name(), "hermes");
    EXPECT_EQ(format.end_turn(), "");
    const std::vector<kiln::Message> messages = {
        {.role = "user", .content = "Weather in Paris?"},
        {.role = "assistant", .content = "", .tool_calls = {{"call_0", "get_weather", R"({"city":"Paris"})"}}},
        {.role = "tool", .content = "18 C", .tool_call_id = "call_0"},
    };
    const std::vector<kiln::Tool> tools = {{"get_weather", "Current weather", R"({"type":"object","properties":{"city":{"type":"string"}}})"}};
    kiln::RenderOptions ro;
    ro.enable_thinking = false;
    const std::string text = format.render(messages, tools, ro);
    // The same through engine/chat with the JSON a server would send.
    auto f = kiln::gguf::File::open(path);
    const nlohmann::ordered_json vars = nlohmann::ordered_json::parse(R"({"messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "call_0", "type": "function",
            "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "18 C", "tool_call_id": "call_0"}],
      "add_generation_prompt": true, "enable_thinking": false,
      "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Current weather",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]})");
    EXPECT_EQ(text, kiln::ChatTemplate::from_gguf(*f).render(vars));
    EXPECT_NE(text.find(R"({"name": "get_weather", "arguments": {"city": "Paris"}})"), std::string::npos) << text;
    EXPECT_TRUE(text.ends_with("<|im_start|>assistant\n<think>\n\n</think>\n\n")) << text;
    const kiln::ChatPrompt p = format.prompt(messages, tools, ro);
    EXPECT_EQ(p.text, text);
    EXPECT_EQ(p.tokens, model.tokenizer().encode(text, false, true));

    // Built-in templates, and the errors.
    const kiln::ChatFormat llama3 = kiln::ChatFormat::builtin(model, "llama3");
    EXPECT_EQ(llama3.end_turn(), "<|eot_id|>");
    EXPECT_EQ(llama3.render({{{.role = "user", .content = "hi"}}}),
              "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
    EXPECT_THROW(kiln::ChatFormat::builtin(model, "nope"), kiln::Error);
    kiln::ChatFormat copy = format;
    EXPECT_THROW(copy.set_parser("nope"), kiln::Error);
    copy.set_parser("deepseek");
    EXPECT_EQ(copy.parser_name(), "deepseek");
    EXPECT_EQ(format.parser_name(), "hermes");
    const std::vector<kiln::Tool> bad = {{"t", "", "not json"}};
    EXPECT_THROW(format.render(messages, bad), kiln::Error);
}

TEST(Generator, ChatParsesTheReplyAndTheThinkingBudgetClosesReasoning) {
    KILN_REQUIRE_SHARED("models");
    const kiln::Model model = kiln::Model::load((kiln::test::shared_dir() / "models" / "qwen3-vocab-tiny.f16.gguf").string());
    const kiln::ChatFormat format = kiln::ChatFormat::from_model(model);
    kiln::ContextOptions co;
    co.n_ctx = 256;
    co.n_threads = 2;
    kiln::Context ctx(model, co);
    kiln::Generator gen(ctx);
    kiln::ChatPrompt p = format.prompt(std::vector<kiln::Message>{{.role = "user", .content = "Think first."}});
    p.text += "<think>\n";  // the reply starts inside reasoning
    p.tokens = format.tokenize(p.text);
    const std::vector<int32_t> closer = model.tokenizer().encode(format.thinking_closer(), false, true);
    auto has_closer = [&] {
        const auto& c = gen.cached();
        return std::search(c.begin() + static_cast<std::ptrdiff_t>(p.tokens.size()), c.end(), closer.begin(), closer.end()) != c.end();
    };
    // Sampled (greedy decoding of this model's random weights writes newlines only); this seed
    // reasons from its first token.
    kiln::GenerateOptions o;
    o.sampler = {.temperature = 1, .top_k = 0, .top_p = 1, .min_p = 0, .seed = 3};
    o.max_tokens = 24;
    o.ignore_eos = true;
    std::string reasoning;
    const kiln::GenerateResult free = gen.chat(format, p, o, [&](const kiln::ReplyEvent& e) {
        if (e.kind == kiln::ReplyEvent::Kind::Reasoning) reasoning += e.text;
        return true;
    });
    EXPECT_EQ(free.n_generated, 24);
    EXPECT_EQ(free.reply.reasoning, reasoning);
    EXPECT_FALSE(reasoning.empty());
    EXPECT_FALSE(has_closer());  // this model does not close its reasoning by itself
    EXPECT_TRUE(free.reply.content.empty()) << free.reply.content;

    o.thinking_budget = 4;
    const kiln::GenerateResult cut = gen.chat(format, p, o);
    EXPECT_TRUE(has_closer());
    EXPECT_EQ(cut.n_generated, 24);  // the closer's tokens count
    EXPECT_FALSE(cut.reply.reasoning.empty());
    EXPECT_TRUE(free.reply.reasoning.starts_with(cut.reply.reasoning)) << cut.reply.reasoning;  // the same draws until the cut
    EXPECT_LT(cut.reply.reasoning.size(), free.reply.reasoning.size());
    EXPECT_FALSE(cut.reply.content.empty());  // the answer follows the closer
}
