#!/usr/bin/env python3
"""Golden files for the model parity test (lora-cuda/tests/model_parity.rs).

Builds diffusers' UNet2DConditionModel and transformers' CLIPTextModel at the tiny config
(UNetConfig::tiny() / ClipConfig::tiny() in lora-cuda), with seeded random weights, adds kohya-style LoRA
modules (y = W x + b + scale * up(down(x))) on a few layers, runs one forward pass and torch autograd, and writes
assets/golden/model_tiny.safetensors with:
  * the weights under our store names: "unet.<diffusers name>", "te.<transformers name>";
  * the LoRA modules under kohya names: "<lora_name>.lora_down.weight", ".lora_up.weight", ".alpha";
  * inputs "in.x" [1,3,16,16], "in.w" (loss weights), "in.ids" (token ids, as float), "in.t" (timestep);
  * outputs "out.context" (text encoder last hidden state), "out.unet", and "grad.<lora param>" for
    loss = sum(unet_out * w);
  * a DDIM trajectory: "ddim.timesteps", "ddim.x" (a 5-step DDIM run of DDIMScheduler on a fixed model output
    function, see below).

Needs: pip install torch diffusers transformers safetensors (not available on the build machines; run this
where they are and commit the output, ~0.5 MB).
"""
import os
import sys

import torch
from safetensors.torch import save_file

from diffusers import DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

torch.manual_seed(0)
torch.set_default_dtype(torch.float32)

VOCAB = 31  # WordTokenizer::demo().vocab_size(): 28 words + BOS, EOS, ","
unet = UNet2DConditionModel(
    sample_size=16,
    in_channels=3,
    out_channels=3,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(8, 16),
    layers_per_block=1,
    attention_head_dim=2,  # diffusers' SD1 naming: this is the number of heads
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
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=24,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        # The demo tokenizer's ids (lora_cuda::demo::tokenizer): BOS 0, EOS 1 (also the padding, as CLIP).
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
).eval()
# transformers 5 dropped the `text_model` wrapper of CLIPTextModel (its keys lost the `text_model.` prefix);
# ours keep transformers 4's (and the LDM checkpoints') `text_model.` names.
tm = getattr(te, "text_model", te)
# Non-trivial norms and biases.
with torch.no_grad():
    for p in list(unet.parameters()) + list(te.parameters()):
        p.add_(0.05 * torch.randn_like(p))

tensors = {}
for k, v in unet.state_dict().items():
    tensors["unet." + k] = v.detach().clone()
for k, v in te.state_dict().items():
    if k.endswith("position_ids"):
        continue
    tensors["te." + (k if k.startswith("text_model.") else "text_model." + k)] = v.detach().clone()

LORAS = {
    # kohya name: (module, kind)
    "lora_te_text_model_encoder_layers_0_self_attn_v_proj": tm.encoder.layers[0].self_attn.v_proj,
    "lora_te_text_model_encoder_layers_0_mlp_fc1": tm.encoder.layers[0].mlp.fc1,
    "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k": unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2.to_k,
    "lora_unet_up_blocks_0_attentions_1_transformer_blocks_0_ff_net_0_proj": unet.up_blocks[0].attentions[1].transformer_blocks[0].ff.net[0].proj,
    "lora_unet_mid_block_attentions_0_proj_out": unet.mid_block.attentions[0].proj_out,
}
RANK, ALPHA = 2, 1.0
params = []
for name, mod in LORAS.items():
    if isinstance(mod, torch.nn.Linear):
        down = (0.3 * torch.randn(RANK, mod.in_features)).requires_grad_()
        up = (0.3 * torch.randn(mod.out_features, RANK)).requires_grad_()

        def fwd(x, m=mod, d=down, u=up):
            return torch.nn.functional.linear(x, m.weight, m.bias) + (ALPHA / RANK) * torch.nn.functional.linear(
                torch.nn.functional.linear(x, d), u
            )
    else:  # 1x1 conv
        down = (0.3 * torch.randn(RANK, mod.in_channels, 1, 1)).requires_grad_()
        up = (0.3 * torch.randn(mod.out_channels, RANK, 1, 1)).requires_grad_()

        def fwd(x, m=mod, d=down, u=up):
            return torch.nn.functional.conv2d(x, m.weight, m.bias) + (ALPHA / RANK) * torch.nn.functional.conv2d(
                torch.nn.functional.conv2d(x, d), u
            )

    mod.forward = fwd
    params.append((name, down, up))
    tensors[name + ".lora_down.weight"] = down.detach().clone()
    tensors[name + ".lora_up.weight"] = up.detach().clone()
    tensors[name + ".alpha"] = torch.tensor(ALPHA)

ids = torch.tensor([[0, 3, 9, 2, 20, 2, 12] + [1] * 17])
x = torch.randn(1, 3, 16, 16)
w = torch.randn(1, 3, 16, 16)
t = 321
context = te(input_ids=ids).last_hidden_state
out = unet(x, torch.tensor([t]), encoder_hidden_states=context).sample
loss = (out * w).sum()
loss.backward()
tensors["in.x"] = x
tensors["in.w"] = w
tensors["in.ids"] = ids.float()
tensors["in.t"] = torch.tensor([float(t)])
tensors["out.context"] = context.detach()
tensors["out.unet"] = out.detach()
for name, down, up in params:
    tensors["grad." + name + ".lora_down.weight"] = down.grad.detach().clone()
    tensors["grad." + name + ".lora_up.weight"] = up.grad.detach().clone()

# DDIM trajectory with SD's scheduler config on a fixed "model": eps(x, t) = 0.1 * x + 0.01 * t / 1000.
sched = DDIMScheduler(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading",
)
sched.set_timesteps(5)
xs = torch.randn(1, 3, 4, 4)
tensors["ddim.x0"] = xs.clone()
traj = []
for tt in sched.timesteps:
    eps = 0.1 * xs + 0.01 * float(tt) / 1000.0
    xs = sched.step(eps, tt, xs).prev_sample
    traj.append(xs.clone())
tensors["ddim.timesteps"] = sched.timesteps.float()
tensors["ddim.x"] = torch.stack(traj)

out_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "assets", "golden", "model_tiny.safetensors")
os.makedirs(os.path.dirname(out_path), exist_ok=True)
save_file({k: v.contiguous().float() for k, v in tensors.items()}, out_path)
print("wrote", out_path, file=sys.stderr)
