// TEMPORARY: see kernels_shim.h. Dequantizes each weight row once and dots it with every token.
#include "backend/cpu/kernels_shim.h"

#include "kernels/ops.h"
#include "quant/quant.h"

namespace kiln::kernels {

size_t matmul_scratch_bytes(TensorType, int64_t k, int64_t, int n_threads) {
    return static_cast<size_t>(k) * sizeof(float) * static_cast<size_t>(n_threads);
}

void matmul(TensorType wtype, const void* w, int64_t rows, int64_t k, const float* x, int64_t n_tokens,
            float* y, void* scratch, ThreadPool& pool) {
    const uint64_t rb = *row_bytes(wtype, static_cast<uint64_t>(k));
    auto body = [&](int64_t r0, int64_t r1, int th) {
        float* row = static_cast<float*>(scratch) + k * th;
        for (int64_t r = r0; r < r1; ++r) {
            dequantize_row(wtype, static_cast<const uint8_t*>(w) + rb * r, row, k);
            for (int64_t t = 0; t < n_tokens; ++t) y[t * rows + r] = dot_f32(row, x + t * k, k);
        }
    };
    pool.parallel_for(rows, [&body](int64_t b, int64_t e, int th) { body(b, e, th); });
}

}  // namespace kiln::kernels
