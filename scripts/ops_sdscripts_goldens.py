#!/usr/bin/env python3
"""Golden fixtures made by kohya-ss sd-scripts ITSELF (resize_lora.py, svd_merge_lora.py, merge_lora.py).

`lora-ops/tests/sdscripts.rs` compares our outputs with these files (issue 3: reconstructed up·down·alpha/rank
within 5e-3 for resize and 2e-2 for svd_merge, identical dynamic ranks, alphas and ss_network_* metadata).

What this script does:
  1. checks that .tools/sd-scripts (git-ignored, never committed) holds the sd-scripts files it runs;
  2. makes two small SD1 LoRAs with real module names and shapes (a subset of tables/sd1_conv.tsv: linear TE and
     U-Net attention layers, a 1x1 proj_in and conv_shortcut, a 3x3 resnet conv), fp16 like trained LoRAs;
  3. runs sd-scripts' own scripts on them on the CPU (torch, one thread): resize_lora.py at a fixed rank and with
     sv_ratio / sv_fro / sv_cumulative (--verbose, whose stdout is kept), svd_merge_lora.py with ratios 1 -1
     (the method's difference extraction; the 0.99 quantile clamp acts on every module), and merge_lora.py
     LoRA+LoRA with two ratios and different alphas;
  4. writes inputs, outputs and verbose logs to lora-ops/tests/fixtures/sds_* (about 0.95 MB in all).

Getting sd-scripts (its code must not be committed here). With network access:
    git clone https://github.com/kohya-ss/sd-scripts .tools/sd-scripts-git
    # networks/resize_lora.py at 41de9362a6e09f12200faf3162edd167a5200b8c (the version the spec describes:
    #   sv_ratio keeps the +1; newer versions count one less and use svd_lowrank above 2048x2048)
    # networks/svd_merge_lora.py, networks/merge_lora.py at 077f6a4ff2ae39d43db738644b9ac6419e8812aa
    # library/model_io.py at 0119396ef23c44372f816df20bf95db97684b9a9
  and copy those four files into .tools/sd-scripts/{networks,library}/. Here they were copied from the stored
  public sources at those commits (help strings shortened, code unchanged), because this machine has no network.

Stubs (inside the ignored folder, each file says "STUB"): the scripts import modules they do not use for
LoRA-only work, which would pull in accelerate/diffusers/transformers/cv2:
  * networks/lora.py — empty (only used to merge into a full checkpoint);
  * library/model_util.py — only is_safetensors (upstream's one-liner); checkpoint converters not reproduced;
  * library/train_util.py — re-exports the hashing/metadata helpers from library/model_io.py, as upstream does;
  * library/utils.py — setup_logging with plain logging;
  * library/sai_model_spec.py — build_metadata returns {} (modelspec.* keys are not compared: date and
    implementation_version differ per run), build_merged_from joins the stems;
  * library/model_io.py is upstream's file trimmed to the hashing/metadata helpers (code verbatim);
  * merge_lora.py: merge_to_sd_model (the --sd_model path) raises NotImplementedError (it needs lora.py).

Usage:  nice -n 15 .tools/py/bin/python scripts/ops_sdscripts_goldens.py   (needs torch, safetensors, tqdm, numpy)
"""
import os
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
SDS = os.path.join(ROOT, ".tools", "sd-scripts")
OUT = os.path.join(ROOT, "lora-ops", "tests", "fixtures")
NEEDED = [
    "networks/resize_lora.py",
    "networks/svd_merge_lora.py",
    "networks/merge_lora.py",
    "networks/lora.py",
    "library/__init__.py",
    "library/model_io.py",
    "library/model_util.py",
    "library/train_util.py",
    "library/utils.py",
    "library/sai_model_spec.py",
]

# (name, in, out, kernel or None) from tables/sd1_conv.tsv
MODULES = [
    ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", 768, 768, None),
    ("lora_unet_down_blocks_0_attentions_0_proj_in", 320, 320, 1),
    ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", 768, 320, None),
    ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_2", 1280, 320, None),
    ("lora_unet_down_blocks_0_resnets_0_conv1", 320, 320, 3),
    ("lora_unet_up_blocks_3_resnets_0_conv_shortcut", 960, 320, 1),
]
# Spectral decay per module, so that the dynamic methods pick different ranks per module.
DECAY = [0.55, 0.7, 0.8, 0.6, 0.75, 0.9]


def check_sd_scripts():
    missing = [p for p in NEEDED if not os.path.isfile(os.path.join(SDS, p))]
    if missing:
        sys.exit(
            "missing in .tools/sd-scripts: " + ", ".join(missing) + "\n" + __doc__.split("Getting sd-scripts")[1]
        )


def make_lora(torch, seed, rank, alpha):
    g = torch.Generator().manual_seed(seed)
    t = {}
    for (name, i, o, k), decay in zip(MODULES, DECAY):
        cols = i * (k or 1) * (k or 1)
        s = decay ** torch.arange(rank, dtype=torch.float32)
        down = torch.randn(rank, cols, generator=g) * 0.05
        up = torch.randn(o, rank, generator=g) * 0.05 * s[None, :]
        if k is not None:
            down = down.reshape(rank, i, k, k)
            up = up.reshape(o, rank, 1, 1)
        t[name + ".lora_down.weight"] = down.to(torch.float16).contiguous()
        t[name + ".lora_up.weight"] = up.to(torch.float16).contiguous()
        t[name + ".alpha"] = torch.tensor(float(alpha)).to(torch.float16)
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(float(alpha)),
        "ss_v2": "False",
        "ss_base_model_version": "sd_v1",
        "ss_training_comment": "sd-scripts golden input",
    }
    return t, meta


def run(script, args, log=None):
    env = dict(os.environ, PYTHONPATH=SDS, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    cmd = [sys.executable, os.path.join(SDS, "networks", script)] + args
    print("+", " ".join(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c for c in cmd), flush=True)
    p = subprocess.run(cmd, cwd=SDS, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{script} failed:\n{p.stdout}\n{p.stderr}")
    if log is not None:
        with open(os.path.join(OUT, log), "w") as f:
            f.write(p.stdout)


def threshold_margins(torch, path, method, param, new_rank):
    """How far each module's singular values sit from the dynamic rule's threshold (a near tie could flip the
    rank between two LAPACK builds); the script refuses fixtures with a margin below 1e-4."""
    from safetensors.torch import load_file

    sd = {k: v.float() for k, v in load_file(path).items()}
    worst = 1.0
    for name, _, _, k in MODULES:
        d = sd[name + ".lora_down.weight"]
        u = sd[name + ".lora_up.weight"]
        w = u.reshape(u.shape[0], -1) @ d.reshape(d.shape[0], -1)
        S = torch.linalg.svdvals(w)
        if method == "sv_ratio":
            m = float(((S - S[0] / param).abs() / S[0]).min())
        else:
            v = S if method == "sv_cumulative" else S * S
            target = param if method == "sv_cumulative" else param**2
            cum = torch.cumsum(v, 0) / float(v.sum())
            m = float((cum[: new_rank + 1] - target).abs().min())
        worst = min(worst, m)
    print(f"  {method} {param}: smallest distance to the threshold {worst:.2e}")
    if worst < 1e-4:
        sys.exit(f"{method}: a module sits within 1e-4 of the threshold; change the seed")


def main():
    check_sd_scripts()
    import torch
    from safetensors.torch import load_file, save_file

    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    a_path = os.path.join(OUT, "sds_in_a.safetensors")
    b_path = os.path.join(OUT, "sds_in_b.safetensors")
    t, m = make_lora(torch, 1234, 8, 4)
    save_file(t, a_path, m)
    t, m = make_lora(torch, 5678, 8, 8)
    save_file(t, b_path, m)
    o = lambda n: os.path.join(OUT, n)

    # resize_lora.py: fixed rank (conv rank different, so the comment carries " (conv: 2)") and the three
    # dynamic methods, with --verbose (stdout kept: per-module dims, alphas and retained norms).
    run("resize_lora.py", ["--model", a_path, "--save_to", o("sds_resize_fixed.safetensors"), "--new_rank", "4",
                           "--new_conv_rank", "2", "--save_precision", "fp16", "--verbose"], "sds_resize_fixed.txt")
    for method, param in [("sv_ratio", 4.0), ("sv_fro", 0.9), ("sv_cumulative", 0.7)]:
        threshold_margins(torch, a_path, method, param, 8)
        run("resize_lora.py", ["--model", a_path, "--save_to", o(f"sds_resize_{method}.safetensors"), "--new_rank",
                               "8", "--save_precision", "fp16", "--verbose", "--dynamic_method", method,
                               "--dynamic_param", str(param)], f"sds_resize_{method}.txt")

    # svd_merge_lora.py: difference (ratios 1 -1), new_rank 6, conv rank 3; the 0.99 clamp acts.
    run("svd_merge_lora.py", ["--models", a_path, b_path, "--ratios", "1", "-1", "--new_rank", "6",
                              "--new_conv_rank", "3", "--save_precision", "fp16", "--save_to",
                              o("sds_svd_merge.safetensors")])
    sd = load_file(o("sds_svd_merge.safetensors"))
    for name, _, _, _ in MODULES:
        u = sd[name + ".lora_up.weight"].float().flatten()
        d = sd[name + ".lora_down.weight"].float().flatten()
        hi = float(torch.cat([u, d]).max())
        n = int((torch.cat([u, d]) == hi).sum())
        print(f"  svd_merge {name}: {n} values clamped at {hi:.4g}")

    # svd_merge_lora.py with --lbws (17 weights: SD1 blocks BASE, IN01, IN02, IN04, IN05, IN07, IN08, MID,
    # OUT03-OUT11): text encoder = BASE, down_blocks_0 = IN01, up_blocks_3_resnets_0 = OUT09 (15th weight).
    lbw_a = [0.5, 0.25] + [1] * 12 + [2.0, 1, 1]
    lbw_b = [1, 0] + [1] * 12 + [0.5, 1, 1]
    run("svd_merge_lora.py", ["--models", a_path, b_path, "--ratios", "1", "-1", "--new_rank", "4",
                              "--new_conv_rank", "2", "--save_precision", "fp16", "--lbws", str(lbw_a), str(lbw_b),
                              "--save_to", o("sds_svd_merge_lbws.safetensors")])

    # merge_lora.py LoRA+LoRA: different alphas (sqrt(alpha_i/base_alpha) scaling), a negative ratio.
    run("merge_lora.py", ["--models", a_path, b_path, "--ratios", "0.7", "-0.5", "--save_precision", "fp16",
                          "--save_to", o("sds_merge.safetensors")])

    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT) if f.startswith("sds_"))
    print(f"fixtures: {total / 1e6:.2f} MB in lora-ops/tests/fixtures/sds_*")


if __name__ == "__main__":
    main()
