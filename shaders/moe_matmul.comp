#version 450
// Grouped matmul (MoE experts, per-head matrices): see moe_matmul.glsl (the plain reduction).
#include "moe_matmul.glsl"
