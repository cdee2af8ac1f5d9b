#!/usr/bin/env bash
# Issue #18 part 4: the divergences on the quick config, from the default student, equal steps,
# seeds 42 and 43, evaluated on every held-out Dolly prompt (229). Run from the repository root
# after scripts/run_main.sh (it makes the tuned teacher and the default student):
#   bash results/2026-11-25-divergences/commands.sh train   # 2 caches per seed, 14 runs
#   bash results/2026-11-25-divergences/commands.sh eval    # eval.yaml (score cache: reruns run new models only)
# Every step is idempotent (a finished run is skipped). Temperature 2 needs its own cache (a cache
# holds the teacher at one temperature); the annealed run uses the live teacher (bf16).
set -euo pipefail
OUT=${DIV_OUT:-outputs/divergences}
TUNE=.venv/bin/tune
SEEDS=${SEEDS:-"42 43"}
RUNS=${RUNS:-"jsd kl abkd akl tv jsd_t2 jsd_t2to1"}
QUICK=configs/smollm2/135M_to_90M_jsd_quick.yaml
CHUNKED="kd_loss._component_=jsd_loss.DistillWithChunkedOutputLoss ~kd_loss.beta"

run_args() {  # the overrides of one run (after the quick JSD config), and its cache
  local seed=$1
  case $2 in
    jsd) echo "teacher_cache=$OUT/cache_t1_seed$seed" ;;   # beta 0.5, temperature 1
    kl) echo "$CHUNKED kd_loss.divergence._component_=jsd_loss.KLDivergence teacher_cache=$OUT/cache_t1_seed$seed" ;;
    # ABKD's setting for its smallest student (GPT-2 0.1B from 1.5B: alpha 0.2, beta 0.7,
    # ghwang-s/abkd distillation_llm/scripts/gpt2/ab/train_0.1B_1.5B.sh)
    abkd) echo "$CHUNKED kd_loss.divergence._component_=jsd_loss.AlphaBetaDivergence kd_loss.divergence.alpha=0.2
                kd_loss.divergence.beta=0.7 teacher_cache=$OUT/cache_t1_seed$seed" ;;
    akl) echo "$CHUNKED kd_loss.divergence._component_=jsd_loss.AdaptiveKLDivergence kd_loss.divergence.mu=0.5
               teacher_cache=$OUT/cache_t1_seed$seed" ;;
    tv) echo "$CHUNKED kd_loss.divergence._component_=jsd_loss.TotalVariationDivergence teacher_cache=$OUT/cache_t1_seed$seed" ;;
    jsd_t2) echo "kd_loss.temperature=2.0 teacher_cache=$OUT/cache_t2_seed$seed" ;;
    jsd_t2to1) echo "kd_loss.temperature._component_=jsd_loss.training.CosineSchedule kd_loss.temperature.start=2.0
                     kd_loss.temperature.end=1.0" ;;
    *) echo "unknown run $2" >&2; exit 2 ;;
  esac
}

train() {
  for seed in $SEEDS; do
    for t in 1 2; do
      $TUNE run jsd_loss/recipes/cache_teacher.py --config $QUICK seed=$seed cache.rows=run \
        kd_loss.temperature=$t.0 teacher_cache=$OUT/cache_t${t}_seed$seed
    done
    for name in $RUNS; do
      run=$OUT/${name}_seed$seed
      if [ -d "$run/final" ]; then echo "$run/final exists"; continue; fi
      $TUNE run jsd_loss/recipes/jsd_distill_single_device.py --config $QUICK $(run_args $seed $name) \
        seed=$seed output_dir=$run overwrite_output=True
    done
  done
}

case "${1:-}" in
  train) train ;;
  eval) $TUNE run jsd_loss/recipes/eval_distill.py --config results/2026-11-25-divergences/eval.yaml ;;
  *) echo "usage: $0 train|eval" >&2; exit 2 ;;
esac
