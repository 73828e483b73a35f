// The rows of one layer's K or V cache in their stored type (F32, F16, or the quantized heads of
// kernels/kv_quant.h), reached through a table of row pointers per page: position-slot s's row is
// table[s >> shift] + (s & mask) * row bytes (a ring or a single buffer: one entry, a shift past
// any slot). Writes a slot's row from floats, dots a query head with a stored head and adds a
// weighted stored head to an accumulator; the *_at forms take a row pointer (row()) found once
// for many uses. How heads sit in a row (the sizes given here) is backend::KvRowFormat's.
// Everything is inline: the attention loops (kernels/attention.h) call these per key.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kernels/kv_quant.h"
#include "kernels/ops.h"
#include "kiln/types.h"

namespace kiln::kernels {

class KvRows {
public:
    // n_head heads of dim elements of `type` per row; head_bytes: a head with its scales and
    // padding, head_code_bytes: its codes (its values for F32/F16).
    KvRows(KvType type, int64_t n_head, int64_t dim, size_t head_bytes, size_t head_code_bytes, uint8_t* const* table,
           int shift)
        : type_(type), n_head_(n_head), dim_(dim), table_(table), shift_(shift), mask_((int64_t{1} << shift) - 1),
          row_(static_cast<size_t>(n_head) * head_bytes), head_(head_bytes), head_codes_(head_code_bytes) {}

    // The first byte of row `slot`.
    uint8_t* row(int64_t slot) const { return table_[slot >> shift_] + static_cast<size_t>(slot & mask_) * row_; }

    // Row `slot` from n_head * dim floats.
    void store(int64_t slot, const float* x) const {
        uint8_t* r = row(slot);
        const int64_t n = n_head_ * dim_;
        switch (type_) {
            case KvType::F32: std::memcpy(r, x, static_cast<size_t>(n) * 4); return;
            case KvType::F16: f32_to_f16(x, reinterpret_cast<uint16_t*>(r), n); return;
            case KvType::Q8_0:
            case KvType::Q4_0:
                for (int64_t h = 0; h < n_head_; ++h) {
                    uint8_t* codes = r + static_cast<size_t>(h) * head_;
                    uint16_t* sc = reinterpret_cast<uint16_t*>(codes + head_codes_);
                    if (type_ == KvType::Q8_0) quantize_q8kv(x + h * dim_, dim_, reinterpret_cast<int8_t*>(codes), sc);
                    else quantize_q4kv(x + h * dim_, dim_, codes, sc);
                }
                return;
        }
    }
    // sum q[i] * head[i] over the first n elements of head h of row `slot`.
    float dot(const float* q, int64_t slot, int64_t h, int64_t n) const { return dot_at(q, row(slot), h, n); }
    float dot_at(const float* q, const uint8_t* r, int64_t h, int64_t n) const {
        const uint8_t* c = r + static_cast<size_t>(h) * head_;
        switch (type_) {
            case KvType::F32: return dot_f32(q, reinterpret_cast<const float*>(c), n);
            case KvType::F16: return dot_f32_f16(q, reinterpret_cast<const uint16_t*>(c), n);
            case KvType::Q8_0: return dot_f32_q8kv(q, reinterpret_cast<const int8_t*>(c), scales(c), n);
            case KvType::Q4_0: return dot_f32_q4kv(q, c, scales(c), n);
        }
        return 0.0f;
    }
    // The first n elements of head h of row `slot` as floats.
    void to_float(int64_t slot, int64_t h, float* out, int64_t n) const { to_float_at(row(slot), h, out, n); }
    void to_float_at(const uint8_t* r, int64_t h, float* out, int64_t n) const {
        const uint8_t* c = r + static_cast<size_t>(h) * head_;
        switch (type_) {
            case KvType::F32: std::memcpy(out, c, static_cast<size_t>(n) * 4); return;
            case KvType::F16: return f16_to_f32(reinterpret_cast<const uint16_t*>(c), out, n);
            case KvType::Q8_0: return dequantize_q8kv(reinterpret_cast<const int8_t*>(c), scales(c), n, out);
            case KvType::Q4_0: return dequantize_q4kv(c, scales(c), n, out);
        }
    }
    // Asks for the cache lines of head h of row `slot` (the tiled attention's next block).
    void prefetch(int64_t slot, int64_t h) const {
        const uint8_t* c = row(slot) + static_cast<size_t>(h) * head_;
        for (size_t off = 0; off < head_; off += 64) __builtin_prefetch(c + off);
    }
    // y += w * (the first n elements of head h of row `slot`).
    void axpy(float w, int64_t slot, int64_t h, float* y, int64_t n) const { axpy_at(w, row(slot), h, y, n); }
    void axpy_at(float w, const uint8_t* r, int64_t h, float* y, int64_t n) const {
        const uint8_t* c = r + static_cast<size_t>(h) * head_;
        switch (type_) {
            case KvType::F32: return axpy_f32(w, reinterpret_cast<const float*>(c), y, n);
            case KvType::F16: return axpy_f16(w, reinterpret_cast<const uint16_t*>(c), y, n);
            case KvType::Q8_0: return axpy_q8kv(w, reinterpret_cast<const int8_t*>(c), scales(c), y, n);
            case KvType::Q4_0: return axpy_q4kv(w, c, scales(c), y, n);
        }
    }

private:
    const uint16_t* scales(const uint8_t* head) const { return reinterpret_cast<const uint16_t*>(head + head_codes_); }
    KvType type_;
    int64_t n_head_, dim_;
    uint8_t* const* table_;
    int shift_;
    int64_t mask_;
    size_t row_, head_, head_codes_;
};

}  // namespace kiln::kernels
