// Tests that need a Vulkan device skip LOUDLY without one (lavapipe counts).
#pragma once

#include <gtest/gtest.h>

#include <cstdio>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "backend/vulkan/backend.h"
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

// A suite of op-level tests on one kiln::vk::Backend (validation on), opened once per suite:
// each test skips loudly without a device and fails if it added validation messages. Derived is
// the suite's own class (each suite gets its own backend).
template <class Derived>
class VulkanOpsSuite : public ::testing::Test {
public:
    static void SetUpTestSuite() {
        try {
            vk_ = kiln::vk::Backend::open({.device = -1, .require = true, .validation = true});
        } catch (const kiln::Error& e) {
            why_ = e.what();
        }
    }
    static void TearDownTestSuite() { vk_.reset(); }

protected:
    void SetUp() override {
        if (!vk_) {
            std::fprintf(stderr, "\n*** SKIPPED: no Vulkan device (%s) ***\n\n", why_.c_str());
            GTEST_SKIP() << "no Vulkan device: " << why_;
        }
        messages_ = vk_->context().validation_messages();
    }
    void TearDown() override {
        if (vk_) {
            EXPECT_EQ(vk_->context().validation_messages(), messages_) << "Vulkan validation messages";
        }
    }
    kiln::vk::Backend& vk() { return *vk_; }
    kiln::vk::Tensor f32(const std::vector<float>& v, std::initializer_list<int64_t> ne, const char* name) {
        kiln::vk::Tensor t = vk().tensor(kiln::TensorType::F32, ne, name);
        vk().upload(t, v.data(), t.bytes());
        return t;
    }

    static inline std::unique_ptr<kiln::vk::Backend> vk_;
    static inline std::string why_;
    uint64_t messages_ = 0;
};

}  // namespace kiln::test

#define KILN_REQUIRE_VULKAN()                                                                      \
    do {                                                                                           \
        if (!::kiln::test::no_vulkan().empty()) {                                                  \
            std::printf("[  SKIPPED ] no Vulkan device: %s\n", ::kiln::test::no_vulkan().c_str()); \
            GTEST_SKIP() << "SKIPPED: no Vulkan device: " << ::kiln::test::no_vulkan();            \
        }                                                                                          \
    } while (0)
