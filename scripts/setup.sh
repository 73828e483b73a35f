#!/usr/bin/env bash
# Installs everything kiln needs to build and test, from Debian 12 packages only. Run as root.
# Skips apt entirely when every package is already installed.
set -euo pipefail
packages=(
  build-essential cmake make pkg-config git
  libvulkan-dev glslang-dev libshaderc-dev glslc mesa-vulkan-drivers vulkan-validationlayers
  libopenblas-dev libfmt-dev nlohmann-json3-dev libcpp-httplib-dev libpcre2-dev
  libgtest-dev libbenchmark-dev
  clang libclang-rt-14-dev
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "kiln setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends "${missing[@]}"
else
  echo "kiln setup: all packages present"
fi
