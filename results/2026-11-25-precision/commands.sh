#!/usr/bin/env bash
# Issue #21: every figure of results/2026-11-25-precision, on the idle 2-core CPU, one run.
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/python benchmarks/bench_precision.py --steps 60 --learning \
    --json-out results/2026-11-25-precision/bench_precision.json | tee results/2026-11-25-precision/bench_precision.md
# optimizer-state memory of the 1.7B -> 360M config's student (random weights, real shapes)
.venv/bin/python benchmarks/bench_optimizer_state.py \
    --json-out results/2026-11-25-precision/bench_optimizer_state.json | tee results/2026-11-25-precision/bench_optimizer_state.md
