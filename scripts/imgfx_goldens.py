#!/usr/bin/env python3
"""Make the golden fixtures of imgfx's tests with the reference tools (Pillow, OpenCV).

    python3 -m venv .tools/py && .tools/py/bin/pip install pillow opencv-python-headless numpy
    .tools/py/bin/python scripts/imgfx_goldens.py            # writes imgfx/tests/fixtures/

Writes small PNG inputs, the reference outputs, and `manifest.tsv`: one line per golden with the file, the
input, the effect in imgfx's `name:key=value` syntax and the comparison (`exact`, `bilateral`, `jpeg`).
`cargo test` reads only these files; it never needs Python.
"""
import io
import os
import sys

import cv2
import numpy as np
import PIL
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "imgfx", "tests", "fixtures")
W, H = 96, 64


def make_input(seed):
    """A small 'natural' image: smooth shading, flat shapes with hard edges, fine texture and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W].astype(np.float64)
    r = 120 + 80 * np.sin(x / 13.0) * np.cos(y / 17.0)
    g = 40 + 150 * (x / W) * (y / H) + 20 * np.sin((x + y) / 5.0)
    b = 200 - 120 * np.hypot(x - W * 0.6, y - H * 0.4) / W
    img = np.stack([r, g, b], axis=-1)
    # flat shapes with hard edges
    img[(x - 25) ** 2 + (y - 30) ** 2 < 14 ** 2] = [230, 200, 40]
    img[(x > 55) & (x < 85) & (y > 8) & (y < 22)] = [20, 30, 90]
    img[(abs(x - 70) + abs(y - 45)) < 12] = [250, 250, 250]
    img[(y > 52) & ((x // 3) % 2 == 0)] = [10, 10, 10]
    img += rng.normal(0, 6, img.shape)
    return Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8), "RGB")


def fmt(v):
    return ("%g" % v).replace("-", "m").replace(".", "p")


def main():
    os.makedirs(OUT, exist_ok=True)
    rows = []

    def save(img, name, inp, spec, kind):
        img.save(os.path.join(OUT, name))
        rows.append((name, inp, spec, kind))

    rgb = make_input(1)
    rgb.save(os.path.join(OUT, "in_rgb.png"))
    lum = make_input(2).convert("L")
    lum.save(os.path.join(OUT, "in_l.png"))
    inputs = {"in_rgb.png": rgb, "in_l.png": lum}

    filters = {
        "blur": ImageFilter.BLUR, "contour": ImageFilter.CONTOUR, "detail": ImageFilter.DETAIL,
        "edge_enhance": ImageFilter.EDGE_ENHANCE, "edge_enhance_more": ImageFilter.EDGE_ENHANCE_MORE,
        "emboss": ImageFilter.EMBOSS, "find_edges": ImageFilter.FIND_EDGES, "sharpen": ImageFilter.SHARPEN,
        "smooth": ImageFilter.SMOOTH, "smooth_more": ImageFilter.SMOOTH_MORE,
    }
    for iname, im in inputs.items():
        tag = iname[3:-4]
        for fname, f in filters.items():
            save(im.filter(f), f"filter_{fname}_{tag}.png", iname, fname, "exact")
        for factor in [0.0, 0.3, 0.5, 1.0, 1.3, 1.5, 2.0, 3.0, -0.5]:
            save(ImageEnhance.Contrast(im).enhance(factor), f"contrast_{fmt(factor)}_{tag}.png", iname,
                 f"contrast:factor={factor}", "exact")
        for bits in [1, 2, 3, 4, 6, 8]:
            save(ImageOps.posterize(im, bits), f"posterize_{bits}_{tag}.png", iname, f"posterize:bits={bits}",
                 "exact")
        for i, (kw, spec) in enumerate([
            ({}, "autocontrast"),
            ({"cutoff": 2}, "autocontrast:cutoff=2"),
            ({"cutoff": (1, 5)}, "autocontrast:cutoff_low=1,cutoff_high=5"),
            ({"cutoff": 0.5}, "autocontrast:cutoff=0.5"),
            ({"ignore": 255}, "autocontrast:ignore=255"),
            ({"preserve_tone": True}, "autocontrast:preserve_tone=true"),
        ]):
            save(ImageOps.autocontrast(im, **kw), f"autocontrast_{i}_{tag}.png", iname, spec, "exact")
        # OpenCV bilateral (BGR order does not matter: L1 distance and per-channel sums).
        arr = np.asarray(im)
        for d, sc, ss in [(9, 75, 75), (5, 30, 10), (0, 50, 3), (7, 250, 250)]:
            out = cv2.bilateralFilter(arr, d, sc, ss)
            save(Image.fromarray(out, im.mode), f"bilateral_{d}_{sc}_{ss}_{tag}.png", iname,
                 f"flatten:d={d},sigma_color={sc},sigma_space={ss},iterations=1", "bilateral")
        out = arr
        for _ in range(3):
            out = cv2.bilateralFilter(out, 9, 75, 75)
        save(Image.fromarray(out, im.mode), f"bilateral_x3_{tag}.png", iname,
             "flatten:d=9,sigma_color=75,sigma_space=75,iterations=3", "bilateral")
        # Pillow JPEG round trips (stored decoded, as PNG); `passes` re-encodes the decoded image.
        for q, sub, passes in [(10, "4:2:0", 1), (30, "4:2:0", 1), (75, "4:2:0", 1), (30, "4:4:4", 1),
                               (50, "4:2:2", 1), (95, "4:2:0", 1), (30, "4:2:0", 3)]:
            dec = im
            for _ in range(passes):
                buf = io.BytesIO()
                dec.save(buf, "JPEG", quality=q, subsampling=sub)
                buf.seek(0)
                dec = Image.open(buf).convert(im.mode)
            name = f"jpeg_q{q}_{sub.replace(':', '')}" + (f"_x{passes}" if passes > 1 else "")
            spec = f"jpeg:quality={q},subsampling={sub}" + (f",passes={passes}" if passes > 1 else "")
            save(dec, f"{name}_{tag}.png", iname, spec, "jpeg")
        # OpenCV Canny (L1 gradient, aperture 3) on Pillow's luma, edges multiplied in as black
        # (outline:method=canny at strength 1). threshold1 > threshold2 is swapped by OpenCV.
        luma = np.asarray(im.convert("L"))
        for t1, t2 in [(100, 200), (50, 150), (20, 60), (200, 100)]:
            edges = cv2.Canny(luma, t1, t2)
            out = np.asarray(im).copy()
            out[edges != 0] = 0
            save(Image.fromarray(out, im.mode), f"canny_{t1}_{t2}_{tag}.png", iname,
                 f"outline:method=canny,threshold1={t1},threshold2={t2}", "exact")

    with open(os.path.join(OUT, "manifest.tsv"), "w") as f:
        f.write(f"# made by scripts/imgfx_goldens.py with Pillow {PIL.__version__}, OpenCV {cv2.__version__}, "
                f"numpy {np.__version__}, Python {sys.version.split()[0]}\n")
        f.write("# golden\tinput\teffect\tcomparison\n")
        for r in rows:
            f.write("\t".join(r) + "\n")
    print(f"wrote {len(rows)} goldens to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
