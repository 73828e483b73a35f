// TEMPORARY until the quant branch lands.
#include "quant/quant.h"
#include <cstring>
#include "kiln/error.h"
namespace kiln {
void dequantize_row(TensorType t, const void* src, float* dst, int64_t n) {
    if (t != TensorType::F32) throw Error("dequantize_row: unsupported");
    std::memcpy(dst, src, static_cast<size_t>(n) * 4);
}
void quantize_row(TensorType t, const float* src, void* dst, int64_t n) {
    if (t != TensorType::F32) throw Error("quantize_row: unsupported");
    std::memcpy(dst, src, static_cast<size_t>(n) * 4);
}
}
