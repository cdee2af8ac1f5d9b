#!/usr/bin/env bash
# Issue #20 part 3: does a student distilled from a task expert fused with its general Instruct
# model keep the other categories while gaining the tuned ones? Run from the repository root after
# scripts/run_main.sh (it imports the Instruct teacher and prunes the default student):
#   bash results/2026-11-25-multi-teacher/commands.sh train   # category LoRA teacher, then 3 students per seed
#   bash results/2026-11-25-multi-teacher/commands.sh eval    # eval.yaml: held-out prompts, per category
# The expert is SmolLM2-135M-Instruct LoRA-tuned exactly as the main job's teacher (60 steps of 8 rows)
# but on the closed_qa and information_extraction rows only; summarization is the held-out category
# it never saw. Each student starts from the default student (models/smollm2-90m-dolly-student) and runs
# the quick JSD config (60 steps, all Dolly train categories) with a live bf16 teacher:
#   instruct  the Instruct model alone        expert  the category expert alone
#   fused     both, mixture 0.5/0.5 (configs/smollm2/135M_to_90M_multi_teacher_quick.yaml)
# Every step is idempotent (a finished step is skipped).
set -euo pipefail
OUT=${MULTI_OUT:-outputs/multi_teacher}
TUNE=.venv/bin/tune
PY=.venv/bin/python
SEEDS=${SEEDS:-"42 43"}
RUNS=${RUNS:-"instruct expert fused"}
BASE=models/smollm2-135m-instruct
EXPERT=$OUT/teacher_expert
TUNED_CATEGORIES="[closed_qa,information_extraction]"

run_args() {  # config and overrides of one student
  case $1 in
    instruct) echo "--config configs/smollm2/135M_to_90M_jsd_quick.yaml teacher_dir=$BASE" ;;
    expert) echo "--config configs/smollm2/135M_to_90M_jsd_quick.yaml teacher_dir=$EXPERT" ;;
    fused) echo "--config configs/smollm2/135M_to_90M_multi_teacher_quick.yaml teacher_dir=$EXPERT instruct_dir=$BASE" ;;
    *) echo "unknown run $1" >&2; exit 2 ;;
  esac
}

train() {
  if [ ! -f $EXPERT/jsd_distill_prepare.json ]; then
    if [ ! -f $OUT/lora/epoch_0/model-00001-of-00001.safetensors ]; then
      $TUNE run lora_finetune_single_device --config configs/smollm2/135M_lora_single_device.yaml \
        output_dir=$OUT/lora max_steps_per_epoch=60 batch_size=4 gradient_accumulation_steps=2 \
        tokenizer.max_seq_len=256 "dataset.categories=$TUNED_CATEGORIES"
    fi
    $PY -m jsd_loss.prepare tuned-teacher --lora-dir $OUT/lora/epoch_0 --base-dir $BASE --output-dir $EXPERT
  fi
  for seed in $SEEDS; do
    for name in $RUNS; do
      run=$OUT/${name}_seed$seed
      if [ -d "$run/final" ]; then echo "$run/final exists"; continue; fi
      $TUNE run jsd_loss/recipes/jsd_distill_single_device.py $(run_args $name) \
        seed=$seed output_dir=$run overwrite_output=True
    done
  done
}

case "${1:-}" in
  train) train ;;
  eval) $TUNE run jsd_loss/recipes/eval_distill.py --config results/2026-11-25-multi-teacher/eval.yaml ;;
  *) echo "usage: $0 train|eval" >&2; exit 2 ;;
esac
