// kiln_make_bench_model: writes random-weight GGUF models of real shapes with kiln's own GGUF writer,
// for benchmarks against other engines on the same file (benchmarks/compare.sh quantizes them with
// llama.cpp's llama-quantize). The text they produce is nonsense; the shapes are what matter.
//
//   kiln_make_bench_model tinyllama OUT.gguf [--layers N]   TinyLlama-1.1B: 22 layers, 2048 wide, 32/4
//                                                           heads of 64, FFN 5632, vocab 32000 (F16)
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include "kiln/error.h"
#include "model/synthetic.h"

namespace {

int usage() {
    std::fprintf(stderr, "usage: kiln_make_bench_model tinyllama OUT.gguf [--layers N]\n");
    return 2;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 3) return usage();
    const std::string kind = argv[1], out = argv[2];
    int layers = 0;
    for (int i = 3; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--layers" && i + 1 < argc) {
            layers = std::atoi(argv[++i]);
            if (layers <= 0) {
                std::fprintf(stderr, "error: --layers must be a positive number\n");
                return 2;
            }
        } else {
            return usage();
        }
    }
    try {
        if (kind == "tinyllama") {
            kiln::SyntheticLlama o;
            o.n_layer = layers ? layers : 22;
            o.n_embd = 2048;
            o.n_head = 32;
            o.n_head_kv = 4;
            o.n_ff = 5632;
            o.n_ctx = 32768;
            o.n_vocab = 32000;
            o.type = kiln::TensorType::F16;
            o.name = "tinyllama-1.1b-shape";
            kiln::write_synthetic_llama(out, o);
        } else {
            return usage();
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    std::printf("wrote %s\n", out.c_str());
    return 0;
}
