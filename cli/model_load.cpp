#include "cli/model_load.h"

#include <cstdio>

#include <fmt/format.h>

#include "kiln/error.h"

namespace kiln::cli {

MemoryPlanOptions plan_options(const ContextOptions& co, int n_parallel, size_t cache_bytes) {
    MemoryPlanOptions po;
    po.n_ctx = co.n_ctx;
    po.kv_type_k = co.kv_type_k;
    po.kv_type_v = co.kv_type_v;
    po.backend = co.backend;
    po.device = co.device;
    po.n_parallel = n_parallel;
    po.cache_bytes = cache_bytes;
    po.n_batch = co.n_batch;
    po.n_threads = co.n_threads;
    return po;
}

Model load_checked(const std::string& command, const std::string& path, LoadOptions lo, const ContextOptions& co, int n_parallel,
                   size_t cache_bytes, MemoryPlan* plan_out) {
    auto progress = lo.progress;
    lo.touch_weights = false;
    Model model = Model::load(path, lo);
    MemoryPlan plan = plan_memory(model, plan_options(co, n_parallel, cache_bytes));
    for (const std::string& w : plan.warnings) fmt::print(stderr, "kiln {}: warning: {}\n", command, w);
    if (!plan.fits) throw Error(fmt::format("kiln {}: {} {}", command, path, plan.refusal()));
    model.touch_weights(progress);
    if (plan_out) *plan_out = std::move(plan);
    return model;
}

}  // namespace kiln::cli
