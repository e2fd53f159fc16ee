#!/usr/bin/env python3
"""Compile lora-cuda/kernels/*.cu with NVRTC (through ctypes) and assemble with ptxas, printing
registers, shared memory and spills per kernel. A quick loop for kernel work without rebuilding Rust;
the Rust test tests/nvrtc.rs is the check CI runs. Needs `source scripts/setup.sh`."""
import ctypes, os, subprocess, sys, tempfile

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lora-cuda", "kernels")
nvrtc = ctypes.CDLL("libnvrtc.so.12")
common = open(os.path.join(root, "common.cuh")).read()
inc = os.environ.get("CUDA_INCLUDE_DIR", "/usr/local/cuda/include")
ptxas = os.environ.get("PTXAS", "ptxas")
files = sys.argv[1:] or sorted(f for f in os.listdir(root) if f.endswith(".cu"))
ok = True
for arch in ("80", "90"):
    for f in files:
        src = open(os.path.join(root, f)).read().replace('#include "common.cuh"', common)
        prog = ctypes.c_void_p()
        nvrtc.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), f.encode(), 0, None, None)
        opts = [f"--gpu-architecture=compute_{arch}", f"--include-path={inc}", "-std=c++17", "--use_fast_math"]
        arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
        rc = nvrtc.nvrtcCompileProgram(prog, len(opts), arr)
        n = ctypes.c_size_t()
        nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
        log = ctypes.create_string_buffer(n.value)
        nvrtc.nvrtcGetProgramLog(prog, log)
        if rc != 0:
            print(f"sm_{arch} {f}: NVRTC error\n{log.value.decode()}")
            ok = False
            continue
        nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(n))
        ptx = ctypes.create_string_buffer(n.value)
        nvrtc.nvrtcGetPTX(prog, ptx)
        with tempfile.NamedTemporaryFile("wb", suffix=".ptx", delete=False) as t:
            t.write(ptx.value)
        r = subprocess.run([ptxas, f"-arch=sm_{arch}", "-v", "-o", "/dev/null", t.name], capture_output=True, text=True)
        os.unlink(t.name)
        if r.returncode != 0:
            print(f"sm_{arch} {f}: ptxas error\n{r.stderr}")
            ok = False
            continue
        for line in r.stderr.splitlines():
            if "Compiling entry" in line or "Used" in line or ("spill" in line and " 0 bytes spill stores" not in line):
                print(f"sm_{arch} {f}: {line.strip()}")
sys.exit(0 if ok else 1)
