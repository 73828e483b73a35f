#version 450
// MoE routing: ids[t][0..k) = indices of the k largest of scores[t] (+ bias, when given), best
// first, ties to the lower index. Group-limited routing (n_group_used < n_group): the experts
// form n_group equal groups, a group scores the sum of its two best, and only the best
// n_group_used groups compete. One invocation per token (rows are at most a few hundred experts).
#include "common.glsl"

const uint MAX_GROUPS = 64;

layout(constant_id = 1) const bool HAS_BIAS = false;

layout(std430, set = 0, binding = 0) readonly buffer S { float sc[]; };
layout(std430, set = 0, binding = 1) readonly buffer B { float bias[]; };
layout(std430, set = 0, binding = 2) buffer Ids { int ids[]; };

layout(push_constant) uniform Params { uint n, n_tok, k, n_group, n_group_used; } p;

float score(uint t, uint i) { return HAS_BIAS ? sc[t * p.n + i] + bias[i] : sc[t * p.n + i]; }

void main() {
    const uint t = flat_group() * WG + gl_LocalInvocationID.x;
    if (t >= p.n_tok) return;
    const bool grouped = p.n_group > 1u && p.n_group_used < p.n_group;
    const uint per_group = p.n / max(p.n_group, 1u);
    uint allowed = 0u, allowed_hi = 0u;  // bit g: group g competes (64 groups in two words)
    if (grouped) {
        float gs[MAX_GROUPS];
        for (uint g = 0; g < p.n_group; ++g) {
            float b1 = -1.0 / 0.0, b2 = -1.0 / 0.0;
            for (uint i = g * per_group; i < (g + 1u) * per_group; ++i) {
                const float v = score(t, i);
                if (v > b1) { b2 = b1; b1 = v; } else if (v > b2) { b2 = v; }
            }
            gs[g] = b1 + b2;
        }
        for (uint u = 0; u < p.n_group_used; ++u) {
            int best = -1;
            for (uint g = 0; g < p.n_group; ++g) {
                const bool taken = g < 32u ? ((allowed >> g) & 1u) != 0u : ((allowed_hi >> (g - 32u)) & 1u) != 0u;
                if (!taken && (best < 0 || gs[g] > gs[best])) best = int(g);
            }
            if (best < 32) allowed |= 1u << uint(best); else allowed_hi |= 1u << uint(best - 32);
        }
    }
    const uint ob = t * p.k;
    for (uint j = 0; j < p.k; ++j) {
        int best = -1;
        float bv = 0.0;
        for (uint i = 0; i < p.n; ++i) {
            if (grouped) {
                const uint g = i / per_group;
                if ((g < 32u ? ((allowed >> g) & 1u) : ((allowed_hi >> (g - 32u)) & 1u)) == 0u) continue;
            }
            bool taken = false;
            for (uint q = 0; q < j; ++q) taken = taken || ids[ob + q] == int(i);
            if (taken) continue;
            const float v = score(t, i);
            if (best < 0 || v > bv) { best = int(i); bv = v; }
        }
        ids[ob + j] = best;
    }
}
