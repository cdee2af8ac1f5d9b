# On-policy distillation (issue #12 part 5), on the 2-core CPU with the study paused (no other job):
# 12 steps of the GKD quick config (batch 2, max_seq_len 256, 128 new tokens), lmbda 0 vs 0.5, and the
# student's generation tokens/s with the KV cache at batch 1, 2, 4 against recomputing at batch 1.
# Models: the benchmark defaults (SmolLM2-135M-Instruct and the 90M student pruned from it); speed only.
.venv/bin/python benchmarks/bench_on_policy.py --steps 12 --json-out results/2026-11-25-on-policy/bench_on_policy.json
