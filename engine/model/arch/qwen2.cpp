// qwen2 (Qwen1.5, Qwen2, Qwen2.5): llama's layout (arch/dense.h) plus biases on the Q, K and V
// projections, RoPE on the halves of each head ("neox"), usually a separate output projection.
#include "model/arch/dense.h"

namespace kiln::model {

std::unique_ptr<Architecture> load_qwen2(const gguf::File& f) {
    return load_dense_decoder(f, {.rope_mode = graph::RopeMode::Neox, .qkv_bias_required = true});
}

}  // namespace kiln::model
