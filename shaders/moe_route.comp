#version 450
// Lists the token slots routed to each expert, for moe_matmul_tiled.comp: one workgroup counts
// the ids per expert (shared-memory atomics), turns the counts into offsets, then scatters each
// slot index t * S + s into its expert's list. Ids outside [0, G) go to entry G. The order within
// a list varies from run to run; the outputs do not (each is computed from its own slot alone).
//   route[g] = first list entry of g, route[G + 1 + g] = count, route[2 (G + 1) + j] = slots.
#include "common.glsl"

const uint MAX_G = 1024u;  // the host refuses more experts

layout(std430, set = 0, binding = 0) readonly buffer Ids { int ids[]; };
layout(std430, set = 0, binding = 1) writeonly buffer Route { uint route[]; };

layout(push_constant) uniform Params {
    uint n;  // slots: n_tok * S
    uint G;  // experts
} p;

shared uint cnt[MAX_G + 1u];

uint bucket(int id) { return id < 0 || uint(id) >= p.G ? p.G : uint(id); }

void main() {
    const uint tid = gl_LocalInvocationID.x;
    for (uint e = tid; e <= p.G; e += WG) cnt[e] = 0u;
    barrier();
    for (uint i = tid; i < p.n; i += WG) atomicAdd(cnt[bucket(ids[i])], 1u);
    barrier();
    if (tid == 0u) {
        uint off = 0u;
        for (uint e = 0u; e <= p.G; ++e) {
            const uint c = cnt[e];
            route[e] = off;
            route[p.G + 1u + e] = c;
            cnt[e] = off;  // now the cursor of e's list
            off += c;
        }
    }
    barrier();
    const uint list = 2u * (p.G + 1u);
    for (uint i = tid; i < p.n; i += WG) route[list + atomicAdd(cnt[bucket(ids[i])], 1u)] = i;
}
