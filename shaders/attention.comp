#version 450
// Attention for one sequence over the KV cache: out = softmax(scale * q K^T + mask) V.
//   q    f32 [n_tok][n_head][Dk] (token stride q_stride floats)
//   K, V caches of n_slots rows: position j lives in row j % n_slots (the identity for a full
//        cache, a ring for a sliding-window layer that keeps only its last n_slots positions),
//        or with `paged` in a pool of pages through the page table tbl (kv_slot.glsl).
//        Everything is addressed in 32-bit words: a K row is k_row words, KV head g at g * k_head;
//        likewise V (MLA reads V from the K cache itself: v_row = k_row, v_head = k_head, and a
//        value is the first Dv elements of its K head). A head is stored as K_TYPE / V_TYPE says:
//        0 f16 halves; 1 q8_0, 2 q4_0 (kernels/kv_quant.h: the codes, then from word k_scale /
//        v_scale of the head one f16 scale per 32 elements).
//   out  f32 [n_tok][n_head][Dv] (token stride o_stride floats)
// Query token t sits at position pos0 + t and sees positions j <= pos0 + t, j < n_kv (causal),
// and with a sliding window W > 0 only j > pos0 + t - W. Query head h reads KV head
// h / (n_head / n_kv_head) (grouped-query attention). Scores are scale * q.k, then
// softcap * tanh(score / softcap) when softcap > 0. With sinks, head h's softmax has one more
// term e^sinks[h] in its denominator that takes no value.
//
// One workgroup per (token, head). Keys are taken WG at a time: each thread scores one key, the
// tile's max updates the running max m, the running sum l and the output accumulators are
// rescaled by e^(m_old - m_new) and the tile's weighted values added (online softmax), so memory
// is O(tile) whatever the context length. Thread i owns output dimension pairs i, i + WG, ...
//
// Split-K (SPLIT, flash-decoding): a decode token on a long context gives only n_head workgroups,
// too few to fill a GPU. With SPLIT the positions [k0, k0 + n_chunks * chunk) are cut into
// n_chunks chunks and there is one workgroup per (chunk, token, head): each runs the loop above
// over its chunk only (intersected with the token's causal/window range; a chunk may be empty)
// and writes its running max m, sum l and the unnormalised accumulators to `part` instead of the
// output; attention_combine.comp merges the chunks. A sink enters chunk 0 only.
#include "common.glsl"

const uint DMAX = 576;   // largest Dk the shared query row holds (MLA: 512 latent + 64 rope)
const uint RPAIRS = 4;   // output dimension pairs per thread: Dv <= 2 * RPAIRS * WG

layout(std430, set = 0, binding = 0) readonly buffer Q { float q[]; };
layout(std430, set = 0, binding = 1) readonly buffer KC { uint kc[]; };
layout(std430, set = 0, binding = 2) readonly buffer VC { uint vc[]; };
layout(std430, set = 0, binding = 3) writeonly buffer Out { float o[]; };
layout(std430, set = 0, binding = 4) readonly buffer Sinks { float sinks[]; };
// SPLIT: per (token, head, chunk) row r = (t * n_head + h) * n_chunks + c: part[2r] = m,
// part[2r + 1] = l, part[acc_off + r * Dv + d] = unnormalised output dimension d.
layout(std430, set = 0, binding = 5) writeonly buffer Part { float part[]; };
// paged: the page of each page_tokens positions (kv_slot.glsl); not read otherwise.
layout(std430, set = 0, binding = 6) readonly buffer Table { uint tbl[]; };

layout(constant_id = 1) const bool HAS_SINKS = false;
layout(constant_id = 2) const bool SPLIT = false;
layout(constant_id = 3) const uint K_TYPE = 0;  // 0 f16, 1 q8_0, 2 q4_0
layout(constant_id = 4) const uint V_TYPE = 0;

layout(push_constant) uniform Params {
    uint Dk, Dv, n_head, n_kv_head;
    uint n_tok, pos0, n_kv, window;
    uint q_stride, o_stride;
    float scale, softcap;
    uint n_slots, k_row, k_head, v_row, v_head, k_scale, v_scale;
    uint n_chunks, chunk, k0, acc_off;  // SPLIT only
    uint paged, page_shift;             // kv_slot.glsl
} p;

shared float qs[DMAX];
shared float sc[WG];
shared float pr[WG];
shared uint key_row[WG];  // the cache row of each key of the tile

#include "kv_read.glsl"
#include "kv_slot.glsl"

// q . k for the K head starting at word kb.
float score(uint kb) {
    float s = 0.0;
    if (K_TYPE == 0u) {
        for (uint d = 0; d < p.Dk; d += 2u) {
            const vec2 k2 = unpackHalf2x16(kc[kb + (d >> 1)]);
            s += qs[d] * k2.x + qs[d + 1u] * k2.y;
        }
        return s;
    }
    for (uint b = 0; b * 32u < p.Dk; ++b) {
        const uint e1 = min(b * 32u + 32u, p.Dk);
        float bs = 0.0;
        if (K_TYPE == 1u) {
            for (uint e = b * 32u; e < e1; e += 4u) {
                const int w = int(kc[kb + (e >> 2)]);
                bs += qs[e] * float(bitfieldExtract(w, 0, 8)) + qs[e + 1u] * float(bitfieldExtract(w, 8, 8)) +
                      qs[e + 2u] * float(bitfieldExtract(w, 16, 8)) + qs[e + 3u] * float(bitfieldExtract(w, 24, 8));
            }
        } else {
            for (uint e = b * 32u; e < e1; e += 8u) {
                const uint w = kc[kb + (e >> 3)];
                for (uint j = 0; j < 8u; ++j) bs += qs[e + j] * (float((w >> (4u * j)) & 15u) - 8.0);
            }
        }
        s += bs * k_scale(kb, b);
    }
    return s;
}

void main() {
    const uint wg_all = flat_group();
    const uint n_chunks = SPLIT ? p.n_chunks : 1u;
    if (wg_all >= p.n_tok * p.n_head * n_chunks) return;
    const uint tid = gl_LocalInvocationID.x;
    // Chunk-major: the heads (of all tokens) of one chunk are neighbours, so heads sharing a KV
    // head read the same keys at about the same time (cache hits); r: the partials' row.
    const uint wg = wg_all % (p.n_tok * p.n_head), chunk = wg_all / (p.n_tok * p.n_head);
    const uint prow = wg * n_chunks + chunk;
    const uint t = wg / p.n_head, h = wg % p.n_head;
    const uint kvh = h / (p.n_head / p.n_kv_head);

    for (uint d = tid; d < p.Dk; d += WG) qs[d] = q[t * p.q_stride + h * p.Dk + d] * p.scale;
    barrier();

    const uint pos = p.pos0 + t;
    uint hi = min(pos + 1u, p.n_kv);
    uint lo = (p.window > 0u && pos + 1u > p.window) ? pos + 1u - p.window : 0u;
    if (SPLIT) {
        lo = max(lo, p.k0 + chunk * p.chunk);
        hi = min(hi, p.k0 + (chunk + 1u) * p.chunk);
    }

    // A sink starts the running softmax as a term of weight e^(sink - m) with no value.
    const bool sink = HAS_SINKS && chunk == 0u;
    float m = sink ? sinks[h] : -1.0 / 0.0, l = sink ? 1.0 : 0.0;
    // Thread tid owns the output dimension pairs (2q, 2q + 1), q = tid + r * WG: one 32-bit word
    // (two halves) of each V row per pair.
    vec2 acc[RPAIRS];
    for (uint r = 0; r < RPAIRS; ++r) acc[r] = vec2(0.0);

    for (uint j0 = lo; j0 < hi; j0 += WG) {
        const uint cnt = min(WG, hi - j0);
        // 1. scores of this tile, one key per thread
        float s = -1.0 / 0.0;
        if (tid < cnt) {
            const uint row = kv_slot(j0 + tid);
            key_row[tid] = row;
            s = score(row * p.k_row + kvh * p.k_head);
            if (p.softcap > 0.0) s = p.softcap * (1.0 - 2.0 / (exp(2.0 * s / p.softcap) + 1.0));
        }
        sc[tid] = s;
        barrier();
        // 2. running max, weights of this tile
        float mt = m;
        for (uint i = 0; i < cnt; ++i) mt = max(mt, sc[i]);
        pr[tid] = tid < cnt ? exp(s - mt) : 0.0;
        barrier();
        // 3. rescale what we had, add this tile's weighted values
        const float alpha = exp(m - mt);
        m = mt;
        l *= alpha;
        for (uint r = 0; r < RPAIRS; ++r) acc[r] *= alpha;
        for (uint i = 0; i < cnt; ++i) {
            const float w = pr[i];
            l += w;
            const uint vb = key_row[i] * p.v_row + kvh * p.v_head;
            for (uint r = 0; r < RPAIRS; ++r) {
                const uint q = tid + r * WG;
                if (2u * q < p.Dv) acc[r] += w * v_pair(vb, q);
            }
        }
        barrier();
    }
    if (SPLIT) {
        if (tid == 0u) {
            part[2u * prow] = m;
            part[2u * prow + 1u] = l;
        }
        for (uint r = 0; r < RPAIRS; ++r) {
            const uint q = tid + r * WG;
            if (2u * q < p.Dv) {
                part[p.acc_off + prow * p.Dv + 2u * q] = acc[r].x;
                part[p.acc_off + prow * p.Dv + 2u * q + 1u] = acc[r].y;
            }
        }
        return;
    }
    const float inv = l > 0.0 ? 1.0 / l : 0.0;
    for (uint r = 0; r < RPAIRS; ++r) {
        const uint q = tid + r * WG;
        if (2u * q < p.Dv) {
            o[t * p.o_stride + h * p.Dv + 2u * q] = acc[r].x * inv;
            o[t * p.o_stride + h * p.Dv + 2u * q + 1u] = acc[r].y * inv;
        }
    }
}
