// Portable kernels: a block decoder per weight type, the 8-bit activation quantisers and the
// scalar GEMM tile. These are the always-available path (and what set_force_scalar selects).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/decode_generic.h"
#include "kernels/matmul_impl.h"

namespace kiln::kernels::detail {
namespace {

using namespace blk;

// Out-of-line portable decoders (the generic code compiled for the baseline target).
void dec_f32(const void* w, float* out, int64_t n) { generic::dec_f32(w, out, n); }
void dec_f16(const void* w, float* out, int64_t n) { generic::dec_f16(w, out, n); }
void dec_bf16(const void* w, float* out, int64_t n) { generic::dec_bf16(w, out, n); }
void dec_q4_0(const void* w, float* out, int64_t n) { generic::dec_q4_0(w, out, n); }
void dec_q4_1(const void* w, float* out, int64_t n) { generic::dec_q4_1(w, out, n); }
void dec_q5_0(const void* w, float* out, int64_t n) { generic::dec_q5_0(w, out, n); }
void dec_q5_1(const void* w, float* out, int64_t n) { generic::dec_q5_1(w, out, n); }
void dec_q8_0(const void* w, float* out, int64_t n) { generic::dec_q8_0(w, out, n); }
void dec_q8_1(const void* w, float* out, int64_t n) { generic::dec_q8_1(w, out, n); }
void dec_q2_K(const void* w, float* out, int64_t n) { generic::dec_q2_K(w, out, n); }
void dec_q3_K(const void* w, float* out, int64_t n) { generic::dec_q3_K(w, out, n); }
void dec_q4_K(const void* w, float* out, int64_t n) { generic::dec_q4_K(w, out, n); }
void dec_q5_K(const void* w, float* out, int64_t n) { generic::dec_q5_K(w, out, n); }
void dec_q6_K(const void* w, float* out, int64_t n) { generic::dec_q6_K(w, out, n); }
void dec_q8_K(const void* w, float* out, int64_t n) { generic::dec_q8_K(w, out, n); }
void dec_iq4_nl(const void* w, float* out, int64_t n) { generic::dec_iq4_nl(w, out, n); }
void dec_iq4_xs(const void* w, float* out, int64_t n) { generic::dec_iq4_xs(w, out, n); }
void dec_mxfp4(const void* w, float* out, int64_t n) { generic::dec_mxfp4(w, out, n); }

template <typename B>
const B* blocks(const void* w) {
    return static_cast<const B*>(w);
}

// ---- unpackers to (code, s, o) for the integer tiles ---------------------------------------

void up_q4_0(const void* w, int64_t n, uint8_t* c, float* s, float* o) {
    const q4_0* b = blocks<q4_0>(w);
    for (int64_t ib = 0; ib < n / QK; ++ib, c += QK) {
        for (int j = 0; j < 16; ++j) {
            c[j] = b[ib].qs[j] & 0xF;
            c[j + 16] = b[ib].qs[j] >> 4;
        }
        s[ib] = half_to_float(b[ib].d);
        o[ib] = -8.0f * s[ib];
    }
}

void up_q4_1(const void* w, int64_t n, uint8_t* c, float* s, float* o) {
    const q4_1* b = blocks<q4_1>(w);
    for (int64_t ib = 0; ib < n / QK; ++ib, c += QK) {
        for (int j = 0; j < 16; ++j) {
            c[j] = b[ib].qs[j] & 0xF;
            c[j + 16] = b[ib].qs[j] >> 4;
        }
        s[ib] = half_to_float(b[ib].d);
        o[ib] = half_to_float(b[ib].m);
    }
}

template <typename B>
void up_q5(const B& b, uint8_t* c) {
    uint32_t qh;
    std::memcpy(&qh, b.qh, 4);
    for (int j = 0; j < 16; ++j) {
        c[j] = static_cast<uint8_t>((b.qs[j] & 0xF) | (((qh >> j) & 1u) << 4));
        c[j + 16] = static_cast<uint8_t>((b.qs[j] >> 4) | (((qh >> (j + 16)) & 1u) << 4));
    }
}

void up_q5_0(const void* w, int64_t n, uint8_t* c, float* s, float* o) {
    const q5_0* b = blocks<q5_0>(w);
    for (int64_t ib = 0; ib < n / QK; ++ib, c += QK) {
        up_q5(b[ib], c);
        s[ib] = half_to_float(b[ib].d);
        o[ib] = -16.0f * s[ib];
    }
}

void up_q5_1(const void* w, int64_t n, uint8_t* c, float* s, float* o) {
    const q5_1* b = blocks<q5_1>(w);
    for (int64_t ib = 0; ib < n / QK; ++ib, c += QK) {
        up_q5(b[ib], c);
        s[ib] = half_to_float(b[ib].d);
        o[ib] = half_to_float(b[ib].m);
    }
}

void up_q8_0(const void* w, int64_t n, uint8_t* c, float* s, float* o) {
    const q8_0* b = blocks<q8_0>(w);
    for (int64_t ib = 0; ib < n / QK; ++ib, c += QK) {
        for (int j = 0; j < QK; ++j) c[j] = static_cast<uint8_t>(b[ib].qs[j] + 128);
        s[ib] = half_to_float(b[ib].d);
        o[ib] = -128.0f * s[ib];
    }
}

void up_q8_1(const void* w, int64_t n, uint8_t* c, float* s, float* o) {
    const q8_1* b = blocks<q8_1>(w);
    for (int64_t ib = 0; ib < n / QK; ++ib, c += QK) {
        for (int j = 0; j < QK; ++j) c[j] = static_cast<uint8_t>(b[ib].qs[j] + 128);
        s[ib] = half_to_float(b[ib].d);
        o[ib] = -128.0f * s[ib];
    }
}

void up_q8_K(const void* w, int64_t n, uint8_t* c, float* s, float* o) {
    const q8_K* b = blocks<q8_K>(w);
    for (int64_t ib = 0; ib < n / QKK; ++ib, c += QKK) {
        for (int j = 0; j < QKK; ++j) c[j] = static_cast<uint8_t>(b[ib].qs[j] + 128);
        for (int g = 0; g < 8; ++g) {
            s[8 * ib + g] = b[ib].d;
            o[8 * ib + g] = -128.0f * b[ib].d;
        }
    }
}

void up_q2_K(const void* w, int64_t n, uint8_t* c, float* s, float* o) {  // groups of 16
    const q2_K* b = blocks<q2_K>(w);
    for (int64_t ib = 0; ib < n / QKK; ++ib, c += QKK, s += 16, o += 16) {
        const float d = half_to_float(b[ib].d), dmin = half_to_float(b[ib].dmin);
        for (int e = 0; e < QKK; ++e) {
            const int h = e / 128, sh = (e % 128) / 32, i = e % 32;
            c[e] = static_cast<uint8_t>((b[ib].qs[32 * h + i] >> (2 * sh)) & 3);
        }
        for (int g = 0; g < 16; ++g) {
            s[g] = d * static_cast<float>(b[ib].scales[g] & 0xF);
            o[g] = -(dmin * static_cast<float>(b[ib].scales[g] >> 4));
        }
    }
}

void up_q3_K(const void* w, int64_t n, uint8_t* c, float* s, float* o) {  // groups of 16
    const q3_K* b = blocks<q3_K>(w);
    for (int64_t ib = 0; ib < n / QKK; ++ib, c += QKK, s += 16, o += 16) {
        const float d = half_to_float(b[ib].d);
        for (int e = 0; e < QKK; ++e) {
            const int h = e / 128, sh = (e % 128) / 32, i = e % 32;
            const int q2 = (b[ib].qs[32 * h + i] >> (2 * sh)) & 3;
            const int hbit = (b[ib].hmask[i] >> (e / 32)) & 1;
            c[e] = static_cast<uint8_t>(q2 + 4 * hbit);  // value = code - 4
        }
        for (int g = 0; g < 16; ++g) {
            s[g] = d * static_cast<float>(q3k_scale(g, b[ib].scales));
            o[g] = -4.0f * s[g];
        }
    }
}

template <typename B>
void up_k4_scales(const B& b, float* s, float* o) {
    const float d = half_to_float(b.d), dmin = half_to_float(b.dmin);
    for (int g = 0; g < 8; ++g) {
        uint8_t sc, m;
        scale_min_k4(g, b.scales, &sc, &m);
        s[g] = d * sc;
        o[g] = -(dmin * m);
    }
}

void up_q4_K(const void* w, int64_t n, uint8_t* c, float* s, float* o) {
    const q4_K* b = blocks<q4_K>(w);
    for (int64_t ib = 0; ib < n / QKK; ++ib, c += QKK, s += 8, o += 8) {
        for (int ch = 0; ch < 4; ++ch)
            for (int l = 0; l < 32; ++l) {
                c[64 * ch + l] = b[ib].qs[32 * ch + l] & 0xF;
                c[64 * ch + 32 + l] = b[ib].qs[32 * ch + l] >> 4;
            }
        up_k4_scales(b[ib], s, o);
    }
}

void up_q5_K(const void* w, int64_t n, uint8_t* c, float* s, float* o) {
    const q5_K* b = blocks<q5_K>(w);
    for (int64_t ib = 0; ib < n / QKK; ++ib, c += QKK, s += 8, o += 8) {
        for (int ch = 0; ch < 4; ++ch)
            for (int l = 0; l < 32; ++l) {
                const uint8_t q = b[ib].qs[32 * ch + l], h = b[ib].qh[l];
                c[64 * ch + l] = static_cast<uint8_t>((q & 0xF) | (((h >> (2 * ch)) & 1) << 4));
                c[64 * ch + 32 + l] = static_cast<uint8_t>((q >> 4) | (((h >> (2 * ch + 1)) & 1) << 4));
            }
        up_k4_scales(b[ib], s, o);
    }
}

void up_q6_K(const void* w, int64_t n, uint8_t* c, float* s, float* o) {  // groups of 16
    const q6_K* b = blocks<q6_K>(w);
    for (int64_t ib = 0; ib < n / QKK; ++ib, c += QKK, s += 16, o += 16) {
        const float d = half_to_float(b[ib].d);
        for (int h = 0; h < 2; ++h) {
            const uint8_t* ql = b[ib].ql + 64 * h;
            const uint8_t* qh = b[ib].qh + 32 * h;
            uint8_t* cc = c + 128 * h;
            for (int l = 0; l < 32; ++l) {
                cc[l] = static_cast<uint8_t>((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4));
                cc[l + 32] = static_cast<uint8_t>((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4));
                cc[l + 64] = static_cast<uint8_t>((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4));
                cc[l + 96] = static_cast<uint8_t>((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4));
            }
        }
        for (int g = 0; g < 16; ++g) {
            s[g] = d * static_cast<float>(b[ib].scales[g]);
            o[g] = -32.0f * s[g];
        }
    }
}

void up_iq4_nl(const void* w, int64_t n, uint8_t* c, float* s, float* o) {
    const iq4_nl* b = blocks<iq4_nl>(w);
    for (int64_t ib = 0; ib < n / QK; ++ib, c += QK) {
        for (int j = 0; j < 16; ++j) {
            c[j] = static_cast<uint8_t>(kIq4nl[b[ib].qs[j] & 0xF] + 128);
            c[j + 16] = static_cast<uint8_t>(kIq4nl[b[ib].qs[j] >> 4] + 128);
        }
        s[ib] = half_to_float(b[ib].d);
        o[ib] = -128.0f * s[ib];
    }
}

void up_iq4_xs(const void* w, int64_t n, uint8_t* c, float* s, float* o) {
    const iq4_xs* b = blocks<iq4_xs>(w);
    for (int64_t ib = 0; ib < n / QKK; ++ib, c += QKK, s += 8, o += 8) {
        const float d = half_to_float(b[ib].d);
        for (int g = 0; g < 8; ++g) {
            const int ls = ((b[ib].scales_l[g / 2] >> (4 * (g % 2))) & 0xF) |
                           (((b[ib].scales_h >> (2 * g)) & 3) << 4);
            s[g] = d * static_cast<float>(ls - 32);
            o[g] = -128.0f * s[g];
            const uint8_t* q = b[ib].qs + 16 * g;
            for (int j = 0; j < 16; ++j) {
                c[32 * g + j] = static_cast<uint8_t>(kIq4nl[q[j] & 0xF] + 128);
                c[32 * g + 16 + j] = static_cast<uint8_t>(kIq4nl[q[j] >> 4] + 128);
            }
        }
    }
}

void up_mxfp4(const void* w, int64_t n, uint8_t* c, float* s, float* o) {
    const mxfp4* b = blocks<mxfp4>(w);
    for (int64_t ib = 0; ib < n / QK; ++ib, c += QK) {
        for (int j = 0; j < 16; ++j) {
            c[j] = static_cast<uint8_t>(kMxfp4[b[ib].qs[j] & 0xF] + 12);
            c[j + 16] = static_cast<uint8_t>(kMxfp4[b[ib].qs[j] >> 4] + 12);
        }
        s[ib] = e8m0_half(b[ib].e);
        o[ib] = -12.0f * s[ib];
    }
}

// Scalar GEMM tile: R rows x T tokens of dot products kept in kLanes-wide partial sums, a shape
// compilers vectorise without -ffast-math.
constexpr int kLanes = 8;

template <int R, int T>
void tile_scalar(const float* w, int64_t ldw, const float* x, int64_t ldx, int64_t kc, float* y,
                 int64_t ldy, bool accumulate) {
    float acc[R][T][kLanes] = {};
    int64_t i = 0;
    for (; i + kLanes <= kc; i += kLanes)
        for (int r = 0; r < R; ++r)
            for (int t = 0; t < T; ++t)
                for (int l = 0; l < kLanes; ++l)
                    acc[r][t][l] += w[r * ldw + i + l] * x[t * ldx + i + l];
    for (int r = 0; r < R; ++r) {
        for (int t = 0; t < T; ++t) {
            float s = 0;
            for (int l = 0; l < kLanes; ++l) s += acc[r][t][l];
            for (int64_t j = i; j < kc; ++j) s += w[r * ldw + j] * x[t * ldx + j];
            float& out = y[t * ldy + r];
            out = accumulate ? out + s : s;
        }
    }
}

}  // namespace

DecodeFn decoder_scalar(TensorType t) {
    switch (t) {
        case TensorType::F32: return dec_f32;
        case TensorType::F16: return dec_f16;
        case TensorType::BF16: return dec_bf16;
        case TensorType::Q4_0: return dec_q4_0;
        case TensorType::Q4_1: return dec_q4_1;
        case TensorType::Q5_0: return dec_q5_0;
        case TensorType::Q5_1: return dec_q5_1;
        case TensorType::Q8_0: return dec_q8_0;
        case TensorType::Q8_1: return dec_q8_1;
        case TensorType::Q2_K: return dec_q2_K;
        case TensorType::Q3_K: return dec_q3_K;
        case TensorType::Q4_K: return dec_q4_K;
        case TensorType::Q5_K: return dec_q5_K;
        case TensorType::Q6_K: return dec_q6_K;
        case TensorType::Q8_K: return dec_q8_K;
        case TensorType::IQ4_NL: return dec_iq4_nl;
        case TensorType::IQ4_XS: return dec_iq4_xs;
        case TensorType::MXFP4: return dec_mxfp4;
        default: return nullptr;
    }
}

CodeFormat code_format(TensorType t) {
    switch (t) {
        case TensorType::Q4_0: return {32, 8, false};
        case TensorType::Q4_1: return {32, 0, true};
        case TensorType::Q5_0: return {32, 16, false};
        case TensorType::Q5_1: return {32, 0, true};
        case TensorType::Q8_0:
        case TensorType::Q8_1:
        case TensorType::Q8_K: return {32, 128, false};
        case TensorType::Q2_K: return {16, 0, true};
        case TensorType::Q3_K: return {16, 4, false};
        case TensorType::Q4_K:
        case TensorType::Q5_K: return {32, 0, true};
        case TensorType::Q6_K: return {16, 32, false};
        case TensorType::IQ4_NL:
        case TensorType::IQ4_XS: return {32, 128, false};
        case TensorType::MXFP4: return {32, 12, false};
        default: return {};
    }
}

UnpackFn unpacker_scalar(TensorType t) {
    switch (t) {
        case TensorType::Q4_0: return up_q4_0;
        case TensorType::Q4_1: return up_q4_1;
        case TensorType::Q5_0: return up_q5_0;
        case TensorType::Q5_1: return up_q5_1;
        case TensorType::Q8_0: return up_q8_0;
        case TensorType::Q8_1: return up_q8_1;
        case TensorType::Q8_K: return up_q8_K;
        case TensorType::Q2_K: return up_q2_K;
        case TensorType::Q3_K: return up_q3_K;
        case TensorType::Q4_K: return up_q4_K;
        case TensorType::Q5_K: return up_q5_K;
        case TensorType::Q6_K: return up_q6_K;
        case TensorType::IQ4_NL: return up_iq4_nl;
        case TensorType::IQ4_XS: return up_iq4_xs;
        case TensorType::MXFP4: return up_mxfp4;
        default: return nullptr;
    }
}

size_t xformat_row_bytes(XFormat f, int64_t k) {
    switch (f) {
        case XFormat::F32: return static_cast<size_t>(k) * sizeof(float);
        case XFormat::Q8x32: return static_cast<size_t>(k / QK) * sizeof(xq32);
        case XFormat::Q8x256: return static_cast<size_t>(k / QKK) * sizeof(xq256);
    }
    return 0;
}

void quantize_x_q8x32_scalar(const float* x, xq32* out, int64_t k) {
    for (int64_t ib = 0; ib < k / QK; ++ib, x += QK) {
        float amax = 0;
        for (int j = 0; j < QK; ++j) amax = std::max(amax, std::fabs(x[j]));
        const float d = amax / 127.0f;
        const float id = d > 0 ? 127.0f / amax : 0.0f;
        int sum = 0;
        for (int j = 0; j < QK; ++j) {
            const int q = static_cast<int>(std::nearbyint(x[j] * id));
            out[ib].qs[j] = static_cast<int8_t>(q);
            sum += q;
        }
        out[ib].d = d;
        out[ib].sum = sum;
    }
}

void quantize_x_q8x256_scalar(const float* x, xq256* out, int64_t k) {
    for (int64_t ib = 0; ib < k / QKK; ++ib, x += QKK) {
        float amax = 0;
        for (int j = 0; j < QKK; ++j) amax = std::max(amax, std::fabs(x[j]));
        const float d = amax / 127.0f;
        const float id = d > 0 ? 127.0f / amax : 0.0f;
        for (int g = 0; g < 16; ++g) {
            int sum = 0;
            for (int j = 16 * g; j < 16 * g + 16; ++j) {
                const int q = static_cast<int>(std::nearbyint(x[j] * id));
                out[ib].qs[j] = static_cast<int8_t>(q);
                sum += q;
            }
            out[ib].bsums[g] = static_cast<int16_t>(sum);
        }
        out[ib].d = d;
    }
}

namespace {
template <class Block, int N, void (*Quantize)(const float*, Block*, int64_t)>
void round_blocks(const float* x, float* out, int64_t k) {
    Block q;
    for (int64_t i = 0; i < k; i += N) {
        Quantize(x + i, &q, N);
        for (int j = 0; j < N; ++j) out[i + j] = q.d * static_cast<float>(q.qs[j]);
    }
}
}  // namespace

void round_x_scalar(const float* x, float* out, int64_t k, int grid) {
    if (grid == QK)
        round_blocks<xq32, QK, quantize_x_q8x32_scalar>(x, out, k);
    else
        round_blocks<xq256, QKK, quantize_x_q8x256_scalar>(x, out, k);
}

void gemm_tile_scalar(const float* w, int64_t ldw, const float* x, int64_t ldx, int64_t kc,
                      float* y, int64_t ldy, int64_t nr, int64_t nt, bool accumulate) {
    constexpr int R = 4, T = 4;
    for (int64_t t = 0; t < nt; t += T) {
        const int64_t tn = std::min<int64_t>(T, nt - t);
        for (int64_t r = 0; r < nr; r += R) {
            const int64_t rn = std::min<int64_t>(R, nr - r);
            const float* wr = w + r * ldw;
            const float* xt = x + t * ldx;
            float* yt = y + t * ldy + r;
            if (rn == R && tn == T) {
                tile_scalar<R, T>(wr, ldw, xt, ldx, kc, yt, ldy, accumulate);
            } else {
                for (int64_t rr = 0; rr < rn; ++rr)
                    for (int64_t tt = 0; tt < tn; ++tt)
                        tile_scalar<1, 1>(wr + rr * ldw, ldw, xt + tt * ldx, ldx, kc,
                                          yt + tt * ldy + rr, ldy, accumulate);
            }
        }
    }
}

}  // namespace kiln::kernels::detail
