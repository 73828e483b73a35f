// Vulkan backend: the shader build step (more to come: devices, memory, every shader against the
// CPU reference).
#include <gtest/gtest.h>

#include "backend/vulkan/shaders.h"

// ---- build: the embedded SPIR-V ------------------------------------------------------------

TEST(VulkanShaders, EveryShaderIsEmbeddedAsSpirv) {
    size_t n = 0;
    for (const auto* s = kiln::vk::embedded_shaders(); s->name; ++s, ++n) {
        SCOPED_TRACE(s->name);
        ASSERT_GE(s->n_words, 5u);
        EXPECT_EQ(s->words[0], 0x07230203u);  // SPIR-V magic
        EXPECT_EQ(kiln::vk::find_shader(s->name), s);
    }
    EXPECT_GE(n, 1u);
    EXPECT_EQ(kiln::vk::find_shader("no_such_shader"), nullptr);
}
