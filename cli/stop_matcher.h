// kiln serve's Engine (cli/server/engine.cpp) still runs its own generation loop; it names the
// stop matcher by its old place until it moves into the library on the Generator.
#pragma once

#include "runtime/stop_matcher.h"

namespace kiln::cli {
using StopMatcher = kiln::StopMatcher;
}  // namespace kiln::cli
