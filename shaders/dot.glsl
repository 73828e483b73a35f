// sdot4x8(a, b, 0): the signed dot product of the four bytes of a and b (int8 x int8 summed to an
// int32), SPIR-V OpSDot (4450) with the PackedVectorFormat4x8Bit operand (0), capabilities
// DotProduct (6019) and DotProductInput4x8BitPacked (6018) of SPV_KHR_integer_dot_product.
// Declared through GL_EXT_spirv_intrinsics because the glslc of Debian 12 (glslang 11.13) does
// not know GL_EXT_integer_dot_product. Needs the device feature shaderIntegerDotProduct.
spirv_instruction(extensions = ["SPV_KHR_integer_dot_product"], capabilities = [6019, 6018], id = 4450)
int sdot4x8(uint a, uint b, spirv_literal int packed_format);
