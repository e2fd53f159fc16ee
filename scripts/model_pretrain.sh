#!/usr/bin/env bash
# Pretrains the demo base models and writes them to assets/ (fp16, LDM layout, recipe in the metadata):
#   assets/demo_base_a.safetensors  base A, trained from scratch on style-A demo-world images
#   assets/demo_base_b.safetensors  base B, base A fine-tuned on style-B images (another palette and light)
# Meant as a background run on a 2-core machine: one training thread (a second one does not speed it up;
# the other core stays free for other work), --max_minutes caps each model and saves when it is spent.
# A background run logs a line every 50 steps (loss, seconds).
#
# Usage:
#   scripts/model_pretrain.sh                    # from scratch: A then B
#   scripts/model_pretrain.sh --continue_a       # more steps on the committed base A (B left as it is)
# The committed checkpoints' exact command lines and step counts are in their `copier_lora.recipe` metadata
# (the safetensors header's __metadata__).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release --example pretrain_demo
export RAYON_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
if [ "${1:-}" = "--continue_a" ]; then
  shift
  out=$(mktemp -d)
  target/release/examples/pretrain_demo --out_dir "$out" --config demo --seed 1 \
      --resume_a assets/demo_base_a.safetensors --skip_b --steps_a 1200 --batch 8 --lr 3e-4 \
      --images 4096 --caption_dropout_rate 0.1 --max_minutes 50 "$@"
  mv "$out/demo_base_a.safetensors" assets/demo_base_a.safetensors
  exit 0
fi
exec target/release/examples/pretrain_demo --out_dir assets --config demo --seed 0 \
    --steps_a 1500 --steps_b 400 --batch 8 --lr 4e-4 --lr_b 2e-4 --images 4096 \
    --caption_dropout_rate 0.1 --max_minutes 55 "$@"
