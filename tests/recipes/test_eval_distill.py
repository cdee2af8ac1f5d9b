"""The eval recipe end to end on tiny random models and a 5-row eval set."""

import json

import pytest
from omegaconf import OmegaConf

from jsd_loss.recipes.eval_distill import EvalDistillRecipe
from tests.conftest import EVAL, REPO, tune_run, write_tiny_hf_dir
from tests.jsd_loss.eval.conftest import ROWS


def _log(path, losses):
    path.mkdir(parents=True)
    with open(path / "metrics.jsonl", "w") as f:
        for step, loss in enumerate(losses, 1):
            f.write(json.dumps({"step": step, "loss": loss, "class_loss": 2 * loss, "kd_loss": loss / 2}) + "\n")


@pytest.fixture(scope="module")
def setup_dirs(tmp_path_factory, teacher_dir):
    root = tmp_path_factory.mktemp("eval")
    teacher = write_tiny_hf_dir(root / "teacher", seed=1, tokenizer_from=teacher_dir, initializer_range=0.5)
    students = [write_tiny_hf_dir(root / f"s{i}", seed=10 + i, tokenizer_from=teacher_dir) for i in range(3)]
    data = root / "eval.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    _log(root / "log_jsd0", [4.0, 3.0, 2.0, 1.5, 1.4, 1.41, 1.39, 1.4])
    _log(root / "log_jsd1", [4.0, 3.5, 2.5, 1.6, 1.5, 1.45, 1.44, 1.45])
    _log(root / "log_kl", [5.0, 4.0, 3.0, 2.5, 2.0, 1.9, 1.8, 1.8])
    return root, teacher, students, data


def _config(root, teacher, students, data, out, **overrides):
    cfg = OmegaConf.load(REPO / "configs" / "smollm2" / "eval_distill.yaml")
    cfg.output_dir = str(out)
    cfg.teacher.checkpoint_dir = str(teacher)
    cfg.tokenizer.path = str(teacher / "tokenizer.json")
    cfg.students = [
        {"name": "jsd", "checkpoint_dir": str(students[0]), "log_dir": str(root / "log_jsd0")},
        {"name": "jsd", "checkpoint_dir": str(students[1]), "log_dir": str(root / "log_jsd1")},
        {"name": "kl", "checkpoint_dir": str(students[2]), "log_dir": str(root / "log_kl")},
        {"name": "self", "checkpoint_dir": str(teacher)},
        {"name": "self_int8", "checkpoint_dir": str(teacher), "quantize": "int8_weight_only"},
    ]
    cfg.references = [{"name": "untuned", "checkpoint_dir": str(students[2])}]
    cfg.dataset.source = str(data)
    cfg.dataset.split = None
    cfg.dataset.max_rows = None
    cfg.generation.max_new_tokens = 6
    cfg.generation.batch_size = 2
    for k, v in overrides.items():
        OmegaConf.update(cfg, "students" if k == "student_list" else k, v, merge=False)
    path = out.parent / f"{out.name}.yaml"
    OmegaConf.save(cfg, path)
    return path


def test_report_numbers_come_from_results_json(tmp_path, setup_dirs):
    root, teacher, students, data = setup_dirs
    out = tmp_path / "report"
    tune_run(_config(root, teacher, students, data, out), recipe=EVAL)
    results = json.loads((out / "results.json").read_text())
    assert results["examples"] == 5
    assert {p.name for p in out.iterdir()} >= {"report.md", "results.json", "loss_curves.png", "metrics.png"}

    by_name = {}
    for m in results["models"]:
        by_name.setdefault(m["name"], []).append(m)
    # the teacher against itself: its own outputs and argmaxes agree perfectly
    for name in ("teacher", "self"):
        assert by_name[name][0]["teacher_rougeL"] == pytest.approx(1.0)
        assert by_name[name][0]["teacher_top1_agreement"] == pytest.approx(1.0)
    assert by_name["self"][0]["outputs"] == by_name["teacher"][0]["outputs"]

    # recompute the summary from the per-model numbers in results.json
    import numpy as np

    jsd = by_name["jsd"]
    summary = results["summary"]
    assert summary["jsd"]["rougeL"]["mean"] == pytest.approx(np.mean([m["rougeL"] for m in jsd]))
    assert summary["jsd"]["rougeL"]["std"] == pytest.approx(np.std([m["rougeL"] for m in jsd]))
    finals = [m["training"]["loss"]["final"] for m in jsd]
    assert summary["jsd"]["loss.seed_variance"]["mean"] == pytest.approx(np.var(finals))
    rel = (np.mean(finals) - by_name["kl"][0]["training"]["loss"]["final"]) / by_name["kl"][0]["training"]["loss"]["final"]
    assert summary["jsd"]["relative_to_kl"]["loss.final"] == pytest.approx(rel)
    # hand check of the log statistics: kl's final (mean of last 5% -> last point) is 1.8
    assert by_name["kl"][0]["training"]["loss"]["final"] == pytest.approx(1.8)

    # paired bootstrap: the observed difference of per-prompt means, seeds averaged per prompt
    for m in results["models"]:
        assert np.mean(m["per_example"]["rougeL"]) == pytest.approx(m["rougeL"])
    jsd_per_prompt = np.mean([m["per_example"]["f1"] for m in jsd], axis=0)
    paired = summary["jsd"]["paired_vs_kl"]["f1"]
    assert paired["diff"] == pytest.approx(np.mean(jsd_per_prompt - np.array(by_name["kl"][0]["per_example"]["f1"])))
    assert paired["low"] <= paired["diff"] <= paired["high"] and paired["n"] == 5
    self_vs_kl = summary["self"]["paired_vs_kl"]["teacher_rougeL"]
    assert self_vs_kl["diff"] == pytest.approx(1.0 - by_name["kl"][0]["teacher_rougeL"])

    # the teacher scored int8 weight-only: marked, timed, and close to itself in fp32
    int8 = by_name["self_int8"][0]
    assert int8["quantize"] == "int8_weight_only" and "quantize" not in by_name["self"][0]
    assert int8["generation_tokens_per_second"] > 0 and by_name["self"][0]["generation_tokens_per_second"] > 0
    assert int8["teacher_top1_agreement"] > 0.5
    assert abs(int8["nll_per_token"] - by_name["self"][0]["nll_per_token"]) < 0.05 * by_name["self"][0]["nll_per_token"]

    # a reference model is scored like the teacher, without training curves or paired comparisons
    untuned = by_name["untuned"][0]
    assert untuned["role"] == "reference" and "training" not in untuned
    assert untuned["outputs"] == by_name["kl"][0]["outputs"]  # the same weights as the kl student
    assert "paired_vs_kl" not in summary["untuned"]
    gap = np.mean([m["nll_per_token"] for m in jsd]) - by_name["teacher"][0]["nll_per_token"]
    assert summary["jsd"]["vs_teacher"]["nll_gap"] == pytest.approx(gap)

    # and every number in the report's main table is one of those
    report = (out / "report.md").read_text()
    row = next(l for l in report.splitlines() if l.startswith("| ROUGE-L |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == f"{summary['teacher']['rougeL']['mean']:.4g}"
    assert cells[2] == f"{summary['untuned']['rougeL']['mean']:.4g}"
    assert cells[3] == f"{summary['jsd']['rougeL']['mean']:.4g} ± {summary['jsd']['rougeL']['std']:.2g}"
    assert cells[4] == f"{summary['kl']['rougeL']['mean']:.4g}"
    gap_row = next(l for l in report.splitlines() if l.startswith("| reference NLL minus the teacher's (nats) |"))
    assert [c.strip() for c in gap_row.strip("|").split("|")][3] == f"{gap:+.3f}"
    loss_row = next(l for l in report.splitlines() if l.startswith("| final total loss |"))
    assert f"{summary['jsd']['relative_to_kl']['loss.final']:+.1%}" in loss_row
    section = report.split("## jsd vs kl, paired by prompt")[1].split("##")[0]
    f1_row = next(l for l in section.splitlines() if l.startswith("| token F1 |"))
    assert f"{paired['diff']:+.4f} | [{paired['low']:+.4f}, {paired['high']:+.4f}]" in f1_row


def test_bad_inputs_fail_before_generation(tmp_path, setup_dirs):
    root, teacher, students, data = setup_dirs
    other = write_tiny_hf_dir(tmp_path / "other", vocab_size=49153)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    (tmp_path / "nolog").mkdir()
    cases = [
        ({"student_list": [{"name": "x", "checkpoint_dir": str(other)}]}, "has vocab_size 49153"),
        ({"dataset.source": str(empty)}, "holds no rows"),
        ({"student_list": [{"name": "x", "checkpoint_dir": str(students[0]), "log_dir": str(tmp_path / "nolog")}]},
         "no training metrics"),
        ({"dataset.response_field": "answer"}, "lacks the field 'answer'"),
        ({"dataset.respones_field": "answer"}, "dataset: unknown keys ['respones_field']"),
        ({"student_list": [{"name": "x", "checkpoint_dir": str(students[0]), "quantize": "int4"}]},
         "'x': unknown quantize 'int4'"),
        ({"references": [{"name": "jsd", "checkpoint_dir": str(teacher)}]}, "model names ['jsd'] are used twice"),
        ({"references": [{"name": "r", "checkpoint_dir": str(other)}]}, "reference 'r'"),
    ]
    # the first through `tune run` (the message reaches the user), the others in this process (each
    # `tune run` costs ~5 s of start-up): the recipe's setup must raise
    for i, (overrides, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        cfg = _config(root, teacher, students, data, out, **overrides)
        if i == 0:
            proc = tune_run(cfg, recipe=EVAL, check=False)
            assert proc.returncode != 0 and message in proc.stderr + proc.stdout, (message, proc.stderr[-1500:])
        else:
            with pytest.raises((ValueError, FileNotFoundError)) as raised:
                EvalDistillRecipe(OmegaConf.load(cfg)).setup()
            assert message in str(raised.value), (message, str(raised.value))
        assert not out.exists()


def test_score_cache_reuses_each_models_results_and_scores_only_new_models(tmp_path, setup_dirs, monkeypatch):
    root, teacher, students, data = setup_dirs
    jsd0 = {"name": "jsd", "checkpoint_dir": str(students[0]), "log_dir": str(root / "log_jsd0")}
    kl = {"name": "kl", "checkpoint_dir": str(students[2]), "log_dir": str(root / "log_kl")}
    jsd1 = {"name": "jsd", "checkpoint_dir": str(students[1]), "log_dir": str(root / "log_jsd1")}
    scores = tmp_path / "scores"

    def evaluate(student_list, **overrides):
        cfg = _config(root, teacher, students, data, tmp_path / "out", student_list=student_list,
                      **{"score_cache": str(scores), **overrides})
        recipe = EvalDistillRecipe(OmegaConf.load(cfg))
        recipe.setup()
        return recipe.evaluate()

    scored = []
    real_score = EvalDistillRecipe._score
    monkeypatch.setattr(EvalDistillRecipe, "_score", lambda self, run: scored.append(run["checkpoint_dir"])
                        or real_score(self, run))
    first = evaluate([jsd0, kl])
    # the reference "untuned" has the kl student's weights: within one eval too, they run once
    assert scored == [str(teacher), str(students[2]), str(students[0])]
    scored.clear()
    # a second seed: only its model runs
    second = evaluate([jsd0, kl, jsd1])
    assert scored == [str(students[1])]
    by_dir = {m["checkpoint_dir"]: m for m in first["models"]}
    for m in second["models"]:
        if m["checkpoint_dir"] in by_dir and m["name"] == by_dir[m["checkpoint_dir"]]["name"]:
            assert m["outputs"] == by_dir[m["checkpoint_dir"]]["outputs"]
            assert m["nll_per_token"] == by_dir[m["checkpoint_dir"]]["nll_per_token"]
    # and the same run without the cache gives the same scores
    scored.clear()
    fresh = evaluate([jsd0, kl, jsd1], score_cache=None)
    assert len(scored) == 5  # teacher, reference, three students
    for a, b in zip(second["models"], fresh["models"]):
        assert a["outputs"] == b["outputs"] and a["nll_per_token"] == pytest.approx(b["nll_per_token"], abs=0)
        assert a["teacher_top1_agreement"] == b["teacher_top1_agreement"]
    # a changed setting is a different key: everything runs again
    scored.clear()
    evaluate([jsd0, kl], **{"generation.max_new_tokens": 5})
    assert len(scored) == 3
