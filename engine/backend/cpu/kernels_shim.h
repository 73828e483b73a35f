// TEMPORARY stand-in for kernels/matmul.h (branch kern), written against its announced signature
// so the CPU backend can run before it lands. Deleted when it merges.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/threadpool.h"
#include "quant/types.h"

namespace kiln::kernels {
size_t matmul_scratch_bytes(TensorType wtype, int64_t k, int64_t n_tokens, int n_threads);
void matmul(TensorType wtype, const void* w, int64_t rows, int64_t k, const float* x, int64_t n_tokens,
            float* y, void* scratch, ThreadPool& pool);
}  // namespace kiln::kernels
