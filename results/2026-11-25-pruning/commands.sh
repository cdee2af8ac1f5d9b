#!/usr/bin/env bash
# The exact commands behind this directory (run from the repository root after `bash scripts/setup.sh`
# and `python -m jsd_loss.prepare teacher --output-dir models/smollm2-135m-instruct`).
# Running several jobs at once on the 2-core CPU: give each OMP_NUM_THREADS=1, or they thrash (we saw
# 0.4 response tokens/s per job with 2 threads each, 17-28 with 1 thread each).
set -euo pipefail
R=results/2026-11-25-pruning

# 1. every method at ~90M (and a smaller size): parameters, held-out NLL before training (first 60
#    eval rows), forward tokens/s. The teacher's calibration statistics are computed once.
.venv/bin/python benchmarks/bench_prune.py --eval-rows 60 --heal "" --work-dir outputs/bench_prune \
    --json-out $R/bench_prune_scores.json
.venv/bin/python $R/forward_speed.py > $R/forward_speed.json   # on an otherwise idle CPU

# 2. the default student (width pruning + least-squares refit), the old even 17-layer one, and width
#    pruning without the refit
.venv/bin/python -m jsd_loss.prepare student --teacher-dir models/smollm2-135m-instruct \
    --output-dir models/smollm2-90m-student
.venv/bin/python -m jsd_loss.prepare student --teacher-dir models/smollm2-135m-instruct \
    --output-dir outputs/students/even --num-layers 17
.venv/bin/python -m jsd_loss.prepare student --teacher-dir models/smollm2-135m-instruct \
    --output-dir outputs/students/width --no-refit-mlp

# 3. the same quick JSD heal (configs/smollm2/135M_to_90M_jsd_quick.yaml, 60 steps) from each start
heal() {  # name student_dir seed
  OMP_NUM_THREADS=1 .venv/bin/tune run jsd_loss/recipes/jsd_distill_single_device.py \
    --config configs/smollm2/135M_to_90M_jsd_quick.yaml student_dir=$2 output_dir=outputs/heal/$1-seed$3 \
    seed=$3 save_every_n_steps=20 overwrite_output=True \
    model._component_=jsd_loss.models.smollm2.smollm2_from_hf_config model.path=$2
}
for seed in 42 43; do
  heal width-refit models/smollm2-90m-student $seed
  heal even outputs/students/even $seed
done
heal width outputs/students/width 42

# 4. held-out NLL: healed students on the first 60 eval rows (as in step 1); the teacher and the
#    default and even students before training on all 229 eval rows
EVAL_ROWS=60 .venv/bin/python $R/heldout_nll.py $R/healed_nll_60rows.json outputs/heal/*/final
.venv/bin/python $R/heldout_nll.py $R/heldout_nll_229rows.json models/smollm2-135m-instruct \
    models/smollm2-90m-student outputs/students/even
for run in outputs/heal/*-seed*; do
  mkdir -p $R/logs/$(basename $run) && cp $run/logs/metrics.jsonl $R/logs/$(basename $run)/
done
