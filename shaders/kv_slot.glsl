// The cache row of KV position j (include after the table buffer tbl and the push constants p with
// n_slots, paged and page_shift are declared):
//   paged == 0: row j % n_slots - the identity for a contiguous cache, a ring for a sliding-window
//               layer that keeps its last n_slots positions;
//   paged != 0: the cache is a pool of pages of 2^page_shift rows (kiln's paged KV on the
//               device): position j lives in page tbl[j >> page_shift] at row j & (page - 1).
uint kv_slot(uint j) {
    if (p.paged == 0u) return j % p.n_slots;
    return (tbl[j >> p.page_shift] << p.page_shift) | (j & ((1u << p.page_shift) - 1u));
}
