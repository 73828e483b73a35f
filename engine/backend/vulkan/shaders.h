// The SPIR-V of every shaders/*.comp, compiled by glslc at build time (cmake/Shaders.cmake) and
// embedded in libengine. A shader is named by its file name without the extension ("matmul").
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace kiln::vk {

struct EmbeddedShader {
    const char* name;
    const uint32_t* words;  // SPIR-V, host byte order
    size_t n_words;
};

// The table ends with an entry whose name is nullptr.
const EmbeddedShader* embedded_shaders();
// nullptr when no shader has that name.
const EmbeddedShader* find_shader(std::string_view name);

}  // namespace kiln::vk
