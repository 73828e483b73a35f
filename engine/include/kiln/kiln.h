// kiln: the whole public C++ API.
#pragma once

#include "kiln/context.h"
#include "kiln/error.h"
#include "kiln/model.h"
#include "kiln/prefix_cache.h"
#include "kiln/sampler.h"
#include "kiln/types.h"
#include "tokenizer/tokenizer.h"
#include "kiln/version.h"
