#!/usr/bin/env python3
"""Writes small valid seed inputs into fuzz/corpus/<target>/ (standard library only)."""
import io, json, math, os, struct, zipfile

HERE = os.path.dirname(os.path.abspath(__file__))


def out(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def safetensors(tensors, meta):
    """tensors: list of (name, dtype, shape, bytes) already in data order."""
    hdr = {"__metadata__": meta} if meta else {}
    data = b""
    for n, dt, sh, b in tensors:
        hdr[n] = {"dtype": dt, "shape": sh, "data_offsets": [len(data), len(data) + len(b)]}
        data += b
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * ((-len(h)) % 8)
    return struct.pack("<Q", len(h)) + h + data


# kohya LoRA, two modules (linear, conv 1x1), f32
t = []
for n, d, u in [("lora_te_text_model_encoder_layers_0_mlp_fc1", [4, 8], [16, 4]),
                ("lora_unet_down_blocks_0_attentions_0_proj_in", [4, 8, 1, 1], [8, 4, 1, 1])]:
    t.append((n + ".alpha", "F32", [], struct.pack("<f", 2.0)))
    t.append((n + ".lora_down.weight", "F32", d, struct.pack("<%df" % math.prod(d), *([0.01] * math.prod(d)))))
    t.append((n + ".lora_up.weight", "F32", u, struct.pack("<%df" % math.prod(u), *([0.02] * math.prod(u)))))
t.sort(key=lambda x: x[0])
out("safetensors_lora", "kohya", safetensors(t, {"ss_network_dim": "4", "ss_network_alpha": "2.0"}))

# PEFT/diffusers LoRA, f16, alpha in lora_adapter_metadata
meta = {"lora_adapter_metadata": json.dumps({"unet.r": 2, "unet.lora_alpha": 1, "unet.alpha_pattern": {}})}
p = "unet.mid_block.attentions.0.proj_in"
out("safetensors_lora", "peft", safetensors([(p + ".lora_A.weight", "F16", [2, 4], b"\x00\x3c" * 8),
                                               (p + ".lora_B.weight", "F16", [4, 2], b"\x00\x3c" * 8)], meta))


# torch.save-style pickle (protocol 2) and zip
def uni(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def J(v):
    return b"J" + struct.pack("<i", v)


def tensor(name, storage, key, numel, shape, stride, off=0):
    p = uni(name) + b"ctorch._utils\n_rebuild_tensor_v2\n((" + uni("storage") + f"ctorch\n{storage}\n".encode()
    p += uni(key) + uni("cpu") + J(numel) + b"tQ" + J(off)
    p += b"(" + b"".join(J(d) for d in shape) + b"t(" + b"".join(J(d) for d in stride) + b"t"
    return p + b"\x89ccollections\nOrderedDict\n)RtRs"


pk = b"\x80\x02}" + uni("state_dict") + b"ccollections\nOrderedDict\n)R"
pk += tensor("cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight", "FloatStorage", "0", 16, [4, 4], [4, 1])
pk += tensor("t", "HalfStorage", "1", 3, [3], [1])
pk += b"s" + uni("global_step") + J(5) + b"s."
out("ckpt_pickle", "state_dict", pk)
buf = io.BytesIO()
with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
    z.writestr("archive/data.pkl", pk)
    z.writestr("archive/data/0", b"\0" * 64)
    z.writestr("archive/data/1", b"\x3c" * 6)
    z.writestr("archive/version", "3\n")
out("ckpt_file", "state_dict", buf.getvalue())
