"""Post-run evaluation: score distilled students against each other and the teacher.

    tune run jsd_loss/recipes/eval_distill.py --config configs/smollm2/eval_distill.yaml

For every model (teacher and each named student; several runs of one name are seeds), on
the same eval prompts: ROUGE-1/2/L (rouge-score, stemming), SQuAD token F1 and exact
match against the references, per category; agreement with the teacher (ROUGE-L of the
outputs, next-token top-1 agreement on the reference responses); NLL and perplexity of
the references. From each student's training log: final loss, convergence step (within
5% of final), tail loss variance; spread across seeds; relative differences against the
baseline student, and a paired bootstrap over prompts of the ROUGE-L / F1 differences.
Writes ``report.md``, ``results.json`` and PNG plots to ``output_dir``.
"""

import json
import math
import platform
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torchtune import config, training, utils
from torchtune.data import Message
from torchtune.generation import generate
from torchtune.modules.common_utils import delete_kv_caches
from tqdm import tqdm

from jsd_loss.checkpointing import read_config
from jsd_loss.datasets import is_eval_row, load_rows, prompt_text
from jsd_loss.metrics import curve_summary, exact_match, paired_bootstrap, relative_difference, rouge, token_f1
from jsd_loss.models.smollm2 import smollm2_from_hf
from jsd_loss.training import read_metrics

log = utils.get_logger("INFO")

ANSWER_METRICS = ("rouge1", "rouge2", "rougeL", "f1", "exact_match")
CURVE_KEYS = ("loss", "class_loss", "kd_loss")
# per-prompt scores kept for the paired bootstrap against the baseline
PAIRED_METRICS = ("rougeL", "f1", "teacher_rougeL")


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

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        """Every input is checked here, before any model is loaded or text generated."""
        cfg = self._cfg
        self._teacher = {"name": cfg.teacher.get("name", "teacher"), "checkpoint_dir": cfg.teacher.checkpoint_dir}
        teacher_vocab = read_config(Path(self._teacher["checkpoint_dir"]))["vocab_size"]
        if not cfg.students:
            raise ValueError("no students to evaluate: `students` is empty")
        self._runs = []
        for s in cfg.students:
            vocab = read_config(Path(s.checkpoint_dir))["vocab_size"]
            if vocab != teacher_vocab:
                raise ValueError(
                    f"student {s.name!r} ({s.checkpoint_dir}) has vocab_size {vocab}, the teacher {teacher_vocab}"
                )
            records = read_metrics(s.log_dir) if s.get("log_dir") else None
            if records is not None and not records:
                raise ValueError(f"training log {s.log_dir} of student {s.name!r} holds no metrics")
            self._runs.append({"name": s.name, "checkpoint_dir": s.checkpoint_dir, "records": records})
        self._names = list(dict.fromkeys(r["name"] for r in self._runs))
        self._baseline = cfg.get("baseline", self._names[-1])
        if self._baseline not in self._names:
            raise ValueError(f"baseline {self._baseline!r} is not one of the students {self._names}")
        self._tokenizer = config.instantiate(cfg.tokenizer)
        self._examples = self._load_examples(cfg.dataset)

    def _load_examples(self, ds: DictConfig) -> List[Dict[str, str]]:
        fields = {k: ds.get(f"{k}_field", k) for k in ("instruction", "context", "response", "category")}
        required = [fields["instruction"], fields["response"]]
        rows = load_rows(ds.source, fields=required)
        examples = []
        for row in rows:
            ex = {k: row.get(f, "") if k in ("context", "category") else row[f] for k, f in fields.items()}
            if not isinstance(ex["context"], str) or not isinstance(ex["category"], str):
                raise ValueError(f"{ds.source}: context/category fields must be strings")
            ex["category"] = ex["category"] or "all"
            examples.append(ex)
        if ds.get("split", None) == "eval":
            examples = [e for e in examples if is_eval_row(e)]
        if ds.get("max_rows", None):
            examples = _round_robin_by_category(examples, ds.max_rows)
        if not examples:
            raise ValueError(f"the eval set from {ds.source} is empty")
        return examples

    # ------------------------------------------------------------------ per-model work

    def _prompt(self, ex: Dict[str, str]) -> List[Message]:
        return [Message(role="user", content=prompt_text(ex), masked=True)]

    @torch.no_grad()
    def _generate(self, model, desc: str) -> List[str]:
        bs = int(self._gen.get("batch_size", 8))
        max_new = int(self._gen.get("max_new_tokens", 64))
        max_prompt = int(self._gen.get("max_prompt_tokens", 512))
        # a pad id that never occurs in a ChatML prompt (<|im_end|> does, so it cannot pad)
        pad_id = self._tokenizer.special_tokens["<|endoftext|>"]
        outputs = []
        for start in tqdm(range(0, len(self._examples), bs), desc=f"generate {desc}", disable=None):
            batch = self._examples[start : start + bs]
            prompts = [self._tokenizer.generation_prompt(self._prompt(ex))[-max_prompt:] for ex in batch]
            width = max(map(len, prompts))
            x = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=self._device)
            with self._device:
                model.setup_caches(batch_size=len(batch), dtype=self._dtype, decoder_max_seq_len=width + max_new)
            tokens, _ = generate(
                model, x, max_generated_tokens=max_new, pad_id=pad_id, temperature=1.0, top_k=1,
                stop_tokens=self._tokenizer.stop_tokens,
            )
            delete_kv_caches(model)  # the next batch may differ in size
            stops = set(self._tokenizer.stop_tokens) | {pad_id}
            for row in tokens[:, width:].tolist():
                end = next((i for i, t in enumerate(row) if t in stops), len(row))
                outputs.append(self._tokenizer.decode(row[:end]).strip())
        return outputs

    @torch.no_grad()
    def _teacher_forced(self, model) -> Dict[str, List]:
        """Per example: next-token argmax and NLL over the reference response tokens."""
        argmaxes, nll, n_tokens = [], [], []
        for ex in self._examples:
            msgs = self._prompt(ex) + [Message(role="assistant", content=ex["response"])]
            tokens, mask = self._tokenizer.tokenize_messages(msgs)
            x = torch.tensor([tokens], device=self._device)
            logits = model(x)[0, :-1].float()
            target = x[0, 1:]
            resp = ~torch.tensor(mask[1:], dtype=torch.bool, device=self._device)
            logp = torch.log_softmax(logits[resp], -1).gather(-1, target[resp].unsqueeze(-1)).squeeze(-1)
            argmaxes.append(logits[resp].argmax(-1).cpu())
            nll.append(-logp.sum().item())
            n_tokens.append(int(resp.sum()))
        return {"argmax": argmaxes, "nll": nll, "n_tokens": n_tokens}

    def _load(self, checkpoint_dir: str):
        return smollm2_from_hf(checkpoint_dir, dtype=self._dtype).to(self._device)

    # ------------------------------------------------------------------ scoring

    def _answer_scores(self, outputs: List[str]) -> Dict[str, Any]:
        refs = [ex["response"] for ex in self._examples]
        per = rouge(outputs, refs)
        for p, out, ref in zip(per, outputs, refs):
            p["f1"], p["exact_match"] = token_f1(out, ref), exact_match(out, ref)
        overall = {k: float(np.mean([p[k] for p in per])) for k in ANSWER_METRICS}
        by_cat = defaultdict(list)
        for p, ex in zip(per, self._examples):
            by_cat[ex["category"]].append(p)
        categories = {c: {k: float(np.mean([p[k] for p in ps])) for k in ANSWER_METRICS} | {"n": len(ps)}
                      for c, ps in sorted(by_cat.items())}
        per_example = {k: [p[k] for p in per] for k in PAIRED_METRICS if k in per[0]}
        return {"overall": overall, "per_category": categories, "per_example": per_example}

    def evaluate(self) -> Dict[str, Any]:
        teacher = self._load(self._teacher["checkpoint_dir"])
        teacher_out = self._generate(teacher, self._teacher["name"])
        teacher_tf = self._teacher_forced(teacher)
        del teacher
        models = [{"name": self._teacher["name"], "role": "teacher", "outputs": teacher_out, "tf": teacher_tf,
                   "checkpoint_dir": self._teacher["checkpoint_dir"], "records": None}]
        for run in self._runs:
            model = self._load(run["checkpoint_dir"])
            models.append({**run, "role": "student", "outputs": self._generate(model, run["name"]),
                           "tf": self._teacher_forced(model)})
            del model

        results = {"models": [], "examples": len(self._examples)}
        for m in models:
            answers = self._answer_scores(m["outputs"])
            agree_rouge = rouge(m["outputs"], teacher_out)
            tokens = sum(m["tf"]["n_tokens"])
            agree = sum(int((a == b).sum()) for a, b in zip(m["tf"]["argmax"], teacher_tf["argmax"]))
            entry = {
                "name": m["name"], "role": m["role"], "checkpoint_dir": str(m["checkpoint_dir"]),
                **answers["overall"],
                "per_category": answers["per_category"],
                "teacher_rougeL": float(np.mean([r["rougeL"] for r in agree_rouge])),
                "per_example": {**answers["per_example"], "teacher_rougeL": [r["rougeL"] for r in agree_rouge]},
                "teacher_top1_agreement": agree / max(tokens, 1),
                "nll_per_token": sum(m["tf"]["nll"]) / max(tokens, 1),
                "outputs": m["outputs"],
            }
            entry["perplexity"] = math.exp(entry["nll_per_token"])
            if m["records"] is not None:
                tol = float(self._cfg.get("convergence_tolerance", 0.05))
                frac = float(self._cfg.get("variance_last_fraction", 0.25))
                entry["training"] = {k: curve_summary(m["records"], k, tol, frac)
                                     for k in CURVE_KEYS if any(k in r for r in m["records"])}
                entry["curves"] = {k: [[r["step"], r[k]] for r in m["records"] if k in r] for k in CURVE_KEYS}
            results["models"].append(entry)
        results["summary"] = self._summarise(results["models"])
        results["config"] = OmegaConf.to_container(self._cfg, resolve=True)
        results["versions"] = {"python": platform.python_version(), "torch": torch.__version__,
                               "torchtune": __import__("torchtune").__version__}
        return results

    def _summarise(self, entries: List[Dict]) -> Dict[str, Any]:
        """Mean and spread over seeds per name, and relative differences against the baseline."""
        names = [entries[0]["name"]] + self._names
        keys = list(ANSWER_METRICS) + ["teacher_rougeL", "teacher_top1_agreement", "nll_per_token", "perplexity"]
        summary = {}
        for name in names:
            group = [e for e in entries if e["name"] == name]
            stats = {}
            for k in keys:
                vals = [e[k] for e in group]
                stats[k] = {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "n": len(vals)}
            if all("training" in e for e in group):
                for curve in CURVE_KEYS:
                    if not all(curve in e["training"] for e in group):
                        continue
                    for stat in ("final", "convergence_step", "tail_variance"):
                        vals = [e["training"][curve][stat] for e in group]
                        stats[f"{curve}.{stat}"] = {"mean": float(np.mean(vals)), "std": float(np.std(vals)), "n": len(vals)}
                    finals = [e["training"][curve]["final"] for e in group]
                    stats[f"{curve}.seed_variance"] = {"mean": float(np.var(finals)), "std": 0.0, "n": len(finals)}
            summary[name] = stats
        base = summary[self._baseline]
        for name in self._names:
            if name == self._baseline:
                continue
            summary[name]["relative_to_" + self._baseline] = {
                k: relative_difference(v["mean"], base[k]["mean"]) for k, v in summary[name].items()
                if k in base and isinstance(v, dict) and "mean" in v
            }
            summary[name]["paired_vs_" + self._baseline] = {
                k: paired_bootstrap(self._per_prompt(entries, name, k), self._per_prompt(entries, self._baseline, k),
                                    seed=int(self._cfg.get("seed", 0)))
                for k in PAIRED_METRICS
            }
        return summary

    @staticmethod
    def _per_prompt(entries: List[Dict], name: str, key: str) -> List[float]:
        """Per-prompt score of ``name``, averaged over its seeds."""
        return np.mean([e["per_example"][key] for e in entries if e["name"] == name], axis=0).tolist()

    # ------------------------------------------------------------------ outputs

    def write(self, results: Dict[str, Any]) -> None:
        self._output_dir.mkdir(parents=True, exist_ok=True)
        (self._output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        self._plots(results)
        (self._output_dir / "report.md").write_text(render_report(results, self._baseline))
        log.info(f"Wrote report.md, results.json and plots to {self._output_dir}")

    def _plots(self, results: Dict[str, Any]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        students = [m for m in results["models"] if "curves" in m]
        if students:
            fig, axes = plt.subplots(1, 3, figsize=(15, 4))
            colors = {n: f"C{i}" for i, n in enumerate(dict.fromkeys(m["name"] for m in students))}
            for ax, key in zip(axes, CURVE_KEYS):
                for m in students:
                    pts = np.array(m["curves"].get(key, []))
                    if len(pts):
                        ax.plot(pts[:, 0], pts[:, 1], color=colors[m["name"]], alpha=0.8, label=m["name"])
                ax.set_title(key)
                ax.set_xlabel("step")
                handles, labels = ax.get_legend_handles_labels()
                ax.legend(dict(zip(labels, handles)).values(), dict(zip(labels, handles)).keys())
            fig.tight_layout()
            fig.savefig(self._output_dir / "loss_curves.png", dpi=120)
            plt.close(fig)
        summary = results["summary"]
        names = list(summary)
        metrics = ["rouge1", "rouge2", "rougeL", "f1", "teacher_rougeL", "teacher_top1_agreement"]
        fig, ax = plt.subplots(figsize=(12, 4))
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            means = [summary[name][k]["mean"] for k in metrics]
            stds = [summary[name][k]["std"] for k in metrics]
            ax.bar(np.arange(len(metrics)) + i * width, means, width, yerr=stds, capsize=3, label=name)
        ax.set_xticks(np.arange(len(metrics)) + width * (len(names) - 1) / 2, metrics)
        ax.legend()
        ax.set_title("answer quality and agreement with the teacher (error bars: std over seeds)")
        fig.tight_layout()
        fig.savefig(self._output_dir / "metrics.png", dpi=120)
        plt.close(fig)


def _round_robin_by_category(examples: List[Dict[str, str]], n: int) -> List[Dict[str, str]]:
    """The first ``n`` examples taken in turn from each category (in file order), so a
    subset of a category-sorted file still covers every category."""
    groups: Dict[str, List] = defaultdict(list)
    for ex in examples:
        groups[ex["category"]].append(ex)
    picked, queues = [], [list(g) for g in groups.values()]
    while len(picked) < n and any(queues):
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop(0))
    return picked


def _fmt(stat: Dict[str, float]) -> str:
    if stat["n"] > 1:
        return f"{stat['mean']:.4g} ± {stat['std']:.2g}"
    return f"{stat['mean']:.4g}"


def render_report(results: Dict[str, Any], baseline: str) -> str:
    """The markdown report; every number comes from ``results`` (results.json)."""
    summary = results["summary"]
    names = list(summary)
    rows = [
        ("ROUGE-1", "rouge1"), ("ROUGE-2", "rouge2"), ("ROUGE-L", "rougeL"), ("token F1", "f1"),
        ("exact match", "exact_match"), ("ROUGE-L vs teacher output", "teacher_rougeL"),
        ("next-token top-1 agreement with teacher", "teacher_top1_agreement"),
        ("reference NLL / token", "nll_per_token"), ("reference perplexity", "perplexity"),
        ("final total loss", "loss.final"), ("final CE", "class_loss.final"), ("final KD divergence", "kd_loss.final"),
        ("steps to within 5% of final loss (smoothed)", "loss.convergence_step"),
        ("loss variance, last 25% of steps", "loss.tail_variance"),
        ("final-loss variance across seeds", "loss.seed_variance"),
        ("steps to within 5% of final CE", "class_loss.convergence_step"),
        ("CE variance, last 25% of steps", "class_loss.tail_variance"),
        ("KD divergence variance, last 25% of steps", "kd_loss.tail_variance"),
    ]
    others = [n for n in names[1:] if n != baseline]
    header = "| metric | " + " | ".join(names) + "".join(f" | {n} vs {baseline}" for n in others) + " |"
    lines = [
        "# Distillation report",
        "",
        f"{results['examples']} eval examples; greedy decoding. Seeds per student: "
        + ", ".join(f"{n} {summary[n]['rouge1']['n']}" for n in names[1:]) + ".",
        "Mean ± std over seeds where a name has several runs. Relative difference = (value - "
        f"{baseline}) / {baseline}. Loss values are true divergences (JSD is bounded by ln 2, KL is not), "
        "so the CE row is the like-for-like comparison of training losses.",
        "",
        header,
        "|" + "---|" * (len(names) + 1 + len(others)),
    ]
    for label, key in rows:
        if not any(key in summary[n] for n in names):
            continue
        cells = [(_fmt(summary[n][key]) if key in summary[n] else "–") for n in names]
        for n in others:
            rel = summary[n].get(f"relative_to_{baseline}", {}).get(key)
            cells.append(f"{rel:+.1%}" if rel is not None else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    labels = dict((key, label) for label, key in rows)
    for n in others:
        paired = summary[n].get(f"paired_vs_{baseline}")
        if not paired:
            continue
        lines += ["", f"## {n} vs {baseline}, paired by prompt", "",
                  f"Difference of per-prompt means ({n} - {baseline}; each prompt's score averaged over a "
                  "name's seeds) with a 95% percentile-bootstrap interval over prompts; it reflects prompt "
                  "sampling, not seed variance (see ± above).", "",
                  "| metric | difference | 95% interval | share of resamples ≤ 0 |", "|---|---|---|---|"]
        for key, p in paired.items():
            lines.append(f"| {labels.get(key, key)} | {p['diff']:+.4f} | [{p['low']:+.4f}, {p['high']:+.4f}] | "
                         f"{p['p_not_above_zero']:.3f} |")
    lines += ["", "## Per category (ROUGE-L / token F1, first run of each name)", ""]
    cats = sorted({c for m in results["models"] for c in m["per_category"]})
    lines.append("| category | n | " + " | ".join(names) + " |")
    lines.append("|" + "---|" * (len(names) + 2))
    first = {}
    for m in results["models"]:
        first.setdefault(m["name"], m)
    for c in cats:
        n = next(first[x]["per_category"][c]["n"] for x in names if c in first[x]["per_category"])
        cells = [f"{first[x]['per_category'][c]['rougeL']:.3f} / {first[x]['per_category'][c]['f1']:.3f}"
                 if c in first[x]["per_category"] else "–" for x in names]
        lines.append(f"| {c} | {n} | " + " | ".join(cells) + " |")
    lines += ["", "![loss curves](loss_curves.png)", "", "![metrics](metrics.png)", ""]
    return "\n".join(lines)


@config.parse
def recipe_main(cfg: DictConfig) -> None:
    config.log_config(recipe_name="EvalDistillRecipe", cfg=cfg)
    recipe = EvalDistillRecipe(cfg)
    recipe.setup()
    recipe.write(recipe.evaluate())


if __name__ == "__main__":
    sys.exit(recipe_main())
