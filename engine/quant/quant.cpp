// Scalar reference dequantizers and quantizers. Layouts are documented on the block structs in
// quant.h; this file says how each format is decoded and how we choose the codes when encoding.
//
// Dequantizers reproduce llama.cpp's float results bit for bit, so the order of the float
// operations below matters. CMakeLists.txt builds this file with -ffp-contract=off so that
// a*b - c is never fused into an fma: the reference results are then the same on every machine
// and with -march=native (the shared reference blocks happen to match either way).
#include "quant/quant.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "kiln/error.h"

namespace kiln {

// ---- float16 / bfloat16 --------------------------------------------------------------------

uint16_t fp32_to_fp16(float f) {
    uint32_t x;
    std::memcpy(&x, &f, sizeof x);
    const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
    x &= 0x7fffffffu;

    if (x > 0x7f800000u)  // NaN: keep the top payload bits, force the quiet bit
        return static_cast<uint16_t>(sign | 0x7e00u | ((x >> 13) & 0x3ffu));
    if (x >= 0x477ff000u)  // >= 65520 (halfway between 65504 and 2^16) or inf: rounds to inf
        return static_cast<uint16_t>(sign | 0x7c00u);

    uint32_t exp = x >> 23;
    uint32_t mant = x & 0x7fffffu;
    if (exp >= 113) {
        // Normal half: rebias 127 -> 15, keep 10 mantissa bits, round on the 13 dropped ones.
        // A carry out of the mantissa correctly bumps the exponent.
        uint32_t h = ((exp - 112) << 10) | (mant >> 13);
        const uint32_t rest = mant & 0x1fffu;
        if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
        return static_cast<uint16_t>(sign | h);
    }
    // Subnormal half (or zero): h = round(|f| / 2^-24). |f| = (mant | 1<<23) * 2^(exp-150), so
    // h = full_mant >> (126 - exp) with rounding. Below 2^-25 everything rounds to zero (float
    // subnormals included, exp == 0).
    if (exp < 102) return sign;
    const uint32_t full = mant | 0x800000u;
    const uint32_t shift = 126 - exp;  // 14..24
    uint32_t h = full >> shift;
    const uint32_t rest = full & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    if (rest > half || (rest == half && (h & 1u))) ++h;  // h == 0x400 is the smallest normal
    return static_cast<uint16_t>(sign | h);
}

uint16_t fp32_to_bf16(float f) {
    uint32_t x;
    std::memcpy(&x, &f, sizeof x);
    if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x0040u);
    // Round to nearest even on the 16 dropped bits; overflow to inf falls out naturally.
    x += 0x7fffu + ((x >> 16) & 1u);
    return static_cast<uint16_t>(x >> 16);
}

namespace {

// ---- helpers -------------------------------------------------------------------------------

[[noreturn]] void throw_bad_type(const char* fn, TensorType t) {
    throw Error(std::string(fn) + ": tensor type " + type_name(t) + " (id " +
                std::to_string(static_cast<uint32_t>(t)) + ") is not supported");
}

// Number of blocks in a row of n elements, or throws.
int64_t block_count(const char* fn, TensorType t, int64_t n) {
    const TypeTraits* tr = type_traits(static_cast<uint32_t>(t));
    if (!tr) throw_bad_type(fn, t);
    if (n < 0 || n % tr->block_size != 0)
        throw Error(std::string(fn) + ": row of " + std::to_string(n) + " elements is not a whole number of " +
                    tr->name + " blocks (" + std::to_string(tr->block_size) + " elements each)");
    return n / tr->block_size;
}

// Round to nearest (ties to even) and clamp to [lo, hi]. The clamp happens in float so that huge
// or NaN inputs never reach an out-of-range float->int conversion (NaN goes to lo).
inline int round_clamp(float v, int lo, int hi) {
    if (!(v > static_cast<float>(lo))) return lo;
    if (v >= static_cast<float>(hi)) return hi;
    return static_cast<int>(std::nearbyint(v));
}

// Reads block i of a packed array without assuming alignment.
template <class Block>
inline Block load_block(const void* src, int64_t i) {
    Block b;
    std::memcpy(&b, static_cast<const uint8_t*>(src) + i * static_cast<int64_t>(sizeof(Block)), sizeof b);
    return b;
}
template <class Block>
inline void store_block(void* dst, int64_t i, const Block& b) {
    std::memcpy(static_cast<uint8_t*>(dst) + i * static_cast<int64_t>(sizeof(Block)), &b, sizeof b);
}

// The element of x with the largest magnitude (keeping its sign), and that magnitude.
inline float signed_absmax(const float* x, int n, float* amax) {
    float best = 0.0f, m = 0.0f;
    for (int i = 0; i < n; ++i) {
        const float a = std::fabs(x[i]);
        if (a > m) {
            m = a;
            best = x[i];
        }
    }
    *amax = m;
    return best;
}

// Stores a scale as fp16 and returns the value a decoder will see.
inline float round_fp16(float v, uint16_t* out) {
    *out = fp32_to_fp16(v);
    return fp16_to_fp32(*out);
}

// As round_fp16, but never smaller in magnitude than v (one ulp away from zero if nearest
// rounding went down). Used for super-block scales that integer sub-scales are measured against:
// the largest sub-scale then never clips, which matters when v is an fp16 subnormal (tiny
// blocks) and one ulp is a large relative step.
inline float round_fp16_up(float v, uint16_t* out) {
    *out = fp32_to_fp16(v);
    if (std::fabs(fp16_to_fp32(*out)) < std::fabs(v) && (*out & 0x7fffu) < 0x7bffu) ++*out;
    return fp16_to_fp32(*out);
}

// Symmetric fit x[i] ~ scale * q[i], q in [-nmax, nmax-1], minimising sum w*(x - scale*q)^2.
// Tries several code-book stretchings around "largest magnitude maps to -nmax" (that end has the
// extra level) and keeps the one whose least-squares scale explains the most energy. Writes
// q + nmax into L and returns the scale (negative when the largest element is positive).
float fit_symmetric(int n, int nmax, const float* x, const float* w, uint8_t* L) {
    float amax;
    const float max = signed_absmax(x, n, &amax);
    if (amax < 1e-30f) {
        for (int i = 0; i < n; ++i) L[i] = static_cast<uint8_t>(nmax);
        return 0.0f;
    }
    float best_score = -1.0f, best_scale = 0.0f;
    for (int step = -9; step <= 9; ++step) {
        const float iscale = -(static_cast<float>(nmax) + 0.1f * static_cast<float>(step)) / max;
        double sxl = 0.0, sll = 0.0;
        for (int i = 0; i < n; ++i) {
            const int q = round_clamp(iscale * x[i], -nmax, nmax - 1);
            sxl += static_cast<double>(w[i]) * x[i] * q;
            sll += static_cast<double>(w[i]) * q * q;
        }
        if (sll <= 0.0) continue;
        const double score = sxl * sxl / sll;  // error = sum(w x^2) - score
        if (score > best_score) {
            best_score = static_cast<float>(score);
            best_scale = static_cast<float>(sxl / sll);
            for (int i = 0; i < n; ++i) L[i] = static_cast<uint8_t>(round_clamp(iscale * x[i], -nmax, nmax - 1) + nmax);
        }
    }
    if (best_score < 0.0f) {  // every weight zero: fall back to plain rounding
        const float iscale = -static_cast<float>(nmax) / max;
        for (int i = 0; i < n; ++i) L[i] = static_cast<uint8_t>(round_clamp(iscale * x[i], -nmax, nmax - 1) + nmax);
        return 1.0f / iscale;
    }
    return best_scale;
}

// Affine fit x[i] ~ scale * q[i] - offset, q in [0, nmax], minimising sum w*err^2. With
// nonneg_offset the offset must be >= 0 (K-quants store it as an unsigned min); legacy Q4_1/Q5_1
// store a signed min and pass false. Starts from the min/max range, then tries stretched code
// books (iscale = (nmax + rmin + rdelta*k) / range) and solves the 2x2 least-squares problem for
// (scale, offset) of each assignment. Writes q into L, the offset into *offset.
float fit_affine(int n, int nmax, const float* x, const float* w, uint8_t* L, float* offset, bool nonneg_offset,
                 float rmin, float rdelta, int nstep) {
    float lo = x[0], hi = x[0];
    for (int i = 1; i < n; ++i) {
        lo = std::min(lo, x[i]);
        hi = std::max(hi, x[i]);
    }
    if (nonneg_offset && lo > 0.0f) lo = 0.0f;  // the offset can only move values down
    if (hi == lo) {  // constant block: all codes 0, value = -offset
        for (int i = 0; i < n; ++i) L[i] = 0;
        *offset = -lo;
        return 0.0f;
    }
    auto error_of = [&](const uint8_t* q, float scale, float off) {
        double e = 0.0;
        for (int i = 0; i < n; ++i) {
            const double d = static_cast<double>(scale) * q[i] + off - x[i];
            e += w[i] * d * d;
        }
        return e;
    };
    uint8_t cand[256];
    // Plain min/max quantization is the baseline.
    float best_scale = (hi - lo) / static_cast<float>(nmax), best_off = lo;
    for (int i = 0; i < n; ++i) L[i] = static_cast<uint8_t>(round_clamp((x[i] - lo) / best_scale, 0, nmax));
    double best_err = error_of(L, best_scale, best_off);

    double sw = 0.0, sx = 0.0;
    for (int i = 0; i < n; ++i) {
        sw += w[i];
        sx += static_cast<double>(w[i]) * x[i];
    }
    for (int k = 0; k <= nstep; ++k) {
        const float iscale = (rmin + rdelta * static_cast<float>(k) + static_cast<float>(nmax)) / (hi - lo);
        double sl = 0.0, sll = 0.0, sxl = 0.0;
        for (int i = 0; i < n; ++i) {
            const int q = round_clamp(iscale * (x[i] - lo), 0, nmax);
            cand[i] = static_cast<uint8_t>(q);
            sl += static_cast<double>(w[i]) * q;
            sll += static_cast<double>(w[i]) * q * q;
            sxl += static_cast<double>(w[i]) * x[i] * q;
        }
        const double det = sw * sll - sl * sl;
        if (det <= 0.0) continue;
        double scale = (sw * sxl - sx * sl) / det;
        double off = (sll * sx - sl * sxl) / det;
        if (nonneg_offset && off > 0.0) {  // not representable: pin the offset at 0, refit the scale
            off = 0.0;
            scale = sxl / sll;
        }
        const double err = error_of(cand, static_cast<float>(scale), static_cast<float>(off));
        if (err < best_err) {
            best_err = err;
            best_scale = static_cast<float>(scale);
            best_off = static_cast<float>(off);
            std::copy(cand, cand + n, L);
        }
    }
    *offset = -best_off;
    return best_scale;
}

// Weights for every scale search in this file: w = rms(group) + |x|. This leans a little toward
// the large-magnitude elements (which matter most in a matmul) compared with plain MSE; it is the
// heuristic llama.cpp's K-quants use without an importance matrix, and costs about 1% RMSE.
void fit_weights(const float* x, int n, float* w) {
    double s2 = 0.0;
    for (int i = 0; i < n; ++i) s2 += static_cast<double>(x[i]) * x[i];
    const float av = static_cast<float>(std::sqrt(s2 / n));
    for (int i = 0; i < n; ++i) w[i] = av + std::fabs(x[i]);
}

// Index of the grid value (16 sorted entries, already multiplied out) nearest to v.
inline int nearest_in_grid(const float* grid, float v) {
    int best = 0;
    float bd = std::fabs(v - grid[0]);
    for (int i = 1; i < 16; ++i) {
        const float d = std::fabs(v - grid[i]);
        if (d < bd) {
            bd = d;
            best = i;
        }
    }
    return best;
}

// Packs 32 4-bit codes the legacy way: byte j = code[j] | code[j + 16] << 4.
inline void pack_nibbles_32(const uint8_t* codes, uint8_t* qs) {
    for (int j = 0; j < 16; ++j) qs[j] = static_cast<uint8_t>(codes[j] | (codes[j + 16] << 4));
}

// ---- dequantizers --------------------------------------------------------------------------
// Each takes the number of blocks nb and writes nb * block_size floats.

void dequant_q4_0(const void* src, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, y += kQK) {
        const auto b = load_block<block_q4_0>(src, i);
        const float d = fp16_to_fp32(b.d);
        for (int j = 0; j < 16; ++j) {
            y[j] = static_cast<float>((b.qs[j] & 0x0f) - 8) * d;
            y[j + 16] = static_cast<float>((b.qs[j] >> 4) - 8) * d;
        }
    }
}

void dequant_q4_1(const void* src, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, y += kQK) {
        const auto b = load_block<block_q4_1>(src, i);
        const float d = fp16_to_fp32(b.d), m = fp16_to_fp32(b.m);
        for (int j = 0; j < 16; ++j) {
            y[j] = static_cast<float>(b.qs[j] & 0x0f) * d + m;
            y[j + 16] = static_cast<float>(b.qs[j] >> 4) * d + m;
        }
    }
}

inline uint32_t load_u32le(const uint8_t* p) {
    return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 | static_cast<uint32_t>(p[2]) << 16 |
           static_cast<uint32_t>(p[3]) << 24;
}

void dequant_q5_0(const void* src, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, y += kQK) {
        const auto b = load_block<block_q5_0>(src, i);
        const float d = fp16_to_fp32(b.d);
        const uint32_t qh = load_u32le(b.qh);
        for (int j = 0; j < 16; ++j) {
            const int lo = (b.qs[j] & 0x0f) | static_cast<int>(((qh >> j) & 1u) << 4);
            const int hi = (b.qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
            y[j] = static_cast<float>(lo - 16) * d;
            y[j + 16] = static_cast<float>(hi - 16) * d;
        }
    }
}

void dequant_q5_1(const void* src, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, y += kQK) {
        const auto b = load_block<block_q5_1>(src, i);
        const float d = fp16_to_fp32(b.d), m = fp16_to_fp32(b.m);
        const uint32_t qh = load_u32le(b.qh);
        for (int j = 0; j < 16; ++j) {
            const int lo = (b.qs[j] & 0x0f) | static_cast<int>(((qh >> j) & 1u) << 4);
            const int hi = (b.qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
            y[j] = static_cast<float>(lo) * d + m;
            y[j + 16] = static_cast<float>(hi) * d + m;
        }
    }
}

void dequant_q8_0(const void* src, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, y += kQK) {
        const auto b = load_block<block_q8_0>(src, i);
        const float d = fp16_to_fp32(b.d);
        for (int j = 0; j < kQK; ++j) y[j] = static_cast<float>(b.qs[j]) * d;
    }
}

void dequant_q8_1(const void* src, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, y += kQK) {
        const auto b = load_block<block_q8_1>(src, i);
        const float d = fp16_to_fp32(b.d);
        for (int j = 0; j < kQK; ++j) y[j] = static_cast<float>(b.qs[j]) * d;
    }
}

void dequant_q2_K(const void* src, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i) {
        const auto b = load_block<block_q2_K>(src, i);
        const float d = fp16_to_fp32(b.d), dmin = fp16_to_fp32(b.dmin);
        for (int half = 0; half < 2; ++half) {
            const uint8_t* q = b.qs + 32 * half;
            for (int k = 0; k < 4; ++k) {      // 2-bit lane k: elements 32k .. 32k+31 of this half
                for (int sub = 0; sub < 2; ++sub) {  // two groups of 16 per lane
                    const uint8_t sc = b.scales[8 * half + 2 * k + sub];
                    const float dl = d * static_cast<float>(sc & 0x0f);
                    const float ml = dmin * static_cast<float>(sc >> 4);
                    for (int l = 0; l < 16; ++l) {
                        const int v = (q[16 * sub + l] >> (2 * k)) & 3;
                        *y++ = dl * static_cast<float>(v) - ml;
                    }
                }
            }
        }
    }
}

void dequant_q3_K(const void* src, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i) {
        const auto b = load_block<block_q3_K>(src, i);
        const float d = fp16_to_fp32(b.d);
        for (int half = 0; half < 2; ++half) {
            const uint8_t* q = b.qs + 32 * half;
            for (int k = 0; k < 4; ++k) {
                const uint8_t hbit = static_cast<uint8_t>(1u << (4 * half + k));
                for (int sub = 0; sub < 2; ++sub) {
                    const float dl = d * static_cast<float>(unpack_scale_q3_K(8 * half + 2 * k + sub, b.scales));
                    for (int l = 0; l < 16; ++l) {
                        const int e = 16 * sub + l;
                        const int v = ((q[e] >> (2 * k)) & 3) - ((b.hmask[e] & hbit) ? 0 : 4);
                        *y++ = dl * static_cast<float>(v);
                    }
                }
            }
        }
    }
}

void dequant_q4_K(const void* src, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i) {
        const auto b = load_block<block_q4_K>(src, i);
        const float d = fp16_to_fp32(b.d), dmin = fp16_to_fp32(b.dmin);
        for (int c = 0; c < 4; ++c) {  // 32-byte chunk c: groups 2c (low nibbles), 2c+1 (high)
            const uint8_t* q = b.qs + 32 * c;
            for (int h = 0; h < 2; ++h) {
                uint8_t sc, m;
                unpack_scale_min_k4(2 * c + h, b.scales, &sc, &m);
                const float dl = d * static_cast<float>(sc), ml = dmin * static_cast<float>(m);
                for (int l = 0; l < 32; ++l) *y++ = dl * static_cast<float>((q[l] >> (4 * h)) & 0x0f) - ml;
            }
        }
    }
}

void dequant_q5_K(const void* src, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i) {
        const auto b = load_block<block_q5_K>(src, i);
        const float d = fp16_to_fp32(b.d), dmin = fp16_to_fp32(b.dmin);
        for (int c = 0; c < 4; ++c) {
            const uint8_t* q = b.qs + 32 * c;
            for (int h = 0; h < 2; ++h) {
                const int g = 2 * c + h;
                uint8_t sc, m;
                unpack_scale_min_k4(g, b.scales, &sc, &m);
                const float dl = d * static_cast<float>(sc), ml = dmin * static_cast<float>(m);
                for (int l = 0; l < 32; ++l) {
                    const int v = ((q[l] >> (4 * h)) & 0x0f) + (((b.qh[l] >> g) & 1) << 4);
                    *y++ = dl * static_cast<float>(v) - ml;
                }
            }
        }
    }
}

void dequant_q6_K(const void* src, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i) {
        const auto b = load_block<block_q6_K>(src, i);
        const float d = fp16_to_fp32(b.d);
        for (int half = 0; half < 2; ++half, y += 128) {
            const uint8_t* ql = b.ql + 64 * half;
            const uint8_t* qh = b.qh + 32 * half;
            const int8_t* sc = b.scales + 8 * half;
            for (int l = 0; l < 32; ++l) {
                const int g = l / 16;
                for (int k = 0; k < 4; ++k) {  // element 32k + l of this half
                    const int low = (ql[l + 32 * (k & 1)] >> (4 * (k >> 1))) & 0x0f;
                    const int v = (low | (((qh[l] >> (2 * k)) & 3) << 4)) - 32;
                    y[32 * k + l] = d * static_cast<float>(sc[g + 2 * k]) * static_cast<float>(v);
                }
            }
        }
    }
}

void dequant_q8_K(const void* src, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, y += kQKK) {
        const auto b = load_block<block_q8_K>(src, i);
        for (int j = 0; j < kQKK; ++j) y[j] = b.d * static_cast<float>(b.qs[j]);
    }
}

void dequant_iq4_nl(const void* src, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, y += kQK) {
        const auto b = load_block<block_iq4_nl>(src, i);
        const float d = fp16_to_fp32(b.d);
        for (int j = 0; j < 16; ++j) {
            y[j] = d * static_cast<float>(kIq4nlValues[b.qs[j] & 0x0f]);
            y[j + 16] = d * static_cast<float>(kIq4nlValues[b.qs[j] >> 4]);
        }
    }
}

void dequant_iq4_xs(const void* src, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i) {
        const auto b = load_block<block_iq4_xs>(src, i);
        const float d = fp16_to_fp32(b.d);
        for (int g = 0; g < 8; ++g, y += 32) {
            const int ls = ((b.scales_l[g / 2] >> (4 * (g % 2))) & 0x0f) | (((b.scales_h >> (2 * g)) & 3) << 4);
            const float dl = d * static_cast<float>(ls - 32);
            const uint8_t* q = b.qs + 16 * g;
            for (int j = 0; j < 16; ++j) {
                y[j] = dl * static_cast<float>(kIq4nlValues[q[j] & 0x0f]);
                y[j + 16] = dl * static_cast<float>(kIq4nlValues[q[j] >> 4]);
            }
        }
    }
}

void dequant_mxfp4(const void* src, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, y += kQK) {
        const auto b = load_block<block_mxfp4>(src, i);
        const float d = e8m0_to_fp32_half(b.e);
        for (int j = 0; j < 16; ++j) {
            y[j] = static_cast<float>(kMxfp4Values[b.qs[j] & 0x0f]) * d;
            y[j + 16] = static_cast<float>(kMxfp4Values[b.qs[j] >> 4]) * d;
        }
    }
}

// ---- quantizers ----------------------------------------------------------------------------
// Codes are always chosen against the scales as stored (after fp16 rounding), so each element
// gets the nearest value the decoder can actually produce.

// Q4_0 / Q5_0: symmetric. Plain round-to-nearest would map the largest-magnitude element to the
// bottom code (-8 / -16, the end with the extra level); fit_symmetric also tries slightly
// stretched scales around that and keeps the least-squares best (6-10% lower error on gaussian
// data than plain rounding).
template <int kBits>
void quantize_symmetric_legacy(const float* x, uint8_t* codes, uint16_t* dfield) {
    constexpr int kHalf = 1 << (kBits - 1);
    float w[kQK];
    fit_weights(x, kQK, w);
    const float d = round_fp16(fit_symmetric(kQK, kHalf, x, w, codes), dfield);
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < kQK; ++j) codes[j] = static_cast<uint8_t>(round_clamp(x[j] * id + kHalf, 0, 2 * kHalf - 1));
}

// Q4_1 / Q5_1: affine. Starts from round-to-nearest over [min, max], then fit_affine's
// search over stretched ranges with a least-squares (scale, min) refit.
template <int kBits>
void quantize_affine_legacy(const float* x, uint8_t* codes, uint16_t* dfield, uint16_t* mfield) {
    constexpr int kMax = (1 << kBits) - 1;
    float w[kQK], offset;
    fit_weights(x, kQK, w);
    const float d = round_fp16(fit_affine(kQK, kMax, x, w, codes, &offset, false, -1.0f, 0.1f, 20), dfield);
    const float m = round_fp16(-offset, mfield);
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int j = 0; j < kQK; ++j) codes[j] = static_cast<uint8_t>(round_clamp((x[j] - m) * id, 0, kMax));
}

void quant_q4_0(const float* x, void* dst, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, x += kQK) {
        block_q4_0 b;
        uint8_t codes[kQK];
        quantize_symmetric_legacy<4>(x, codes, &b.d);
        pack_nibbles_32(codes, b.qs);
        store_block(dst, i, b);
    }
}

void quant_q4_1(const float* x, void* dst, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, x += kQK) {
        block_q4_1 b;
        uint8_t codes[kQK];
        quantize_affine_legacy<4>(x, codes, &b.d, &b.m);
        pack_nibbles_32(codes, b.qs);
        store_block(dst, i, b);
    }
}

// Splits 5-bit codes into Q4_0-style nibbles plus the qh bit field.
void pack_5bit_32(const uint8_t* codes, uint8_t* qs, uint8_t* qh) {
    uint8_t low[kQK];
    uint32_t h = 0;
    for (int j = 0; j < kQK; ++j) {
        low[j] = codes[j] & 0x0f;
        h |= static_cast<uint32_t>(codes[j] >> 4) << j;
    }
    pack_nibbles_32(low, qs);
    for (int k = 0; k < 4; ++k) qh[k] = static_cast<uint8_t>(h >> (8 * k));
}

void quant_q5_0(const float* x, void* dst, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, x += kQK) {
        block_q5_0 b;
        uint8_t codes[kQK];
        quantize_symmetric_legacy<5>(x, codes, &b.d);
        pack_5bit_32(codes, b.qs, b.qh);
        store_block(dst, i, b);
    }
}

void quant_q5_1(const float* x, void* dst, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, x += kQK) {
        block_q5_1 b;
        uint8_t codes[kQK];
        quantize_affine_legacy<5>(x, codes, &b.d, &b.m);
        pack_5bit_32(codes, b.qs, b.qh);
        store_block(dst, i, b);
    }
}

// Q8_0 / Q8_1: d = max|x| / 127, round to nearest.
void quant_q8_0(const float* x, void* dst, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, x += kQK) {
        block_q8_0 b;
        float amax;
        signed_absmax(x, kQK, &amax);
        const float d = round_fp16(amax / 127.0f, &b.d);
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        for (int j = 0; j < kQK; ++j) b.qs[j] = static_cast<int8_t>(round_clamp(x[j] * id, -127, 127));
        store_block(dst, i, b);
    }
}

void quant_q8_1(const float* x, void* dst, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, x += kQK) {
        block_q8_1 b;
        float amax;
        signed_absmax(x, kQK, &amax);
        const float d = round_fp16(amax / 127.0f, &b.d);
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        int sum = 0;
        for (int j = 0; j < kQK; ++j) {
            b.qs[j] = static_cast<int8_t>(round_clamp(x[j] * id, -127, 127));
            sum += b.qs[j];
        }
        b.s = fp32_to_fp16(d * static_cast<float>(sum));
        store_block(dst, i, b);
    }
}

// Q8_K: float32 scale, so no fp16 rounding; bsums are the per-16 code sums.
void quant_q8_K(const float* x, void* dst, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, x += kQKK) {
        block_q8_K b;
        float amax;
        signed_absmax(x, kQKK, &amax);
        b.d = amax / 127.0f;
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        for (int j = 0; j < kQKK; ++j) b.qs[j] = static_cast<int8_t>(round_clamp(x[j] * id, -127, 127));
        for (int g = 0; g < kQKK / 16; ++g) {
            int s = 0;
            for (int l = 0; l < 16; ++l) s += b.qs[16 * g + l];
            b.bsums[g] = static_cast<int16_t>(s);
        }
        store_block(dst, i, b);
    }
}

// Q4_K / Q5_K: fit a (scale, min) pair per group of 32 with fit_affine, quantize the eight scales
// and eight mins to 6 bits against the largest of each (d = max_scale/63, dmin = max_min/63), then
// re-pick every code against the scales as stored.
template <int kBits>
void quantize_kquant_affine(const float* x, uint16_t* dfield, uint16_t* dminfield, uint8_t* scales, uint8_t* L) {
    constexpr int kMax = (1 << kBits) - 1;
    float sc[8], mn[8], w[32];
    float max_sc = 0.0f, max_mn = 0.0f;
    for (int g = 0; g < 8; ++g) {
        fit_weights(x + 32 * g, 32, w);
        sc[g] = fit_affine(32, kMax, x + 32 * g, w, L + 32 * g, &mn[g], true, kBits == 4 ? -1.0f : -0.5f, 0.1f,
                           kBits == 4 ? 20 : 15);
        max_sc = std::max(max_sc, sc[g]);
        max_mn = std::max(max_mn, mn[g]);
    }
    const float d = round_fp16_up(max_sc / 63.0f, dfield);
    const float dmin = round_fp16_up(max_mn / 63.0f, dminfield);
    // Pick each group's 6-bit (scale, min) pair: the nearest integers to the fitted values, or one
    // step either way, whichever gives the smallest (weighted) error once the codes are re-picked.
    uint8_t ls[8], lm[8];
    for (int g = 0; g < 8; ++g) {
        const float* xg = x + 32 * g;
        fit_weights(xg, 32, w);
        const int s0 = d > 0.0f ? round_clamp(sc[g] / d, 0, 63) : 0;
        const int m0 = dmin > 0.0f ? round_clamp(mn[g] / dmin, 0, 63) : 0;
        double best = std::numeric_limits<double>::infinity();
        ls[g] = static_cast<uint8_t>(s0);
        lm[g] = static_cast<uint8_t>(m0);
        for (int s = std::max(s0 - 1, 0); s <= std::min(s0 + 1, 63); ++s) {
            for (int m = std::max(m0 - 1, 0); m <= std::min(m0 + 1, 63); ++m) {
                const float dl = d * static_cast<float>(s), ml = dmin * static_cast<float>(m);
                double err = 0.0;
                for (int l = 0; l < 32; ++l) {
                    const int q = dl != 0.0f ? round_clamp((xg[l] + ml) / dl, 0, kMax) : 0;
                    const double e = static_cast<double>(dl * static_cast<float>(q) - ml) - xg[l];
                    err += w[l] * e * e;
                }
                if (err < best) {
                    best = err;
                    ls[g] = static_cast<uint8_t>(s);
                    lm[g] = static_cast<uint8_t>(m);
                }
            }
        }
    }
    for (int g = 0; g < 4; ++g) {
        scales[g] = static_cast<uint8_t>(ls[g] | ((ls[g + 4] >> 4) << 6));
        scales[g + 4] = static_cast<uint8_t>(lm[g] | ((lm[g + 4] >> 4) << 6));
        scales[g + 8] = static_cast<uint8_t>((ls[g + 4] & 0x0f) | ((lm[g + 4] & 0x0f) << 4));
    }
    for (int g = 0; g < 8; ++g) {
        const float dl = d * static_cast<float>(ls[g]), ml = dmin * static_cast<float>(lm[g]);
        for (int l = 0; l < 32; ++l)
            L[32 * g + l] = dl != 0.0f ? static_cast<uint8_t>(round_clamp((x[32 * g + l] + ml) / dl, 0, kMax)) : 0;
    }
}

void quant_q4_K(const float* x, void* dst, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, x += kQKK) {
        block_q4_K b;
        uint8_t L[kQKK];
        quantize_kquant_affine<4>(x, &b.d, &b.dmin, b.scales, L);
        for (int c = 0; c < 4; ++c)
            for (int l = 0; l < 32; ++l)
                b.qs[32 * c + l] = static_cast<uint8_t>(L[64 * c + l] | (L[64 * c + 32 + l] << 4));
        store_block(dst, i, b);
    }
}

void quant_q5_K(const float* x, void* dst, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, x += kQKK) {
        block_q5_K b;
        uint8_t L[kQKK];
        quantize_kquant_affine<5>(x, &b.d, &b.dmin, b.scales, L);
        std::memset(b.qh, 0, sizeof b.qh);
        for (int c = 0; c < 4; ++c)
            for (int l = 0; l < 32; ++l)
                b.qs[32 * c + l] = static_cast<uint8_t>((L[64 * c + l] & 0x0f) | ((L[64 * c + 32 + l] & 0x0f) << 4));
        for (int g = 0; g < 8; ++g)
            for (int l = 0; l < 32; ++l) b.qh[l] |= static_cast<uint8_t>((L[32 * g + l] >> 4) << g);
        store_block(dst, i, b);
    }
}

// Q6_K: a symmetric scale per group of 16 (fit_symmetric, weighted by x^2), then the 16 scales
// as int8 against the largest: the largest-magnitude scale maps to -128 (int8's extra level).
void quant_q6_K(const float* x, void* dst, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, x += kQKK) {
        block_q6_K b;
        uint8_t L[kQKK];
        float sc[16], w[16];
        float max_sc = 0.0f, amax_sc = 0.0f;
        for (int g = 0; g < 16; ++g) {
            fit_weights(x + 16 * g, 16, w);
            sc[g] = fit_symmetric(16, 32, x + 16 * g, w, L + 16 * g);
            if (std::fabs(sc[g]) > amax_sc) {
                amax_sc = std::fabs(sc[g]);
                max_sc = sc[g];
            }
        }
        if (amax_sc == 0.0f) {
            std::memset(&b, 0, sizeof b);
            std::memset(b.qh, 0xaa, sizeof b.qh);  // every code 32, i.e. q - 32 = 0: decodes to +0
            store_block(dst, i, b);
            continue;
        }
        // Group scales are rounded against d as stored (see round_fp16_up).
        const float d = round_fp16_up(max_sc / -128.0f, &b.d);
        for (int g = 0; g < 16; ++g)
            b.scales[g] = static_cast<int8_t>(d != 0.0f ? round_clamp(sc[g] / d, -128, 127) : 0);
        for (int g = 0; g < 16; ++g) {
            const float dl = d * static_cast<float>(b.scales[g]);
            for (int l = 0; l < 16; ++l)
                L[16 * g + l] = dl != 0.0f ? static_cast<uint8_t>(round_clamp(x[16 * g + l] / dl, -32, 31) + 32) : 32;
        }
        for (int half = 0; half < 2; ++half) {
            const uint8_t* q = L + 128 * half;
            uint8_t* ql = b.ql + 64 * half;
            uint8_t* qh = b.qh + 32 * half;
            for (int l = 0; l < 32; ++l) {
                ql[l] = static_cast<uint8_t>((q[l] & 0x0f) | ((q[l + 64] & 0x0f) << 4));
                ql[l + 32] = static_cast<uint8_t>((q[l + 32] & 0x0f) | ((q[l + 96] & 0x0f) << 4));
                qh[l] = static_cast<uint8_t>((q[l] >> 4) | ((q[l + 32] >> 4) << 2) | ((q[l + 64] >> 4) << 4) |
                                             ((q[l + 96] >> 4) << 6));
            }
        }
        store_block(dst, i, b);
    }
}

// IQ4_NL: one fp16 scale per 32 over a fixed non-uniform grid. We try many scales (largest
// element mapped near either end of the grid, stretched by a few steps), take the least-squares
// scale of each assignment, keep the one with the smallest squared error, polish it with two
// assign/refit rounds, and finally pick codes against the stored fp16 scale.
void quant_iq4_nl(const float* x, void* dst, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, x += kQK) {
        block_iq4_nl b;
        uint8_t codes[kQK] = {};
        float amax;
        const float max = signed_absmax(x, kQK, &amax);
        if (amax == 0.0f) {
            b.d = 0;
            pack_nibbles_32(codes, b.qs);
            store_block(dst, i, b);
            continue;
        }
        float grid[16];
        for (int k = 0; k < 16; ++k) grid[k] = static_cast<float>(kIq4nlValues[k]);

        // Codes for scale d, then the least-squares scale for those codes and its squared error.
        auto assign = [&](float d, uint8_t* c) {
            const float id = 1.0f / d;
            for (int j = 0; j < kQK; ++j) c[j] = static_cast<uint8_t>(nearest_in_grid(grid, x[j] * id));
        };
        float w[kQK];
        fit_weights(x, kQK, w);
        auto refit = [&](const uint8_t* c, double* err) {
            double sxv = 0.0, svv = 0.0, sxx = 0.0;
            for (int j = 0; j < kQK; ++j) {
                const double v = grid[c[j]];
                sxv += w[j] * x[j] * v;
                svv += w[j] * v * v;
                sxx += static_cast<double>(w[j]) * x[j] * x[j];
            }
            *err = sxx - sxv * sxv / svv;
            return static_cast<float>(sxv / svv);
        };

        double best_err = std::numeric_limits<double>::infinity();
        float best_d = max / grid[0];
        uint8_t cand[kQK];
        for (const float end : {grid[0], grid[15]}) {
            for (int step = -8; step <= 8; ++step) {
                const float target = end * (1.0f + 0.02f * static_cast<float>(step));
                assign(max / target, cand);
                double err;
                const float d = refit(cand, &err);
                if (err < best_err && d != 0.0f) {
                    best_err = err;
                    best_d = d;
                }
            }
        }
        for (int round = 0; round < 2; ++round) {
            assign(best_d, cand);
            double err;
            const float d = refit(cand, &err);
            if (!(err < best_err) || d == 0.0f) break;
            best_err = err;
            best_d = d;
        }
        const float d = round_fp16(best_d, &b.d);
        if (d != 0.0f) assign(d, codes);
        pack_nibbles_32(codes, b.qs);
        store_block(dst, i, b);
    }
}

// MXFP4: the scale is a power of two. Start with the exponent that puts the block max within
// the top FP4 binade (max/2^e in [4, 8), i.e. the largest level 6 may clip it a little), and also
// try one step smaller and larger; keep the one with the smallest squared error.
void quant_mxfp4(const float* x, void* dst, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, x += kQK) {
        block_mxfp4 b;
        uint8_t codes[kQK] = {};
        float amax;
        signed_absmax(x, kQK, &amax);
        b.e = 0;
        if (amax > 0.0f) {
            int ex;
            std::frexp(amax, &ex);  // amax = m * 2^ex, m in [0.5, 1): floor(log2 amax) = ex - 1
            const int e0 = ex - 1 - 2 + 127;
            float grid[16], w[kQK];
            fit_weights(x, kQK, w);
            double best_err = std::numeric_limits<double>::infinity();
            uint8_t cand[kQK];
            for (int e = e0 - 1; e <= e0 + 1; ++e) {
                if (e < 0 || e > 254) continue;
                const float d = e8m0_to_fp32_half(static_cast<uint8_t>(e));
                for (int k = 0; k < 16; ++k) grid[k] = static_cast<float>(kMxfp4Values[k]) * d;
                double err = 0.0;
                for (int j = 0; j < kQK; ++j) {
                    // Positive codes 0..7, negative 9..15 (8 is -0, never needed).
                    int best = 0;
                    float bd = std::fabs(x[j]);
                    for (int k = 1; k < 16; ++k) {
                        if (k == 8) continue;
                        const float dd = std::fabs(x[j] - grid[k]);
                        if (dd < bd) {
                            bd = dd;
                            best = k;
                        }
                    }
                    cand[j] = static_cast<uint8_t>(best);
                    err += static_cast<double>(w[j]) * bd * bd;
                }
                if (err < best_err) {
                    best_err = err;
                    b.e = static_cast<uint8_t>(e);
                    std::copy(cand, cand + kQK, codes);
                }
            }
        }
        pack_nibbles_32(codes, b.qs);
        store_block(dst, i, b);
    }
}

}  // namespace

// ---- row entry points ----------------------------------------------------------------------

void dequantize_row(TensorType t, const void* src, float* dst, int64_t n) {
    const char* fn = "dequantize_row";
    const int64_t nb = block_count(fn, t, n);
    if (n == 0 && traits(t).can_dequantize) return;
    switch (t) {
        case TensorType::F32: std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float)); return;
        case TensorType::F16:
        case TensorType::BF16: {
            const auto* p = static_cast<const uint8_t*>(src);
            const bool bf = t == TensorType::BF16;
            for (int64_t i = 0; i < n; ++i) {
                uint16_t h;
                std::memcpy(&h, p + 2 * i, 2);
                dst[i] = bf ? bf16_to_fp32(h) : fp16_to_fp32(h);
            }
            return;
        }
        case TensorType::Q4_0: return dequant_q4_0(src, dst, nb);
        case TensorType::Q4_1: return dequant_q4_1(src, dst, nb);
        case TensorType::Q5_0: return dequant_q5_0(src, dst, nb);
        case TensorType::Q5_1: return dequant_q5_1(src, dst, nb);
        case TensorType::Q8_0: return dequant_q8_0(src, dst, nb);
        case TensorType::Q8_1: return dequant_q8_1(src, dst, nb);
        case TensorType::Q2_K: return dequant_q2_K(src, dst, nb);
        case TensorType::Q3_K: return dequant_q3_K(src, dst, nb);
        case TensorType::Q4_K: return dequant_q4_K(src, dst, nb);
        case TensorType::Q5_K: return dequant_q5_K(src, dst, nb);
        case TensorType::Q6_K: return dequant_q6_K(src, dst, nb);
        case TensorType::Q8_K: return dequant_q8_K(src, dst, nb);
        case TensorType::IQ4_NL: return dequant_iq4_nl(src, dst, nb);
        case TensorType::IQ4_XS: return dequant_iq4_xs(src, dst, nb);
        case TensorType::MXFP4: return dequant_mxfp4(src, dst, nb);
        default: throw_bad_type(fn, t);
    }
}

void quantize_row(TensorType t, const float* src, void* dst, int64_t n) {
    const char* fn = "quantize_row";
    const int64_t nb = block_count(fn, t, n);
    if (n == 0 && traits(t).can_quantize) return;
    switch (t) {
        case TensorType::F32: std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float)); return;
        case TensorType::F16:
        case TensorType::BF16: {
            auto* p = static_cast<uint8_t*>(dst);
            const bool bf = t == TensorType::BF16;
            for (int64_t i = 0; i < n; ++i) {
                const uint16_t h = bf ? fp32_to_bf16(src[i]) : fp32_to_fp16(src[i]);
                std::memcpy(p + 2 * i, &h, 2);
            }
            return;
        }
        case TensorType::Q4_0: return quant_q4_0(src, dst, nb);
        case TensorType::Q4_1: return quant_q4_1(src, dst, nb);
        case TensorType::Q5_0: return quant_q5_0(src, dst, nb);
        case TensorType::Q5_1: return quant_q5_1(src, dst, nb);
        case TensorType::Q8_0: return quant_q8_0(src, dst, nb);
        case TensorType::Q8_1: return quant_q8_1(src, dst, nb);
        case TensorType::Q4_K: return quant_q4_K(src, dst, nb);
        case TensorType::Q5_K: return quant_q5_K(src, dst, nb);
        case TensorType::Q6_K: return quant_q6_K(src, dst, nb);
        case TensorType::Q8_K: return quant_q8_K(src, dst, nb);
        case TensorType::IQ4_NL: return quant_iq4_nl(src, dst, nb);
        case TensorType::MXFP4: return quant_mxfp4(src, dst, nb);
        default: throw_bad_type(fn, t);
    }
}

}  // namespace kiln
