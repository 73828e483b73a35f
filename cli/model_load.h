// Loading a model for a command that will run contexts on it: the memory plan is checked between
// mapping the file and reading its weights, so a plan that does not fit is refused before anything
// large is read or allocated.
#pragma once

#include <cstddef>
#include <string>

#include "kiln/context.h"
#include "kiln/memory.h"
#include "kiln/model.h"

namespace kiln::cli {

// Maps `path`, plans n_parallel contexts of `co` (plus cache_bytes of prefix cache), prints the
// plan's warnings to stderr ("kiln COMMAND: warning: ..."), throws kiln::Error "kiln COMMAND: ...
// does not fit in memory ..." with the numbers when it does not fit, then reads the weights (with
// lo.progress). The plan is stored in *plan when given.
Model load_checked(const std::string& command, const std::string& path, LoadOptions lo, const ContextOptions& co, int n_parallel = 1,
                   size_t cache_bytes = 0, MemoryPlan* plan = nullptr);

// The plan's options for n_parallel contexts of `co`.
MemoryPlanOptions plan_options(const ContextOptions& co, int n_parallel = 1, size_t cache_bytes = 0);

}  // namespace kiln::cli
