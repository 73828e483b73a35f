// Causal attention over a KV cache's rows (kernels/kv_rows.h) on the CPU: the compute of the CPU
// backend's attention paths, one work item at a time (the backend splits the work over its
// threads and lays out the rows: engine/backend/cpu/cpu_backend.cpp).
//   attend       one query head against its keys, scores over the whole range then one softmax
//                (decode rows that neither tiled nor split attention takes)
//   attend_mla   up to kMlaMaxHeads query heads on one shared cache row each (MLA's latent), the
//                rows read once for all of them, online softmax per block of kMlaBlock rows
//   flash_key_blocks  the key / value blocks of one KV head fed to a flash-attention tile
//                (kernels/flash_attn.h), each block's rows converted to floats once
// Position j of a layer lives in slot j % slots (a full layer: slots >= every position).
#pragma once

#include <cstdint>

#include "kernels/flash_attn.h"
#include "kernels/kv_rows.h"

namespace kiln::kernels {

// One query head q (dk floats) over the keys at positions [first, first + len) of KV head kvh:
// s_j = scale * q.k_j (softcap > 0: softcap * tanh(s_j / softcap)), softmax over the s_j and the
// sink logit when sink is not null (a term that takes no value), out (dv floats) = sum p_j v_j.
// scores: room for len + 1 floats.
void attend(const float* q, const KvRows& k, const KvRows& v, int64_t kvh, int64_t first, int64_t len, int64_t slots,
            int64_t dk, int64_t dv, float scale, float softcap, const float* sink, float* scores, float* out);

constexpr int kMlaMaxHeads = 8;     // query heads per attend_mla call
constexpr int kMlaBlock = 64;       // cache rows per softmax block
constexpr int64_t kMlaMaxDv = 1024;  // value width its accumulators hold

// MLA (one KV head, V the first dv elements of each K row): n (<= kMlaMaxHeads) query heads,
// head c's query at q + c * dk, over the cache rows of positions [0, len) (a full layer, no
// window, soft-cap or sinks): out + c * dv gets head c's result (dv <= kMlaMaxDv).
void attend_mla(const float* q, int n, const KvRows& rows, int64_t len, int64_t dk, int64_t dv, float scale, float* out);

// A flash-attention tile's keys at positions [lo, hi] of KV head kvh, a block of FlashAttn::kKeys
// at a time: each block's K (dk) and V (dv) rows converted to floats once, the next block's rows
// prefetched while this one is computed, then the block run against the tile's rows. v_in_k
// (MLA): the values are the heads of the key rows (v is not read).
void flash_key_blocks(FlashAttn& fa, const KvRows& k, const KvRows& v, bool v_in_k, int64_t kvh, int64_t slots,
                      int64_t dk, int64_t dv, int64_t lo, int64_t hi);

}  // namespace kiln::kernels
