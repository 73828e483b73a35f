// The op graph's shape checks and its buffer plan (no two live tensors share bytes).
#include <gtest/gtest.h>

#include <string>

#include "graph/graph.h"
#include "kiln/error.h"

namespace {

using namespace kiln::graph;

const float kW[64 * 64] = {};

// Every node's destination must not overlap any tensor that is still to be read.
void expect_no_live_overlap(const Graph& g, const Plan& p) {
    const auto& ts = g.tensors();
    const auto& nodes = g.nodes();
    std::vector<int64_t> first(ts.size(), -1), last(ts.size(), -1);
    for (size_t i = 0; i < ts.size(); ++i)
        if (ts[i].kind == TensorKind::Input) first[i] = 0, last[i] = static_cast<int64_t>(nodes.size());
    for (size_t n = 0; n < nodes.size(); ++n) {
        if (nodes[n].dst != kNone) first[static_cast<size_t>(nodes[n].dst)] = static_cast<int64_t>(n);
        for (TensorId s : nodes[n].src)
            if (s != kNone) last[static_cast<size_t>(s)] = static_cast<int64_t>(n);
    }
    for (size_t i = 0; i < ts.size(); ++i) {
        if (ts[i].kind == TensorKind::Output) last[i] = static_cast<int64_t>(nodes.size());
        if (last[i] < first[i]) last[i] = first[i];
    }
    for (size_t a = 0; a < ts.size(); ++a)
        for (size_t b = a + 1; b < ts.size(); ++b) {
            if (p.offset[a] < 0 || p.offset[b] < 0) continue;
            const bool live_together = first[a] <= last[b] && first[b] <= last[a];
            const int64_t ea = p.offset[a] + ts[a].n_elements() * 4, eb = p.offset[b] + ts[b].n_elements() * 4;
            const bool overlap = p.offset[a] < eb && p.offset[b] < ea;
            EXPECT_FALSE(live_together && overlap) << "tensors " << a << " and " << b << "\n" << g.dump();
        }
}

TEST(Graph, PlanReusesDeadBuffersButNeverLiveOnes) {
    Graph g;
    const TensorId tok = g.input("tokens", DType::I32, 8, 1);
    const TensorId emb = g.weight("emb", kiln::TensorType::F32, kW, 64, 64);
    const TensorId w = g.weight("w", kiln::TensorType::F32, kW, 64, 64);
    TensorId x = g.get_rows(emb, tok);
    for (int i = 0; i < 6; ++i) {
        const TensorId h = g.rms_norm(x, kNone, 1e-5f);
        x = g.add(x, g.swiglu(g.matmul(w, h), g.matmul(w, h)));
    }
    g.mark_output(g.matmul(w, g.rows(x, 7, 1)), "logits");
    const Plan p = plan_buffers(g);
    expect_no_live_overlap(g, p);
    // Without reuse this graph would take (1 + 6 * 5) values of 8 x 64 floats, plus the output.
    EXPECT_LT(p.workspace_bytes, 10 * 8 * 64 * 4);
    EXPECT_EQ(p.offset[static_cast<size_t>(emb)], -1);
    EXPECT_GE(p.offset[static_cast<size_t>(tok)], 0);
    EXPECT_EQ(g.find("logits"), static_cast<TensorId>(g.tensors().size() - 1));
}

TEST(Graph, ShapeMismatchesAreErrors) {
    Graph g;
    const TensorId x = g.input("x", DType::F32, 32, 4);
    const TensorId w = g.weight("blk.0.attn_q.weight", kiln::TensorType::F32, kW, 64, 64);
    try {
        g.matmul(w, x);
        FAIL() << "no error";
    } catch (const kiln::Error& e) {
        EXPECT_NE(std::string(e.what()).find("blk.0.attn_q.weight"), std::string::npos) << e.what();
    }
    const TensorId pos = g.input("positions", DType::I32, 4, 1);
    RopeParams rp;
    rp.n_head = 3;
    rp.head_dim = 8;
    rp.n_dims = 8;
    EXPECT_THROW(g.rope(x, pos, rp), kiln::Error);  // 3 x 8 != 32
    AttentionParams ap;
    ap.n_head = 4;
    ap.n_head_kv = 3;
    ap.head_dim_k = ap.head_dim_v = 8;
    EXPECT_THROW(g.attention(x, ap), kiln::Error);  // 4 heads, 3 kv heads
    EXPECT_THROW(g.rows(x, 3, 2), kiln::Error);
}

}  // namespace
