// kiln_make_bench_model: writes random-weight GGUF models with kiln's own GGUF writer (F32 or F16),
// for benchmarks against other engines on the same file (benchmarks/compare.sh quantizes them with
// llama.cpp's llama-quantize) and for the small reference models of tests/data/models (whose
// logits come from llama.cpp's llama-logits). The text they produce is nonsense; the shapes are what
// matter.
//
//   kiln_make_bench_model SHAPE OUT.gguf [--layers N]
//
// SHAPE:
//   tinyllama        TinyLlama-1.1B: 22 layers, 2048 wide, 32/4 heads of 64, FFN 5632, vocab 32000 (F16)
//   qwen3-30b-a3b    Qwen3-30B-A3B's layer shapes cut to 4 layers: 2048 wide, 32/4 heads of 128 with
//                    Q/K norms, 128 experts of 768, top 8 (F16)
//   glm4.7-flash     GLM-4.7-Flash's layer shapes (deepseek2, MLA) cut to 4 layers: 2048 wide, 20 heads on
//                    a latent of 512 + 64 RoPE, q_lora 768, a dense lead layer of 10240, then 64 experts
//                    of 1536, top 4, sigmoid routing, 1 shared expert; vocab 32000 (F16)
//   qwen3-tiny       qwen3 at real head sizes: 2 layers, 128 wide, 32/4 heads of 128, Q/K norms (F32)
//   qwen3moe-tiny    qwen3moe: 2 layers, 64 wide, 4/2 heads of 64, 128 experts of 32, top 8 (F32)
//   glm4moe-tiny     glm4moe: 3 layers (a dense lead layer, a MoE layer, an MTP layer that is not
//                    run), 128 wide, 4/2 heads of 128, RoPE on 64 of them, Q/K/V biases, 16 experts
//                    of 32, top 4, sigmoid routing with exp_probs_b, 1 shared expert, norm + scale
//                    2.5 (F32)
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "gguf/writer.h"
#include "kiln/error.h"
#include "model/synthetic.h"

namespace {

using kiln::TensorType;

// Random tensors into a GGUF writer: normal values times a scale plus an offset; matrices scaled
// by 1/sqrt(cols) in the model's type, norms around 1 and vectors around 0 in F32.
struct RandomTensors {
    kiln::gguf::Writer& w;
    std::mt19937_64 rng;
    TensorType type;
    std::normal_distribution<float> normal{0.0f, 1.0f};  // one stream for the whole file (it keeps a spare value)
    void tensor(const std::string& name, std::vector<uint64_t> shape, float scale, float offset, TensorType t) {
        uint64_t n = 1;
        for (uint64_t s : shape) n *= s;
        std::vector<float> v(n);
        for (float& x : v) x = offset + scale * normal(rng);
        w.add_tensor_f32(name, t, std::move(shape), v);
    }
    void matrix(const std::string& name, uint64_t cols, uint64_t rows, uint64_t n = 0) {
        std::vector<uint64_t> shape = {cols, rows};
        if (n) shape.push_back(n);
        tensor(name, shape, 1.0f / std::sqrt(static_cast<float>(cols)), 0.0f, type);
    }
    void norm(const std::string& name, uint64_t n) { tensor(name, {n}, 0.1f, 1.0f, TensorType::F32); }
    void vec(const std::string& name, uint64_t n) { tensor(name, {n}, 0.1f, 0.0f, TensorType::F32); }
};

struct Decoder {
    std::string arch, name;
    int n_layer = 2, n_embd = 128, n_head = 4, n_head_kv = 2, head_dim = 32, n_ff = 256, n_rot = 0;
    int n_vocab = 0, n_ctx = 4096;
    float rope_base = 1000000.0f;
    bool qkv_bias = false, qk_norm = false;
    const char* ffn_norm = "ffn_norm";
    // MoE (n_expert > 0)
    int n_expert = 0, n_used = 0, n_ff_exp = 0, n_shared = 0, n_dense_lead = 0, n_nextn = 0;
    bool exp_probs_b = false;
    int gating = 0;        // expert_gating_func when > 0
    int norm = -1;         // expert_weights_norm when >= 0
    float scale = 0.0f;    // expert_weights_scale when > 0
    TensorType type = TensorType::F32;
    uint64_t seed = 7;
};

void write_decoder(const std::string& path, const Decoder& d) {
    kiln::gguf::Writer w;
    const std::string a = d.arch + ".";
    w.set_string("general.architecture", d.arch);
    w.set_string("general.name", d.name);
    w.set_u32(a + "context_length", static_cast<uint32_t>(d.n_ctx));
    w.set_u32(a + "embedding_length", static_cast<uint32_t>(d.n_embd));
    w.set_u32(a + "block_count", static_cast<uint32_t>(d.n_layer));
    w.set_u32(a + "feed_forward_length", static_cast<uint32_t>(d.n_ff));
    w.set_u32(a + "attention.head_count", static_cast<uint32_t>(d.n_head));
    w.set_u32(a + "attention.head_count_kv", static_cast<uint32_t>(d.n_head_kv));
    w.set_u32(a + "attention.key_length", static_cast<uint32_t>(d.head_dim));
    w.set_u32(a + "attention.value_length", static_cast<uint32_t>(d.head_dim));
    w.set_f32(a + "attention.layer_norm_rms_epsilon", 1e-6f);
    w.set_f32(a + "rope.freq_base", d.rope_base);
    w.set_u32(a + "rope.dimension_count", static_cast<uint32_t>(d.n_rot ? d.n_rot : d.head_dim));
    if (d.n_expert > 0) {
        w.set_u32(a + "expert_count", static_cast<uint32_t>(d.n_expert));
        w.set_u32(a + "expert_used_count", static_cast<uint32_t>(d.n_used));
        w.set_u32(a + "expert_feed_forward_length", static_cast<uint32_t>(d.n_ff_exp));
        if (d.n_shared) w.set_u32(a + "expert_shared_count", static_cast<uint32_t>(d.n_shared));
        if (d.n_dense_lead) w.set_u32(a + "leading_dense_block_count", static_cast<uint32_t>(d.n_dense_lead));
        if (d.gating) w.set_u32(a + "expert_gating_func", static_cast<uint32_t>(d.gating));
        if (d.norm >= 0) w.set_bool(a + "expert_weights_norm", d.norm != 0);
        if (d.scale > 0) w.set_f32(a + "expert_weights_scale", d.scale);
    }
    if (d.n_nextn) w.set_u32(a + "nextn_predict_layers", static_cast<uint32_t>(d.n_nextn));
    const uint64_t V = kiln::write_synthetic_vocab(w, d.n_vocab).size();

    RandomTensors rt{w, std::mt19937_64(d.seed), d.type};
    const uint64_t E = static_cast<uint64_t>(d.n_embd), HD = static_cast<uint64_t>(d.head_dim);
    const uint64_t QD = HD * static_cast<uint64_t>(d.n_head), KD = HD * static_cast<uint64_t>(d.n_head_kv);
    auto matrix = [&](const std::string& name, uint64_t cols, uint64_t rows, uint64_t n = 0) { rt.matrix(name, cols, rows, n); };
    auto norm = [&](const std::string& name, uint64_t n) { rt.norm(name, n); };
    auto vec = [&](const std::string& name, uint64_t n) { rt.vec(name, n); };

    matrix("token_embd.weight", E, V);
    for (int il = 0; il < d.n_layer; ++il) {
        const std::string p = fmt::format("blk.{}.", il);
        norm(p + "attn_norm.weight", E);
        matrix(p + "attn_q.weight", E, QD);
        matrix(p + "attn_k.weight", E, KD);
        matrix(p + "attn_v.weight", E, KD);
        if (d.qkv_bias) {
            vec(p + "attn_q.bias", QD);
            vec(p + "attn_k.bias", KD);
            vec(p + "attn_v.bias", KD);
        }
        if (d.qk_norm) {
            norm(p + "attn_q_norm.weight", HD);
            norm(p + "attn_k_norm.weight", HD);
        }
        matrix(p + "attn_output.weight", QD, E);
        norm(p + d.ffn_norm + ".weight", E);
        if (d.n_expert == 0 || il < d.n_dense_lead) {
            const uint64_t F = static_cast<uint64_t>(d.n_ff);
            matrix(p + "ffn_gate.weight", E, F);
            matrix(p + "ffn_up.weight", E, F);
            matrix(p + "ffn_down.weight", F, E);
        } else {
            const uint64_t X = static_cast<uint64_t>(d.n_expert), FE = static_cast<uint64_t>(d.n_ff_exp);
            matrix(p + "ffn_gate_inp.weight", E, X);
            if (d.exp_probs_b) vec(p + "exp_probs_b.bias", X);
            matrix(p + "ffn_gate_exps.weight", E, FE, X);
            matrix(p + "ffn_up_exps.weight", E, FE, X);
            matrix(p + "ffn_down_exps.weight", FE, E, X);
            if (d.n_shared) {
                const uint64_t FS = FE * static_cast<uint64_t>(d.n_shared);
                matrix(p + "ffn_gate_shexp.weight", E, FS);
                matrix(p + "ffn_up_shexp.weight", E, FS);
                matrix(p + "ffn_down_shexp.weight", FS, E);
            }
        }
        if (il >= d.n_layer - d.n_nextn) {
            matrix(p + "nextn.eh_proj.weight", 2 * E, E);
            norm(p + "nextn.enorm.weight", E);
            norm(p + "nextn.hnorm.weight", E);
            norm(p + "nextn.shared_head_norm.weight", E);
        }
    }
    norm("output_norm.weight", E);
    matrix("output.weight", E, V);
    w.write(path);
}

// deepseek2 with MLA (GLM-4.7-Flash's layout): the K/V latent of kv_lora + rope per token, per-head
// K and V up-projections (attn_k_b / attn_v_b), a low-rank Q, dense lead layers, then experts with
// sigmoid routing, exp_probs_b and shared experts.
struct Mla {
    std::string name;
    int n_layer = 4, n_embd = 2048, n_head = 20, q_lora = 768, kv_lora = 512, rope = 64, nope = 192, v_head = 256;
    int n_ff = 10240, n_expert = 64, n_used = 4, n_ff_exp = 1536, n_shared = 1, n_dense_lead = 1;
    int n_vocab = 32000, n_ctx = 202752;
    TensorType type = TensorType::F16;
    uint64_t seed = 17;
};

void write_mla(const std::string& path, const Mla& d) {
    kiln::gguf::Writer w;
    const std::string a = "deepseek2.";
    w.set_string("general.architecture", "deepseek2");
    w.set_string("general.name", d.name);
    w.set_u32(a + "context_length", static_cast<uint32_t>(d.n_ctx));
    w.set_u32(a + "embedding_length", static_cast<uint32_t>(d.n_embd));
    w.set_u32(a + "block_count", static_cast<uint32_t>(d.n_layer));
    w.set_u32(a + "feed_forward_length", static_cast<uint32_t>(d.n_ff));
    w.set_u32(a + "attention.head_count", static_cast<uint32_t>(d.n_head));
    w.set_u32(a + "attention.head_count_kv", 1);
    w.set_u32(a + "attention.key_length", static_cast<uint32_t>(d.kv_lora + d.rope));
    w.set_u32(a + "attention.value_length", static_cast<uint32_t>(d.kv_lora));
    w.set_u32(a + "attention.key_length_mla", static_cast<uint32_t>(d.nope + d.rope));
    w.set_u32(a + "attention.value_length_mla", static_cast<uint32_t>(d.v_head));
    w.set_u32(a + "attention.q_lora_rank", static_cast<uint32_t>(d.q_lora));
    w.set_u32(a + "attention.kv_lora_rank", static_cast<uint32_t>(d.kv_lora));
    w.set_f32(a + "attention.layer_norm_rms_epsilon", 1e-5f);
    w.set_u32(a + "rope.dimension_count", static_cast<uint32_t>(d.rope));
    w.set_f32(a + "rope.freq_base", 1000000.0f);
    w.set_u32(a + "expert_count", static_cast<uint32_t>(d.n_expert));
    w.set_u32(a + "expert_used_count", static_cast<uint32_t>(d.n_used));
    w.set_u32(a + "expert_shared_count", static_cast<uint32_t>(d.n_shared));
    w.set_u32(a + "expert_feed_forward_length", static_cast<uint32_t>(d.n_ff_exp));
    w.set_u32(a + "expert_gating_func", 2);
    w.set_bool(a + "expert_weights_norm", true);
    w.set_f32(a + "expert_weights_scale", 1.8f);
    w.set_u32(a + "leading_dense_block_count", static_cast<uint32_t>(d.n_dense_lead));
    const uint64_t V = kiln::write_synthetic_vocab(w, d.n_vocab).size();

    RandomTensors rt{w, std::mt19937_64(d.seed), d.type};
    auto matrix = [&](const std::string& name, uint64_t cols, uint64_t rows, uint64_t n = 0) { rt.matrix(name, cols, rows, n); };
    auto norm = [&](const std::string& name, uint64_t n) { rt.norm(name, n); };
    const uint64_t E = static_cast<uint64_t>(d.n_embd), H = static_cast<uint64_t>(d.n_head);
    const uint64_t KVL = static_cast<uint64_t>(d.kv_lora), ROPE = static_cast<uint64_t>(d.rope);
    const uint64_t NOPE = static_cast<uint64_t>(d.nope), VH = static_cast<uint64_t>(d.v_head);
    const uint64_t QL = static_cast<uint64_t>(d.q_lora);

    matrix("token_embd.weight", E, V);
    for (int il = 0; il < d.n_layer; ++il) {
        const std::string p = fmt::format("blk.{}.", il);
        norm(p + "attn_norm.weight", E);
        matrix(p + "attn_q_a.weight", E, QL);
        norm(p + "attn_q_a_norm.weight", QL);
        matrix(p + "attn_q_b.weight", QL, H * (NOPE + ROPE));
        matrix(p + "attn_kv_a_mqa.weight", E, KVL + ROPE);
        norm(p + "attn_kv_a_norm.weight", KVL);
        matrix(p + "attn_k_b.weight", NOPE, KVL, H);
        matrix(p + "attn_v_b.weight", KVL, VH, H);
        matrix(p + "attn_output.weight", H * VH, E);
        norm(p + "ffn_norm.weight", E);
        if (il < d.n_dense_lead) {
            const uint64_t F = static_cast<uint64_t>(d.n_ff);
            matrix(p + "ffn_gate.weight", E, F);
            matrix(p + "ffn_up.weight", E, F);
            matrix(p + "ffn_down.weight", F, E);
        } else {
            const uint64_t X = static_cast<uint64_t>(d.n_expert), FE = static_cast<uint64_t>(d.n_ff_exp);
            rt.tensor(p + "ffn_gate_inp.weight", {E, X}, 1.0f / std::sqrt(static_cast<float>(E)), 0.0f, TensorType::F32);
            rt.vec(p + "exp_probs_b.bias", X);
            matrix(p + "ffn_gate_exps.weight", E, FE, X);
            matrix(p + "ffn_up_exps.weight", E, FE, X);
            matrix(p + "ffn_down_exps.weight", FE, E, X);
            const uint64_t FS = FE * static_cast<uint64_t>(d.n_shared);
            matrix(p + "ffn_gate_shexp.weight", E, FS);
            matrix(p + "ffn_up_shexp.weight", E, FS);
            matrix(p + "ffn_down_shexp.weight", FS, E);
        }
    }
    norm("output_norm.weight", E);
    matrix("output.weight", E, V);
    w.write(path);
}

int usage() {
    std::fprintf(stderr,
                 "usage: kiln_make_bench_model SHAPE OUT.gguf [--layers N]\n"
                 "SHAPE: tinyllama, qwen3-30b-a3b, glm4.7-flash, qwen3-tiny, qwen3moe-tiny, glm4moe-tiny\n");
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
            o.type = TensorType::F16;
            o.name = "tinyllama-1.1b-shape";
            kiln::write_synthetic_llama(out, o);
        } else if (kind == "qwen3-30b-a3b") {
            Decoder d{.arch = "qwen3moe", .name = "qwen3-30b-a3b-shape", .n_layer = layers ? layers : 4,
                      .n_embd = 2048, .n_head = 32, .n_head_kv = 4, .head_dim = 128, .n_ff = 6144,
                      .n_vocab = 32000, .n_ctx = 40960, .qk_norm = true, .n_expert = 128, .n_used = 8,
                      .n_ff_exp = 768, .type = TensorType::F16};
            write_decoder(out, d);
        } else if (kind == "glm4.7-flash") {
            Mla d;
            d.name = "glm-4.7-flash-shape";
            d.n_layer = layers ? layers : 4;
            write_mla(out, d);
        } else if (kind == "qwen3-tiny") {
            Decoder d{.arch = "qwen3", .name = "qwen3-tiny", .n_layer = layers ? layers : 2, .n_embd = 128,
                      .n_head = 32, .n_head_kv = 4, .head_dim = 128, .n_ff = 256, .qk_norm = true, .seed = 11};
            write_decoder(out, d);
        } else if (kind == "qwen3moe-tiny") {
            Decoder d{.arch = "qwen3moe", .name = "qwen3moe-tiny", .n_layer = layers ? layers : 2, .n_embd = 64,
                      .n_head = 4, .n_head_kv = 2, .head_dim = 64, .n_ff = 256, .qk_norm = true, .n_expert = 128,
                      .n_used = 8, .n_ff_exp = 32, .seed = 12};
            write_decoder(out, d);
        } else if (kind == "glm4moe-tiny") {
            Decoder d{.arch = "glm4moe", .name = "glm4moe-tiny", .n_layer = layers ? layers : 3, .n_embd = 128,
                      .n_head = 4, .n_head_kv = 2, .head_dim = 128, .n_ff = 256, .n_rot = 64, .qkv_bias = true,
                      .ffn_norm = "post_attention_norm", .n_expert = 16, .n_used = 4, .n_ff_exp = 32,
                      .n_shared = 1, .n_dense_lead = 1, .n_nextn = 1, .exp_probs_b = true, .gating = 2, .norm = 1,
                      .scale = 2.5f, .seed = 13};
            write_decoder(out, d);
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
