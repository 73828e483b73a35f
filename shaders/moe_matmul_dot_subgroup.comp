#version 450
// moe_matmul_dot.comp with the subgroupAdd reduction: see moe_matmul.glsl (KILN_DOT, KILN_SUBGROUP).
#extension GL_EXT_spirv_intrinsics : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#define KILN_DOT 1
#define KILN_SUBGROUP 1
#include "moe_matmul.glsl"
