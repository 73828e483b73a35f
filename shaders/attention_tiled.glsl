// Prompt attention tiled over query rows and keys (flash-attention style), included by
// attention_tiled.comp (f32 tiles) and attention_tiled_f16.comp (KILN_F16_TILES: the key and value
// tiles in 16-bit shared memory, half the bytes, so larger tiles fit - exact for an f16 cache; the
// query rows and all arithmetic stay f32).
//
// Same inputs, push constants and masking as attention.comp (read its header). A workgroup takes
// R query rows - (token, head) pairs of one KV head, tokens t and heads h = kvh * G + g with
// G = n_head / n_kv_head, row index t * G + g - and walks the keys their tokens may see in tiles
// of TK: the tile's keys (and values) are read from the cache ONCE into shared memory for all R
// rows (attention.comp reads every key once per query row), the R x TK scores are computed there,
// each row's running max and sum are updated (online softmax) and the output accumulators in
// registers are rescaled and added to. Memory is O(tile) whatever the context length.
// Thread tid owns the outputs tid, tid + WG, ... of the R x Dv output tile.
#include "common.glsl"

#ifdef KILN_F16_TILES
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#define TILE float16_t
const uint PAD = 2u;  // row padding in elements: one 32-bit word (banks)
#else
#define TILE float
const uint PAD = 1u;
#endif

layout(std430, set = 0, binding = 0) readonly buffer Q { float q[]; };
layout(std430, set = 0, binding = 1) readonly buffer KC { uint kc[]; };
layout(std430, set = 0, binding = 2) readonly buffer VC { uint vc[]; };
layout(std430, set = 0, binding = 3) writeonly buffer Out { float o[]; };
layout(std430, set = 0, binding = 4) readonly buffer Sinks { float sinks[]; };
layout(std430, set = 0, binding = 5) readonly buffer Table { uint tbl[]; };  // paged (kv_slot.glsl)

layout(constant_id = 1) const bool HAS_SINKS = false;
layout(constant_id = 3) const uint K_TYPE = 0;  // 0 f16, 1 q8_0, 2 q4_0
layout(constant_id = 4) const uint V_TYPE = 0;
layout(constant_id = 5) const uint R = 16;      // query rows per workgroup
layout(constant_id = 6) const uint TK = 16;     // keys per tile
layout(constant_id = 7) const uint DK = 128;    // Dk (even; equals p.Dk): sizes the tiles, bounds the loops
layout(constant_id = 8) const uint DV = 128;    // Dv (even; equals p.Dv)
layout(constant_id = 9) const bool MLA = false; // V is the head of each K row: no V tile

layout(push_constant) uniform Params {
    uint Dk, Dv, n_head, n_kv_head;
    uint n_tok, pos0, n_kv, window;
    uint q_stride, o_stride;
    float scale, softcap;
    uint n_slots, k_row, k_head, v_row, v_head, k_scale, v_scale;
    uint n_chunks, chunk, k0, acc_off;  // not used here
    uint paged, page_shift;             // kv_slot.glsl
} p;

const uint KS = DK + PAD;  // shared row strides
const uint VS = DV + PAD;
const uint OPT = (R * DV + WG - 1u) / WG;  // outputs per thread

shared float qs[R * (DK + 1u)];
shared TILE ks[TK * KS];
shared TILE vs[MLA ? 1u : TK * VS];
shared float sc[R * TK];
shared float row_m[R], row_l[R], row_alpha[R];
shared uint key_row[TK];  // the cache row of each key of the tile

#include "kv_read.glsl"
#include "kv_slot.glsl"

void main() {
    const uint G = p.n_head / p.n_kv_head;
    const uint n_rows = p.n_tok * G;
    const uint tiles = (n_rows + R - 1u) / R;
    const uint wg = flat_group();
    if (wg >= tiles * p.n_kv_head) return;
    const uint tid = gl_LocalInvocationID.x;
    const uint kvh = wg / tiles, row0 = (wg % tiles) * R;
    const uint rows = min(R, n_rows - row0);

    // The query rows, scaled; rows past the batch are zero (their scores are masked anyway).
    for (uint e = tid; e < R * DK; e += WG) {
        const uint r = e / DK, d = e % DK;
        float v = 0.0;
        if (r < rows) {
            const uint t = (row0 + r) / G, h = kvh * G + (row0 + r) % G;
            v = q[t * p.q_stride + h * DK + d] * p.scale;
        }
        qs[r * (DK + 1u) + d] = v;
    }
    if (tid < R) {
        const uint h = kvh * G + (row0 + tid) % G;
        const bool sink = HAS_SINKS && tid < rows;
        row_m[tid] = sink ? sinks[h] : -3.0e38;  // finite: exp(-inf - m) is 0, exp(m - m) is 1
        row_l[tid] = sink ? 1.0 : 0.0;
    }
    float acc[OPT];
    for (uint k = 0; k < OPT; ++k) acc[k] = 0.0;

    // The keys any row may see: from the first token's window start to the last token's position.
    const uint pos_first = p.pos0 + row0 / G, pos_last = p.pos0 + (row0 + rows - 1u) / G;
    const uint lo = (p.window > 0u && pos_first + 1u > p.window) ? pos_first + 1u - p.window : 0u;
    const uint hi = min(pos_last + 1u, p.n_kv);
    barrier();

    for (uint j0 = lo; j0 < hi; j0 += TK) {
        const uint cnt = min(TK, hi - j0);
        // 1. the tile's keys (and values), read once for all rows
        for (uint i = tid; i < cnt; i += WG) key_row[i] = kv_slot(j0 + i);
        barrier();
        const uint kpairs = DK >> 1;
        for (uint e = tid; e < cnt * kpairs; e += WG) {
            const uint i = e / kpairs, d = e % kpairs;
            const vec2 k2 = k_pair(key_row[i] * p.k_row + kvh * p.k_head, d);
            ks[i * KS + 2u * d] = TILE(k2.x);
            ks[i * KS + 2u * d + 1u] = TILE(k2.y);
        }
        if (!MLA) {
            const uint vpairs = DV >> 1;
            for (uint e = tid; e < cnt * vpairs; e += WG) {
                const uint i = e / vpairs, d = e % vpairs;
                const vec2 v2 = v_pair(key_row[i] * p.v_row + kvh * p.v_head, d);
                vs[i * VS + 2u * d] = TILE(v2.x);
                vs[i * VS + 2u * d + 1u] = TILE(v2.y);
            }
        }
        barrier();
        // 2. scores, masked by each row's causal range and window
        for (uint e = tid; e < R * TK; e += WG) {
            const uint r = e / TK, i = e % TK;
            const uint pos = p.pos0 + (row0 + r) / G, j = j0 + i;
            float s = -1.0 / 0.0;
            if (r < rows && i < cnt && j <= pos && (p.window == 0u || j + p.window > pos)) {
                s = 0.0;
                for (uint d = 0; d < DK; ++d) s += qs[r * (DK + 1u) + d] * float(ks[i * KS + d]);
                if (p.softcap > 0.0) s = p.softcap * (1.0 - 2.0 / (exp(2.0 * s / p.softcap) + 1.0));
            }
            sc[e] = s;
        }
        barrier();
        // 3. per row: the new running max, the tile's weights, the sum
        if (tid < R) {
            const uint r = tid;
            float mt = row_m[r];
            for (uint i = 0; i < cnt; ++i) mt = max(mt, sc[r * TK + i]);
            const float alpha = exp(row_m[r] - mt);
            float l = row_l[r] * alpha;
            for (uint i = 0; i < cnt; ++i) {
                const float w = exp(sc[r * TK + i] - mt);
                sc[r * TK + i] = w;
                l += w;
            }
            row_m[r] = mt;
            row_l[r] = l;
            row_alpha[r] = alpha;
        }
        barrier();
        // 4. rescale the accumulators, add the tile's weighted values
        for (uint k = 0; k < OPT; ++k) {
            const uint oi = tid + k * WG;
            if (oi >= R * DV) break;
            const uint r = oi / DV, d = oi % DV;
            float a = acc[k] * row_alpha[r];
            for (uint i = 0; i < cnt; ++i) a += sc[r * TK + i] * float(MLA ? ks[i * KS + d] : vs[i * VS + d]);
            acc[k] = a;
        }
        barrier();
    }
    for (uint k = 0; k < OPT; ++k) {
        const uint oi = tid + k * WG;
        if (oi >= R * DV) break;
        const uint r = oi / DV, d = oi % DV;
        if (r >= rows) continue;
        const uint t = (row0 + r) / G, h = kvh * G + (row0 + r) % G;
        const float l = row_l[r];
        o[t * p.o_stride + h * DV + d] = l > 0.0 ? acc[k] / l : 0.0;
    }
}
