// Shared by every kiln compute shader (#include "common.glsl" after #version).
//
// Conventions:
//  - specialization constant 0 is the workgroup size (x); the host picks it per device;
//  - buffers are std430 storage buffers in set 0, bound at the tensor's byte offset;
//  - parameters come in a push-constant block of at most 128 bytes (uints and floats only);
//  - a dispatch may spread its workgroups over x, y and z when one dimension would pass the
//    device's limit (65535 is the guaranteed minimum): flat_group() gives the linear index.
#extension GL_GOOGLE_include_directive : require

layout(local_size_x_id = 0, local_size_x = 64) in;

uint flat_group() {
    return gl_WorkGroupID.x + gl_NumWorkGroups.x * (gl_WorkGroupID.y + gl_NumWorkGroups.y * gl_WorkGroupID.z);
}

const uint WG = gl_WorkGroupSize.x;
