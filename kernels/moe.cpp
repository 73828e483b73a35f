#include "kernels/moe.h"

#include <cmath>

#include "kernels/ops.h"

namespace kiln::kernels {

void top_k(const float* row, const float* bias, int64_t n, int k, int n_group, int n_group_used, int32_t* out) {
    const bool grouped = n_group > 1 && n_group_used < n_group;
    const int64_t per_group = n / n_group;
    auto score = [&](int64_t i) { return bias ? row[i] + bias[i] : row[i]; };
    bool allowed[kTopKMaxGroups];
    if (grouped) {
        float gscore[kTopKMaxGroups];
        for (int gi = 0; gi < n_group; ++gi) {
            float b1 = -INFINITY, b2 = -INFINITY;
            for (int64_t i = gi * per_group; i < (gi + 1) * per_group; ++i) {
                const float v = score(i);
                if (v > b1) b2 = b1, b1 = v;
                else if (v > b2) b2 = v;
            }
            gscore[gi] = b1 + b2;
            allowed[gi] = false;
        }
        for (int u = 0; u < n_group_used; ++u) {
            int best = -1;
            for (int gi = 0; gi < n_group; ++gi)
                if (!allowed[gi] && (best < 0 || gscore[gi] > gscore[best])) best = gi;
            allowed[best] = true;
        }
    }
    for (int j = 0; j < k; ++j) {
        int64_t best = -1;
        float bv = 0.0f;
        for (int64_t i = 0; i < n; ++i) {
            if (grouped && !allowed[i / per_group]) continue;
            bool taken = false;
            for (int q = 0; q < j; ++q) taken |= out[q] == i;
            if (taken) continue;
            const float v = score(i);
            if (best < 0 || v > bv) best = i, bv = v;
        }
        out[j] = static_cast<int32_t>(best);
    }
}

void moe_combine(const float* y, int64_t y_stride, const float* w, int64_t n_slot, int64_t n, int64_t n_tok, float* out) {
    for (int64_t t = 0; t < n_tok; ++t) {
        float* o = out + t * n;
        std::fill(o, o + n, 0.0f);
        for (int64_t s = 0; s < n_slot; ++s) axpy_f32(w[t * n_slot + s], y + t * y_stride + s * n, o, n);
    }
}

}  // namespace kiln::kernels
