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
#endif

}  // namespace kiln::kernels::detail
