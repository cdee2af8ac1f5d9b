#!/usr/bin/env bash
# Issue #19 part 4 and issue #21's int8 row: every figure of results/2026-11-25-features, idle 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/../.."
# the best depth-pruned student of the pruning study (depth-angular + width, 24 layers)
[ -d models/smollm2-88m-depth-angular-width ] || .venv/bin/python -m jsd_loss.prepare student \
    --teacher-dir models/smollm2-135m-instruct --output-dir models/smollm2-88m-depth-angular-width \
    --method depth-angular+width --num-layers 24 --target-params 88.5M
.venv/bin/python benchmarks/bench_features.py \
    --students default=models/smollm2-90m-student,depth=models/smollm2-88m-depth-angular-width \
    --seeds 42,43 --work outputs/features_study --json-out results/2026-11-25-features/bench_features.json \
    | tee results/2026-11-25-features/bench_features.md
.venv/bin/tune run jsd_loss/recipes/eval_distill.py --config results/2026-11-25-features/eval_features.yaml
cp outputs/features_study/eval/report.md results/2026-11-25-features/eval_report.md
cp outputs/features_study/eval/results.json results/2026-11-25-features/eval_results.json
