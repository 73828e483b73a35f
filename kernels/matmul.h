// Matrix multiply of a weight matrix in any GGUF tensor type by float activations:
// the one CPU kernel every linear layer of a model goes through.
//
// Decode (few tokens): each weight byte is read once, rows are split across the threads, and
// quantized types use integer dot products against activations quantised to 8 bits per block
// (avx2 level). Prefill (many tokens): each thread expands a tile of weight rows once and
// multiplies it by every token: to float with an FMA register tile (avx2 / scalar), or, at the
// avx512vnni level for quantized types, to 8-bit codes multiplied with vpdpbusd against
// activations quantised per 16/32 elements. No weight block is decoded more than once per
// call on the tile paths. A portable scalar path exists for every type (kernels/cpu.h:
// set_force_scalar, set_max_kernel_level, KILN_FORCE_SCALAR, KILN_KERNEL_LEVEL).
//
// Fast paths (x86, chosen at run time): avx2 integer decode dots for Q4_0 Q4_1 Q5_0 Q5_1 Q8_0
// Q2_K Q3_K Q4_K Q5_K Q6_K IQ4_NL IQ4_XS MXFP4 and float dots for F32 F16 BF16; AVX2 decoders
// (float tiles) for every type; avx512vnni integer tiles (prefill) for every quantized type.
// Q8_1 and Q8_K (rare as weights) decode through rows expanded to float.
//
// Accuracy: float weights compute with float X (relative error ~1e-6 of sum |w x|). For quantized
// weights every path and kernel level first rounds X to 8-bit codes per group exactly as llama.cpp's
// CPU dot products do (kiln::activation_grid: q8_0-style groups of 32, q8_K-style groups of 256; |dx| <=
// amax(group) / 254 per element) - the integer paths multiply those codes, the scalar and float-tile
// paths the rounded floats - so results differ between CPUs only by float summation order.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/cpu.h"
#include "kernels/threadpool.h"
#include "quant/types.h"

namespace kiln::kernels {

// True when matmul supports weights of type t (every type with traits(t).can_dequantize that
// has a kernel: F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q8_1 Q2_K Q3_K Q4_K Q5_K Q6_K Q8_K IQ4_NL
// IQ4_XS MXFP4).
bool matmul_supports(TensorType t);

// Bytes of scratch matmul needs for these sizes with a pool of n_threads threads.
size_t matmul_scratch_bytes(TensorType wtype, int64_t k, int64_t n_tokens, int n_threads);

// Y[t][r] = sum_i W[r][i] * X[t][i] for r < rows, t < n_tokens.
// W: `rows` rows of `k` elements each, stored in `wtype` (row stride = row_bytes(wtype, k)).
// X: n_tokens x k floats, row-major; Y: n_tokens x rows floats, row-major (ldy = rows).
// k must be a multiple of the type's block size and the type supported (else kiln::Error naming
// the type and k). `scratch` is caller-owned, at least matmul_scratch_bytes(wtype, k, n_tokens,
// pool.size()) bytes (any alignment); nothing is allocated per call. y must not overlap w, x or
// scratch. Concurrent calls need their own scratch (the pool serialises them).
void matmul(TensorType wtype, const void* w, int64_t rows, int64_t k, const float* x,
            int64_t n_tokens, float* y, void* scratch, ThreadPool& pool);

// Scalar reference: dequantize each row with kiln::dequantize_row and dot in double. For tests.
void matmul_reference(TensorType wtype, const void* w, int64_t rows, int64_t k, const float* x,
                      int64_t n_tokens, float* y);

// Which path matmul takes (for benchmarks and tests): true = weight tiles expanded to float,
// false = per-token dots straight from the weight bytes. Depends on the kernel level in use.
bool matmul_uses_tiles(TensorType wtype, int64_t n_tokens);

// Float weights with 32 tokens or more may go through OpenBLAS's sgemm (single-threaded on each
// pool thread, per block of 64 rows; 16-bit rows widened into the thread's scratch). Auto (the
// default) uses it where kiln_bench --benchmark_filter=MatmulBlas measured it faster than kiln's
// float tiles - F32 weights; All also for F16 / BF16 (for that benchmark); Off never.
// KILN_BLAS=0|1|all sets it at start-up. matmul_uses_blas says which path a call takes.
enum class BlasUse { Off = 0, Auto = 1, All = 2 };
bool matmul_uses_blas(TensorType wtype, int64_t n_tokens);
void set_matmul_blas(BlasUse use);

}  // namespace kiln::kernels
