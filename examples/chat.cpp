// A chat on kiln's public API: the model's chat template, one Generator (it keeps the prefix the
// context already holds, so each turn decodes only what is new), replies streamed as they come.
//
//   chat MODEL.gguf [MAX_TOKENS]        then type messages, one per line; end of input quits
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "kiln/kiln.h"

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s MODEL.gguf [MAX_TOKENS]\n", argv[0]);
        return 1;
    }
    try {
        const kiln::Model model = kiln::Model::load(argv[1]);
        kiln::Context ctx(model, {.n_ctx = 2048});
        const kiln::ChatFormat format = kiln::ChatFormat::from_model(model);
        kiln::Generator generator(ctx);
        kiln::GenerateOptions options;
        options.max_tokens = argc > 2 ? std::atoll(argv[2]) : 256;
        options.sampler.seed = 42;
        std::fprintf(stderr, "%s, chat template: %s, parser: %s (kiln %s)\n", model.info().arch.c_str(),
                     format.origin().c_str(), format.parser_name().c_str(), KILN_VERSION_STRING);

        std::vector<kiln::Message> messages = {{.role = "system", .content = "You are a helpful assistant."}};
        std::string line;
        while (std::printf("> "), std::fflush(stdout), std::getline(std::cin, line)) {
            messages.push_back({.role = "user", .content = line});
            const kiln::ChatPrompt prompt = format.prompt(messages);
            const kiln::GenerateResult r = generator.chat(format, prompt, options, [](const kiln::ReplyEvent& e) {
                if (e.kind == kiln::ReplyEvent::Kind::Text) std::fputs(e.text.c_str(), stdout);
                if (e.kind == kiln::ReplyEvent::Kind::Reasoning) std::fprintf(stdout, "\033[2m%s\033[0m", e.text.c_str());
                if (e.kind == kiln::ReplyEvent::Kind::ToolCallStart) std::printf("[tool call %s] ", e.name.c_str());
                std::fflush(stdout);
                return true;  // false would stop the reply
            });
            std::printf("\n");
            std::fprintf(stderr, "[%lld prompt tokens, %lld reused, %lld generated, stopped: %s]\n",
                         static_cast<long long>(r.n_prompt), static_cast<long long>(r.n_reused),
                         static_cast<long long>(r.n_generated), kiln::stop_reason_name(r.stop));
            messages.push_back(r.reply.message());
        }
        return 0;
    } catch (const kiln::Error& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
