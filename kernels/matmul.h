// Matrix multiply of a weight matrix in any GGUF tensor type by float activations:
// the one CPU kernel every linear layer of a model goes through.
//
// Decode (a few tokens): each weight byte is read once, rows are split across the threads, and
// quantized types use integer dot products against activations quantised to 8 bits per block
// (AVX2). Prefill (many tokens): each thread expands a tile of weight rows to float once into
// its scratch and multiplies it by every token with an FMA register tile, so no weight block is
// decoded more than once per call; where the decode path quantises the activations to 8 bits,
// the tile path rounds them the same way first, so both paths compute the same products (and
// match llama.cpp, which always does). A portable scalar path exists for every type (see
// kernels/cpu.h: set_force_scalar, KILN_FORCE_SCALAR).
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

// Bytes of scratch matmul needs with a pool of n_threads threads for any call of this k and at
// most n_tokens tokens.
size_t matmul_scratch_bytes(TensorType wtype, int64_t k, int64_t n_tokens, int n_threads);

// Y[t][r] = sum_i W[r][i] * X[t][i] for r < rows, t < n_tokens.
// W: `rows` rows of `k` elements each, stored in `wtype` (row stride = row_bytes(wtype, k)).
// X: n_tokens x k floats, row-major; Y: n_tokens x rows floats, row-major (ldy = rows).
// k must be a multiple of the type's block size and the type supported (else kiln::Error naming
// the type and k). `scratch` is caller-owned, at least matmul_scratch_bytes(wtype, k, n_tokens,
// pool.size()) bytes (any alignment); nothing is allocated per call.
void matmul(TensorType wtype, const void* w, int64_t rows, int64_t k, const float* x,
            int64_t n_tokens, float* y, void* scratch, ThreadPool& pool);

// Scalar reference: dequantize each row with kiln::dequantize_row and dot in double. For tests.
void matmul_reference(TensorType wtype, const void* w, int64_t rows, int64_t k, const float* x,
                      int64_t n_tokens, float* y);

// Which path matmul takes (for benchmarks and tests): true = weight tiles expanded to float,
// false = per-token dots straight from the weight bytes. Depends on the kernel level in use.
bool matmul_uses_tiles(TensorType wtype, int64_t n_tokens);

}  // namespace kiln::kernels
