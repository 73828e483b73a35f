// Tests that need a Vulkan device skip LOUDLY without one (lavapipe counts).
#pragma once

#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "backend/vulkan/graph_executor.h"
#include "kiln/error.h"

namespace kiln::test {

// Why there is no Vulkan device ("" when there is one), asked once.
inline const std::string& no_vulkan() {
    static const std::string why = [] {
        try {
            kiln::backend::VulkanOptions o;
            o.require = true;
            return kiln::backend::make_vulkan_backend(o) ? std::string() : std::string("no device chosen");
        } catch (const kiln::Error& e) {
            return std::string(e.what());
        }
    }();
    return why;
}

}  // namespace kiln::test

#define KILN_REQUIRE_VULKAN()                                                                      \
    do {                                                                                           \
        if (!::kiln::test::no_vulkan().empty()) {                                                  \
            std::printf("[  SKIPPED ] no Vulkan device: %s\n", ::kiln::test::no_vulkan().c_str()); \
            GTEST_SKIP() << "SKIPPED: no Vulkan device: " << ::kiln::test::no_vulkan();            \
        }                                                                                          \
    } while (0)
