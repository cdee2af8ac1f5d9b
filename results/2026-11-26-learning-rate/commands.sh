#!/usr/bin/env bash
# Does a higher peak learning rate heal the student further in the same tokens? The workflow study
# (results/2026-11-25-workflow) ran every loss at lr 1e-4 on a cosine to 0, and its KD divergence
# flattened only where the cosine had decayed the lr. Here: its forward-KL runs again, seeds 42 and 43,
# identical (same teacher, student, cache, batches, 300 packed steps, warmup 15) but for the peak lr,
# 3e-4; LOSSES=jsd does the same for the study's JSD runs. Run from the repository root after the
# study's `commands.sh train` (its outputs are reused):
#   bash results/2026-11-26-learning-rate/commands.sh train   # 2 runs, ~25 min each on one core
#   bash results/2026-11-26-learning-rate/commands.sh eval    # 229 held-out prompts (score cache), KL then JSD
# Idempotent: a finished run is skipped, a killed one resumes from its last checkpoint.
set -euo pipefail
STUDY=${STUDY_OUT:-outputs/study}
TUNE=.venv/bin/tune
SEEDS=${SEEDS:-"42 43"}
LOSSES=${LOSSES:-kl}
LR=${LR:-3e-4}

train() {
  for loss in $LOSSES; do for seed in $SEEDS; do
    run=$STUDY/${loss}_lr${LR}_seed$seed
    if [ -d "$run/final" ]; then echo "$run/final exists"; continue; fi
    resume=False
    if ls -d "$run"/step_* >/dev/null 2>&1; then resume=True; fi
    # the study's run of this loss and seed (its commands.sh: common, cached_data), lr aside
    $TUNE run jsd_loss/recipes/jsd_distill_single_device.py --config configs/smollm2/135M_to_90M_${loss}_quick.yaml \
      teacher_dir=$STUDY/teacher student_dir=$STUDY/student seed=$seed max_steps_per_epoch=300 batch_size=4 \
      lr_scheduler.num_warmup_steps=15 save_every_n_steps=50 dataset.packed=True teacher_cache=$STUDY/cache_seed$seed \
      optimizer.lr=$LR output_dir=$run resume_from_checkpoint=$resume overwrite_output=True
  done; done
}

case "${1:-}" in
  train) train ;;
  eval)  # forward KL (eval.yaml), then JSD (eval_jsd.yaml: the LOSSES=jsd runs)
    $TUNE run jsd_loss/recipes/eval_distill.py --config results/2026-11-26-learning-rate/eval.yaml \
      output_dir=$STUDY/eval_lr
    $TUNE run jsd_loss/recipes/eval_distill.py --config results/2026-11-26-learning-rate/eval_jsd.yaml \
      output_dir=$STUDY/eval_lr_jsd ;;
  *) echo "usage: $0 train|eval" >&2; exit 2 ;;
esac
