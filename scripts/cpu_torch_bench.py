#!/usr/bin/env python3
"""CPU benchmarks of lora-cuda next to their yardsticks, in one run, printed as one table (issue 5).

* matmul / linear / conv rows: our CPU backend against OpenBLAS `cblas_sgemm` called directly (both timed by
  `lora-cuda/examples/bench_cpu_ops.rs`, alternating blocks in one process). Target: ours >= 90% of sgemm.
* lora rows: one LoRA-adapted linear layer as the trainer uses it, forward + backward
  (`y = x W^T + b + (up(down(x)) * multiplier * scale)`, W and b frozen, `loss = y.sum()`, gradients for
  down, up and x), ours (the same binary) against PyTorch CPU on the same shapes, timed here with the same
  method. Target: ours >= 1.0x PyTorch's speed.

Times are process CPU time per call (time.process_time / CLOCK_PROCESS_CPUTIME_ID), median over rounds of
blocks that each run until they have used --block-ms of CPU time; wall ms is shown too. Run it under
`nice -n 15` on a loaded machine; CPU time is what we compare, since wall time depends on the load.

  nice -n 15 .tools/py/bin/python scripts/cpu_torch_bench.py [--threads 1 2] [--bin PATH] [--block-ms 40]

Both sides allocate a fresh tensor per op; at batch 4 x 256 tokens x 1024 features (4 MiB tensors) glibc's
malloc hands that memory back to the kernel at each free and page-faults it in again, which can cost as much
as the arithmetic. To see the figures without that, run the whole script (so both sides get it) under
`GLIBC_TUNABLES=glibc.malloc.trim_threshold=536870912:glibc.malloc.mmap_threshold=268435456`.

Without --bin it builds the example with cargo (release) first; CARGO_TARGET_DIR is honoured.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build_bin():
    env = dict(os.environ)
    subprocess.run(
        ["cargo", "build", "--release", "-q", "-p", "lora-cuda", "--example", "bench_cpu_ops"],
        cwd=ROOT,
        check=True,
        env=env,
    )
    tdir = Path(env.get("CARGO_TARGET_DIR", ROOT / "target"))
    return tdir / "release" / "examples" / "bench_cpu_ops"


def run_ours(binary, threads, args):
    env = dict(os.environ)
    env["RAYON_NUM_THREADS"] = str(threads)
    env["OPENBLAS_NUM_THREADS"] = str(threads)
    cmd = [str(binary), "--tsv", "--block-ms", str(args.block_ms), "--rounds", str(args.rounds)]
    if args.filter:
        cmd += ["--filter", args.filter]
    for g in args.only or []:
        cmd += ["--only", g]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines():
        f = line.split("\t")
        if len(f) != 6:
            continue
        num = lambda s: float(s) if s else None
        rows.append((f[0], f[1], float(f[2]), num(f[3]), float(f[4]), num(f[5])))
    if not rows:
        sys.exit(f"cpu_torch_bench: no rows from {cmd}")
    return rows


def parse_lora_case(case):
    # b{batch}_t{tokens}_{in}to{out}_r{rank}
    b, t, io, r = case.split("_")
    fin, fout = io.split("to")
    return int(b[1:]), int(t[1:]), int(fin), int(fout), int(r[1:])


def time_torch(fn, block_ms, rounds):
    for _ in range(3):
        fn()
    cpu, wall = [], []
    for _ in range(rounds):
        c0, w0, n = time.process_time(), time.perf_counter(), 0
        while True:
            fn()
            n += 1
            if (time.process_time() - c0) * 1e3 >= block_ms:
                break
        cpu.append((time.process_time() - c0) * 1e3 / n)
        wall.append((time.perf_counter() - w0) * 1e3 / n)
    cpu.sort()
    wall.sort()
    return cpu[len(cpu) // 2], wall[len(wall) // 2]


def torch_lora(torch, case, alpha, block_ms, rounds):
    import torch.nn.functional as F

    batch, tokens, fin, fout, rank = parse_lora_case(case)
    g = torch.Generator().manual_seed(7)
    w = torch.randn(fout, fin, generator=g)
    b = torch.randn(fout, generator=g)
    x = torch.randn(batch, tokens, fin, generator=g, requires_grad=True)
    down = torch.randn(rank, fin, generator=g, requires_grad=True)
    up = torch.randn(fout, rank, generator=g, requires_grad=True)
    multiplier, scale = 1.0, alpha / rank

    def step():
        for p in (x, down, up):
            p.grad = None
        # sd-scripts networks/lora.py LoRAModule.forward (dropouts off): org_forward(x) + lx * multiplier * scale
        lx = F.linear(F.linear(x, down), up)
        y = F.linear(x, w, b) + lx * multiplier * scale
        y.sum().backward()

    step()
    assert x.grad is not None and down.grad is not None and up.grad is not None
    return time_torch(step, block_ms, rounds)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", help="bench_cpu_ops binary (default: build it with cargo)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--block-ms", type=float, default=40.0)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--alpha", type=float, default=8.0, help="LoRA alpha of the Rust side (LoraConfig::new(r, 8))")
    ap.add_argument("--filter", help="substring of group/case")
    ap.add_argument("--only", action="append", help="matmul, linear, conv or lora (repeatable)")
    args = ap.parse_args()

    import torch

    binary = Path(args.bin) if args.bin else build_bin()
    load = os.getloadavg()
    print(
        f"# cpu_torch_bench: torch {torch.__version__}, {os.cpu_count()} CPUs, loadavg "
        f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} at start, nice {os.nice(0)}, "
        f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')}; "
        f"CPU ms per call = process CPU time, median of {args.rounds} blocks of >= {args.block_ms:g} CPU ms"
    )
    hdr = (
        f"{'thr':>3} {'group':<7} {'case':<26} {'ours CPU ms':>11} {'ref':<8} {'ref CPU ms':>10} "
        f"{'ours/ref speed':>14} {'target':>7} {'ours wall ms':>12} {'ref wall ms':>11}"
    )
    print(hdr)
    print("-" * len(hdr))
    misses = 0
    for thr in args.threads:
        torch.set_num_threads(thr)
        for group, case, oc, rc, ow, rw in run_ours(binary, thr, args):
            if group == "lora":
                rc, rw = torch_lora(torch, case, args.alpha, args.block_ms, args.rounds)
                ref, target = "torch", 1.0
            else:
                ref, target = "sgemm", 0.9
            speed = rc / oc
            ok = speed >= target
            misses += not ok
            print(
                f"{thr:>3} {group:<7} {case:<26} {oc:>11.3f} {ref:<8} {rc:>10.3f} "
                f"{speed:>13.2f}x {('>=' if ok else 'MISS ') + format(target, 'g'):>7} {ow:>12.3f} {rw:>11.3f}",
                flush=True,
            )
    load = os.getloadavg()
    print(f"# loadavg at end {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}; rows below target: {misses}")


if __name__ == "__main__":
    main()
