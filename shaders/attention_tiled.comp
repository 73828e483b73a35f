#version 450
// Prompt attention tiled over query rows and keys, f32 tiles: see attention_tiled.glsl.
#include "attention_tiled.glsl"
