#version 450
// y = W x for decode: see matmul_vec.glsl (the plain reduction through shared memory).
#include "matmul_vec.glsl"
