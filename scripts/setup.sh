#!/usr/bin/env bash
# One-time set-up on a fresh Debian machine; sourced by scripts/test.sh and scripts/run.sh.
# Installs the system BLAS that ndarray-linalg links, and NVRTC/ptxas/CUDA headers from PyPI
# (no GPU needed: they compile the CUDA kernels in CI). Idempotent and quiet when all is there.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

need_apt=()
dpkg -s libopenblas-dev >/dev/null 2>&1 || need_apt+=(libopenblas-dev)
dpkg -s libturbojpeg0-dev >/dev/null 2>&1 || need_apt+=(libturbojpeg0-dev)  # imgfx: JPEG noise as Pillow
command -v g++ >/dev/null 2>&1 || need_apt+=(g++)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# CUDA compiler pieces from PyPI, into an ignored folder of the repo.
CUDA_TOOLS="$ROOT/.tools/cuda"
if [ ! -f "$CUDA_TOOLS/.done" ]; then
  echo "setup: installing NVRTC, ptxas and CUDA headers from PyPI into .tools/cuda" >&2
  python3 -m pip install -q --disable-pip-version-check --target "$CUDA_TOOLS" \
    nvidia-cuda-nvrtc-cu12 nvidia-cuda-runtime-cu12 nvidia-cuda-nvcc-cu12 >&2
  touch "$CUDA_TOOLS/.done"
fi
export COPIER_CUDA_TOOLS="$CUDA_TOOLS/nvidia"
export LD_LIBRARY_PATH="$CUDA_TOOLS/nvidia/cuda_nvrtc/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CUDA_INCLUDE_DIR="$CUDA_TOOLS/nvidia/cuda_runtime/include"
export PTXAS="$CUDA_TOOLS/nvidia/cuda_nvcc/bin/ptxas"
