#include <gtest/gtest.h>
#include "quant/types.h"
TEST(Types, Q4KIsKnown) { EXPECT_EQ(kiln::traits(kiln::TensorType::Q4_K).type_size, 144u); }
