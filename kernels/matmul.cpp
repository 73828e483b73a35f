#include "kernels/matmul.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <cblas.h>

#include <atomic>
#include <mutex>

#include "kernels/matmul_impl.h"
#include "kernels/ops.h"
#include "kiln/error.h"
#include "quant/quant.h"

namespace kiln::kernels {
namespace {

using namespace detail;

// Three ways through a matmul:
//  Rows:       per-token dot products straight from the weight bytes (integer dots against 8-bit
//              activations for the quantized types at the avx2 level). Each weight byte is read
//              once; the per-token cost includes unpacking the codes again.
//  FloatTiles: a thread expands a tile of rows x k-slice to float once and runs an FMA register
//              tile over all its tokens.
//  IntTiles:   (avx512vnni level, quantized types) the tile is unpacked once to 8-bit codes and
//              multiplied with vpdpbusd against activations quantised per group.
// The thresholds were measured on Zen 4 (benchmarks/matmul_bench.cpp, MatmulBatch);
// KILN_TILE_MIN_TOKENS overrides them for tuning.
//  Blas:       (F32 / F16 / BF16 weights, many tokens) OpenBLAS's sgemm per block of rows, the
//              16-bit rows widened to f32 once per call; each pool thread runs its blocks with a
//              single-threaded sgemm.
enum class Path { Rows, FloatTiles, IntTiles, Blas };

// OpenBLAS for float weights (BlasUse): KILN_BLAS=0 (off), 1 (default: Auto), all.
std::atomic<int>& blas_flag() {
    static std::atomic<int> v{[] {
        const char* e = std::getenv("KILN_BLAS");
        if (e && std::strcmp(e, "0") == 0) return static_cast<int>(BlasUse::Off);
        if (e && std::strcmp(e, "all") == 0) return static_cast<int>(BlasUse::All);
        return static_cast<int>(BlasUse::Auto);
    }()};
    return v;
}
constexpr int64_t kMinTokensBlas = 32;
constexpr int64_t kBlasRows = 64;  // rows per sgemm call (widened into the thread's scratch)
bool blas_type(TensorType t) {
    switch (static_cast<BlasUse>(blas_flag().load(std::memory_order_relaxed))) {
        case BlasUse::Off: return false;
        // Measured (MatmulBlas, Zen 5, 2 threads, quiet machine): sgemm 0.98-1.06x kiln's float tiles on F32
        // weights (1.02-1.06x from 128 tokens); on F16 / BF16, rows widened per call, 0.86-0.97x: kiln keeps those.
        case BlasUse::Auto: return t == TensorType::F32;
        case BlasUse::All: return t == TensorType::F32 || t == TensorType::F16 || t == TensorType::BF16;
    }
    return false;
}

int64_t env_tile_min_tokens() {
    static const int64_t v = [] {
        const char* e = std::getenv("KILN_TILE_MIN_TOKENS");
        return e ? std::max<int64_t>(1, std::atoll(e)) : int64_t{0};
    }();
    return v;
}
constexpr int64_t kMinTokensFloatTilesQuant = 16;  // vs. integer per-token dots (avx2)
constexpr int64_t kMinTokensIntTiles = 8;
constexpr int64_t kMinTokensFloatTilesFloat = 4;  // f32/f16/bf16 and types without integer dots

Path choose_path(TensorType t, int64_t n) {
    if (n >= kMinTokensBlas && blas_type(t)) return Path::Blas;
    const bool int_tiles = use_avx512vnni() && code_format(t).group > 0;
    const bool int_rows = decode_xformat(t) != XFormat::F32;
    int64_t min_tiles = int_tiles ? kMinTokensIntTiles : int_rows ? kMinTokensFloatTilesQuant : kMinTokensFloatTilesFloat;
    if (env_tile_min_tokens() > 0) min_tiles = env_tile_min_tokens();
    if (n < min_tiles) return Path::Rows;
    return int_tiles ? Path::IntTiles : Path::FloatTiles;
}

// Tile sizes: a thread's float tile of kTileRows x kTileK floats (128 KiB) sits in L2; an
// integer tile of the same shape is ~50 KiB. kTileK is a multiple of every block size (256),
// so a k-slice starts on a block boundary; kTileRows is a multiple of kVnniRows.
constexpr int64_t kTileRows = 64;
constexpr int64_t kTileK = 512;
constexpr int64_t kTokenChunk = 32;  // integer tiles: tokens per pass over the packed rows
constexpr size_t kAlign = 64;
static_assert(kTileRows % kVnniRows == 0);

size_t align_up(size_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

// Integer tile area: the packed blocks of a row tile, then the unpack buffer.
size_t int_tile_packed_bytes(int group, int64_t kc) {
    return align_up(static_cast<size_t>(kTileRows / kVnniRows) * vnni_pack_bytes(group, kc));
}
size_t int_tile_bytes(int group, int64_t kc) {
    return int_tile_packed_bytes(group, kc) +
           align_up(static_cast<size_t>(kVnniRows * kc) + 2 * kVnniRows * static_cast<size_t>(kc / group) * sizeof(float));
}

// Scratch layout: [activations] [per-thread area] x n_threads. Activations: 8-bit rows for the
// Rows path or grouped 8-bit rows for IntTiles. Per-thread: a decoded row, a float tile or an
// integer tile. Sized for every path and level, so changing the level between calls is safe.
size_t per_thread_bytes(int64_t k, TensorType t) {
    const int64_t kc = std::min(k, kTileK);
    size_t b = static_cast<size_t>(std::max(kTileRows * kc, k)) * sizeof(float);
    if (t == TensorType::F16 || t == TensorType::BF16) b = std::max(b, static_cast<size_t>(kBlasRows * k) * sizeof(float));
    if (k % 16 == 0) b = std::max(b, int_tile_bytes(16, kc));
    if (k % 32 == 0) b = std::max(b, int_tile_bytes(32, kc));
    return align_up(b);
}

// Activations as the path takes them: 8-bit rows (Rows, IntTiles) or rows rounded to the
// activation grid and kept as floats (scalar Rows, FloatTiles); floats are the largest.
size_t x_bytes(int64_t k, int64_t n_tokens) {
    // The avx512vnni decode layouts (gemv_vnni.cpp) take at most 384 bytes per 4 blocks of 32
    // (3 bytes an element), rounded up.
    const size_t gemv_row = align_up(static_cast<size_t>((k / 32 + 3) / 4) * 384);
    return align_up(std::max(static_cast<size_t>(k) * sizeof(float), gemv_row) * static_cast<size_t>(n_tokens));
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
    int grid;  // activation_grid(type)
};

// X rounded to the activation grid, as floats, into xbuf (the paths that multiply floats).
const float* rounded_x(const Plan& p, ThreadPool& pool, uint8_t* xbuf) {
    if (p.grid == 0) return p.x;
    float* xr = reinterpret_cast<float*>(xbuf);
    pool.parallel_for(p.n, [&](int64_t t0, int64_t t1, int) {
        for (int64_t t = t0; t < t1; ++t) {
#ifdef KILN_KERNELS_X86
            if (p.avx2) {
                round_x_avx2(p.x + t * p.k, xr + t * p.k, p.k, p.grid);
                continue;
            }
#endif
            round_x_scalar(p.x + t * p.k, xr + t * p.k, p.k, p.grid);
        }
    });
    return xr;
}

// Few tokens: each weight row is read once and dotted with every token.
void run_rows(const Plan& p, ThreadPool& pool, uint8_t* xbuf) {
#ifdef KILN_KERNELS_X86
    if (use_avx512vnni()) {
        const VnniGemv g = vnni_gemv(p.type);
        if (g.rows) {
            const size_t xrow = align_up(g.x_bytes(p.k));
            for (int64_t t = 0; t < p.n; ++t) g.prepare_x(p.x + t * p.k, p.k, xbuf + static_cast<size_t>(t) * xrow);
            pool.parallel_for(p.rows, [&](int64_t r0, int64_t r1, int) {
                for (int64_t t = 0; t < p.n; ++t)
                    g.rows(p.w, p.row_bytes, r0, r1, p.k, xbuf + static_cast<size_t>(t) * xrow, p.y + t * p.rows + r0);
            });
            return;
        }
    }
#endif
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
    // Generic: expand the row to floats, then float dots (scalar or AVX2 via kernels::dot_f32)
    // with X on the activation grid.
    const float* x = rounded_x(p, pool, xbuf);
    DecodeFn decode = decoder_scalar(p.type);
#ifdef KILN_KERNELS_X86
    if (p.avx2 && avx2_kernels(p.type).decode) decode = avx2_kernels(p.type).decode;
#endif
    pool.parallel_for(p.rows, [&](int64_t r0, int64_t r1, int tid) {
        float* buf = reinterpret_cast<float*>(p.thread_scratch + static_cast<size_t>(tid) * p.thread_stride);
        for (int64_t r = r0; r < r1; ++r) {
            const uint8_t* wr = p.w + static_cast<size_t>(r) * p.row_bytes;
            const float* row = buf;
            if (p.type == TensorType::F32)
                row = reinterpret_cast<const float*>(wr);
            else
                decode(wr, buf, p.k);
            for (int64_t t = 0; t < p.n; ++t) p.y[t * p.rows + r] = dot_f32(row, x + t * p.k, p.k);
        }
    });
}

// Many tokens: per task, a tile of rows x k-slice is decoded once into the thread's scratch and
// applied to the task's tokens.
void run_tiles(const Plan& p, ThreadPool& pool, uint8_t* xbuf) {
    const float* x = rounded_x(p, pool, xbuf);
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
                gemm(wt, ldw, x + t0 * p.k + k0, p.k, kc, p.y + t0 * p.rows + r0, p.rows, nr, nt, k0 > 0);
            }
        }
    });
}


// Float weights, many tokens: blocks of kBlasRows rows through OpenBLAS's sgemm, Y[t][r0..] =
// X[t] . W[r0..]^T, one single-threaded sgemm per block on each pool thread.
void run_blas(const Plan& p, ThreadPool& pool) {
    static std::once_flag once;
    std::call_once(once, [] { openblas_set_num_threads(1); });
    DecodeFn decode = decoder_scalar(p.type);  // 16-bit rows to f32 (rows are contiguous)
#ifdef KILN_KERNELS_X86
    if (p.avx2 && avx2_kernels(p.type).decode) decode = avx2_kernels(p.type).decode;
#endif
    const int64_t blocks = (p.rows + kBlasRows - 1) / kBlasRows;
    pool.parallel_for(blocks, [&](int64_t b0, int64_t b1, int tid) {
        float* buf = reinterpret_cast<float*>(p.thread_scratch + static_cast<size_t>(tid) * p.thread_stride);
        for (int64_t b = b0; b < b1; ++b) {
            const int64_t r0 = b * kBlasRows, nr = std::min(kBlasRows, p.rows - r0);
            const float* wb;
            if (p.type == TensorType::F32) {
                wb = reinterpret_cast<const float*>(p.w + static_cast<size_t>(r0) * p.row_bytes);
            } else {
                decode(p.w + static_cast<size_t>(r0) * p.row_bytes, buf, nr * p.k);
                wb = buf;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(p.n), static_cast<blasint>(nr),
                        static_cast<blasint>(p.k), 1.0f, p.x, static_cast<blasint>(p.k), wb, static_cast<blasint>(p.k), 0.0f,
                        p.y + r0, static_cast<blasint>(p.rows));
        }
    });
}

#ifdef KILN_KERNELS_X86
// Many tokens at the avx512vnni level: activations quantised per group once (in parallel),
// then per task each 16-row block of the tile is unpacked once per k-slice and applied to the
// task's tokens.
void run_int_tiles(const Plan& p, ThreadPool& pool, uint8_t* xbuf) {
    const CodeFormat f = code_format(p.type);
    UnpackFn unpack = unpacker_vnni(p.type);
    if (!unpack) unpack = unpacker_scalar(p.type);
    const size_t xrow = vnni_xrow_bytes(f.group, p.k);
    const size_t xgroup = vnni_xgroup_bytes(f.group);
    pool.parallel_for(p.n, [&](int64_t t0, int64_t t1, int) {
        for (int64_t t = t0; t < t1; ++t) quantize_x_vnni(p.x + t * p.k, p.k, f, p.grid, xbuf + static_cast<size_t>(t) * xrow);
    });

    const int64_t row_tiles = (p.rows + kTileRows - 1) / kTileRows;
    int64_t token_parts = 1;
    const int64_t want = 2 * static_cast<int64_t>(pool.size());
    if (row_tiles < want) token_parts = std::min((want + row_tiles - 1) / row_tiles, (p.n + 7) / 8);
    token_parts = std::max<int64_t>(token_parts, 1);
    const int64_t part = (p.n + token_parts - 1) / token_parts;

    pool.parallel_for(row_tiles * token_parts, [&](int64_t b, int64_t e, int tid) {
        uint8_t* area = p.thread_scratch + static_cast<size_t>(tid) * p.thread_stride;
        uint8_t* tmp = area + int_tile_packed_bytes(f.group, std::min(p.k, kTileK));
        for (int64_t task = b; task < e; ++task) {
            const int64_t r0 = task / token_parts * kTileRows;
            const int64_t t0 = task % token_parts * part;
            const int64_t nr = std::min(kTileRows, p.rows - r0);
            const int64_t nt = std::min(part, p.n - t0);
            if (nt <= 0) continue;
            const int64_t nblk = (nr + kVnniRows - 1) / kVnniRows;
            for (int64_t k0 = 0; k0 < p.k; k0 += kTileK) {
                const int64_t kc = std::min(kTileK, p.k - k0);
                const size_t off = static_cast<size_t>(k0 / p.block_size) * p.type_size;
                const size_t blk_bytes = vnni_pack_bytes(f.group, kc);
                for (int64_t bi = 0; bi < nblk; ++bi)
                    pack_rows_vnni(p.type, f, unpack, p.w + static_cast<size_t>(r0 + bi * kVnniRows) * p.row_bytes,
                                   p.row_bytes, std::min<int64_t>(kVnniRows, nr - bi * kVnniRows), off, kc,
                                   area + static_cast<size_t>(bi) * blk_bytes, tmp);
                const uint8_t* xs = xbuf + static_cast<size_t>(k0 / f.group) * xgroup;
                for (int64_t tc = t0; tc < t0 + nt; tc += kTokenChunk) {
                    const int64_t ntc = std::min(kTokenChunk, t0 + nt - tc);
                    for (int64_t bi = 0; bi < nblk; bi += 2) {  // two blocks of rows per pass over the tokens
                        const int nb = bi + 1 < nblk ? 2 : 1;
                        gemm_vnni(f, p.grid, area + static_cast<size_t>(bi) * blk_bytes, blk_bytes, nb, kc,
                                  xs + static_cast<size_t>(tc) * xrow, xrow, ntc, p.y + tc * p.rows + r0 + bi * kVnniRows,
                                  p.rows, std::min<int64_t>(kVnniRows, nr - (bi + nb - 1) * kVnniRows), k0 > 0);
                    }
                }
            }
        }
    });
}
#endif

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

bool matmul_uses_tiles(TensorType t, int64_t n_tokens) { return choose_path(t, n_tokens) != Path::Rows; }
bool matmul_uses_blas(TensorType t, int64_t n_tokens) { return choose_path(t, n_tokens) == Path::Blas; }
void set_matmul_blas(BlasUse use) { blas_flag().store(static_cast<int>(use), std::memory_order_relaxed); }

bool matmul_supports(TensorType t) {
    const TypeTraits* tr = type_traits(static_cast<uint32_t>(t));
    return tr && tr->can_dequantize && decoder_scalar(t) != nullptr;
}

size_t matmul_scratch_bytes(TensorType wtype, int64_t k, int64_t n_tokens, int n_threads) {
    if (k <= 0 || n_tokens <= 0) return 0;
    n_threads = std::max(n_threads, 1);
    return kAlign + x_bytes(k, n_tokens) + static_cast<size_t>(n_threads) * per_thread_bytes(k, wtype);
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
    p.thread_scratch = xbuf + x_bytes(k, n_tokens);
    p.thread_stride = per_thread_bytes(k, wtype);
    p.avx2 = use_avx2();
    p.grid = activation_grid(wtype);

    switch (choose_path(wtype, n_tokens)) {
        case Path::Rows: run_rows(p, pool, xbuf); break;
        case Path::FloatTiles: run_tiles(p, pool, xbuf); break;
        case Path::Blas: run_blas(p, pool); break;
        case Path::IntTiles:
#ifdef KILN_KERNELS_X86
            run_int_tiles(p, pool, xbuf);
#endif
            break;
    }
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
