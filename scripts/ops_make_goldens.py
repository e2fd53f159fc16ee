#!/usr/bin/env python3
"""Golden fixtures for lora-ops: a SPEC REIMPLEMENTATION, not sd-scripts' own code.

sd-scripts cannot be installed from PyPI here, so this script re-implements, in numpy float32 with LAPACK's
gesdd (np.linalg.svd, the routine torch uses on CPU), the rules that /work/shared/spec/sdscripts-compat.md
states for resize_lora.py (§4: dense SVD of up@down, the rank rules with float32 comparisons and the +1,
alpha = float32(alpha/rank)*k, metadata) and svd_merge_lora.py (§3: accumulated dense delta, SVD, the signed
0.99 quantile clamp, I64 alpha = rank, metadata). It is an independent implementation (dense SVD, not the
Rust crate's QR core) of the same written rules, and the Rust test `tests/goldens.rs` compares against it.
One deliberate difference from the reference: singular-vector signs are normalised (see normalize_signs),
because LAPACK's signs are arbitrary and the svd_merge clamp depends on them; with LAPACK's raw signs, sign
flips alone move the clamped product by up to 3-5 % on these inputs (measured when making these files).

Usage: python3 scripts/ops_make_goldens.py   (needs numpy; writes lora-ops/tests/fixtures/*.safetensors)
"""
import json
import os
import struct

import numpy as np

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lora-ops", "tests", "fixtures")

# Real SD1 module names and shapes (tables/sd1_conv.tsv): (name, in, out, kernel)
MODULES = [
    ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", 768, 768, None),
    ("lora_unet_down_blocks_0_attentions_0_proj_in", 320, 320, 1),
    ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", 320, 320, None),
    ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", 768, 320, None),
    ("lora_unet_down_blocks_0_resnets_0_conv1", 320, 320, 3),
]


def write_safetensors(path, tensors, metadata):
    """Minimal safetensors writer: tensors sorted by descending dtype (I64 > F32) then name, compact JSON
    header padded with spaces to 8 bytes."""
    rank = {"I64": 0, "F32": 1}
    items = sorted(tensors.items(), key=lambda kv: (rank[dtype_of(kv[1])], kv[0]))
    header = {"__metadata__": metadata}
    offset = 0
    blobs = []
    for name, arr in items:
        b = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": dtype_of(arr), "shape": list(arr.shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((-len(h)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def dtype_of(a):
    return {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64"}[a.dtype]


def make_lora(seed, rank, alpha):
    rng = np.random.default_rng(seed)
    t = {}
    decay = np.float32(0.7) ** np.arange(rank, dtype=np.float32)  # a decaying spectrum
    for name, i, o, k in MODULES:
        if k is None:
            down = rng.standard_normal((rank, i), dtype=np.float32) * np.float32(0.05)
            up = rng.standard_normal((o, rank), dtype=np.float32) * np.float32(0.05) * decay[None, :]
        else:
            down = rng.standard_normal((rank, i, k, k), dtype=np.float32) * np.float32(0.05)
            up = (rng.standard_normal((o, rank), dtype=np.float32) * np.float32(0.05) * decay[None, :]).reshape(o, rank, 1, 1)
        t[name + ".lora_down.weight"] = down.astype(np.float32)
        t[name + ".lora_up.weight"] = up.astype(np.float32)
        t[name + ".alpha"] = np.array(alpha, dtype=np.float32)
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": str(float(alpha)),
            "ss_v2": "False", "ss_base_model_version": "sd_v1", "ss_training_comment": "golden input"}
    return t, meta


def product(t, name):
    down = t[name + ".lora_down.weight"]
    up = t[name + ".lora_up.weight"]
    r = down.shape[0]
    return (up.reshape(up.shape[0], r) @ down.reshape(r, -1)).astype(np.float32)


def normalize_signs(U, Vh):
    """The Rust crate's sign convention (lora_ops::module::normalize_signs): the largest-magnitude entry of
    each Vh row (first on ties) is made positive, with the matching U column. LAPACK's own signs are
    arbitrary (spec §11.1); fixing them makes the sign-dependent quantile clamp comparable."""
    for j in range(Vh.shape[0]):
        if Vh[j, int(np.argmax(np.abs(Vh[j])))] < 0:
            Vh[j] = -Vh[j]
            U[:, j] = -U[:, j]
    return U, Vh


def rank_resize(S, rank, method, param):
    """§4.4, float32 throughout, with the index clamps of resize_lora.py itself: the spec's
    clamp(i* + 1, 1, n - 1) for sv_cumulative/sv_fro is one too many; sd-scripts' own outputs
    (scripts/ops_sdscripts_goldens.py) show clamp(i*, 0, n - 1), and clamp(c, 0, n - 1) for sv_ratio."""
    n = len(S)
    if method is None:
        k = rank
    else:
        if method == "sv_ratio":
            thr = np.float32(S[0] / np.float32(param))
            idx = max(min(int(np.sum(S > thr)), n - 1), 0)
        elif method in ("sv_cumulative", "sv_fro"):
            v = S if method == "sv_cumulative" else (S * S).astype(np.float32)
            target = np.float32(param) if method == "sv_cumulative" else np.float32(float(param) ** 2)
            cum = (np.cumsum(v, dtype=np.float32) / np.float32(np.sum(v, dtype=np.float32))).astype(np.float32)
            i = int(np.searchsorted(cum, target, side="left"))
            idx = max(min(i, n - 1), 0)
        k = idx + 1
    if S[0] <= 1e-6:
        k = 1
    elif k > rank:
        k = rank
    return k


def resize(t, meta, new_rank, new_conv_rank, method=None, param=None):
    out = {}
    new_alpha = None
    old_dim = 0
    for name, i, o, kk in MODULES:  # already in sorted name order
        down = t[name + ".lora_down.weight"]
        r = down.shape[0]
        old_dim = max(old_dim, r)
        alpha = t[name + ".alpha"]
        scale = np.float32(alpha / np.float32(r))
        W = product(t, name)
        U, S, Vh = np.linalg.svd(W, full_matrices=False)
        U, Vh = normalize_signs(U, Vh)
        conv = down.ndim == 4
        k = rank_resize(S, new_conv_rank if conv else new_rank, method, param)
        new_alpha = np.float32(scale * np.float32(k))
        up = (U[:, :k] * S[None, :k]).astype(np.float32)
        dn = Vh[:k].astype(np.float32)
        if conv:
            up = up.reshape(o, k, 1, 1)
            dn = dn.reshape(k, i, kk, kk)
        out[name + ".lora_up.weight"] = up
        out[name + ".lora_down.weight"] = dn
        out[name + ".alpha"] = np.array(new_alpha, dtype=np.float32)
    m = dict(meta)
    comment = meta.get("ss_training_comment", "")
    if method is None:
        conv_desc = "" if new_rank == new_conv_rank else f" (conv: {new_conv_rank})"
        m["ss_training_comment"] = f"dimension is resized from {old_dim} to {new_rank}{conv_desc}; {comment}"
        m["ss_network_dim"] = str(new_rank)
        m["ss_network_alpha"] = repr(float(new_alpha))
    else:
        m["ss_training_comment"] = f"Dynamic resize with {method}: {float(param)} from {old_dim}; {comment}"
        m["ss_network_dim"] = "Dynamic"
        m["ss_network_alpha"] = "Dynamic"
    return out, m


def svd_merge(models, ratios, new_rank, new_conv_rank):
    out = {}
    for name, i, o, kk in MODULES:
        M = None
        for (t, _), ratio in zip(models, ratios):
            r = t[name + ".lora_down.weight"].shape[0]
            scale = np.float32(t[name + ".alpha"] / np.float32(r))
            d = (np.float32(ratio) * product(t, name) * scale).astype(np.float32)
            M = d if M is None else (M + d).astype(np.float32)
        conv3 = kk is not None and kk > 1
        k = min(new_conv_rank if conv3 else new_rank, i, o)
        U, S, Vh = np.linalg.svd(M, full_matrices=False)
        U, Vh = normalize_signs(U, Vh)
        U = (U[:, :k] * S[None, :k]).astype(np.float32)
        Vh = Vh[:k].astype(np.float32)
        hi = np.float32(np.quantile(np.concatenate([U.flatten(), Vh.flatten()]), 0.99))
        U = np.clip(U, -hi, hi)
        Vh = np.clip(Vh, -hi, hi)
        if kk is not None:
            U = U.reshape(o, k, 1, 1)
            Vh = Vh.reshape(k, i, kk, kk)
        out[name + ".lora_up.weight"] = U
        out[name + ".lora_down.weight"] = Vh
        out[name + ".alpha"] = np.array(k, dtype=np.int64)
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(new_rank), "ss_network_alpha": str(new_rank),
            "ss_v2": models[0][1]["ss_v2"], "ss_base_model_version": models[0][1]["ss_base_model_version"],
            "ss_network_args": json.dumps({"conv_dim": new_conv_rank, "conv_alpha": new_conv_rank})}
    return out, meta


def main():
    os.makedirs(OUT, exist_ok=True)
    a = make_lora(1, 8, 4.0)
    b = make_lora(2, 6, 3.0)
    write_safetensors(os.path.join(OUT, "golden_in_a.safetensors"), *a)
    write_safetensors(os.path.join(OUT, "golden_in_b.safetensors"), *b)
    cases = {
        "golden_resize_fixed": resize(*a, 4, 2),
        "golden_resize_sv_ratio": resize(*a, 8, 8, "sv_ratio", 3.0),
        "golden_resize_sv_fro": resize(*a, 8, 8, "sv_fro", 0.9),
        "golden_resize_sv_cumulative": resize(*a, 8, 8, "sv_cumulative", 0.7),
        "golden_svd_merge": svd_merge([a, b], [1.0, -1.0], 6, 3),
    }
    for name, (t, m) in cases.items():
        write_safetensors(os.path.join(OUT, name + ".safetensors"), t, m)
        ranks = sorted({v.shape[0] for k, v in t.items() if k.endswith("lora_down.weight")})
        print(name, "ranks", ranks)


if __name__ == "__main__":
    main()
