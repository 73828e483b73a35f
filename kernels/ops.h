// Small vector helpers for the model code: element-wise activations, norms, and the f32/f16 row
// dot and axpy used for attention over an f16 KV cache. All take raw pointers and a length;
// output may alias input where it says so. Plain loops written to auto-vectorise; the f16 ones
// (and dot_f32) have an AVX2/F16C path picked at run time (see kernels/cpu.h).
#pragma once

#include <cstdint>

namespace kiln::kernels {

// out[i] = x[i] / sqrt(mean(x^2) + eps) * w[i]; w == nullptr means no weight. out may be x.
void rms_norm(const float* x, const float* w, int64_t n, float eps, float* out);
// out[i] = (x[i] - mean) / sqrt(var + eps) * w[i] + b[i]; w, b may be nullptr. out may be x.
void layer_norm(const float* x, const float* w, const float* b, int64_t n, float eps, float* out);
// x = exp(x - max) / sum; n >= 1. -inf entries (masked) become 0.
void softmax_inplace(float* x, int64_t n);
// out = x * sigmoid(x). out may be x.
void silu(const float* x, float* out, int64_t n);
// out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). out may be x.
void gelu_tanh(const float* x, float* out, int64_t n);
// gpt-oss's clamped SwiGLU: x = min(gate, limit), y = clamp(up, -limit, limit), out = x *
// sigmoid(alpha x) * (y + 1). out may be gate or up.
void swiglu_oai(const float* gate, const float* up, float* out, int64_t n, float alpha, float limit);
// out = cap * tanh(x / cap) (as x * (1 / cap)). out may be x.
void softcap(const float* x, float* out, int64_t n, float cap);
// out = 1 / (1 + exp(-x)). out may be x.
void sigmoid(const float* x, float* out, int64_t n);
// out = x / max(sum(x), 2^-14) (the sum in double; the smallest normal half keeps an all-zero row
// finite). out may be x.
void normalize_sum(const float* x, float* out, int64_t n);
// out = a + b, out = a * b (element-wise). out may be a or b.
void add(const float* a, const float* b, float* out, int64_t n);
void mul(const float* a, const float* b, float* out, int64_t n);
// x *= s.
void scale(float* x, float s, int64_t n);

// sum a[i] * b[i].
float dot_f32(const float* a, const float* b, int64_t n);
// y += a * x.
void axpy_f32(float a, const float* x, float* y, int64_t n);
// sum a[i] * half(b[i]) with b IEEE binary16 bits.
float dot_f32_f16(const float* a, const uint16_t* b_f16, int64_t n);
// y += a * half(x).
void axpy_f16(float a, const uint16_t* x_f16, float* y, int64_t n);
// Row conversions (round to nearest even), e.g. to write the f16 KV cache.
void f32_to_f16(const float* x, uint16_t* out, int64_t n);
void f16_to_f32(const uint16_t* x, float* out, int64_t n);

}  // namespace kiln::kernels
