"""Post-run evaluation: score distilled students against each other and the teacher.

    tune run jsd_loss/recipes/eval_distill.py --config configs/smollm2/eval_distill.yaml

For every model (teacher, each ``references`` entry such as the teacher before tuning, and
each named student; several runs of one name are seeds), on
the same eval prompts: ROUGE-1/2/L (rouge-score, stemming), SQuAD token F1 and exact
match against the references, per category; agreement with the teacher (ROUGE-L of the
outputs, next-token top-1 agreement on the reference responses); NLL and perplexity of
the references; generation tokens/s. A model entry's ``quantize: int8_weight_only`` scores it
quantised (jsd_loss.export). From each student's training log: final loss, convergence step (within
5% of final), tail loss variance; spread across seeds; relative differences against the
baseline student, and a paired bootstrap over prompts of the ROUGE-L / F1 differences; each
model's ROUGE-L and F1 as a share of the teacher's and its NLL gap to the teacher.
Writes ``report.md``, ``results.json`` and PNG plots to ``output_dir``. With ``score_cache: DIR``
each model's raw results are kept in DIR under a key of its weights and the eval settings, and
reused: an eval that adds a seed or a student runs only the new models. The work itself is
the library ``jsd_loss.eval``; this recipe checks the inputs and strings it together.
"""

import inspect
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from torchtune import config, training, utils

from jsd_loss.checkpointing import read_config, sha256_files
from jsd_loss.eval import (
    greedy_generate,
    load_examples,
    ModelScoreCache,
    load_model,
    model_run_key,
    render_report,
    score_model,
    summarise,
    teacher_forced,
    write_plots,
)
from jsd_loss.export import QUANTIZATIONS, quantize
from jsd_loss.training import read_metrics

log = utils.get_logger("INFO")


class EvalDistillRecipe:
    """Scores a teacher and named students on one eval set; see the module docstring.

    Args:
        cfg (DictConfig): the parsed eval config.
    """

    def __init__(self, cfg: DictConfig) -> None:
        self._cfg = cfg
        self._device = utils.get_device(device=cfg.get("device", "cpu"))
        self._dtype = training.get_dtype(cfg.get("dtype", "fp32"), device=self._device)
        self._output_dir = Path(cfg.output_dir)
        self._gen = cfg.get("generation", {})
        training.set_seed(cfg.get("seed", 0))

    def setup(self) -> None:
        """Every input is checked here, before any model is loaded or text generated."""
        cfg = self._cfg
        if not cfg.students:
            raise ValueError("no students to evaluate: `students` is empty")
        self._teacher = {"name": cfg.teacher.get("name", "teacher"), "checkpoint_dir": cfg.teacher.checkpoint_dir,
                         "quantize": _quantize_key(cfg.teacher)}
        teacher_vocab = read_config(Path(self._teacher["checkpoint_dir"]))["vocab_size"]
        self._references = [_model_entry(r, "reference", teacher_vocab) for r in cfg.get("references") or []]
        self._runs = [_model_entry(s, "student", teacher_vocab) for s in cfg.students]
        names = list(dict.fromkeys(r["name"] for r in self._runs))
        every = [self._teacher["name"]] + [r["name"] for r in self._references] + names
        clash = sorted({n for n in every if every.count(n) > 1})
        if clash:
            raise ValueError(f"model names {clash} are used twice: the teacher, each reference and each student "
                             "name must differ (runs of one student name are its seeds)")
        self._baseline = cfg.get("baseline", names[-1])
        if self._baseline not in names:
            raise ValueError(f"baseline {self._baseline!r} is not one of the students {names}")
        self._tokenizer = config.instantiate(cfg.tokenizer)
        dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
        unknown = sorted(set(dataset) - set(inspect.signature(load_examples).parameters))
        if unknown:
            raise ValueError(f"dataset: unknown keys {unknown} (see jsd_loss.eval.load_examples for the known ones)")
        self._examples = load_examples(**dataset)
        self._score_cache = ModelScoreCache(Path(cfg.score_cache)) if cfg.get("score_cache") else None
        self._settings = {
            "examples": self._examples, "dtype": str(self._dtype), "device": self._device.type,
            "tokenizer": OmegaConf.to_container(cfg.tokenizer, resolve=True),
            "tokenizer_sha256": _file_sha256(cfg.tokenizer.get("path")),
            "generation": self._generation_args(),
        }

    def _generation_args(self) -> Dict[str, int]:
        return {"batch_size": int(self._gen.get("batch_size", 8)), "max_new_tokens": int(self._gen.get("max_new_tokens", 64)),
                "max_prompt_tokens": int(self._gen.get("max_prompt_tokens", 512))}

    def _run_model(self, run: Dict[str, Any]) -> Dict[str, Any]:
        """Greedy outputs (and their tokens/s) and teacher-forced predictions of one model
        (freed afterwards), from the score cache when it holds them."""
        if self._score_cache is None:
            return self._score(run)
        key = model_run_key(run["checkpoint_dir"], quantize=run["quantize"], settings=self._settings)
        cached = self._score_cache.get(key)
        if cached is not None:
            log.info(f"{run['name']} ({run['checkpoint_dir']}): results reused from the score cache ({key[:12]})")
            return cached
        scored = self._score(run)
        self._score_cache.put(key, scored)
        return scored

    def _score(self, run: Dict[str, Any]) -> Dict[str, Any]:
        model = load_model(run["checkpoint_dir"], self._dtype, self._device)
        if run["quantize"]:
            quantize(model, run["quantize"])
        counts = []
        start = time.perf_counter()
        outputs = greedy_generate(
            model, self._tokenizer, self._examples, device=self._device, dtype=self._dtype,
            **self._generation_args(), desc=f"generate {run['name']}", token_counts=counts,
        )
        seconds = time.perf_counter() - start
        return {"outputs": outputs, "generation_tokens_per_second": sum(counts) / seconds,
                "tf": teacher_forced(model, self._tokenizer, self._examples, self._device)}

    def evaluate(self) -> Dict[str, Any]:
        teacher = {**self._teacher, "role": "teacher", "records": None, **self._run_model(self._teacher)}
        models = [teacher] + [{**run, **self._run_model(run)} for run in self._references + self._runs]
        tol = float(self._cfg.get("convergence_tolerance", 0.05))
        frac = float(self._cfg.get("variance_last_fraction", 0.25))
        results = {
            "models": [score_model(m, teacher["outputs"], teacher["tf"], self._examples, tol, frac) for m in models],
            "examples": len(self._examples),
        }
        results["summary"] = summarise(results["models"], self._baseline, seed=int(self._cfg.get("seed", 0)))
        results["config"] = OmegaConf.to_container(self._cfg, resolve=True)
        results["versions"] = {"python": platform.python_version(), "torch": torch.__version__,
                               "torchtune": __import__("torchtune").__version__}
        return results

    def write(self, results: Dict[str, Any]) -> None:
        self._output_dir.mkdir(parents=True, exist_ok=True)
        (self._output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        write_plots(results, self._output_dir)
        (self._output_dir / "report.md").write_text(render_report(results, self._baseline))
        log.info(f"Wrote report.md, results.json and plots to {self._output_dir}")


def _model_entry(entry: DictConfig, role: str, teacher_vocab: int) -> Dict[str, Any]:
    """A student (``log_dir`` optional: its training curves) or reference model (scored like
    the teacher, e.g. the teacher before tuning), checked against the teacher's vocabulary."""
    vocab = read_config(Path(entry.checkpoint_dir))["vocab_size"]
    if vocab != teacher_vocab:
        raise ValueError(f"{role} {entry.name!r} ({entry.checkpoint_dir}) has vocab_size {vocab}, "
                         f"the teacher {teacher_vocab}")
    records = read_metrics(entry.log_dir) if role == "student" and entry.get("log_dir") else None
    if records is not None and not records:
        raise ValueError(f"training log {entry.log_dir} of student {entry.name!r} holds no metrics")
    return {"name": entry.name, "role": role, "checkpoint_dir": entry.checkpoint_dir, "records": records,
            "quantize": _quantize_key(entry)}


def _file_sha256(path) -> Optional[str]:
    return sha256_files([Path(path)]) if path and Path(path).is_file() else None


def _quantize_key(entry: DictConfig):
    method = entry.get("quantize")
    if method is not None and method not in QUANTIZATIONS:
        raise ValueError(f"{entry.get('name', 'teacher')!r}: unknown quantize {method!r}; known: {list(QUANTIZATIONS)}")
    return method


@config.parse
def recipe_main(cfg: DictConfig) -> None:
    config.log_config(recipe_name="EvalDistillRecipe", cfg=cfg)
    recipe = EvalDistillRecipe(cfg)
    recipe.setup()
    recipe.write(recipe.evaluate())


if __name__ == "__main__":
    sys.exit(recipe_main())
