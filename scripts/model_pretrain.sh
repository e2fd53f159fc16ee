#!/usr/bin/env bash
# Pretrains the demo base models and writes them to assets/ (fp16, LDM layout, recipe in the metadata):
#   assets/demo_base_a.safetensors  base A, trained from scratch on style-A demo-world images
#   assets/demo_base_b.safetensors  base B, base A fine-tuned on style-B images (another palette and light)
# Meant as a background run of at most two hours on a 2-core machine (--max_minutes 55 caps each of the two models).
# Usage: scripts/model_pretrain.sh [extra pretrain_demo flags]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release --example pretrain_demo
exec target/release/examples/pretrain_demo --out_dir assets --config demo --seed 0 \
    --steps_a 6000 --steps_b 1500 --batch 8 --lr 4e-4 --lr_b 2e-4 --images 4096 \
    --caption_dropout_rate 0.1 --max_minutes 55 "$@"
