// Rotary position embedding (RoPE) on plain rows: the CPU backend's Rope op, and YaRN's ramp,
// which the Vulkan backend's frequency table takes too (one definition of the mix). The
// parameters are graph::RopeParams' (engine/graph/graph.h), passed as plain values.
#pragma once

#include <algorithm>
#include <cstdint>

namespace kiln::kernels {

// YaRN: the weight of pair i's extrapolated (unscaled) angle against the interpolated one,
// ext_factor * (1 - ramp(i)), the ramp rising from 0 at corr[0] to 1 at corr[1] (the correction
// dims, graph::rope_yarn_corr_dims: whole numbers, so the float difference below is exact).
inline double rope_yarn_mix(int i, const float corr[2], float ext_factor) {
    const double y = (i - corr[0]) / std::max(0.001, static_cast<double>(corr[1] - corr[0]));
    return (1.0 - std::clamp(y, 0.0, 1.0)) * ext_factor;
}

constexpr int kRopeMaxDims = 1024;  // n_dims the per-row angle tables hold

// Rotates n_rows rows (row r at x + r * row_stride, n_head heads of head_dim, at position pos[r])
// into out (same layout; out may be x). The first n_dims (even, <= min(head_dim, kRopeMaxDims)) of
// each head turn by theta_i = pos * freq_base^(-2i / n_dims), i < n_dims / 2, times freq_scale
// (linear scaling); with ext_factor != 0 (YaRN) the scaled and unscaled angles mix by
// rope_yarn_mix(i, corr, ext_factor). cos and sin are multiplied by attn_factor. neox: the pairs
// are (x[i], x[i + n_dims/2]), else (x[2i], x[2i+1]). The rest of each head is copied.
void rope(const float* x, float* out, int64_t n_rows, int64_t row_stride, const int32_t* pos, int n_head, int head_dim,
          int n_dims, bool neox, float freq_base, float freq_scale, float ext_factor, const float corr[2],
          float attn_factor);

}  // namespace kiln::kernels
