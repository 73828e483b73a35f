#version 450
// Grouped matmul (MoE experts, per-head matrices) for decode, Q8_0 / Q4_0 / Q4_K / Q6_K weights
// against x's 8-bit codes by integer dot products, plain reduction: see moe_matmul.glsl (KILN_DOT).
#extension GL_EXT_spirv_intrinsics : require
#define KILN_DOT 1
#include "moe_matmul.glsl"
