#!/usr/bin/env python3
"""Golden files for the model parity test (lora-cuda/tests/model_parity.rs).

Builds diffusers' UNet2DConditionModel and transformers' CLIPTextModel at small configs with seeded random
weights, adds kohya-style LoRA modules (networks/lora.py: y = org(x) + alpha/rank * up(down(x)), where `down` is
a Linear, or a conv with the wrapped conv's kernel, stride and padding, and `up` a Linear or 1x1 conv), runs one
forward pass and torch autograd, and writes under assets/golden/:

model_tiny.safetensors -- UNetConfig::tiny() / ClipConfig::tiny(): 2 levels (8, 16), one ResNet per level,
    attention at the second level; LoRA on five hand-picked modules (TE attention and MLP, a cross-attention
    to_k, a GEGLU projection, a 1x1 proj_out); batch 1.
model_deep.safetensors -- 3 levels (8, 16, 16), two ResNets per level (three per up level), attention at levels
    1 and 2, a 2-layer text encoder; LoRA on EVERY module kohya's rules target with conv_dim (Transformer2DModel
    Linear/1x1, ResnetBlock2D conv1/conv2/time_emb_proj/conv_shortcut, Downsample2D/Upsample2D convs, CLIP
    attention/MLP), ranks 3 (Linear/1x1, alpha 1.5) and 2 (3x3, alpha 1); batch 2 with two timesteps and two
    captions. The test builds this config itself (`deep_config()` in the test).
  Each holds:
  * the weights under our store names: "unet.<diffusers name>", "te.text_model.<transformers name>";
  * the LoRA modules under kohya names: "<lora_name>.lora_down.weight", ".lora_up.weight", ".alpha";
  * inputs "in.x" [N,3,16,16], "in.w" (loss weights), "in.ids" [N,24] (token ids, as float), "in.t" [N];
  * outputs "out.context" (text encoder last hidden state), "out.unet", and "grad.<lora param>" for
    loss = sum(unet_out * w).
sched.safetensors -- diffusers' schedulers with SD's config (scaled_linear 0.00085..0.012, 1000 steps):
  * "ddpm.alphas_cumprod" (DDPMScheduler), "ddpm.x0", "ddpm.noise", "ddpm.t", "ddpm.noisy" (add_noise),
    "ddpm.velocity" (get_velocity);
  * DDIM trajectories (DDIMScheduler, set_alpha_to_one=False, steps_offset=1, "leading" spacing) of a fixed
    "model" eps(x, t) = 0.1 x + 0.01 t / 1000: "ddim.*" (5 steps, epsilon) and "ddim_v30.*" (30 steps,
    v_prediction): ".timesteps", ".x0", ".x" (the sample after each step);
  * Euler ancestral (EulerAncestralDiscreteScheduler, same config, "leading", steps_offset=1), 20 steps, fed its
    own trajectory: "ea.timesteps", "ea.sigmas", "ea.init_noise_sigma", "ea.scale" (scale_model_input's
    factor per step), "ea.x" (the input of each step), "ea.sigma_up" and "ea.det" (each step's result without
    its fresh noise, prev_sample - noise * sigma_up).

Needs: torch, diffusers, transformers, safetensors (made with torch 2.15.0, diffusers 0.42.1, transformers
5.24.0): `.tools/py/bin/python scripts/model_goldens.py`, then commit the outputs (about 0.6 MB in all).
"""
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from diffusers import DDIMScheduler, DDPMScheduler, EulerAncestralDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

torch.set_default_dtype(torch.float32)
VOCAB = 31  # WordTokenizer::demo().vocab_size(): 28 words + BOS, EOS, ","
CONTEXT = 24  # DEMO_CONTEXT_LEN
OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "assets", "golden")


def build(block_out_channels, down_attention, layers_per_block, heads, te_layers):
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in down_attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(down_attention)),
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        attention_head_dim=heads,  # diffusers' SD1 naming: this is the number of heads
        cross_attention_dim=16,
        norm_num_groups=4,
        norm_eps=1e-5,
        flip_sin_to_cos=True,
        freq_shift=0,
    ).eval()
    te = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=VOCAB,
            hidden_size=16,
            num_hidden_layers=te_layers,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=CONTEXT,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
            # The demo tokenizer's ids (lora_cuda::demo::tokenizer): BOS 0, EOS 1 (also the padding, as CLIP).
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    ).eval()
    # Non-trivial norms and biases.
    with torch.no_grad():
        for p in list(unet.parameters()) + list(te.parameters()):
            p.add_(0.05 * torch.randn_like(p))
    return unet, te


def te_path(name):
    # transformers 5 dropped the `text_model` wrapper of CLIPTextModel (its names lost the `text_model.` prefix);
    # ours and kohya's keep transformers 4's (and the LDM checkpoints') `text_model.` names.
    return name if name.startswith("text_model.") else "text_model." + name


def kohya_targets(unet, te, net_dim, conv_dim):
    """kohya's networks/lora.py rules: (lora_name, module, rank) for every targeted module, with conv_dim."""
    unet_classes = {"Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"}
    out = []
    for prefix, root, classes in (("lora_te", te, {"CLIPAttention", "CLIPMLP"}), ("lora_unet", unet, unet_classes)):
        for name, mod in root.named_modules():
            if mod.__class__.__name__ not in classes:
                continue
            children = list(mod.named_modules())
            if prefix == "lora_unet":
                # kohya's own U-Net (library/original_unet.py) creates a BasicTransformerBlock's attn1, ff, attn2
                # in that order (diffusers: attn1, attn2, ff); the spec's sd1.tsv lists them so. Stable sort.
                def rank_of(cname):
                    if ".attn1." in cname + ".":
                        return 1
                    if ".ff." in cname + ".":
                        return 2
                    if ".attn2." in cname + ".":
                        return 3
                    return 4 if cname.startswith("proj_out") else 0

                children.sort(key=lambda c: rank_of(c[0]))
            for cname, child in children:
                is_linear = isinstance(child, torch.nn.Linear)
                is_conv = isinstance(child, torch.nn.Conv2d)
                if not (is_linear or is_conv):
                    continue
                full = name + "." + cname
                if prefix == "lora_te":
                    full = te_path(full)
                rank = net_dim if is_linear or child.kernel_size == (1, 1) else conv_dim
                out.append(((prefix + "." + full).replace(".", "_"), child, rank))
    return out


def add_lora(mod, rank, alpha):
    scale = alpha / rank
    if isinstance(mod, torch.nn.Linear):
        down = (0.3 * torch.randn(rank, mod.in_features)).requires_grad_()
        up = (0.3 * torch.randn(mod.out_features, rank)).requires_grad_()

        def fwd(x, m=mod, d=down, u=up):
            return F.linear(x, m.weight, m.bias) + scale * F.linear(F.linear(x, d), u)
    else:
        k = mod.kernel_size
        down = (0.3 * torch.randn(rank, mod.in_channels, *k)).requires_grad_()
        up = (0.3 * torch.randn(mod.out_channels, rank, 1, 1)).requires_grad_()

        def fwd(x, m=mod, d=down, u=up):
            return F.conv2d(x, m.weight, m.bias, m.stride, m.padding) + scale * F.conv2d(
                F.conv2d(x, d, None, m.stride, m.padding), u
            )

    mod.forward = fwd
    return down, up


def model_golden(path, unet, te, loras, ids, timesteps):
    """loras: [(kohya name, module, rank, alpha)]; ids [N, CONTEXT] token ids; timesteps [N] ints."""
    tensors = {}
    for k, v in unet.state_dict().items():
        tensors["unet." + k] = v.detach().clone()
    for k, v in te.state_dict().items():
        if k.endswith("position_ids"):
            continue
        tensors["te." + te_path(k)] = v.detach().clone()
    params = []
    for name, mod, rank, alpha in loras:
        down, up = add_lora(mod, rank, alpha)
        params.append((name, down, up))
        tensors[name + ".lora_down.weight"] = down.detach().clone()
        tensors[name + ".lora_up.weight"] = up.detach().clone()
        tensors[name + ".alpha"] = torch.tensor(float(alpha))
    n = ids.shape[0]
    x = torch.randn(n, 3, 16, 16)
    w = torch.randn(n, 3, 16, 16)
    context = te(input_ids=ids).last_hidden_state
    out = unet(x, torch.tensor(timesteps), encoder_hidden_states=context).sample
    (out * w).sum().backward()
    tensors["in.x"] = x
    tensors["in.w"] = w
    tensors["in.ids"] = ids.float()
    tensors["in.t"] = torch.tensor([float(t) for t in timesteps])
    tensors["out.context"] = context.detach()
    tensors["out.unet"] = out.detach()
    for name, down, up in params:
        tensors["grad." + name + ".lora_down.weight"] = down.grad.detach().clone()
        tensors["grad." + name + ".lora_up.weight"] = up.grad.detach().clone()
    # The LoRA modules in kohya's creation order (the safetensors header sorts names).
    save(tensors, path, {"lora_order": ",".join(name for name, _, _ in params)})


def save(tensors, name, metadata=None):
    import diffusers
    import transformers

    metadata = dict(metadata or {})
    metadata["made_with"] = (
        f"torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}"
    )
    os.makedirs(OUT_DIR, exist_ok=True)
    path = os.path.join(OUT_DIR, name)
    save_file({k: v.contiguous().float() for k, v in tensors.items()}, path, metadata=metadata)
    print(f"wrote {os.path.normpath(path)} ({os.path.getsize(path)} bytes, {len(tensors)} tensors)", file=sys.stderr)


def pad(row):
    return row + [1] * (CONTEXT - len(row))


# 1. The tiny config, five hand-picked LoRA modules, batch 1.
torch.manual_seed(0)
unet, te = build([8, 16], [False, True], 1, 2, 1)
tm = getattr(te, "text_model", te)
picked = [
    ("lora_te_text_model_encoder_layers_0_self_attn_v_proj", tm.encoder.layers[0].self_attn.v_proj),
    ("lora_te_text_model_encoder_layers_0_mlp_fc1", tm.encoder.layers[0].mlp.fc1),
    ("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k",
     unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2.to_k),
    ("lora_unet_up_blocks_0_attentions_1_transformer_blocks_0_ff_net_0_proj",
     unet.up_blocks[0].attentions[1].transformer_blocks[0].ff.net[0].proj),
    ("lora_unet_mid_block_attentions_0_proj_out", unet.mid_block.attentions[0].proj_out),
]
model_golden(
    "model_tiny.safetensors", unet, te, [(n, m, 2, 1.0) for n, m in picked],
    torch.tensor([pad([0, 3, 9, 2, 20, 2, 12, 1])]), [321],
)

# 2. A deeper config, every kohya target with conv_dim, batch 2.
torch.manual_seed(1)
unet, te = build([8, 16, 16], [False, True, True], 2, 2, 2)
targets = kohya_targets(unet, te, 3, 2)
model_golden(
    "model_deep.safetensors", unet, te, [(n, m, r, 1.5 if r == 3 else 1.0) for n, m, r in targets],
    torch.tensor([pad([0, 3, 9, 2, 20, 2, 12, 1]), pad([0, 17, 5, 1])]), [321, 17],
)

# 3. Schedulers.
torch.manual_seed(2)
SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
tensors = {}
ddpm = DDPMScheduler(**SD, clip_sample=False)
tensors["ddpm.alphas_cumprod"] = ddpm.alphas_cumprod.clone()
t = torch.tensor([0, 17, 500, 999])
x0 = torch.randn(4, 3, 4, 4)
noise = torch.randn(4, 3, 4, 4)
tensors["ddpm.x0"], tensors["ddpm.noise"], tensors["ddpm.t"] = x0, noise, t.float()
tensors["ddpm.noisy"] = ddpm.add_noise(x0, noise, t)
tensors["ddpm.velocity"] = ddpm.get_velocity(x0, noise, t)


def fake_eps(x, tt):
    return 0.1 * x + 0.01 * float(tt) / 1000.0


for key, steps, pred in (("ddim", 5, "epsilon"), ("ddim_v30", 30, "v_prediction")):
    sched = DDIMScheduler(**SD, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                          timestep_spacing="leading", prediction_type=pred)
    sched.set_timesteps(steps)
    xs = torch.randn(1, 3, 4, 4)
    tensors[key + ".x0"] = xs.clone()
    traj = []
    for tt in sched.timesteps:
        xs = sched.step(fake_eps(xs, tt), tt, xs).prev_sample
        traj.append(xs.clone())
    tensors[key + ".timesteps"] = sched.timesteps.float()
    tensors[key + ".x"] = torch.stack(traj)

ea = EulerAncestralDiscreteScheduler(**SD, steps_offset=1, timestep_spacing="leading")
ea.set_timesteps(20)
xs = torch.randn(1, 3, 4, 4) * ea.init_noise_sigma
xs_in, scales, ups, dets = [], [], [], []
for i, tt in enumerate(ea.timesteps):
    xs_in.append(xs.clone())
    scaled = ea.scale_model_input(xs, tt)
    scales.append((scaled / xs).flatten()[0])
    eps = fake_eps(xs, tt)
    gen_seed = 1000 + i
    noise = torch.randn(xs.shape, generator=torch.Generator().manual_seed(gen_seed))
    prev = ea.step(eps, tt, xs, generator=torch.Generator().manual_seed(gen_seed)).prev_sample
    s_from, s_to = ea.sigmas[i], ea.sigmas[i + 1]
    sigma_up = (s_to**2 * (s_from**2 - s_to**2) / s_from**2) ** 0.5
    ups.append(sigma_up)
    dets.append(prev - noise * sigma_up)
    xs = prev
tensors["ea.timesteps"] = ea.timesteps.float()
tensors["ea.sigmas"] = ea.sigmas.float()
tensors["ea.init_noise_sigma"] = torch.tensor([float(ea.init_noise_sigma)])
tensors["ea.scale"] = torch.stack(scales)
tensors["ea.x"] = torch.stack(xs_in)
tensors["ea.sigma_up"] = torch.stack(ups)
tensors["ea.det"] = torch.stack(dets)
save(tensors, "sched.safetensors")
