#!/usr/bin/env bash
# Compiles every CUDA kernel with NVRTC for sm_80, sm_86, sm_89 and sm_90 (no GPU needed) and fails on a
# compile error or a register spill. Installs the pinned NVRTC wheel into a private directory (no venv
# needed) and points the backend's library search at it. Called by .ci/run; usable by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${GPTOSS_NVRTC_DIR:-${TMPDIR:-/tmp}/gptoss-nvrtc-13.0.88}"
if ! ls "$dir"/nvidia/*/lib/libnvrtc.so.* >/dev/null 2>&1; then
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$dir" nvidia-cuda-nvrtc==13.0.88
fi
lib="$(dirname "$(ls "$dir"/nvidia/*/lib/libnvrtc.so.* | head -n 1)")"
echo "nvrtc-check: NVRTC from $lib"
GPTOSS_CUDA_LIB_DIRS="$lib" GPTOSS_REQUIRE_NVRTC=1 cargo test -p gptoss-cuda --test nvrtc_compile -- --nocapture
