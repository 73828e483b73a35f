#pragma once
// TEMPORARY until the quant branch lands (replaced by the full reference conversions).
#include <cstdint>
#include "quant/types.h"
namespace kiln {
void dequantize_row(TensorType t, const void* src, float* dst, int64_t n);
void quantize_row(TensorType t, const float* src, void* dst, int64_t n);
}
