// libFuzzer target for the Jinja2 interpreter: any input either renders or throws kiln::Error (a
// TemplateError with a position, or a context error). Anything else - a crash, a hang, a leak - is a
// bug. The input is the template; it renders against a small fixed chat context.
#include <cstddef>
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "chat/jinja.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static const nlohmann::ordered_json ctx = nlohmann::ordered_json::parse(R"({
        "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi <think>x</think>"},
                     {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]},
                     {"role": "tool", "content": "{\"r\": 2}"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "add_generation_prompt": true, "bos_token": "<s>", "eos_token": "</s>"})");
    try {
        kiln::jinja::Options opts;
        opts.now = [] { return std::tm{}; };
        kiln::jinja::Template t(std::string(reinterpret_cast<const char*>(data), size), opts);
        (void)t.render(ctx);
    } catch (const kiln::Error&) {
    }
    return 0;
}
