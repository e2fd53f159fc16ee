#!/usr/bin/env python3
"""Time imgfx's effects next to Pillow/OpenCV on the same 512² and 1024² images, and print both.

    .tools/py/bin/python scripts/imgfx_bench.py [--repeats 5] [--only SPEC ...]

Writes the images to out/imgfx_bench/, times the reference tools there (Pillow is single-threaded;
OpenCV is pinned to one thread), then runs `cargo run --release -p imgfx --example bench_table` with
RAYON_NUM_THREADS=1 and =2 on the same files. Prints: effect, size, reference ms, imgfx ms on 1 and 2
threads, and the ratio imgfx(1 thread) / reference (target ≤ 1.5). Times are medians of CPU time (process-wide),
which a busy machine disturbs far less than wall time; the 2-thread column is wall time.
"""
import argparse
import io
import os
import subprocess
import sys
import time

import cv2
import numpy as np
from PIL import Image, ImageChops, ImageEnhance, ImageFilter, ImageOps

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
OUT = os.path.join(ROOT, "out", "imgfx_bench")


def make_image(size, seed=1):
    """Smooth shading, flat shapes with hard edges, stripes and noise (the golden inputs' recipe, scaled)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    xf, yf = x * 96.0 / size, y * 64.0 / size
    r = 120 + 80 * np.sin(xf / 13.0) * np.cos(yf / 17.0)
    g = 40 + 150 * (xf / 96) * (yf / 64) + 20 * np.sin((xf + yf) / 5.0)
    b = 200 - 120 * np.hypot(xf - 57.6, yf - 25.6) / 96
    img = np.stack([r, g, b], axis=-1)
    img[(xf - 25) ** 2 + (yf - 30) ** 2 < 14 ** 2] = [230, 200, 40]
    img[(xf > 55) & (xf < 85) & (yf > 8) & (yf < 22)] = [20, 30, 90]
    img[(abs(xf - 70) + abs(yf - 45)) < 12] = [250, 250, 250]
    img[(yf > 52) & ((x // 3) % 2 == 0)] = [10, 10, 10]
    img += rng.normal(0, 6, img.shape)
    return Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8), "RGB")


def jpeg(im, q):
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=q)
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    return out


def xdog_cv(arr, sigma=0.8, k=1.6, p=20.0, eps=0.1, phi=10.0):
    gray = cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY).astype(np.float32)
    g1 = cv2.GaussianBlur(gray, (0, 0), sigma)
    g2 = cv2.GaussianBlur(gray, (0, 0), sigma * k)
    u = ((1 + p) * g1 - p * g2) / 255.0
    t = np.where(u >= eps, 1.0, 1.0 + np.tanh(phi * (u - eps))).astype(np.float32)
    return (arr * t[..., None]).astype(np.uint8)


def canny_cv(arr):
    gray = cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY)
    e = cv2.Canny(gray, 100, 200)
    return cv2.bitwise_and(arr, arr, mask=cv2.bitwise_not(e))


def contour_pil(im):
    lines = im.convert("L").filter(ImageFilter.CONTOUR).convert("RGB")
    return ImageChops.multiply(im, lines)


def bilateral_n(arr, n):
    for _ in range(n):
        arr = cv2.bilateralFilter(arr, 9, 75, 75)
    return arr


# imgfx spec -> (reference name, function of (PIL image, numpy array))
REFS = {
    "contrast:factor=1.5": ("Pillow ImageEnhance.Contrast(1.5)", lambda im, a: ImageEnhance.Contrast(im).enhance(1.5)),
    "autocontrast": ("Pillow ImageOps.autocontrast", lambda im, a: ImageOps.autocontrast(im)),
    "posterize:bits=3": ("Pillow ImageOps.posterize(3)", lambda im, a: ImageOps.posterize(im, 3)),
    "contour": ("Pillow filter(CONTOUR)", lambda im, a: im.filter(ImageFilter.CONTOUR)),
    "find_edges": ("Pillow filter(FIND_EDGES)", lambda im, a: im.filter(ImageFilter.FIND_EDGES)),
    "smooth_more": ("Pillow filter(SMOOTH_MORE)", lambda im, a: im.filter(ImageFilter.SMOOTH_MORE)),
    "jpeg:quality=30": ("Pillow save JPEG q30 + decode", lambda im, a: jpeg(im, 30)),
    "flatten:iterations=1": ("OpenCV bilateralFilter(9,75,75)", lambda im, a: bilateral_n(a, 1)),
    "flatten:iterations=5": ("OpenCV bilateralFilter x5", lambda im, a: bilateral_n(a, 5)),
    "outline": ("OpenCV GaussianBlur x2 + numpy XDoG", lambda im, a: xdog_cv(a)),
    "outline:method=canny": ("OpenCV Canny + mask", lambda im, a: canny_cv(a)),
    "outline:method=contour": ("Pillow L+CONTOUR+multiply", lambda im, a: contour_pil(im)),
}


def median_ms(f, repeats):
    """(wall ms, CPU ms) medians; CPU time (all threads of the process) is what a loaded machine disturbs
    least, and what the one-core comparison uses."""
    f()
    wall, cpu = [], []
    for _ in range(repeats):
        c, t = time.process_time(), time.perf_counter()
        f()
        wall.append((time.perf_counter() - t) * 1e3)
        cpu.append((time.process_time() - c) * 1e3)
    wall.sort()
    cpu.sort()
    return wall[len(wall) // 2], cpu[len(cpu) // 2]


def run_imgfx(threads, repeats):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    cmd = ["cargo", "run", "-q", "--release", "-p", "imgfx", "--example", "bench_table", "--", OUT, str(repeats)]
    cmd += list(REFS)
    out = subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
    res = {}
    for line in out.splitlines():
        spec, size, wall, cpu = line.split("\t")
        res[(spec, int(size))] = (float(wall), float(cpu))
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", nargs="*", help="imgfx specs to time (default: all)")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    if args.only:
        for k in list(REFS):
            if k not in args.only:
                del REFS[k]
    os.makedirs(OUT, exist_ok=True)
    ref = {}
    for size in (512, 1024):
        im = make_image(size)
        im.save(os.path.join(OUT, f"bench_{size}.png"))
        arr = np.asarray(im).copy()
        for spec, (_, f) in REFS.items():
            ref[(spec, size)] = median_ms(lambda: f(im, arr), args.repeats)
    ours1 = run_imgfx(1, args.repeats)
    ours2 = run_imgfx(2, args.repeats)
    print(f"# {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; Pillow {Image.__version__}, OpenCV {cv2.__version__} "
          f"(1 thread); median of {args.repeats}; CPU ms unless marked wall")
    print(f"{'effect':<24} {'size':>5} {'reference':<38} {'ref':>8} {'imgfx 1T':>9} {'1T/ref':>7} "
          f"{'ref wall':>9} {'1T wall':>8} {'2T wall':>8}")
    for size in (512, 1024):
        for spec, (name, _) in REFS.items():
            (rw, rc), (aw, ac), (bw, _) = ref[(spec, size)], ours1[(spec, size)], ours2[(spec, size)]
            print(f"{spec:<24} {size:>5} {name:<38} {rc:8.2f} {ac:9.2f} {ac / rc:7.2f} {rw:9.2f} {aw:8.2f} {bw:8.2f}")


if __name__ == "__main__":
    sys.exit(main())
