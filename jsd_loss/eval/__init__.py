"""Evaluation of distilled students as a library: the eval set, running models on it,
scores, statistics over seeds, plots and the markdown report. The eval recipe
(``jsd_loss/recipes/eval_distill.py``) strings these together."""

from jsd_loss.eval._examples import Example, load_examples, round_robin_by_category
from jsd_loss.eval._generation import chat_prompt, greedy_generate, load_model, teacher_forced
from jsd_loss.eval._plots import write_plots
from jsd_loss.eval._report import fmt_stat, render_report
from jsd_loss.eval._score_cache import SCORE_CACHE_VERSION, ModelScoreCache, model_run_key
from jsd_loss.eval._scoring import ANSWER_METRICS, CURVE_KEYS, PAIRED_METRICS, answer_scores, score_model
from jsd_loss.eval._summary import per_prompt, summarise

__all__ = [
    "ANSWER_METRICS",
    "ModelScoreCache",
    "SCORE_CACHE_VERSION",
    "CURVE_KEYS",
    "Example",
    "PAIRED_METRICS",
    "answer_scores",
    "chat_prompt",
    "fmt_stat",
    "greedy_generate",
    "load_examples",
    "model_run_key",
    "load_model",
    "per_prompt",
    "render_report",
    "round_robin_by_category",
    "score_model",
    "summarise",
    "teacher_forced",
    "write_plots",
]
