#version 450
// Prompt attention tiled over query rows and keys, tiles in 16-bit shared memory (devices with
// shaderFloat16): see attention_tiled.glsl.
#define KILN_F16_TILES 1
#include "attention_tiled.glsl"
