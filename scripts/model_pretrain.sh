#!/usr/bin/env bash
# Pretrains the demo base models and writes them to assets/ (fp16, LDM layout, recipe in the metadata):
#   assets/demo_base_a.safetensors  base A, trained from scratch on style-A demo-world images
#   assets/demo_base_b.safetensors  base B, base A fine-tuned on style-B images (another palette and light)
# Meant as a background run on a 2-core machine: one training thread (a second one does not speed it up;
# the other core stays free for other work), --max_minutes caps each model and saves when it is spent.
# A background run logs a line every 50 steps (loss, seconds).
#
# How the committed checkpoints were made, in three rounds (each checkpoint's `copier_lora.recipe` metadata holds
# the command lines and the step counts reached; phases are capped in minutes, so step counts depend on the
# machine and its load):
#   1. --round1: from scratch, SD's latent schedule (scaled_linear 0.00085-0.012), epsilon: 803 steps of batch 8
#      in 55 minutes. Samples were noisy blobs that ignored the prompt (colour 13 %, shape 20 % on check_base:
#      chance).
#   2. --round2: round 1's base A on the pixel-space schedule (linear 1e-4-0.02: the latent schedule leaves 7 %
#      of the image in its "pure noise" step, which a 64x64 pixel model reads as layout), min-SNR 5, 45 minutes
#      on 32x32 images (4x cheaper per image). Its epsilon predictions at high timesteps were worse than
#      "the noise is the input" (examples/denoise_check), so samples exploded: epsilon cannot be learned
#      precisely enough where sqrt(abar) ~ 0.01 divides it.
#   3. (default) round 2's half-side model switched to v-prediction: 20 minutes at 32x32, 22 at 64x64, then
#      base B (250 steps on style B, at most 22 minutes).
#
# Usage:
#   scripts/model_pretrain.sh --round1 | --round2 | (nothing: round 3)    [extra flags]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release --example pretrain_demo
export RAYON_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
bin=target/release/examples/pretrain_demo
work=.tools/pretrain
mkdir -p "$work"
case "${1:-}" in
  --round1)
    shift
    exec $bin --out_dir "$work/round1" --config demo --seed 0 \
        --noise_schedule scaled_linear,0.00085,0.012,1000 --min_snr_gamma 0 \
        --steps_a 1500 --skip_b --batch 8 --lr 4e-4 --images 4096 \
        --caption_dropout_rate 0.1 --max_minutes 55 "$@" ;;
  --round2)
    shift
    # Only the half-side phase of this round is used (its full-size phase was stopped).
    exec $bin --out_dir "$work/round2" --config demo --seed 1 \
        --resume_a "$work/round1/demo_base_a.safetensors" --low_res_minutes 45 --steps_a 780 --skip_b \
        --batch 8 --lr 4e-4 --images 4096 --caption_dropout_rate 0.1 --max_minutes 36 "$@" ;;
esac
$bin --out_dir "$work/round3" --config demo --seed 2 \
    --resume_a "$work/round2/demo_base_a_half_side.safetensors" --prediction v_prediction \
    --low_res_minutes 20 --steps_a 450 --steps_b 250 --batch 8 --lr 4e-4 --lr_b 2e-4 --images 4096 \
    --caption_dropout_rate 0.1 --max_minutes 22 "$@"
cp "$work/round3/demo_base_a.safetensors" "$work/round3/demo_base_b.safetensors" assets/
