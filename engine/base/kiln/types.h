// Small enums shared by the public API and the layers below it.
#pragma once

#include <cstdint>
#include <string_view>

namespace kiln {

// Element type of the KV cache (K and V each have one). F16 is what llama.cpp uses by default;
// Q8_0 (8.5 bits per element) and Q4_0 (4.5 bits) quantize each head in blocks of 32 with one f16
// scale per block, as llama.cpp's -ctk/-ctv q8_0 / q4_0 do (the layout is kiln's own:
// kernels/kv_quant.h).
enum class KvType { F16, F32, Q8_0, Q4_0 };

inline const char* kv_type_name(KvType t) {
    switch (t) {
        case KvType::F16: return "f16";
        case KvType::F32: return "f32";
        case KvType::Q8_0: return "q8_0";
        case KvType::Q4_0: return "q4_0";
    }
    return "?";
}

// "f16", "f32", "q8_0", "q4_0"; false (out untouched) for anything else.
inline bool parse_kv_type(std::string_view s, KvType* out) {
    for (KvType t : {KvType::F16, KvType::F32, KvType::Q8_0, KvType::Q4_0})
        if (s == kv_type_name(t)) {
            *out = t;
            return true;
        }
    return false;
}

inline bool kv_type_quantized(KvType t) { return t == KvType::Q8_0 || t == KvType::Q4_0; }

// One layer of the KV cache: what an architecture declares (model::Architecture::kv_layers();
// graph::AttentionParams::layer indexes that list), the memory planner and the prefix cache size,
// the backends lay out (backend::KvLayout) and kiln::GgufInfo::read_kv_layers returns. A full
// layer keeps every position of the context; a sliding-window layer (window > 0) a ring of
// n_slots slots, position p in slot p % n_slots (its last n_slots tokens).
struct KvLayer {
    int64_t n_head_kv = 0, head_dim_k = 0, head_dim_v = 0;
    int64_t window = 0;   // sliding window in tokens (0: a full layer)
    bool v_in_k = false;  // MLA: only K rows are stored; V is the head of each
    // The slots a cache of this layer keeps, set when a cache is laid out (runtime::kv_layout: the
    // window plus one batch - 1, since attention over a window w in a batch of n tokens needs
    // n_slots >= w + n - 1); 0: n_ctx, every position (what an architecture declares).
    int64_t n_slots = 0;
};

}  // namespace kiln
