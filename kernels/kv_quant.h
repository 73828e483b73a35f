// Quantized KV-cache heads (kiln's own layout, the same on the CPU and in the Vulkan shaders).
//
// A head of n elements (n a multiple of 4 for Q8_0, of 8 for Q4_0) is stored as its codes, then
// one f16 scale per block of 32 elements (the last block of a head is shorter when 32 does not
// divide n, as MLA's 80-wide test rows need). How heads sit in a cache row (a head's scales follow
// its codes) is backend::KvRowFormat's.
//   Q8_0: codes are int8, x = code * scale; scale = max|x| / 127, code = round(x / scale) (ties
//         away from zero), as llama.cpp's q8_0.
//   Q4_0: codes are 4-bit, two per byte (element 2i in the low nibble of byte i), x = (code - 8) *
//         scale; scale = m / -8 with m the element of largest magnitude, code = min(15, trunc(x /
//         scale + 8.5)), as llama.cpp's q4_0.
#pragma once

#include <cstdint>

namespace kiln::kernels {

constexpr int64_t kKvBlock = 32;  // elements per scale
inline int64_t kv_blocks(int64_t n) { return (n + kKvBlock - 1) / kKvBlock; }

void quantize_q8kv(const float* x, int64_t n, int8_t* codes, uint16_t* scales);
void quantize_q4kv(const float* x, int64_t n, uint8_t* codes, uint16_t* scales);
// The stored values back as floats (tests, the tiled prompt attention's key and value blocks;
// what the dot/axpy below read).
void dequantize_q8kv(const int8_t* codes, const uint16_t* scales, int64_t n, float* out);
void dequantize_q4kv(const uint8_t* codes, const uint16_t* scales, int64_t n, float* out);

// sum a[i] * x[i] and y += w * x, x the stored head.
float dot_f32_q8kv(const float* a, const int8_t* codes, const uint16_t* scales, int64_t n);
void axpy_q8kv(float w, const int8_t* codes, const uint16_t* scales, float* y, int64_t n);
float dot_f32_q4kv(const float* a, const uint8_t* codes, const uint16_t* scales, int64_t n);
void axpy_q4kv(float w, const uint8_t* codes, const uint16_t* scales, float* y, int64_t n);

}  // namespace kiln::kernels
