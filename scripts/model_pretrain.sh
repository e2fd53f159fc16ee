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
#   3. --round3: round 2's half-side model switched to v-prediction: 20 minutes at 32x32, 22 at 64x64, then
#      base B (250 steps on style B, at most 22 minutes). Clean shapes on the prompted background (100 %), but
#      each shape painted in a rainbow of colours: colour 7 %, shape 23 % (chance 17 %, 20 %).
#   4. --round4: round 3's base A, 45 more minutes at 32x32 (5077 steps; its full-size phase was stopped):
#      colour 17 %, no better. Minutes were not what was missing.
#   5. (default) round 4's half-side model with min-SNR off. With v-prediction, min-SNR's weight
#      min(snr, 5)/(snr + 1) tends to snr at high noise, where half of this schedule's timesteps lie (snr < 0.1
#      beyond t ~ 480): the steps that decide colour and layout carried almost no weight, so the model learned
#      the average colour there. The plain v loss weights the clean image's error about equally at every noise
#      level. 12 minutes at 32x32 (1182 steps) took colour from 7 % to 30 %; then 28 more at 32x32, 14 at 64x64,
#      and base B (14 minutes on style B).
#
# Usage:
#   scripts/model_pretrain.sh --round1 | --round2 | --round3 | --round4 | (nothing: round 5)    [extra flags]
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
        --resume_a "$work/round1/demo_base_a.safetensors" --min_snr_gamma 5 --low_res_minutes 45 --steps_a 780 --skip_b \
        --batch 8 --lr 4e-4 --images 4096 --caption_dropout_rate 0.1 --max_minutes 36 "$@" ;;
  --round3)
    shift
    exec $bin --out_dir "$work/round3" --config demo --seed 2 \
        --resume_a "$work/round2/demo_base_a_half_side.safetensors" --prediction v_prediction --min_snr_gamma 5 \
        --low_res_minutes 20 --steps_a 450 --steps_b 250 --batch 8 --lr 4e-4 --lr_b 2e-4 --images 4096 \
        --caption_dropout_rate 0.1 --max_minutes 22 "$@" ;;
  --round4)
    shift
    # Only the half-side phase of this round is used (its full-size phase was stopped).
    exec $bin --out_dir "$work/round4" --config demo --seed 3 \
        --resume_a "$work/round3/demo_base_a.safetensors" --prediction v_prediction --min_snr_gamma 5 \
        --low_res_minutes 45 --steps_a 400 --skip_b --batch 8 --lr 4e-4 --images 4096 \
        --caption_dropout_rate 0.1 --max_minutes 16 "$@" ;;
esac
# Round 5, in two runs: 12 minutes at half side (a check that min-SNR off helps), then the rest.
$bin --out_dir "$work/round5a" --config demo --seed 4 \
    --resume_a "$work/round4/demo_base_a_half_side.safetensors" --prediction v_prediction --min_snr_gamma 0 \
    --low_res_minutes 12 --steps_a 1 --skip_b --batch 8 --lr 4e-4 --images 4096 \
    --caption_dropout_rate 0.1 --max_minutes 1 "$@"
$bin --out_dir "$work/round5" --config demo --seed 5 \
    --resume_a "$work/round5a/demo_base_a_half_side.safetensors" --prediction v_prediction --min_snr_gamma 0 \
    --low_res_minutes 28 --steps_a 420 --steps_b 420 --batch 8 --lr 4e-4 --lr_b 2e-4 --images 4096 \
    --caption_dropout_rate 0.1 --max_minutes 14 "$@"
cp "$work/round5/demo_base_a.safetensors" "$work/round5/demo_base_b.safetensors" assets/
