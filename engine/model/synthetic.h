// Synthetic models written with kiln's own GGUF writer: random weights, a small real SPM vocab
// (bytes, letters, common English pieces). Used by `kiln demo` and by tests that must not depend
// on ../shared.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "quant/types.h"

namespace kiln {

namespace gguf {
class Writer;
}

// Adds the small real SPM vocabulary of the synthetic models (bytes, letters, common English pieces;
// padded with unused control tokens up to n_vocab when that is larger) to `w`; returns the token texts.
std::vector<std::string> write_synthetic_vocab(gguf::Writer& w, int n_vocab = 0);

struct SyntheticLlama {
    int n_layer = 2;
    int n_embd = 64;
    int n_head = 4;
    int n_head_kv = 2;
    int n_ff = 128;
    int n_ctx = 2048;
    float rope_base = 10000.0f;
    TensorType type = TensorType::Q8_0;  // matrices; norms stay F32
    bool tied_output = false;            // no output.weight: logits use token_embd
    int n_vocab = 0;  // > the small real vocabulary: padded with unused tokens to this size (bench shapes)
    uint64_t seed = 42;
    // Instead of random logits, write the weights of a tiny story: each word's axis in the
    // embedding maps to its possible next words in the output matrix, so the model tells
    // "once upon a time there was a kiln ..." while every block of the forward pass still runs.
    bool story = false;
    std::string name = "kiln-demo";
};

// Writes a llama-architecture GGUF to `path`. Throws kiln::Error on I/O failure.
void write_synthetic_llama(const std::string& path, const SyntheticLlama& opts);

}  // namespace kiln
