#!/usr/bin/env bash
# The workflow study (issue #13), run from the repository root on the 2-core CPU:
#   bash results/2026-11-25-workflow/commands.sh train   # teacher LoRA, pruned student, caches, 6 runs
#   bash results/2026-11-25-workflow/commands.sh eval    # 229 held-out prompts, report
# Every step is idempotent: a finished step is skipped, a killed distillation resumes from its
# last checkpoint (save_every_n_steps), a killed cache build from its last shard.
set -euo pipefail
OUT=${STUDY_OUT:-outputs/study}
TUNE=.venv/bin/tune
PY=.venv/bin/python
SEEDS=${SEEDS:-"42 43 44"}
LOSSES=${LOSSES:-"jsd kl"}
STEPS=${STEPS:-300}  # runs of other step counts get their own directories: <loss>_<STEPS>_seed<N>
TEACHER=$OUT/teacher
STUDENT=$OUT/student

loss_args() {  # the config (and overrides) of one loss
  case $1 in
    jsd|kl) echo "--config configs/smollm2/135M_to_90M_$1_quick.yaml" ;;
    skew_kl) echo "--config configs/smollm2/135M_to_90M_kl_quick.yaml ~kd_loss.direction
      kd_loss._component_=jsd_loss.DistillWithChunkedOutputLoss
      kd_loss.divergence._component_=jsd_loss.SkewKLDivergence kd_loss.divergence.alpha=0.1" ;;
    # ABKD at its authors' smallest-student setting, the best of the quick-config divergence runs (#18)
    abkd) echo "--config configs/smollm2/135M_to_90M_kl_quick.yaml ~kd_loss.direction
      kd_loss._component_=jsd_loss.DistillWithChunkedOutputLoss
      kd_loss.divergence._component_=jsd_loss.AlphaBetaDivergence kd_loss.divergence.alpha=0.2 kd_loss.divergence.beta=0.7" ;;
    # on-policy JSD (GKD, lambda 0.5: half the steps on the student's own samples, up to 128 tokens,
    # against the live bf16 teacher); on-policy needs unpacked rows and no cache, so 300 steps of 4
    # rows carry ~72k response tokens (the packed runs ~105k); STEPS=420 reaches ~100k (the study's
    # minimum), in on_policy_jsd_420_seed<N>
    on_policy_jsd) echo "--config configs/smollm2/135M_to_90M_gkd_quick.yaml" ;;
    *) echo "unknown loss $1" >&2; exit 2 ;;
  esac
}

cached_data() { echo "dataset.packed=True teacher_cache=$OUT/cache_seed$1"; }  # packs, the seed's cache

data_args() {  # on-policy steps can use neither packing nor the cache
  case $1 in
    # keep_freed_cpu_memory (the config's True) let seed 42's RSS grow to 10 GiB over 300 steps;
    # off, seeds 43 and 44 fit in RAM side by side (the allocator changes speed, not values)
    on_policy_jsd) echo "dataset.packed=False keep_freed_cpu_memory=False" ;;
    *) cached_data $2 ;;
  esac
}

train() {
  # 1. LoRA fine-tune of SmolLM2-135M-Instruct on the Dolly train split (merged on save)
  if [ ! -f "$OUT/teacher_lora/epoch_0/model-00001-of-00001.safetensors" ]; then
    $TUNE run lora_finetune_single_device --config configs/smollm2/135M_lora_single_device.yaml \
      output_dir=$OUT/teacher_lora max_steps_per_epoch=150 batch_size=4 gradient_accumulation_steps=2 \
      tokenizer.max_seq_len=256
  fi
  $PY -m jsd_loss.prepare tuned-teacher --lora-dir $OUT/teacher_lora/epoch_0 \
    --base-dir models/smollm2-135m-instruct --output-dir "$TEACHER"
  # 2. the default ~90M student, pruned from the tuned teacher
  $PY -m jsd_loss.prepare student --teacher-dir "$TEACHER" --output-dir "$STUDENT"
  for seed in $SEEDS; do
    common=(teacher_dir=$TEACHER student_dir=$STUDENT
            seed=$seed max_steps_per_epoch=$STEPS batch_size=4
            lr_scheduler.num_warmup_steps=15 save_every_n_steps=50)
    # 3. the teacher's top-128 distributions at every response token this seed's runs draw
    #    (only the off-policy losses read it)
    if [ -n "$(echo $LOSSES | tr ' ' '\n' | grep -vx on_policy_jsd)" ]; then
      $TUNE run jsd_loss/recipes/cache_teacher.py --config configs/smollm2/135M_to_90M_jsd_quick.yaml \
        "${common[@]}" $(cached_data $seed) cache.rows=run dtype=bf16
    fi
    # 4. JSD (beta 0.5), forward KL and skew KL (alpha 0.1, forward), identical otherwise;
    #    on-policy JSD (LOSSES=on_policy_jsd) without packing or cache
    for loss in $LOSSES; do
      run=$OUT/${loss}$([ "$STEPS" = 300 ] || echo _$STEPS)_seed$seed  # a changed step count cannot resume
      if [ -d "$run/final" ]; then echo "$run/final exists"; continue; fi
      resume=False
      if ls -d "$run"/step_* >/dev/null 2>&1; then resume=True; fi
      $TUNE run jsd_loss/recipes/jsd_distill_single_device.py $(loss_args $loss) "${common[@]}" $(data_args $loss $seed) \
        output_dir=$run resume_from_checkpoint=$resume overwrite_output=True
    done
  done
}

eval_study() {
  $TUNE run jsd_loss/recipes/eval_distill.py --config results/2026-11-25-workflow/eval.yaml \
    output_dir=$OUT/eval
}

case "${1:-}" in
  train) train ;;
  eval) eval_study ;;
  *) echo "usage: $0 train|eval" >&2; exit 2 ;;
esac
