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
# paired bootstraps the report does not print (each pair against its own baseline)
.venv/bin/python - <<'PY' > results/2026-11-25-features/paired.json
import json
from jsd_loss.eval._summary import per_prompt
from jsd_loss.metrics import paired_bootstrap
models = json.load(open("outputs/features_study/eval/results.json"))["models"]
pairs = [("depth_features", "depth_logits"), ("default_features", "default_logits"),
         ("default_logits_int8", "default_logits_s42_fp32")]
print(json.dumps({f"{a} - {b}": {k: paired_bootstrap(per_prompt(models, a, k), per_prompt(models, b, k), seed=0)
                                 for k in ("rougeL", "f1")} for a, b in pairs}, indent=1))
PY
# step-time overhead of the feature term on an idle CPU, no checkpoints
.venv/bin/python benchmarks/bench_recipe.py --steps 30 --variants ours_full_chunked,features_chunked \
    --json-out results/2026-11-25-features/bench_recipe_overhead.json | tee results/2026-11-25-features/bench_recipe_overhead.md
