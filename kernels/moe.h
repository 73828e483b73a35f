// Mixture-of-experts compute on plain rows: the router's top-k (group-limited as DeepSeek's),
// the pairs of a grouped matmul sorted by expert, and the weighted combine of the experts'
// outputs. The expert matmuls themselves are kernels/matmul.h's.
#pragma once

#include <algorithm>
#include <cstdint>

namespace kiln::kernels {

constexpr int kTopKMaxGroups = 64;  // expert groups top_k takes

// out[0, k) = the indices of the k largest of score(i) = row[i] (+ bias[i] when bias is not
// null), i < n, best first, ties to the lower index. Group-limited when n_group > 1 and
// n_group_used < n_group (n_group <= kTopKMaxGroups, dividing n): the experts form n_group equal
// groups, a group scores the sum of its two best, and only the best n_group_used groups compete.
void top_k(const float* row, const float* bias, int64_t n, int k, int n_group, int n_group_used, int32_t* out);

// Counting sort of n pairs by group (group_of(i) in [0, n_group), called twice per pair):
// afterwards count[0..n_group] holds the offsets (group e's pairs are order[count[e],
// count[e + 1]), in increasing pair order) and cursor (n_group ints) is free scratch again.
template <class GroupOf>
inline void sort_by_group(int64_t n, int64_t n_group, GroupOf&& group_of, int32_t* count, int32_t* order, int32_t* cursor) {
    std::fill(count, count + n_group + 1, 0);
    for (int64_t pr = 0; pr < n; ++pr) ++count[group_of(pr) + 1];
    for (int64_t e = 0; e < n_group; ++e) count[e + 1] += count[e];
    std::copy(count, count + n_group, cursor);
    for (int64_t pr = 0; pr < n; ++pr) order[cursor[group_of(pr)]++] = static_cast<int32_t>(pr);
}

// out[t] = sum_s w[t * n_slot + s] * y[t * y_stride + s * n + (0..n)] for t < n_tok: each token's
// n_slot expert outputs (rows of n) weighted by its router weights.
void moe_combine(const float* y, int64_t y_stride, const float* w, int64_t n_slot, int64_t n, int64_t n_tok, float* out);

}  // namespace kiln::kernels
