import numpy as np
import pytest

from jsd_loss.eval import per_prompt, summarise


def test_statistics_over_seeds_and_against_the_baseline(entries):
    summary = summarise(entries, baseline="kl", seed=0)
    assert list(summary) == ["teacher", "jsd", "kl"]
    jsd = [e for e in entries if e["name"] == "jsd"]
    kl = next(e for e in entries if e["name"] == "kl")
    assert summary["jsd"]["f1"] == {"mean": pytest.approx(np.mean([e["f1"] for e in jsd])),
                                    "std": pytest.approx(np.std([e["f1"] for e in jsd])), "n": 2}
    assert summary["jsd"]["loss.final"]["mean"] == pytest.approx((1.5 + 1.7) / 2)
    assert summary["jsd"]["loss.seed_variance"]["mean"] == pytest.approx(np.var([1.5, 1.7]))
    assert summary["kl"]["loss.seed_variance"]["mean"] == 0.0 and summary["kl"]["rougeL"]["n"] == 1
    assert "loss.final" not in summary["teacher"]  # no training log
    rel = summary["jsd"]["relative_to_kl"]
    assert rel["nll_per_token"] == pytest.approx((summary["jsd"]["nll_per_token"]["mean"] - kl["nll_per_token"])
                                                 / kl["nll_per_token"])
    assert "relative_to_kl" not in summary["kl"] and "relative_to_kl" not in summary["teacher"]
    paired = summary["jsd"]["paired_vs_kl"]
    assert set(paired) == {"rougeL", "f1", "teacher_rougeL"}
    diff = np.mean(np.mean([e["per_example"]["f1"] for e in jsd], axis=0) - np.array(kl["per_example"]["f1"]))
    assert paired["f1"]["diff"] == pytest.approx(diff) and paired["f1"]["n"] == 5
    assert paired["f1"]["low"] <= paired["f1"]["diff"] <= paired["f1"]["high"]
    assert summarise(entries, baseline="kl", seed=0) == summary  # the bootstrap is seeded


def test_per_prompt_averages_seeds(entries):
    jsd = [e for e in entries if e["name"] == "jsd"]
    assert per_prompt(entries, "jsd", "rougeL") == pytest.approx(
        [(a + b) / 2 for a, b in zip(jsd[0]["per_example"]["rougeL"], jsd[1]["per_example"]["rougeL"])])


def test_reference_models_and_shares_of_the_teacher(entries):
    reference = dict(next(e for e in entries if e["name"] == "kl"), name="untuned", role="reference")
    summary = summarise(entries[:1] + [reference] + entries[1:], baseline="kl", seed=0)
    assert list(summary) == ["teacher", "untuned", "jsd", "kl"]
    assert "paired_vs_kl" not in summary["untuned"] and "relative_to_kl" not in summary["untuned"]
    jsd = [e for e in entries if e["name"] == "jsd"]
    # the teacher's outputs are the references (ROUGE-L and F1 1.0) and its NLL 5.0 / 8 tokens, by hand
    assert summary["teacher"]["rougeL"]["mean"] == pytest.approx(1.0)
    assert summary["jsd"]["vs_teacher"]["rougeL_share"] == pytest.approx(np.mean([e["rougeL"] for e in jsd]))
    assert summary["jsd"]["vs_teacher"]["nll_gap"] == pytest.approx(np.mean([e["nll_per_token"] for e in jsd]) - 5 / 8)
    assert summary["untuned"]["vs_teacher"]["f1_share"] == pytest.approx(reference["f1"])
    assert "vs_teacher" not in summary["teacher"]
