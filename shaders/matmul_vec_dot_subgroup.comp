#version 450
// matmul_vec_dot.comp with the subgroupAdd reduction: see matmul_vec.glsl (KILN_DOT, KILN_SUBGROUP).
#extension GL_EXT_spirv_intrinsics : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#define KILN_DOT 1
#define KILN_SUBGROUP 1
#include "matmul_vec.glsl"
