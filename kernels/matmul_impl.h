// Internal to kernels/: the per-type kernel table behind kernels::matmul.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/blocks.h"
#include "quant/types.h"

namespace kiln::kernels::detail {

// Expands n elements (a whole number of blocks) starting at a block boundary of a weight row.
using DecodeFn = void (*)(const void* w, float* out, int64_t n);
// Dot of n elements of a weight row with one prepared activation row (float for XFormat::F32,
// else blk::xq32 / blk::xq256 blocks).
using VecDotFn = float (*)(const void* w, const void* x, int64_t n);

enum class XFormat { F32, Q8x32, Q8x256 };

// Portable decoder for every type matmul supports; nullptr for the others.
DecodeFn decoder_scalar(TensorType t);
// The activation format the decode path (few tokens) quantises X to for type t with the current
// kernel level: F32 means X is used as is (scalar level, float types, generic types).
XFormat decode_xformat(TensorType t);
// X rounded to the 8-bit grid of activation_grid(t) (grid 32 or 256) and expanded back to floats:
// out = d * code, with exactly the codes and d of quantize_x_q8x32 / quantize_x_q8x256. k a multiple
// of grid; out may not alias x.
void round_x_scalar(const float* x, float* out, int64_t k, int grid);

// Bytes of one token's activation row prepared in format f.
size_t xformat_row_bytes(XFormat f, int64_t k);
// Portable 8-bit quantisation of an activation row (k a multiple of 32 / 256).
void quantize_x_q8x32_scalar(const float* x, blk::xq32* out, int64_t k);
void quantize_x_q8x256_scalar(const float* x, blk::xq256* out, int64_t k);

// GEMM micro-kernel over a tile: y[t*ldy + r] (+)= sum_i w[r*ldw + i] * x[t*ldx + i]
// for r < nr, t < nt, i < kc; any nr, nt >= 1 (the kernel tiles internally).
using GemmFn = void (*)(const float* w, int64_t ldw, const float* x, int64_t ldx, int64_t kc,
                        float* y, int64_t ldy, int64_t nr, int64_t nt, bool accumulate);
void gemm_tile_scalar(const float* w, int64_t ldw, const float* x, int64_t ldx, int64_t kc,
                      float* y, int64_t ldy, int64_t nr, int64_t nt, bool accumulate);

// ---- integer tiles (prefill at the avx512vnni level) -------------------------------------
// A weight group of `group` elements as unsigned 8-bit codes: w = s * code + o. Types without a
// min have o = -offset * s for an integer offset, applied by the kernel as an exact integer
// correction; types with a min (has_min) apply o in float. group == 0: no integer form.
struct CodeFormat {
    int group = 0;
    int offset = 0;
    bool has_min = false;
};
CodeFormat code_format(TensorType t);
// Unpacks n elements (whole blocks, from a block boundary) into n codes and n/group (s, o).
using UnpackFn = void (*)(const void* w, int64_t n, uint8_t* codes, float* s, float* o);
UnpackFn unpacker_scalar(TensorType t);

// Activations for the integer tiles: per group of G, int8 codes then {float d, int32 corr =
// offset * sum(codes), float sum(codes), float dsum = d * sum(codes)}.
constexpr int kVnniRows = 16;  // weight rows per packed block (one zmm of int32 lanes)
inline size_t vnni_xgroup_bytes(int group) { return static_cast<size_t>(group) + 16; }
inline size_t vnni_xrow_bytes(int group, int64_t k) { return static_cast<size_t>(k / group) * vnni_xgroup_bytes(group); }
// Bytes of one packed block of kVnniRows rows x kc elements.
inline size_t vnni_pack_bytes(int group, int64_t kc) {
    return static_cast<size_t>(kc / group) * (static_cast<size_t>(kVnniRows) * group + 2 * kVnniRows * sizeof(float));
}

#if defined(__x86_64__) || defined(__i386__)
#define KILN_KERNELS_X86 1
// What the AVX2 level offers for a type: any field may be null / F32 when it has none.
struct Avx2Kernels {
    XFormat xfmt = XFormat::F32;  // activation format vec_dot takes
    VecDotFn vec_dot = nullptr;
    DecodeFn decode = nullptr;
};
Avx2Kernels avx2_kernels(TensorType t);
void quantize_x_q8x32_avx2(const float* x, blk::xq32* out, int64_t k);
void quantize_x_q8x256_avx2(const float* x, blk::xq256* out, int64_t k);
void gemm_tile_avx2(const float* w, int64_t ldw, const float* x, int64_t ldx, int64_t kc,
                    float* y, int64_t ldy, int64_t nr, int64_t nt, bool accumulate);

void round_x_avx2(const float* x, float* out, int64_t k, int grid);

// Activations for the integer tiles in groups of f.group, the scale taken per `grid` elements (a
// multiple of f.group: llama.cpp's rounding, activation_grid) and repeated in each group.
void quantize_x_vnni(const float* x, int64_t k, const CodeFormat& f, int grid, uint8_t* out);
// Fast unpacker where one exists (else nullptr: use unpacker_scalar).
UnpackFn unpacker_vnni(TensorType t);
// Packs rows [0, nrows) (nrows <= kVnniRows; the rest are zero) of the k-slice [k0, k0 + kc) of
// weight rows `w` (row stride row_bytes) into `out` (vnni_pack_bytes). tmp: kVnniRows * kc
// bytes + 2 * kVnniRows * kc / group floats.
void pack_rows_vnni(TensorType t, const CodeFormat& f, UnpackFn unpack, const uint8_t* w,
                    size_t row_bytes, int64_t nrows, size_t slice_offset, int64_t kc, uint8_t* out,
                    uint8_t* tmp);
// Decode at the avx512vnni level (gemv_vnni.cpp), for the types it has (all null otherwise):
// prepare_x lays out one token's activations (x_bytes(k) bytes), rows computes
// y[r - r0] = row r . x for rows [r0, r1) of weights w (row stride row_bytes).
struct VnniGemv {
    size_t (*x_bytes)(int64_t k) = nullptr;
    void (*prepare_x)(const float* x, int64_t k, uint8_t* out) = nullptr;
    void (*rows)(const uint8_t* w, size_t row_bytes, int64_t r0, int64_t r1, int64_t k, const uint8_t* x, float* y) = nullptr;
};
VnniGemv vnni_gemv(TensorType t);
// y[t*ldy + r] (+)= n_blocks (1 or 2) packed blocks of rows (bstride bytes apart, consecutive
// rows; last_rows valid rows in the last) x activations of nt tokens (token stride xstride bytes;
// x points at the slice's first group, which starts an activation grid block of `grid` elements:
// the x of quantize_x_vnni with that grid).
void gemm_vnni(const CodeFormat& f, int grid, const uint8_t* packed, size_t bstride, int n_blocks, int64_t kc,
               const uint8_t* x, size_t xstride, int64_t nt, float* y, int64_t ldy, int64_t last_rows, bool accumulate);
#endif

}  // namespace kiln::kernels::detail
