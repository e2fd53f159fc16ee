#!/usr/bin/env bash
# GPU check for lora-cuda, in two halves (the GPU machines have CUDA, a driver and PyTorch but no Rust):
#
#   bash scripts/gpu-check.sh build   # on the build machine: release test + bench binaries, and NVRTC 12.9
#                                     # from PyPI, into out/gpu-check/ (an ignored folder; carry it over)
#   bash scripts/gpu-check.sh run     # on the GPU machine, from the repo root: GPU parity tests, kernel
#                                     # benchmarks and the PyTorch yardsticks; appends the device, the date
#                                     # and the figures to docs/gpu-results.md
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/out/gpu-check"
mode="${1:-}"

case "$mode" in
build)
  cd "$ROOT"
  source scripts/setup.sh
  rm -rf "$OUT" && mkdir -p "$OUT/bin" "$OUT/lib"
  # Test binaries: cargo prints their paths as JSON; keep the gpu_* ones.
  cargo test -p lora-cuda --release --no-run --test gpu_parity --test gpu_ops --test gpu_model --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    try: m=json.loads(l)
    except Exception: continue
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["name"].startswith("gpu_"): print(m["target"]["name"], m["executable"])' |
    while read -r name exe; do cp "$exe" "$OUT/bin/$name"; done
  cargo build -p lora-cuda --release --example gpu_bench
  cp "${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/gpu_bench" "$OUT/bin/gpu_bench"
  # Strip debug info: the folder must stay small enough to carry to the GPU machine (64 MiB there).
  for b in "$OUT"/bin/*; do strip --strip-debug "$b"; done
  # By default the GPU machine's own NVRTC (CUDA 13) compiles the kernels; its C API is the one cudarc's
  # 12.9 bindings use. GPU_CHECK_NVRTC=1 carries PyPI's NVRTC 12.9 instead (about 110 MB: too big for a
  # 64 MiB carry); a copy named libnvrtc.so makes cudarc's plain-name lookup find it first.
  if [ "${GPU_CHECK_NVRTC:-0}" = 1 ]; then
    cp "$COPIER_CUDA_TOOLS"/cuda_nvrtc/lib/libnvrtc.so.12 "$OUT/lib/"
    cp "$COPIER_CUDA_TOOLS"/cuda_nvrtc/lib/libnvrtc.so.12 "$OUT/lib/libnvrtc.so"
    cp "$COPIER_CUDA_TOOLS"/cuda_nvrtc/lib/libnvrtc-builtins.so.12.* "$OUT/lib/"
  fi
  du -sh "$OUT"
  ls -la "$OUT/bin" "$OUT/lib"
  echo "gpu-check: built into $OUT; on the GPU machine run: bash scripts/gpu-check.sh run"
  ;;
run)
  cd "$ROOT"
  [ -d "$OUT/bin" ] || { echo "gpu-check: $OUT/bin missing: run 'bash scripts/gpu-check.sh build' on the build machine first" >&2; exit 1; }
  if ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu-check: no GPU here (nvidia-smi failed); nothing appended to docs/gpu-results.md" >&2
    exit 1
  fi
  export LD_LIBRARY_PATH="$OUT/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  for d in /usr/local/cuda/include /usr/local/cuda/targets/x86_64-linux/include; do
    [ -f "$d/cuda_fp16.h" ] && export CUDA_INCLUDE_DIR="${CUDA_INCLUDE_DIR:-$d}"
  done
  nvrtc_used="$(ls "$OUT"/lib/libnvrtc-builtins.so.* 2>/dev/null | head -1)"
  nvrtc_used="${nvrtc_used:-system $(ldconfig -p | grep -m1 -o 'libnvrtc.so[.0-9]*' || echo libnvrtc)}"
  log="$(mktemp)"
  device="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1 || echo unknown)"
  {
    echo
    echo "## $(date -u '+%Y-%m-%d %H:%M UTC') — $device"
    echo
    echo "NVRTC: $nvrtc_used. Host: $(uname -m), $(nproc) CPUs."
    echo
    echo "### GPU parity tests"
    echo
    echo '```'
  } >>"$log"
  status=0
  for t in "$OUT"/bin/gpu_parity "$OUT"/bin/gpu_ops "$OUT"/bin/gpu_model; do
    [ -x "$t" ] || continue
    tlog="$(mktemp)"
    "$t" --test-threads=1 >"$tlog" 2>&1 || status=1
    cat "$tlog" >&2
    echo "$(basename "$t"):" >>"$log"
    grep -E "^test |^test result|SKIPPED|panicked" "$tlog" >>"$log" || true
    rm -f "$tlog"
  done
  {
    echo '```'
    echo
    echo "### Kernel benchmarks (ours, then PyTorch on the same device in the same run)"
    echo
  } >>"$log"
  "$OUT/bin/gpu_bench" | tee /dev/stderr >>"$log" || status=1
  if python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
    python3 scripts/cuda_torch_bench.py | grep -v '^|---' | tee /dev/stderr | sed -n '/^|/p;/^torch/p' >>"$log" || status=1
  else
    echo "PyTorch with CUDA not available: no yardstick figures." >>"$log"
  fi
  cat "$log" >>docs/gpu-results.md
  rm -f "$log"
  echo "gpu-check: results appended to docs/gpu-results.md (exit status $status)"
  exit $status
  ;;
*)
  echo "usage: bash scripts/gpu-check.sh build|run" >&2
  exit 2
  ;;
esac
