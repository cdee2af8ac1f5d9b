#!/usr/bin/env bash
# Sets up .venv if needed and runs the whole test suite, in TEST_WORKERS processes (pytest-xdist;
# default: 2, this project's CPU count; 0 runs in this process). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -n "${TEST_WORKERS:-2}" --dist worksteal tests "$@"
