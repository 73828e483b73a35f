#version 450
// y = W x for decode, Q8_0 / Q4_0 / Q4_K / Q6_K weights against x's 8-bit codes by integer dot products (devices
// with shaderIntegerDotProduct), plain shared-memory reduction: see matmul_vec.glsl (KILN_DOT).
#extension GL_EXT_spirv_intrinsics : require
#define KILN_DOT 1
#include "matmul_vec.glsl"
