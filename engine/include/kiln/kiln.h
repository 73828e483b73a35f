// kiln: the whole public C++ API.
#pragma once

#include "kiln/context.h"
#include "kiln/devices.h"
#include "kiln/error.h"
#include "kiln/model.h"
#include "kiln/sampler.h"
#include "kiln/tokenizer.h"
#include "kiln/types.h"
#include "kiln/version.h"
