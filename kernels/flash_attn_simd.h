// The vector body of kernels/flash_attn.cpp, included once per x86 level (no include guard). The
// includer defines KILN_FA_TARGET (the level's target attribute) and, in the enclosing namespace,
// Vf (the float vector), W (its lanes), the S tile (kSKeys keys x kSVecs row vectors) and the PV
// tile (kPvRows rows x kPvVecs value vectors) sizes, and these KILN_FA_TARGET inline helpers:
//   vzero vload vstore vset vfma(a, b, c) = a * b + c, vmax vadd vsub vmul,
//   vexp (0 below -87, so -inf gives 0), vtanh,
//   vmask(x, pos, first, last) = first <= pos <= last ? x : -inf (lane-wise),
//   vsafe(m) = m == -inf ? 0 : m.
// R is the tile's row stride (FlashAttn::kRows).

// S[j][r] = sum_d k[j][d] * qt[d][r] for KJ keys from j0 and NV row vectors from rv0.
template <int KJ, int NV>
KILN_FA_TARGET inline void s_tile(const float* qt, const float* k, int64_t ks, int64_t dk, float* s, int j0, int rv0) {
    Vf acc[KJ][NV];
    for (int a = 0; a < KJ; ++a)
        for (int b = 0; b < NV; ++b) acc[a][b] = vzero();
    const float* kr = k + j0 * ks;
    const float* q = qt + rv0 * W;
    for (int64_t d = 0; d < dk; ++d, q += R) {
        Vf qv[NV];
        for (int b = 0; b < NV; ++b) qv[b] = vload(q + b * W);
        for (int a = 0; a < KJ; ++a) {
            const Vf kb = vset(kr[a * ks + d]);
            for (int b = 0; b < NV; ++b) acc[a][b] = vfma(kb, qv[b], acc[a][b]);
        }
    }
    for (int a = 0; a < KJ; ++a)
        for (int b = 0; b < NV; ++b) vstore(s + (j0 + a) * R + (rv0 + b) * W, acc[a][b]);
}

template <int KJ>
KILN_FA_TARGET inline void s_tile_rows(int nv, const float* qt, const float* k, int64_t ks, int64_t dk, float* s, int j0,
                                       int rv0) {
    static_assert(kSVecs <= 4 && kSKeys <= 6);
    switch (nv) {
        case 1: return s_tile<KJ, 1>(qt, k, ks, dk, s, j0, rv0);
        case 2: if constexpr (kSVecs >= 2) return s_tile<KJ, 2>(qt, k, ks, dk, s, j0, rv0); break;
        case 3: if constexpr (kSVecs >= 3) return s_tile<KJ, 3>(qt, k, ks, dk, s, j0, rv0); break;
        case 4: if constexpr (kSVecs >= 4) return s_tile<KJ, 4>(qt, k, ks, dk, s, j0, rv0); break;
    }
}

// S^T of a block: nk keys against nrv row vectors.
KILN_FA_TARGET void scores(const float* qt, int nrv, const float* k, int64_t ks, int64_t dk, int nk, float* s) {
    for (int rv0 = 0; rv0 < nrv; rv0 += kSVecs) {
        const int nv = std::min(kSVecs, nrv - rv0);
        int j0 = 0;
        for (; j0 + kSKeys <= nk; j0 += kSKeys) s_tile_rows<kSKeys>(nv, qt, k, ks, dk, s, j0, rv0);
        switch (nk - j0) {  // the last keys, as one narrower tile
            case 1: s_tile_rows<1>(nv, qt, k, ks, dk, s, j0, rv0); break;
            case 2: if constexpr (kSKeys > 2) s_tile_rows<2>(nv, qt, k, ks, dk, s, j0, rv0); break;
            case 3: if constexpr (kSKeys > 3) s_tile_rows<3>(nv, qt, k, ks, dk, s, j0, rv0); break;
            case 4: if constexpr (kSKeys > 4) s_tile_rows<4>(nv, qt, k, ks, dk, s, j0, rv0); break;
            case 5: if constexpr (kSKeys > 5) s_tile_rows<5>(nv, qt, k, ks, dk, s, j0, rv0); break;
            default: break;
        }
    }
}

// Soft-capping and masking of the scores, then the online softmax: each row's running max m and
// sum l; the scores become the weights exp(s - m_new), alpha = exp(m_old - m_new) rescales O.
KILN_FA_TARGET void softmax(float* s, int nk, int nrv, float* m, float* l, float* alpha, const float* first,
                            const float* last, float pos0, bool mask, float softcap) {
    const Vf cap = vset(softcap), inv_cap = vset(softcap > 0.0f ? 1.0f / softcap : 0.0f);
    for (int rv = 0; rv < nrv; ++rv) {
        const int off = rv * W;
        const Vf mo = vload(m + off);
        Vf mx = mo;
        if (mask || softcap > 0.0f) {
            const Vf fv = vload(first + off), lv = vload(last + off);
            for (int j = 0; j < nk; ++j) {
                float* sj = s + j * R + off;
                Vf x = vload(sj);
                if (softcap > 0.0f) x = vmul(cap, vtanh(vmul(x, inv_cap)));
                if (mask) x = vmask(x, vset(pos0 + static_cast<float>(j)), fv, lv);
                vstore(sj, x);
                mx = vmax(mx, x);
            }
        } else {
            for (int j = 0; j < nk; ++j) mx = vmax(mx, vload(s + j * R + off));
        }
        const Vf ms = vsafe(mx);
        const Vf a = vexp(vsub(mo, ms));
        Vf sum = vzero();
        for (int j = 0; j < nk; ++j) {
            float* sj = s + j * R + off;
            const Vf p = vexp(vsub(vload(sj), ms));
            vstore(sj, p);
            sum = vadd(sum, p);
        }
        vstore(l + off, vfma(vload(l + off), a, sum));
        vstore(m + off, mx);
        vstore(alpha + off, a);
    }
}

// O[r][d] = alpha[r] * O[r][d] + sum_j P[j][r] * v[j][d] for RR rows from r0 and DN vectors from d0.
template <int RR, int DN>
KILN_FA_TARGET inline void pv_tile(const float* s, int nk, const float* v, int64_t vs, float* o, int64_t dvp,
                                   const float* alpha, int r0, int64_t d0) {
    Vf acc[RR][DN];
    for (int a = 0; a < RR; ++a) {
        const Vf al = vset(alpha[r0 + a]);
        for (int b = 0; b < DN; ++b) acc[a][b] = vmul(al, vload(o + (r0 + a) * dvp + d0 + b * W));
    }
    const float* vj = v + d0;
    const float* pj = s + r0;
    for (int j = 0; j < nk; ++j, vj += vs, pj += R) {
        Vf vv[DN];
        for (int b = 0; b < DN; ++b) vv[b] = vload(vj + b * W);
        for (int a = 0; a < RR; ++a) {
            const Vf p = vset(pj[a]);
            for (int b = 0; b < DN; ++b) acc[a][b] = vfma(p, vv[b], acc[a][b]);
        }
    }
    for (int a = 0; a < RR; ++a)
        for (int b = 0; b < DN; ++b) vstore(o + (r0 + a) * dvp + d0 + b * W, acc[a][b]);
}

template <int RR>
KILN_FA_TARGET inline void pv_rows(const float* s, int nk, const float* v, int64_t vs, float* o, int64_t dvp,
                                   const float* alpha, int r0) {
    static_assert(kPvVecs <= 4);
    const int64_t nvec = dvp / W;
    int64_t b = 0;
    for (; b + kPvVecs <= nvec; b += kPvVecs) pv_tile<RR, kPvVecs>(s, nk, v, vs, o, dvp, alpha, r0, b * W);
    switch (nvec - b) {
        case 1: pv_tile<RR, 1>(s, nk, v, vs, o, dvp, alpha, r0, b * W); break;
        case 2: if constexpr (kPvVecs > 2) pv_tile<RR, 2>(s, nk, v, vs, o, dvp, alpha, r0, b * W); break;
        case 3: if constexpr (kPvVecs > 3) pv_tile<RR, 3>(s, nk, v, vs, o, dvp, alpha, r0, b * W); break;
        default: break;
    }
}

// O = alpha * O + P V over the tile's n rows (dvp a multiple of W).
KILN_FA_TARGET void pv(const float* s, int nk, int n, const float* v, int64_t vs, float* o, int64_t dvp,
                       const float* alpha) {
    static_assert(kPvRows <= 6);
    int r0 = 0;
    for (; r0 + kPvRows <= n; r0 += kPvRows) pv_rows<kPvRows>(s, nk, v, vs, o, dvp, alpha, r0);
    switch (n - r0) {
        case 1: pv_rows<1>(s, nk, v, vs, o, dvp, alpha, r0); break;
        case 2: if constexpr (kPvRows > 2) pv_rows<2>(s, nk, v, vs, o, dvp, alpha, r0); break;
        case 3: if constexpr (kPvRows > 3) pv_rows<3>(s, nk, v, vs, o, dvp, alpha, r0); break;
        case 4: if constexpr (kPvRows > 4) pv_rows<4>(s, nk, v, vs, o, dvp, alpha, r0); break;
        case 5: if constexpr (kPvRows > 5) pv_rows<5>(s, nk, v, vs, o, dvp, alpha, r0); break;
        default: break;
    }
}
