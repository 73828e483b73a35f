// Small enums shared by the public API and the layers below it.
#pragma once

namespace kiln {

// Element type of the KV cache. F16 halves its memory and is what llama.cpp uses by default.
enum class KvType { F16, F32 };

inline const char* kv_type_name(KvType t) { return t == KvType::F16 ? "f16" : "f32"; }

}  // namespace kiln
