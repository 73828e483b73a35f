// deepseek2 (DeepSeek-V2 / V2-Lite / DeepSeek-Coder-V2-Lite, GLM-4.7-Flash): pre-norm decoder with
// multi-head latent attention (MLA) and a mixture of experts.
//
// MLA: each token's K and V come from one compressed latent c (kv_lora_rank values, RMS-normed)
// plus a shared RoPE key k_pe (n_rot values). Per head h:
//   q_h = [q_nope_h, q_pe_h]  (q from attn_q, or the low-rank attn_q_a -> norm -> attn_q_b)
//   k_h = [K_b,h · c, k_pe],  v_h = V_b,h · c
// The cache keeps only [c, k_pe] per token and layer. Attention runs in the absorbed form for
// prefill and decode alike: q_nope_h is taken into the latent space (q_lat_h = K_b,hᵀ q_nope_h,
// stored per head as attn_k_b [nope, kv_lora]), so q_h·k_h = [q_lat_h, q_pe_h]·[c, k_pe], and the
// attention output over the latents goes out through V_b,h (attn_v_b [kv_lora, v]). Older files
// carry K_b and V_b joined as attn_kv_b (per head nope K rows, then v V rows, each of kv_lora):
// V_b is a strided view of it and K_b's per-head transpose is built once at load.
//
// MoE: the first leading_dense_block_count layers have a dense SwiGLU FFN; the others route each
// token to expert_used_count of expert_count experts (softmax or sigmoid gating, exp_probs_b for
// the choice only, optional normalised and scaled weights) plus always-on shared experts.
// RoPE is "normal" (adjacent pairs) on the rope part only; YaRN sets both the rotation and, with
// its mscale, the attention scale. GLM-4.7-Flash files add nextn_predict_layers trailing
// multi-token-prediction layers: bound, kept, not run.
#include <cmath>
#include <cstdio>
#include <cstring>

#include <fmt/format.h>

#include "kiln/error.h"
#include "model/blocks.h"
#include "quant/quant.h"

namespace kiln::model {

namespace {

struct MlaWeights {
    Weight q, q_a, q_a_norm, q_b;  // q alone (lite) or the q_lora path
    Weight kv_a_mqa, kv_a_norm;    // [E, kv_lora + n_rot], [kv_lora]
    Weight k_b, v_b;               // [nope, kv_lora, H], [kv_lora, v, H] (file, view or derived)
    Weight wo;
};

struct NextnWeights {  // the multi-token-prediction head of an MTP layer (unused by the forward pass)
    Weight eh_proj, enorm, hnorm, shared_head_norm, shared_head_head, embed_tokens;
};

struct Deepseek2Layer {
    Weight attn_norm;
    MlaWeights attn;
    Weight ffn_norm;
    blocks::FfnWeights ffn;    // dense layers
    blocks::MoeWeights moe;    // MoE layers
    blocks::FfnWeights shexp;  // shared experts (optional)
    NextnWeights nextn;
};

struct Deepseek2Params {
    int64_t q_lora = 0, kv_lora = 0;
    int64_t head_k = 0, head_v = 0, nope = 0;  // per-head query/key (nope + rope) and value sizes
    int64_t n_ff_exp = 0, n_expert_shared = 0, n_dense_lead = 0, n_nextn = 0;
    blocks::MoeConfig moe;
    float kq_scale = 1.0f;
    graph::RopeParams rope;
};

class Deepseek2 final : public Architecture {
public:
    explicit Deepseek2(const gguf::File& f) : hp_(HParams::read(f)), w_(f) {
        read_params(f);
        const int64_t E = hp_.n_embd, V = hp_.n_vocab, H = hp_.n_head;
        tok_embd_ = w_.require("token_embd.weight", {E, V});
        output_norm_ = w_.require("output_norm.weight", {E});
        output_ = w_.optional("output.weight", {E, V});
        if (!output_) output_ = tok_embd_;
        bool any_probs_b = false;
        for (int64_t il = 0; il < hp_.n_layer; ++il) {
            auto name = [&](const char* s) { return WeightBinder::layer(il, s); };
            Deepseek2Layer L;
            if (il >= n_main_layers() && !f.find_tensor(name("attn_norm.weight"))) {
                // Some converters drop the MTP block: nothing of it to bind (it never runs).
                layers_.push_back(std::move(L));
                continue;
            }
            L.attn_norm = w_.require(name("attn_norm.weight"), {E});
            MlaWeights& a = L.attn;
            if (p_.q_lora > 0) {
                a.q_a = w_.require(name("attn_q_a.weight"), {E, p_.q_lora});
                a.q_a_norm = w_.require(name("attn_q_a_norm.weight"), {p_.q_lora});
                a.q_b = w_.require(name("attn_q_b.weight"), {p_.q_lora, H * p_.head_k});
            } else {
                a.q = w_.require(name("attn_q.weight"), {E, H * p_.head_k});
            }
            a.kv_a_mqa = w_.require(name("attn_kv_a_mqa.weight"), {E, p_.kv_lora + hp_.n_rot});
            a.kv_a_norm = w_.require(name("attn_kv_a_norm.weight"), {p_.kv_lora});
            if (f.find_tensor(name("attn_k_b.weight"))) {
                a.k_b = w_.require(name("attn_k_b.weight"), {p_.nope, p_.kv_lora, H});
                a.v_b = w_.require(name("attn_v_b.weight"), {p_.kv_lora, p_.head_v, H});
            } else {
                split_kv_b(w_.require(name("attn_kv_b.weight"), {p_.kv_lora, H * (p_.nope + p_.head_v)}), a);
            }
            a.wo = w_.require(name("attn_output.weight"), {H * p_.head_v, E});
            L.ffn_norm = w_.require(name("ffn_norm.weight"), {E});
            if (il < p_.n_dense_lead) {
                L.ffn.gate = w_.require(name("ffn_gate.weight"), {E, hp_.n_ff});
                L.ffn.up = w_.require(name("ffn_up.weight"), {E, hp_.n_ff});
                L.ffn.down = w_.require(name("ffn_down.weight"), {hp_.n_ff, E});
            } else {
                const int64_t X = hp_.n_expert, F = p_.n_ff_exp;
                L.moe.gate_inp = w_.require(name("ffn_gate_inp.weight"), {E, X});
                L.moe.gate_exps = w_.require(name("ffn_gate_exps.weight"), {E, F, X});
                L.moe.up_exps = w_.require(name("ffn_up_exps.weight"), {E, F, X});
                L.moe.down_exps = w_.require(name("ffn_down_exps.weight"), {F, E, X});
                L.moe.exp_probs_b = w_.optional(name("exp_probs_b.bias"), {X});
                any_probs_b |= static_cast<bool>(L.moe.exp_probs_b);
                if (p_.n_expert_shared > 0) {
                    const int64_t FS = F * p_.n_expert_shared;
                    L.shexp.gate = w_.require(name("ffn_gate_shexp.weight"), {E, FS});
                    L.shexp.up = w_.require(name("ffn_up_shexp.weight"), {E, FS});
                    L.shexp.down = w_.require(name("ffn_down_shexp.weight"), {FS, E});
                }
            }
            if (il >= hp_.n_layer - p_.n_nextn) {
                NextnWeights& n = L.nextn;
                n.eh_proj = w_.optional(name("nextn.eh_proj.weight"), {2 * E, E});
                n.enorm = w_.optional(name("nextn.enorm.weight"), {E});
                n.hnorm = w_.optional(name("nextn.hnorm.weight"), {E});
                n.shared_head_norm = w_.optional(name("nextn.shared_head_norm.weight"), {E});
                n.shared_head_head = w_.optional(name("nextn.shared_head_head.weight"), {E, V});
                n.embed_tokens = w_.optional(name("nextn.embed_tokens.weight"), {E, V});
            }
            layers_.push_back(std::move(L));
        }
        choose_gating(f, any_probs_b);
    }

    graph::Graph build(const BatchShape& s) const override {
        graph::Graph g;
        const blocks::BatchInputs in = blocks::inputs(g, s);
        graph::TensorId x = g.get_rows(tok_embd_.in(g), in.tokens);
        for (int64_t il = 0; il < n_main_layers(); ++il) {
            const Deepseek2Layer& L = layers_[static_cast<size_t>(il)];
            graph::TensorId h = g.rms_norm(x, L.attn_norm.in(g), hp_.rms_eps);
            x = g.add(x, attention(g, h, in.positions, L.attn, il));
            h = g.rms_norm(x, L.ffn_norm.in(g), hp_.rms_eps);
            if (il < p_.n_dense_lead) {
                x = g.add(x, blocks::ffn_swiglu(g, h, L.ffn));
            } else {
                graph::TensorId y = blocks::moe_ffn(g, h, L.moe, p_.moe);
                if (L.shexp.gate) y = g.add(y, blocks::ffn_swiglu(g, h, L.shexp));
                x = g.add(x, y);
            }
        }
        blocks::output_head(g, x, s, output_norm_, hp_.rms_eps, output_);
        return g;
    }

    // One cache layer per main layer: the latent and the rope key, [c, k_pe], read as K by every
    // head and (its first kv_lora values) as V.
    std::vector<KvLayer> kv_layers() const override {
        KvLayer l;
        l.n_head_kv = 1;
        l.head_dim_k = p_.kv_lora + hp_.n_rot;
        l.head_dim_v = p_.kv_lora;
        l.v_in_k = true;
        return std::vector<KvLayer>(static_cast<size_t>(n_main_layers()), l);
    }

    const HParams& hparams() const override { return hp_; }
    uint64_t weight_bytes() const override { return w_.bytes_bound(); }
    size_t weight_count() const override { return w_.n_bound(); }

private:
    int64_t n_main_layers() const { return hp_.n_layer - p_.n_nextn; }

    void read_params(const gguf::File& f) {
        const std::string a = hp_.arch + ".";
        auto bad = [&](const std::string& what) { return Error(fmt::format("{}: {}", f.path(), what)); };
        p_.q_lora = f.get_int_or(a + "attention.q_lora_rank", 0);
        p_.kv_lora = f.get_int(a + "attention.kv_lora_rank");
        // key_length_mla / value_length_mla (GLM-4.7-Flash layout) are the per-head sizes; there
        // key_length / value_length describe the absorbed cache row instead.
        p_.head_k = f.get_int_or(a + "attention.key_length_mla", hp_.head_dim_k);
        p_.head_v = f.get_int_or(a + "attention.value_length_mla", hp_.head_dim_v);
        p_.nope = p_.head_k - hp_.n_rot;
        if (p_.kv_lora <= 0 || p_.q_lora < 0 || p_.head_v <= 0 || p_.nope <= 0)
            throw bad(fmt::format("MLA sizes do not fit: kv_lora_rank {}, q_lora_rank {}, key length {} with {} rope "
                                  "dims, value length {}",
                                  p_.kv_lora, p_.q_lora, p_.head_k, hp_.n_rot, p_.head_v));
        p_.n_dense_lead = f.get_int_or(a + "leading_dense_block_count", 0);
        p_.n_nextn = f.get_int_or(a + "nextn_predict_layers", 0);
        if (p_.n_nextn < 0 || p_.n_nextn >= hp_.n_layer)
            throw bad(fmt::format("{}nextn_predict_layers {} leaves no layer of {} to run", a, p_.n_nextn, hp_.n_layer));
        if (p_.n_dense_lead < hp_.n_layer) {
            if (hp_.n_expert <= 0) throw bad(fmt::format("{}expert_count is missing or 0 but MoE layers follow", a));
            p_.n_ff_exp = f.get_int(a + "expert_feed_forward_length");
            p_.n_expert_shared = f.get_int_or(a + "expert_shared_count", 0);
        }
        blocks::MoeConfig& m = p_.moe;
        m.n_expert = static_cast<int>(hp_.n_expert);
        m.n_used = static_cast<int>(hp_.n_expert_used);
        m.norm_weights = f.get_bool_or(a + "expert_weights_norm", false);
        m.weights_scale = static_cast<float>(f.get_float_or(a + "expert_weights_scale", 1.0));
        m.n_group = static_cast<int>(hp_.n_expert_group);
        m.n_group_used = static_cast<int>(hp_.n_expert_group_used);

        // RoPE on the n_rot rope dims. With YaRN, DeepSeek-V2 keeps cos/sin unscaled (its mscale
        // equals mscale_all_dim) and puts the magnitude into the attention scale instead:
        // scale = mscale² / sqrt(head_k), mscale = attn_factor * (1 + 0.1 * mscale_all_dim * ln(factor)).
        p_.rope = blocks::rope_params(hp_, graph::RopeMode::Normal, hp_.n_rot, hp_.n_rot);
        float mscale = 1.0f;
        if (hp_.rope_scaling == RopeScaling::Yarn && p_.rope.ext_factor != 0.0f) {
            const float factor = hp_.rope_scale_factor;
            p_.rope.attn_factor =
                hp_.rope_attn_factor * (hp_.rope_yarn_log_mul != 0.0f ? 1.0f : blocks::yarn_mscale(factor, 1.0f));
            // Converters store 0.1 * mscale_all_dim as yarn_log_multiplier.
            mscale = p_.rope.attn_factor * blocks::yarn_mscale(factor, hp_.rope_yarn_log_mul / 0.1f);
        }
        p_.kq_scale = mscale * mscale / std::sqrt(static_cast<float>(p_.head_k));
    }

    // expert_gating_func: 1 softmax, 2 sigmoid (3, softmax over the chosen, is gpt-oss's). Files
    // without the key: DeepSeek-V2 style (softmax) unless they carry exp_probs_b (V3 / GLM style:
    // sigmoid).
    void choose_gating(const gguf::File& f, bool any_probs_b) {
        if (p_.n_dense_lead >= n_main_layers()) return;  // no MoE layer runs
        const std::string key = hp_.arch + ".expert_gating_func";
        if (f.has(key)) {
            const int64_t v = f.get_int(key);
            if (v != 1 && v != 2 && v != 3)
                throw Error(fmt::format("{}: {} = {} is not a known expert gating function (1 softmax, 2 sigmoid, 3 "
                                        "softmax over the chosen experts)",
                                        f.path(), key, v));
            p_.moe.gating = static_cast<graph::Gating>(v);
        } else {
            p_.moe.gating = any_probs_b ? graph::Gating::Sigmoid : graph::Gating::Softmax;
            std::fprintf(stderr, "kiln: %s has no %s: using %s gating (%s)\n", f.path().c_str(), key.c_str(),
                         any_probs_b ? "sigmoid" : "softmax",
                         any_probs_b ? "the file has exp_probs_b, as DeepSeek-V3 / GLM files do"
                                     : "no exp_probs_b: DeepSeek-V2 style");
        }
    }

    // attn_kv_b [kv_lora, H * (nope + v)] -> V_b as a view (per head the v rows after the nope
    // rows) and K_b as the per-head transpose of the nope rows, [nope, kv_lora, H]. The transpose
    // is kept exact for f32 / bf16 (as f32) and f16 files; a quantized kv_b's values go to f16,
    // whose rounding (2^-11) is far below the quantization's own (real DeepSeek-V2-Lite: 57 MB).
    void split_kv_b(const Weight& kv_b, MlaWeights& a) {
        const int64_t H = hp_.n_head, nope = p_.nope, dv = p_.head_v, r = p_.kv_lora;
        const uint64_t rb = *row_bytes(kv_b.type(), static_cast<uint64_t>(r));
        const auto* base = static_cast<const uint8_t*>(kv_b.data);
        a.v_b = kv_b;
        a.v_b.label = kv_b.name() + "[v]";
        a.v_b.data = base + rb * static_cast<uint64_t>(nope);
        a.v_b.ne0 = r;
        a.v_b.ne1 = dv;
        a.v_b.ne2 = H;
        a.v_b.nb2 = rb * static_cast<uint64_t>(nope + dv);

        const TensorType src = kv_b.type();
        const bool f32 = src == TensorType::F32 || src == TensorType::BF16;
        const size_t el = f32 ? 4 : 2;
        auto& buf = derived_.emplace_back(static_cast<size_t>(H * nope * r) * el);
        std::vector<float> row(static_cast<size_t>(r));
        std::vector<uint16_t> row16(static_cast<size_t>(r));
        for (int64_t h = 0; h < H; ++h)
            for (int64_t i = 0; i < nope; ++i) {
                const uint8_t* in = base + rb * static_cast<uint64_t>(h * (nope + dv) + i);
                const uint8_t* vals;  // row i of head h's K rows, as el-byte values
                if (src == TensorType::F16) {
                    vals = in;
                } else {
                    dequantize_row(src, in, row.data(), r);
                    if (!f32)
                        for (int64_t c = 0; c < r; ++c) row16[static_cast<size_t>(c)] = fp32_to_fp16(row[static_cast<size_t>(c)]);
                    vals = f32 ? reinterpret_cast<const uint8_t*>(row.data()) : reinterpret_cast<const uint8_t*>(row16.data());
                }
                for (int64_t c = 0; c < r; ++c)  // to head h, row c, column i
                    std::memcpy(buf.data() + static_cast<size_t>((h * r + c) * nope + i) * el, vals + c * el, el);
            }
        a.k_b = Weight{};
        a.k_b.label = kv_b.name() + "[k^T]";
        a.k_b.dtype = f32 ? TensorType::F32 : TensorType::F16;
        a.k_b.data = buf.data();
        a.k_b.ne0 = nope;
        a.k_b.ne1 = r;
        a.k_b.ne2 = H;
    }

    graph::TensorId attention(graph::Graph& g, graph::TensorId h, graph::TensorId pos, const MlaWeights& a,
                              int64_t il) const {
        const int H = static_cast<int>(hp_.n_head), rot = static_cast<int>(hp_.n_rot);
        const int nope = static_cast<int>(p_.nope), hk = static_cast<int>(p_.head_k), r = static_cast<int>(p_.kv_lora);
        graph::TensorId q = p_.q_lora > 0
                                ? g.matmul(a.q_b.in(g), g.rms_norm(g.matmul(a.q_a.in(g), h), a.q_a_norm.in(g), hp_.rms_eps))
                                : g.matmul(a.q.in(g), h);  // [H * (nope + rot), T]
        graph::RopeParams rq = p_.rope, rk = p_.rope;
        rq.n_head = H;
        rk.n_head = 1;
        const graph::TensorId q_nope = g.slice_heads(q, H, hk, 0, nope);
        const graph::TensorId q_pe = g.rope(g.slice_heads(q, H, hk, nope, rot), pos, rq);

        const graph::TensorId kv = g.matmul(a.kv_a_mqa.in(g), h);  // [kv_lora + rot, T]
        const graph::TensorId c = g.rms_norm(g.slice_heads(kv, 1, r + rot, 0, r), a.kv_a_norm.in(g), hp_.rms_eps);
        const graph::TensorId k_pe = g.rope(g.slice_heads(kv, 1, r + rot, r, rot), pos, rk);

        graph::AttentionParams ap;
        ap.layer = static_cast<int>(il);
        ap.n_head = H;
        ap.n_head_kv = 1;
        ap.head_dim_k = r + rot;
        ap.head_dim_v = r;
        ap.scale = p_.kq_scale;
        ap.v_in_k = true;
        g.store_kv(g.concat_heads(c, k_pe, 1), graph::kNone, ap);
        const graph::TensorId q_lat = g.head_matmul(a.k_b.in(g), q_nope);  // [H * kv_lora, T]
        const graph::TensorId o_lat = g.attention(g.concat_heads(q_lat, q_pe, H), ap);  // [H * kv_lora, T]
        return g.matmul(a.wo.in(g), g.head_matmul(a.v_b.in(g), o_lat));
    }

    HParams hp_;
    WeightBinder w_;
    Deepseek2Params p_;
    Weight tok_embd_, output_norm_, output_;
    std::vector<Deepseek2Layer> layers_;
    std::vector<std::vector<uint8_t>> derived_;  // weights built at load (K_b from attn_kv_b)
};

}  // namespace

std::unique_ptr<Architecture> load_deepseek2(const gguf::File& f) { return std::make_unique<Deepseek2>(f); }

}  // namespace kiln::model
