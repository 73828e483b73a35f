#include "kernels/attention.h"

#include <algorithm>
#include <cmath>

#include "kernels/ops.h"

namespace kiln::kernels {

void attend(const float* q, const KvRows& k, const KvRows& v, int64_t kvh, int64_t first, int64_t len, int64_t slots,
            int64_t dk, int64_t dv, float scale, float softcap, const float* sink, float* scores, float* out) {
    int64_t slot = first % slots;
    for (int64_t j = 0; j < len; ++j) {
        float s = k.dot(q, slot, kvh, dk) * scale;
        if (softcap > 0.0f) s = softcap * std::tanh(s / softcap);
        scores[j] = s;
        if (++slot == slots) slot = 0;
    }
    // A sink is one more logit in the softmax whose weight goes nowhere.
    if (sink) scores[len] = *sink;
    softmax_inplace(scores, sink ? len + 1 : len);

    std::fill(out, out + dv, 0.0f);
    slot = first % slots;
    for (int64_t j = 0; j < len; ++j) {
        v.axpy(scores[j], slot, kvh, out, dv);
        if (++slot == slots) slot = 0;
    }
}

void attend_mla(const float* q, int n, const KvRows& rows, int64_t len, int64_t dk, int64_t dv, float scale, float* out) {
    float sc[kMlaMaxHeads][kMlaBlock];
    float mx[kMlaMaxHeads], sum[kMlaMaxHeads];
    alignas(64) float acc[kMlaMaxHeads * kMlaMaxDv];
    for (int c = 0; c < n; ++c) {
        mx[c] = -INFINITY;
        sum[c] = 0.0f;
        std::fill(acc + c * dv, acc + (c + 1) * dv, 0.0f);
    }
    for (int64_t j0 = 0; j0 < len; j0 += kMlaBlock) {
        const int jb = static_cast<int>(std::min<int64_t>(kMlaBlock, len - j0));
        const uint8_t* rp[kMlaBlock];
        for (int j = 0; j < jb; ++j) rp[j] = rows.row(j0 + j);
        for (int j = 0; j < jb; ++j)
            for (int c = 0; c < n; ++c) sc[c][j] = rows.dot_at(q + c * dk, rp[j], 0, dk) * scale;
        for (int c = 0; c < n; ++c) {
            float bm = mx[c];
            for (int j = 0; j < jb; ++j) bm = std::max(bm, sc[c][j]);
            if (bm > mx[c]) {  // rescale what was summed under the old max
                const float f = std::exp(mx[c] - bm);
                sum[c] *= f;
                kernels::scale(acc + c * dv, f, dv);
                mx[c] = bm;
            }
            for (int j = 0; j < jb; ++j) {
                sc[c][j] = std::exp(sc[c][j] - mx[c]);
                sum[c] += sc[c][j];
            }
        }
        for (int j = 0; j < jb; ++j)
            for (int c = 0; c < n; ++c) rows.axpy_at(sc[c][j], rp[j], 0, acc + c * dv, dv);
    }
    for (int c = 0; c < n; ++c) {
        float* oh = out + c * dv;
        const float inv = 1.0f / sum[c];
        for (int64_t i = 0; i < dv; ++i) oh[i] = acc[c * dv + i] * inv;
    }
}

void flash_key_blocks(FlashAttn& fa, const KvRows& k, const KvRows& v, bool v_in_k, int64_t kvh, int64_t slots,
                      int64_t dk, int64_t dv, int64_t lo, int64_t hi) {
    constexpr int KB = FlashAttn::kKeys;
    for (int64_t p0 = lo; p0 <= hi; p0 += KB) {
        const int nk = static_cast<int>(std::min<int64_t>(KB, hi - p0 + 1));
        float* kb = fa.k_block();
        int64_t slot = p0 % slots;
        for (int j = 0; j < nk; ++j) {
            k.to_float(slot, kvh, kb + j * dk, dk);
            if (!v_in_k) v.to_float(slot, kvh, fa.v_block() + j * fa.v_stride(), dv);
            if (++slot == slots) slot = 0;
        }
        const int next = static_cast<int>(std::min<int64_t>(KB, hi - p0 - KB + 1));
        for (int j = 0; j < next; ++j) {
            k.prefetch(slot, kvh);
            if (!v_in_k) v.prefetch(slot, kvh);
            if (++slot == slots) slot = 0;
        }
        if (v_in_k) fa.block(p0, nk, kb, dk, kb, dk);  // MLA: the values are the heads of the key rows
        else fa.block(p0, nk, kb, dk, fa.v_block(), fa.v_stride());
    }
}

}  // namespace kiln::kernels
