#!/usr/bin/env python3
"""LoRA training-step benchmark of the demo model on the CPU: ours (lora-cuda's Trainer, through the example
`bench_train_step`) against PyTorch (diffusers' UNet2DConditionModel + transformers' CLIPTextModel at the same
config, kohya's LoRA layout, AdamW), in the same run. Issue 6.

    cargo build --release -p lora-cuda --example bench_train_step
    nice -n 15 .tools/py/bin/python scripts/model_torch_bench.py \
        --ours $CARGO_TARGET_DIR/release/examples/bench_train_step --batches 1 4 --steps 20 --rounds 2

Each measurement is its own process (so peak RSS, read from /proc/self/status VmHWM, is that process's own),
alternating ours and PyTorch per round; both run on ONE thread (RAYON_NUM_THREADS=1, OPENBLAS_NUM_THREADS=1,
OMP_NUM_THREADS=1, torch.set_num_threads(1)). The table reports, per implementation, the best round by process
CPU time; on a loaded machine CPU time is the fair measure, wall time is shown next to it. Both sides check they
built the same model: the U-Net, text-encoder and LoRA parameter counts must agree or the script stops.

The step is sd-scripts' train_network step with the pipeline's defaults: text encoder frozen and run without
gradients (U-Net-only LoRA, rank 16, alpha 8, on every Linear / 1x1 conv inside each Transformer2DModel),
DDPM noise (scaled_linear 0.00085-0.012, 1000 steps) at a random timestep, epsilon target, MSE loss, backward,
clip_grad_norm_(1.0), AdamW(lr 1e-3, weight decay 0.01), zero_grad(set_to_none=True).

`--worker` runs one PyTorch measurement and prints one JSON line (the driver calls it that way).
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

THREAD_ENV = {
    "RAYON_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}

# UNetConfig::demo() / ClipConfig::demo() in lora-cuda/src/model/config.rs.
DEMO_VOCAB = 31  # WordTokenizer::demo().vocab_size()
DEMO_CONTEXT = 24  # DEMO_CONTEXT_LEN


def status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return float(line.split()[1])
    return float("nan")


def worker(a):
    start_rss = status_kib("VmRSS")
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.manual_seed(0)
    import_rss = status_kib("VmRSS")

    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 128, 128),
        layers_per_block=1,
        attention_head_dim=8,  # diffusers' SD1 naming: the number of heads
        cross_attention_dim=128,
        norm_num_groups=32,
        norm_eps=1e-5,
        flip_sin_to_cos=True,
        freq_shift=0,
    )
    te = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=DEMO_VOCAB,
            hidden_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=512,
            max_position_embeddings=DEMO_CONTEXT,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    unet.requires_grad_(False)
    te.requires_grad_(False)
    unet.train()
    te.eval()

    # kohya's LoRA (networks/lora.py): lora_down / lora_up without bias, kaiming-uniform down, zero up,
    # org_forward(x) + up(down(x)) * alpha / rank, replacing the wrapped module's forward.
    class LoRAModule(torch.nn.Module):
        def __init__(self, org, rank, alpha):
            super().__init__()
            if isinstance(org, torch.nn.Conv2d):
                self.lora_down = torch.nn.Conv2d(org.in_channels, rank, 1, bias=False)
                self.lora_up = torch.nn.Conv2d(rank, org.out_channels, 1, bias=False)
            else:
                self.lora_down = torch.nn.Linear(org.in_features, rank, bias=False)
                self.lora_up = torch.nn.Linear(rank, org.out_features, bias=False)
            torch.nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
            torch.nn.init.zeros_(self.lora_up.weight)
            self.scale = alpha / rank
            self.org_forward = org.forward
            org.forward = self.forward

        def forward(self, x):
            return self.org_forward(x) + self.lora_up(self.lora_down(x)) * self.scale

    loras = torch.nn.ModuleList()
    targets = [(unet, "Transformer2DModel")]
    if a.te:
        targets += [(te, "CLIPAttention"), (te, "CLIPMLP")]
    for root, cls in targets:
        for mod in root.modules():
            if mod.__class__.__name__ != cls:
                continue
            for child in mod.modules():
                is_linear = isinstance(child, torch.nn.Linear)
                is_1x1 = isinstance(child, torch.nn.Conv2d) and child.kernel_size == (1, 1)
                if is_linear or is_1x1:
                    loras.append(LoRAModule(child, a.rank, a.alpha))
    params = list(loras.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    sched = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        clip_sample=False,
    )
    b = a.batch
    x0 = torch.rand(b, 3, 64, 64) * 2 - 1
    ids = torch.full((b, DEMO_CONTEXT), 1, dtype=torch.long)
    ids[:, 0] = 0
    ids[:, 1:9] = torch.randint(3, DEMO_VOCAB, (b, 8))

    def step():
        with torch.no_grad():
            ctx = te(input_ids=ids).last_hidden_state
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (b,))
        xt = sched.add_noise(x0, noise, t)
        pred = unet(xt, t, encoder_hidden_states=ctx).sample
        loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(a.warmup):
        step()
    w0, c0 = time.perf_counter(), time.process_time()
    loss = 0.0
    for _ in range(a.steps):
        loss = step()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    n = a.steps
    print(json.dumps({
        "impl": "pytorch",
        "batch": b,
        "steps": n,
        "wall_ms_per_step": round(1e3 * wall / n, 2),
        "cpu_ms_per_step": round(1e3 * cpu / n, 2),
        "steps_per_s": round(n / wall, 3),
        "peak_rss_mib": round(status_kib("VmHWM") / 1024, 1),
        "start_rss_mib": round(start_rss / 1024, 1),
        "import_rss_mib": round(import_rss / 1024, 1),
        "unet_params": count(unet),  # the LoRA modules are not submodules of the U-Net
        "te_params": count(te),
        "lora_modules": len(loras),
        "lora_params": sum(p.numel() for p in params),
        "last_loss": round(loss, 5),
        "threads": f"torch.set_num_threads({torch.get_num_threads()})",
        "versions": f"torch {torch.__version__}",
    }))


def run_json(cmd, env):
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{cmd[0]} failed ({r.returncode}):\n{r.stderr}")
    lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
    if not lines:
        sys.exit(f"{cmd[0]} printed no JSON line:\n{r.stdout}\n{r.stderr}")
    return json.loads(lines[-1])


def driver(a):
    env = dict(os.environ, **THREAD_ENV)
    results = []
    for rnd in range(a.rounds):
        for b in a.batches:
            common = ["--batch", str(b), "--steps", str(a.steps), "--warmup", str(a.warmup), "--rank", str(a.rank),
                      "--alpha", str(a.alpha)] + (["--te"] if a.te else [])
            pair = [
                ("ours", [a.ours] + common),
                ("pytorch", [sys.executable, os.path.abspath(__file__), "--worker"] + common),
            ]
            if rnd % 2 == 1:
                pair.reverse()
            for name, cmd in pair:
                r = run_json(cmd, env)
                r["round"] = rnd
                print(json.dumps(r), file=sys.stderr)
                results.append(r)
    # Same model on both sides.
    for b in a.batches:
        o = [r for r in results if r["impl"] == "ours" and r["batch"] == b][0]
        p = [r for r in results if r["impl"] == "pytorch" and r["batch"] == b][0]
        for k in ("unet_params", "te_params", "lora_modules", "lora_params"):
            if o[k] != p[k]:
                sys.exit(f"the two sides built different models: {k} ours {o[k]} vs PyTorch {p[k]}")
    best = {}
    for r in results:
        key = (r["batch"], r["impl"])
        if key not in best or r["cpu_ms_per_step"] < best[key]["cpu_ms_per_step"]:
            best[key] = r
    p0 = best[(a.batches[0], "pytorch")]
    lines = [
        f"Demo model (U-Net {p0['unet_params']:,} parameters, text encoder {p0['te_params']:,}), LoRA rank "
        f"{a.rank} alpha {a.alpha:g} on {p0['lora_modules']} modules ({p0['lora_params']:,} parameters), "
        f"{'U-Net and text encoder' if a.te else 'U-Net only'}; 1 thread each; best of {a.rounds} rounds of "
        f"{a.steps} steps (after {a.warmup} warm-up steps) by process CPU time.",
        "",
        "| batch | implementation | CPU ms/step | wall ms/step | steps/s (CPU) | ours ÷ PyTorch steps/s (CPU) "
        "| peak RSS MiB |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for b in a.batches:
        o, p = best[(b, "ours")], best[(b, "pytorch")]
        ratio = p["cpu_ms_per_step"] / o["cpu_ms_per_step"]
        for r, rt in ((p, "1.00"), (o, f"{ratio:.2f}")):
            name = "PyTorch (diffusers)" if r["impl"] == "pytorch" else "ours (lora-cuda CPU)"
            lines.append(
                f"| {b} | {name} | {r['cpu_ms_per_step']:.1f} | {r['wall_ms_per_step']:.1f} | "
                f"{1e3 / r['cpu_ms_per_step']:.2f} | {rt} | {r['peak_rss_mib']:.0f} |"
            )
    print("\n".join(lines))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", action="store_true", help="run one PyTorch measurement (JSON line)")
    ap.add_argument("--ours", help="path of the bench_train_step example binary")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=8.0)
    ap.add_argument("--te", action="store_true", help="train the text encoder's modules too")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    if a.worker:
        worker(a)
    else:
        if not a.ours:
            ap.error("--ours PATH (the bench_train_step binary) is required")
        driver(a)


if __name__ == "__main__":
    main()
