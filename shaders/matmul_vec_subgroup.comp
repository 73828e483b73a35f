#version 450
// y = W x for decode with a subgroupAdd reduction (devices with subgroup arithmetic in compute):
// see matmul_vec.glsl.
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#define KILN_SUBGROUP 1
#include "matmul_vec.glsl"
