# Teacher cache (issue #11): the figures in README "Teacher cache", on the idle 2-core CPU.
# bias of a top-k + tail teacher against the dense loss, real teacher and default student
.venv/bin/python benchmarks/bench_topk_bias.py --rows 32 --json-out results/2026-11-25-teacher-cache/bench_topk_bias.json
# speed (cached vs live, packed vs padded) and held-out NLL after 60 steps, one run
.venv/bin/python benchmarks/bench_recipe.py --steps 60 --heldout-nll 60 \
  --variants ours_full_chunked,cached_chunked,packed_chunked,cached_packed \
  --json-out results/2026-11-25-teacher-cache/bench_recipe_60steps.json
