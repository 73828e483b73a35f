#version 450
// out[i] = row ids[i] of a table stored in a GGUF type (embedding lookup), decoded to f32.
// One workgroup per id; an id outside the table writes NaN (a visible error, never a stray read).
#include "common.glsl"

layout(constant_id = 1) const uint TYPE = 0;
layout(constant_id = 2) const uint BLOCK = 1;
layout(constant_id = 3) const uint BLOCK_BYTES = 4;

layout(std430, set = 0, binding = 0) readonly buffer Table { uint wq[]; };
layout(std430, set = 0, binding = 1) readonly buffer Ids { int ids[]; };
layout(std430, set = 0, binding = 2) writeonly buffer Out { float o[]; };

layout(push_constant) uniform Params {
    uint K;          // elements per row
    uint n_rows;     // rows in the table
    uint n_ids;
    uint row_bytes;  // bytes per table row
    uint o_stride;   // floats between output rows
} p;

#include "quant.glsl"

void main() {
    const uint r = flat_group();
    if (r >= p.n_ids) return;
    const int id = ids[r];
    const bool ok = id >= 0 && uint(id) < p.n_rows;
    const uint ob = r * p.o_stride;
    for (uint i = 4u * gl_LocalInvocationID.x; i < p.K; i += 4u * WG) {
        const vec4 v = ok ? load4(uint(id) * p.row_bytes, i) : vec4(uintBitsToFloat(0x7fc00000u));
        o[ob + i] = v.x; o[ob + i + 1u] = v.y; o[ob + i + 2u] = v.z; o[ob + i + 3u] = v.w;
    }
}
