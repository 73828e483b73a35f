#version 450
// Grouped matmul with a subgroupAdd reduction (devices with subgroup arithmetic in compute): see
// moe_matmul.glsl.
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#define KILN_SUBGROUP 1
#include "moe_matmul.glsl"
