// kiln: the whole public C++ API (installed under include/kiln/; link kiln::engine or `pkg-config
// --libs kiln`). Every header here includes only the standard library and other kiln/ headers.
#pragma once

#include "kiln/chat.h"
#include "kiln/context.h"
#include "kiln/devices.h"
#include "kiln/error.h"
#include "kiln/generator.h"
#include "kiln/gguf_info.h"
#include "kiln/memory.h"
#include "kiln/model.h"
#include "kiln/prefix_cache.h"
#include "kiln/sampler.h"
#include "kiln/serving.h"
#include "kiln/tokenizer.h"
#include "kiln/types.h"
#include "kiln/version.h"
