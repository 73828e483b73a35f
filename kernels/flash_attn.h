// Tiled causal attention for prompts (flash attention) on the CPU.
//
// A tile is up to kRows query rows that share one KV head (the tokens of a batch times the query
// heads of a GQA group, or MLA's heads on its one latent row). It is run against the keys in
// blocks of up to kKeys: S = Q K^T and O += P V are small matrix products held in registers
// (AVX-512 or AVX2 + FMA, picked at run time by kernels/cpu.h's level, else portable loops), and
// each row keeps an online softmax (running max m and sum l; O is rescaled when m grows). Every
// key block is read, and converted to floats by the caller, once per tile instead of once per
// (token, head).
//
// Layout (all in the caller's scratch, nothing allocated): the queries transposed and
// pre-scaled, Qt[d][r]; the scores of a block transposed, S[j][r], so the softmax of each row is
// vertical (one lane per row); O[r][0, dv rounded up to 16). Each row r sees the key positions
// [first[r], last[r]]; a block only pays for masking where it crosses a row's range.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/cpu.h"

namespace kiln::kernels {

class FlashAttn {
public:
    static constexpr int kRows = 128;  // query rows per tile (a K/V block converted once for all)
    static constexpr int kKeys = 64;   // keys per block

    // Bytes of the scratch one tile needs (64-byte aligned) for keys of dk and values of dv.
    static size_t scratch_bytes(int64_t dk, int64_t dv);

    // Runs over `scratch` (scratch_bytes(dk, dv), 64-byte aligned). scale multiplies q.k; softcap
    // > 0 maps a score s to softcap * tanh(s / softcap) before the softmax.
    FlashAttn(void* scratch, int64_t dk, int64_t dv, float scale, float softcap);

    // Where the caller converts a block of keys and values to floats: kKeys rows of dk floats
    // (stride dk), and kKeys rows of v_stride() floats (the floats past dv are zero).
    float* k_block() const { return kbuf_; }
    float* v_block() const { return vbuf_; }
    int64_t v_stride() const { return dvp_; }

    // Starts a tile of n (1..kRows) rows: row r is the query q[r] (dk floats), seeing keys at
    // positions first[r] .. last[r] (a tile spans fewer than 2^24 positions; last < first: the row
    // sees none of them, as a row of decode's split attention whose chunk lies past it).
    void begin(int n, const float* const* q, const int64_t* first, const int64_t* last);
    // Keys at positions pos0 .. pos0 + nk - 1 (1 <= nk <= kKeys, the blocks of a tile in
    // increasing order): key j is the dk floats at k + j * k_stride, its value the floats at
    // v + j * v_stride, of which dv count and v_stride() are read (padding: any finite value; so
    // that MLA's values can be the heads of its converted key rows, with 16 floats of slack).
    void block(int64_t pos0, int nk, const float* k, int64_t k_stride, const float* v, int64_t v_stride);
    // Writes row r's result (dv floats) to out[r]. sink: nullptr, or one more logit per row
    // (an attention sink: it takes part in the softmax, its weight goes nowhere).
    void end(float* const* out, const float* sink) const;
    // Row r's unnormalised part instead, for merge_attention_parts: o[r] (dv floats: the sum of
    // e^(s - m) v over the keys it saw), m[r] (its max score) and l[r] (the sum of e^(s - m); 0 when
    // it saw no key).
    void end_parts(float* const* o, float* m, float* l) const;

private:
    int64_t dk_, dv_, dvp_;
    float scale_, softcap_;
    KernelLevel level_;  // the kernel level when constructed (kernels/cpu.h)
    float *qt_, *s_, *o_, *m_, *l_, *alpha_, *first_, *last_, *kbuf_, *vbuf_;
    int n_ = 0;
    int64_t pos_base_ = 0;                 // the tile's first position: positions are kept as floats from it
    int64_t max_first_ = 0, min_last_ = 0;  // a block inside [max_first_, min_last_] needs no mask
};

// Merges n parts of one attention row computed over disjoint key ranges (decode's split attention
// in the CPU backend): part i is o[i] (dv floats, the sum of e^(s - m[i]) v over its keys), its
// max score m[i] and its sum of e^(s - m[i]) l[i]; a part with l[i] == 0 saw no key. Writes the
// normalised row to out (dv floats); sink as in FlashAttn::end.
void merge_attention_parts(int n, const float* const* o, const float* m, const float* l, int64_t dv, const float* sink, float* out);

}  // namespace kiln::kernels
