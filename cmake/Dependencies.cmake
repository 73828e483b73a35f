# Every dependency comes from a Debian 12 package. A missing one stops configure and names the
# package to install (scripts/setup.sh installs them all).
find_package(PkgConfig QUIET)

macro(kiln_missing what apt)
  message(FATAL_ERROR "kiln: ${what} not found. Install it with: apt-get install ${apt}  "
                      "(or run scripts/setup.sh, which installs every dependency)")
endmacro()

set(THREADS_PREFER_PTHREAD_FLAG ON)
find_package(Threads REQUIRED)

find_package(nlohmann_json 3 QUIET)
if(NOT nlohmann_json_FOUND)
  kiln_missing("nlohmann-json" nlohmann-json3-dev)
endif()

find_package(fmt QUIET)
if(NOT fmt_FOUND)
  kiln_missing("fmt" libfmt-dev)
endif()

if(NOT PkgConfig_FOUND)
  kiln_missing("pkg-config" pkg-config)
endif()
pkg_check_modules(PCRE2 QUIET IMPORTED_TARGET libpcre2-8)
if(NOT PCRE2_FOUND)
  kiln_missing("PCRE2" libpcre2-dev)
endif()

# OpenBLAS: prompt matmuls of float weights (F32 / F16 / BF16) on the CPU (kernels/matmul_blas.cpp).
pkg_check_modules(OPENBLAS QUIET IMPORTED_TARGET openblas)
if(NOT OPENBLAS_FOUND)
  kiln_missing("OpenBLAS" libopenblas-dev)
endif()

pkg_check_modules(HTTPLIB QUIET IMPORTED_TARGET cpp-httplib)
if(NOT HTTPLIB_FOUND)
  kiln_missing("cpp-httplib" libcpp-httplib-dev)
endif()

find_package(Vulkan QUIET)
if(NOT Vulkan_FOUND)
  kiln_missing("Vulkan headers/loader" libvulkan-dev)
endif()
find_program(KILN_GLSLC glslc)
if(NOT KILN_GLSLC)
  kiln_missing("glslc (GLSL to SPIR-V compiler)" glslc)
endif()

if(KILN_BUILD_TESTS)
  find_package(GTest QUIET)
  if(NOT GTest_FOUND)
    kiln_missing("GoogleTest" libgtest-dev)
  endif()
endif()
if(KILN_BUILD_BENCH)
  find_package(benchmark QUIET)
  if(NOT benchmark_FOUND)
    kiln_missing("Google Benchmark" libbenchmark-dev)
  endif()
endif()

add_library(kiln_deps INTERFACE)
target_link_libraries(kiln_deps INTERFACE nlohmann_json::nlohmann_json fmt::fmt PkgConfig::PCRE2 PkgConfig::OPENBLAS)
