#!/usr/bin/env bash
# The exact commands behind this directory (run from the repository root, after
# `bash scripts/setup.sh` and the two `python -m jsd_loss.prepare` commands of the README).
# The runs used `PYTHONPATH=$PWD tune run jsd_loss/recipes/...`; the recipes have since moved into the
# package (same code), so they are run by their package path and need no PYTHONPATH.
# This study used the old default student, 17 evenly spaced layers; the default is now a width-pruned
# student (README, "Student initialisation"), so the old one is prepared and built explicitly here.
set -euo pipefail
.venv/bin/python -m jsd_loss.prepare student --teacher-dir models/smollm2-135m-instruct \
  --output-dir models/smollm2-90m-even17 --num-layers 17
OLD_STUDENT="student_dir=models/smollm2-90m-even17 model._component_=jsd_loss.models.smollm2.smollm2_from_hf_config model.path=models/smollm2-90m-even17"
for seed in 42 43 44; do
  for loss in jsd kl; do
    .venv/bin/tune run jsd_loss/recipes/jsd_distill_single_device.py \
      --config configs/smollm2/135M_to_90M_${loss}_quick.yaml \
      output_dir=outputs/cmp_${loss}_s${seed} seed=${seed} max_steps_per_epoch=150 save_every_n_steps=75 $OLD_STUDENT
  done
done
.venv/bin/tune run jsd_loss/recipes/eval_distill.py --config results/2026-11-22-cpu-135m-to-90m/eval.yaml
for run in jsd_s42 jsd_s43 jsd_s44 kl_s42 kl_s43 kl_s44; do
  mkdir -p results/2026-11-22-cpu-135m-to-90m/logs/$run
  cp outputs/cmp_${run}/logs/metrics.jsonl outputs/cmp_${run}/logs/config.yaml results/2026-11-22-cpu-135m-to-90m/logs/$run/
done
