#include "kernels/matmul.h"

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

#include "kernels/matmul_impl.h"
#include "kernels/ops.h"
#include "kiln/error.h"
#include "quant/quant.h"

namespace kiln::kernels {
namespace {

using namespace detail;

// From this many tokens on, weights are expanded to float tiles (each block decoded once per
// call) instead of being dotted with each token straight from the weight bytes. The integer
// dots of the quantized types are cheap enough per token to win up to ~16 tokens (measured
// on Zen 4); float weights switch earlier. KILN_TILE_MIN_TOKENS overrides both (tuning).
int64_t env_tile_min_tokens() {
    static const int64_t v = [] {
        const char* e = std::getenv("KILN_TILE_MIN_TOKENS");
        return e ? std::max<int64_t>(1, std::atoll(e)) : int64_t{0};
    }();
    return v;
}
constexpr int64_t kTileMinTokensInt = 16;
constexpr int64_t kTileMinTokensFloat = 4;
constexpr int64_t kTileMinTokensMax = 16;

// Tile sizes: a thread's weight tile of kTileRows x kTileK floats (128 KiB) sits in L2.
// kTileK is a multiple of every block size (256), so a k-slice starts on a block boundary.
constexpr int64_t kTileRows = 64;
constexpr int64_t kTileK = 512;
constexpr size_t kAlign = 64;

size_t align_up(size_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

// Scratch layout: [8-bit activations (few-token path)] [per-thread area] x n_threads, where the
// per-thread area holds a decoded row (few-token path) or a weight tile (tile path). Sized for
// whichever path any kernel level could take, so set_force_scalar between calls is safe.
size_t per_thread_bytes(int64_t k) {
    return align_up(static_cast<size_t>(std::max(kTileRows * std::min(k, kTileK), k)) * sizeof(float));
}

// True when some kernel level dots this type with 8-bit activations on the few-token path: the
// tile path then rounds the activations the same way (see matmul()).
bool rounds_activations(TensorType t) {
#ifdef KILN_KERNELS_X86
    const Avx2Kernels ak = avx2_kernels(t);
    return ak.vec_dot && ak.xfmt != XFormat::F32;
#else
    (void)t;
    return false;
#endif
}

// The activation area at the start of the scratch: 8-bit rows (few-token path) or, for the tile
// path of a type that rounds its activations, the rounded float rows.
size_t x_bytes(TensorType t, int64_t k, int64_t n_tokens) {
    if (n_tokens >= std::max(kTileMinTokensMax, env_tile_min_tokens()))
        return rounds_activations(t) ? align_up(static_cast<size_t>(k) * static_cast<size_t>(n_tokens) * sizeof(float)) : 0;
    const size_t row = std::max(xformat_row_bytes(XFormat::Q8x32, k), xformat_row_bytes(XFormat::Q8x256, k));
    return align_up(row * static_cast<size_t>(n_tokens));
}

// x rounded to 8 bits per block the way the few-token path quantises it (format f), back in floats.
void round_activations(XFormat f, const float* x, float* out, int64_t k) {
    if (f == XFormat::Q8x32) {
        blk::xq32 b;
        for (int64_t i = 0; i < k; i += 32) {
            quantize_x_q8x32_scalar(x + i, &b, 32);
            for (int j = 0; j < 32; ++j) out[i + j] = b.d * static_cast<float>(b.qs[j]);
        }
    } else {
        blk::xq256 b;
        for (int64_t i = 0; i < k; i += 256) {
            quantize_x_q8x256_scalar(x + i, &b, 256);
            for (int j = 0; j < 256; ++j) out[i + j] = b.d * static_cast<float>(b.qs[j]);
        }
    }
}

[[noreturn]] void fail(const std::string& msg) { throw Error("matmul: " + msg); }

void validate(TensorType wtype, int64_t rows, int64_t k, int64_t n_tokens) {
    const TypeTraits* tr = type_traits(static_cast<uint32_t>(wtype));
    if (!tr) fail("unknown weight type id " + std::to_string(static_cast<uint32_t>(wtype)));
    if (!matmul_supports(wtype)) fail(std::string("weight type ") + tr->name + " is not supported");
    if (rows < 0 || k <= 0 || n_tokens < 0)
        fail("bad shape rows=" + std::to_string(rows) + " k=" + std::to_string(k) +
             " n_tokens=" + std::to_string(n_tokens) + " for " + tr->name);
    if (k % tr->block_size != 0)
        fail("k = " + std::to_string(k) + " is not a multiple of the " + tr->name + " block size " +
             std::to_string(tr->block_size));
}

struct Plan {
    TensorType type;
    const uint8_t* w;
    int64_t rows, k, n;
    size_t row_bytes;
    uint32_t block_size, type_size;
    const float* x;
    float* y;
    uint8_t* thread_scratch;  // per-thread areas of thread_stride bytes
    size_t thread_stride;
    bool avx2;
};

// Few tokens: each weight row is read once and dotted with every token.
void run_rows(const Plan& p, ThreadPool& pool, uint8_t* xbuf) {
    VecDotFn vec_dot = nullptr;
    XFormat xfmt = XFormat::F32;
#ifdef KILN_KERNELS_X86
    if (p.avx2) {
        const Avx2Kernels ak = avx2_kernels(p.type);
        vec_dot = ak.vec_dot;
        xfmt = ak.xfmt;
    }
#endif
    if (vec_dot) {
        const uint8_t* xp = reinterpret_cast<const uint8_t*>(p.x);
        const size_t xrow = xformat_row_bytes(xfmt, p.k);
#ifdef KILN_KERNELS_X86
        if (xfmt != XFormat::F32) {
            for (int64_t t = 0; t < p.n; ++t) {
                uint8_t* dst = xbuf + static_cast<size_t>(t) * xrow;
                if (xfmt == XFormat::Q8x32)
                    quantize_x_q8x32_avx2(p.x + t * p.k, reinterpret_cast<blk::xq32*>(dst), p.k);
                else
                    quantize_x_q8x256_avx2(p.x + t * p.k, reinterpret_cast<blk::xq256*>(dst), p.k);
            }
            xp = xbuf;
        }
#else
        (void)xbuf;
#endif
        pool.parallel_for(p.rows, [&](int64_t r0, int64_t r1, int) {
            for (int64_t r = r0; r < r1; ++r) {
                const uint8_t* wr = p.w + static_cast<size_t>(r) * p.row_bytes;
                for (int64_t t = 0; t < p.n; ++t)
                    p.y[t * p.rows + r] = vec_dot(wr, xp + static_cast<size_t>(t) * xrow, p.k);
            }
        });
        return;
    }
    // Generic: expand the row to floats, then float dots (scalar or AVX2 via kernels::dot_f32).
    const DecodeFn decode = decoder_scalar(p.type);
    pool.parallel_for(p.rows, [&](int64_t r0, int64_t r1, int tid) {
        float* buf = reinterpret_cast<float*>(p.thread_scratch + static_cast<size_t>(tid) * p.thread_stride);
        for (int64_t r = r0; r < r1; ++r) {
            const uint8_t* wr = p.w + static_cast<size_t>(r) * p.row_bytes;
            const float* row = buf;
            if (p.type == TensorType::F32)
                row = reinterpret_cast<const float*>(wr);
            else
                decode(wr, buf, p.k);
            for (int64_t t = 0; t < p.n; ++t) p.y[t * p.rows + r] = dot_f32(row, p.x + t * p.k, p.k);
        }
    });
}

// Many tokens: per task, a tile of rows x k-slice is decoded once into the thread's scratch and
// applied to the task's tokens.
void run_tiles(const Plan& p, ThreadPool& pool) {
    DecodeFn decode = decoder_scalar(p.type);
    GemmFn gemm = gemm_tile_scalar;
#ifdef KILN_KERNELS_X86
    if (p.avx2) {
        const Avx2Kernels ak = avx2_kernels(p.type);
        if (ak.decode) decode = ak.decode;
        gemm = gemm_tile_avx2;
    }
#endif
    const int64_t row_tiles = (p.rows + kTileRows - 1) / kTileRows;
    // Too few row tiles to keep every thread busy: split the tokens as well.
    int64_t token_parts = 1;
    const int64_t want = 2 * static_cast<int64_t>(pool.size());
    if (row_tiles < want) token_parts = std::min((want + row_tiles - 1) / row_tiles, (p.n + 7) / 8);
    token_parts = std::max<int64_t>(token_parts, 1);
    const int64_t part = (p.n + token_parts - 1) / token_parts;
    const bool direct = p.type == TensorType::F32;

    pool.parallel_for(row_tiles * token_parts, [&](int64_t b, int64_t e, int tid) {
        float* tile = reinterpret_cast<float*>(p.thread_scratch + static_cast<size_t>(tid) * p.thread_stride);
        for (int64_t task = b; task < e; ++task) {
            const int64_t r0 = task / token_parts * kTileRows;
            const int64_t t0 = task % token_parts * part;
            const int64_t nr = std::min(kTileRows, p.rows - r0);
            const int64_t nt = std::min(part, p.n - t0);
            if (nt <= 0) continue;
            for (int64_t k0 = 0; k0 < p.k; k0 += kTileK) {
                const int64_t kc = std::min(kTileK, p.k - k0);
                const size_t off = static_cast<size_t>(k0 / p.block_size) * p.type_size;
                const float* wt;
                int64_t ldw;
                if (direct) {
                    wt = reinterpret_cast<const float*>(p.w + static_cast<size_t>(r0) * p.row_bytes + off);
                    ldw = p.k;
                } else {
                    for (int64_t r = 0; r < nr; ++r)
                        decode(p.w + static_cast<size_t>(r0 + r) * p.row_bytes + off, tile + r * kc, kc);
                    wt = tile;
                    ldw = kc;
                }
                gemm(wt, ldw, p.x + t0 * p.k + k0, p.k, kc, p.y + t0 * p.rows + r0, p.rows, nr, nt, k0 > 0);
            }
        }
    });
}

}  // namespace

XFormat detail::decode_xformat(TensorType t) {
#ifdef KILN_KERNELS_X86
    if (use_avx2()) {
        const Avx2Kernels ak = avx2_kernels(t);
        if (ak.vec_dot) return ak.xfmt;
    }
#endif
    (void)t;
    return XFormat::F32;
}

bool matmul_uses_tiles(TensorType t, int64_t n_tokens) {
    if (env_tile_min_tokens() > 0) return n_tokens >= env_tile_min_tokens();
    return n_tokens >= (detail::decode_xformat(t) != XFormat::F32 ? kTileMinTokensInt : kTileMinTokensFloat);
}

bool matmul_supports(TensorType t) {
    const TypeTraits* tr = type_traits(static_cast<uint32_t>(t));
    return tr && tr->can_dequantize && decoder_scalar(t) != nullptr;
}

size_t matmul_scratch_bytes(TensorType wtype, int64_t k, int64_t n_tokens, int n_threads) {
    if (k <= 0 || n_tokens <= 0) return 0;
    n_threads = std::max(n_threads, 1);
    // Enough for every call of at most n_tokens tokens (callers that split a batch into groups,
    // like the MoE matmul, size once): the 8-bit copy of x exists only below the tile threshold,
    // so a smaller call can need more than a larger one.
    const int64_t below = std::min(n_tokens, std::max(kTileMinTokensMax, env_tile_min_tokens()) - 1);
    const size_t xb = std::max(x_bytes(wtype, k, n_tokens), below > 0 ? x_bytes(wtype, k, below) : size_t{0});
    return kAlign + xb + static_cast<size_t>(n_threads) * per_thread_bytes(k);
}

void matmul(TensorType wtype, const void* w, int64_t rows, int64_t k, const float* x,
            int64_t n_tokens, float* y, void* scratch, ThreadPool& pool) {
    validate(wtype, rows, k, n_tokens);
    if (rows == 0 || n_tokens == 0) return;
    if (!w || !x || !y) fail("null weight, input or output pointer");
    if (!scratch) fail("null scratch (needs matmul_scratch_bytes bytes)");

    const TypeTraits& tr = traits(wtype);
    auto base = reinterpret_cast<uintptr_t>(scratch);
    base = (base + kAlign - 1) / kAlign * kAlign;
    uint8_t* xbuf = reinterpret_cast<uint8_t*>(base);

    Plan p;
    p.type = wtype;
    p.w = static_cast<const uint8_t*>(w);
    p.rows = rows;
    p.k = k;
    p.n = n_tokens;
    p.row_bytes = static_cast<size_t>(*row_bytes(wtype, static_cast<uint64_t>(k)));
    p.block_size = tr.block_size;
    p.type_size = tr.type_size;
    p.x = x;
    p.y = y;
    p.thread_scratch = xbuf + x_bytes(wtype, k, n_tokens);
    p.thread_stride = per_thread_bytes(k);
    p.avx2 = use_avx2();

    if (matmul_uses_tiles(wtype, n_tokens)) {
        // Where the few-token path dots 8-bit activations (as llama.cpp does for every batch), the
        // tile path first rounds them the same way: a prompt then gives the same logits in one
        // batch as token by token, and discrete choices downstream (expert routing) agree.
        if (const XFormat xf = decode_xformat(wtype); xf != XFormat::F32) {
            float* xr = reinterpret_cast<float*>(xbuf);
            pool.parallel_for(n_tokens, [&](int64_t t0, int64_t t1, int) {
                for (int64_t t = t0; t < t1; ++t) round_activations(xf, x + t * k, xr + t * k, k);
            });
            p.x = xr;
        }
        run_tiles(p, pool);
    } else
        run_rows(p, pool, xbuf);
}

void matmul_reference(TensorType wtype, const void* w, int64_t rows, int64_t k, const float* x,
                      int64_t n_tokens, float* y) {
    validate(wtype, rows, k, n_tokens);
    const size_t rb = static_cast<size_t>(*row_bytes(wtype, static_cast<uint64_t>(k)));
    std::vector<float> row(static_cast<size_t>(k));
    for (int64_t r = 0; r < rows; ++r) {
        dequantize_row(wtype, static_cast<const uint8_t*>(w) + static_cast<size_t>(r) * rb, row.data(), k);
        for (int64_t t = 0; t < n_tokens; ++t) {
            double s = 0;
            const float* xt = x + t * k;
            for (int64_t i = 0; i < k; ++i) s += static_cast<double>(row[static_cast<size_t>(i)]) * xt[i];
            y[t * rows + r] = static_cast<float>(s);
        }
    }
}

}  // namespace kiln::kernels
