#include "kernels/rope.h"

#include <cmath>

namespace kiln::kernels {

void rope(const float* x, float* out, int64_t n_rows, int64_t row_stride, const int32_t* pos, int n_head, int head_dim,
          int n_dims, bool neox, float freq_base, float freq_scale, float ext_factor, const float corr[2],
          float attn_factor) {
    const int half = n_dims / 2;
    float cs[kRopeMaxDims / 2], sn[kRopeMaxDims / 2];
    for (int64_t r = 0; r < n_rows; ++r) {
        const double position = static_cast<double>(pos[r]);
        for (int i = 0; i < half; ++i) {
            const double extrap = position * std::pow(static_cast<double>(freq_base), -2.0 * i / n_dims);
            double theta = extrap * freq_scale;
            if (ext_factor != 0.0f) {
                const double mix = rope_yarn_mix(i, corr, ext_factor);
                theta = theta * (1.0 - mix) + extrap * mix;
            }
            cs[i] = static_cast<float>(std::cos(theta) * attn_factor);
            sn[i] = static_cast<float>(std::sin(theta) * attn_factor);
        }
        const float* xr = x + r * row_stride;
        float* dr = out + r * row_stride;
        for (int h = 0; h < n_head; ++h) {
            const float* xh = xr + static_cast<int64_t>(h) * head_dim;
            float* dh = dr + static_cast<int64_t>(h) * head_dim;
            if (!neox) {
                for (int i = 0; i < half; ++i) {
                    const float a = xh[2 * i], b = xh[2 * i + 1];
                    dh[2 * i] = a * cs[i] - b * sn[i];
                    dh[2 * i + 1] = a * sn[i] + b * cs[i];
                }
            } else {
                for (int i = 0; i < half; ++i) {
                    const float a = xh[i], b = xh[i + half];
                    dh[i] = a * cs[i] - b * sn[i];
                    dh[i + half] = a * sn[i] + b * cs[i];
                }
            }
            for (int i = n_dims; i < head_dim; ++i) dh[i] = xh[i];
        }
    }
}

}  // namespace kiln::kernels
