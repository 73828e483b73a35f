# One target per layer of ARCHITECTURE.md, so that an include going the wrong way does not compile.
#
# Each layer L is an OBJECT library `layer_L` built from engine/L/ (kernels/ for `kernels`). Its
# headers are reachable only through an include root of its own, build/layers/L/, holding a link
# L -> engine/L and links to the public headers (kiln/*.h) the layer implements. A layer sees its
# own root and the roots of the layers it links (PRIVATE, along the arrows below): nothing else of
# the tree is on its include path, so `#include "runtime/..."` in model/ is "No such file".
# libkiln.a / libkiln.so are made of every layer's objects.
#
# The arrows (a layer lists what it may include, the lower layers its headers need included):
#   base       kiln::Error, the KV cache type and layer (engine/base/kiln/: public headers every layer uses)
#   quant      base                     the tensor type table, reference (de)quantization
#   gguf       base quant               the reader sizes tensors by quant's type table; the writer quantizes
#   tokenizer  base quant gguf
#   chat       base quant gguf          templates take their bos/eos texts from a GGUF file
#   graph      base quant
#   kernels    base quant
#   model      base quant gguf tokenizer graph
#   backend    base quant graph kernels
#   runtime    every layer above: contexts, sampler, the generation step, generator, serving engine,
#              chat formats, GGUF file info (the public API's home)
set(KILN_LAYERS quant gguf tokenizer chat graph kernels model backend runtime)
set(KILN_LAYER_DEPS_quant base)
set(KILN_LAYER_DEPS_gguf base quant)
set(KILN_LAYER_DEPS_tokenizer base quant gguf)
set(KILN_LAYER_DEPS_chat base quant gguf)
set(KILN_LAYER_DEPS_graph base quant)
set(KILN_LAYER_DEPS_kernels base quant)
set(KILN_LAYER_DEPS_model base quant gguf tokenizer graph)
set(KILN_LAYER_DEPS_backend base quant graph kernels)
set(KILN_LAYER_DEPS_runtime base quant gguf tokenizer chat graph kernels model backend)
# The public headers each layer implements (engine/include/kiln/).
set(KILN_LAYER_PUBLIC_tokenizer tokenizer.h)
set(KILN_LAYER_PUBLIC_model model.h)
set(KILN_LAYER_PUBLIC_backend devices.h)
set(KILN_LAYER_PUBLIC_runtime chat.h context.h generator.h gguf_info.h kiln.h memory.h prefix_cache.h sampler.h serving.h)

set(KILN_LAYER_ROOTS ${CMAKE_BINARY_DIR}/layers)
add_library(layer_base INTERFACE)
target_include_directories(layer_base INTERFACE ${CMAKE_SOURCE_DIR}/engine/base)

foreach(layer ${KILN_LAYERS})
  set(root ${KILN_LAYER_ROOTS}/${layer})
  file(REMOVE_RECURSE ${root})
  file(MAKE_DIRECTORY ${root}/kiln)
  if(layer STREQUAL "kernels")
    set(dir ${CMAKE_SOURCE_DIR}/kernels)
  else()
    set(dir ${CMAKE_SOURCE_DIR}/engine/${layer})
  endif()
  file(CREATE_LINK ${dir} ${root}/${layer} SYMBOLIC)
  foreach(h ${KILN_LAYER_PUBLIC_${layer}})
    file(CREATE_LINK ${CMAKE_SOURCE_DIR}/engine/include/kiln/${h} ${root}/kiln/${h} SYMBOLIC)
  endforeach()
  file(GLOB_RECURSE srcs CONFIGURE_DEPENDS ${dir}/*.cpp)
  add_library(layer_${layer} OBJECT ${srcs})
  target_include_directories(layer_${layer} INTERFACE ${root})
  target_include_directories(layer_${layer} PRIVATE ${root})
  list(TRANSFORM KILN_LAYER_DEPS_${layer} PREPEND layer_ OUTPUT_VARIABLE deps)
  target_link_libraries(layer_${layer} PRIVATE ${deps} kiln_warnings kiln_deps Threads::Threads Vulkan::Headers)
  kiln_optimise(layer_${layer})
endforeach()
# kiln.h includes the generated version header.
target_include_directories(layer_runtime PRIVATE ${CMAKE_BINARY_DIR}/generated/include)

set(KILN_LAYER_OBJECTS "")
foreach(layer ${KILN_LAYERS})
  list(APPEND KILN_LAYER_OBJECTS $<TARGET_OBJECTS:layer_${layer}>)
endforeach()
