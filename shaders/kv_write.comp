#version 450
// Writes n_tok rows of f32 keys or values (row = n_kv_head * head_dim floats) into an f16 cache
// of n_slots rows of the same width: the token at position pos + t goes to row (pos + t) % n_slots
// (the identity for a full cache, a ring for a sliding-window one), or with `paged` the row of its
// page in a pool of pages (kv_slot.glsl); round to nearest even. One invocation
// per pair of elements: the cache is a uint buffer holding two halves per word (row width even).
#include "common.glsl"

layout(std430, set = 0, binding = 0) readonly buffer Src { float s[]; };
layout(std430, set = 0, binding = 1) buffer Cache { uint c[]; };
layout(std430, set = 0, binding = 2) readonly buffer Table { uint tbl[]; };  // paged only

layout(push_constant) uniform Params {
    uint width;     // floats per row (even)
    uint n_tok;
    uint pos;       // first cache row written
    uint s_stride;  // floats between source rows
    uint n_slots;   // cache rows
    uint paged, page_shift;  // kv_slot.glsl
} p;

#include "kv_slot.glsl"

void main() {
    const uint idx = flat_group() * WG + gl_LocalInvocationID.x;  // pair index
    const uint pairs = p.width / 2u;
    if (idx >= pairs * p.n_tok) return;
    const uint t = idx / pairs, e = 2u * (idx % pairs);
    const uint si = t * p.s_stride + e;
    c[(kv_slot(p.pos + t) * p.width + e) / 2u] = packHalf2x16(vec2(s[si], s[si + 1u]));
}
