// The smallest program on kiln's public API: load a model, decode token ids, print the argmax.
//
//   simple MODEL.gguf [TOKEN_ID ...]      (default tokens: 1)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "kiln/kiln.h"

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s MODEL.gguf [TOKEN_ID ...]\n", argv[0]);
        return 1;
    }
    try {
        const kiln::Model model = kiln::Model::load(argv[1]);
        const kiln::ModelInfo& info = model.info();
        std::printf("%s: %s, %lld layers, vocab %lld\n", argv[1], info.arch.c_str(),
                    static_cast<long long>(info.n_layer), static_cast<long long>(info.n_vocab));

        std::vector<int32_t> tokens;
        for (int i = 2; i < argc; ++i) tokens.push_back(static_cast<int32_t>(std::atoi(argv[i])));
        if (tokens.empty()) tokens.push_back(1);

        kiln::ContextOptions opts;
        opts.n_ctx = 256;
        kiln::Context ctx(model, opts);
        ctx.decode(tokens);  // whole prompt in one batch; logits of its last token

        // Greedy: feed the argmax back a few times.
        for (int step = 0; step < 8 && ctx.n_past() < ctx.n_ctx(); ++step) {
            const auto row = ctx.logits();
            const int32_t best = static_cast<int32_t>(std::max_element(row.begin(), row.end()) - row.begin());
            const std::string piece = model.has_tokenizer() ? model.tokenizer().token_to_piece(best) : "";
            std::printf("position %lld: argmax %d %s(logit %.4f)\n", static_cast<long long>(ctx.n_past() - 1), best,
                        piece.empty() ? "" : ("'" + piece + "' ").c_str(), row[static_cast<size_t>(best)]);
            ctx.decode(std::span<const int32_t>(&best, 1));
        }
        return 0;
    } catch (const kiln::Error& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
