from jsd_loss.eval import fmt_stat, render_report, summarise


def _cells(report, label):
    row = next(l for l in report.splitlines() if l.startswith(f"| {label} |"))
    return [c.strip() for c in row.strip("|").split("|")][1:]


def test_every_number_comes_from_the_results(entries):
    results = {"models": entries, "examples": 5, "summary": summarise(entries, baseline="kl")}
    summary = results["summary"]
    report = render_report(results, "kl")
    assert report.startswith("# Distillation report")
    assert "5 eval examples; greedy decoding. Seeds per student: jsd 2, kl 1." in report
    assert "| metric | teacher | jsd | kl | jsd vs kl |" in report
    assert _cells(report, "token F1") == [
        fmt_stat(summary["teacher"]["f1"]), f"{summary['jsd']['f1']['mean']:.4g} ± {summary['jsd']['f1']['std']:.2g}",
        f"{summary['kl']['f1']['mean']:.4g}", f"{summary['jsd']['relative_to_kl']['f1']:+.1%}"]
    assert _cells(report, "final total loss") == ["–", fmt_stat(summary["jsd"]["loss.final"]),
                                                  fmt_stat(summary["kl"]["loss.final"]),
                                                  f"{summary['jsd']['relative_to_kl']['loss.final']:+.1%}"]
    p = summary["jsd"]["paired_vs_kl"]["rougeL"]
    section = report.split("## jsd vs kl, paired by prompt")[1].split("##")[0]
    assert _cells(section, "ROUGE-L") == [f"{p['diff']:+.4f}", f"[{p['low']:+.4f}, {p['high']:+.4f}]",
                                          f"{p['p_not_above_zero']:.3f}"]
    # per category: the mean over jsd's two seeds, by hand from the fixture's outputs
    jsd_runs = [entries[1]["per_category"]["open_qa"], entries[2]["per_category"]["open_qa"]]
    assert _cells(report.split("## Per category: ROUGE-L")[1], "open_qa")[:3] == [
        "3", "1.000 / 1.000", f"{(jsd_runs[0]['rougeL'] + jsd_runs[1]['rougeL']) / 2:.3f} / "
                              f"{(jsd_runs[0]['f1'] + jsd_runs[1]['f1']) / 2:.3f}"]
    # open_qa NLL: teacher (1 + 0.5 + 1) / 5, jsd seeds 5/5 and 4.5/5, kl 6/5
    assert _cells(report.split("## Per category: reference NLL")[1], "open_qa") == [
        "3", "0.500", f"{(1.0 + 0.9) / 2:.3f}", "1.200"]


def test_references_are_scored_but_neither_counted_as_students_nor_compared(entries):
    untuned = {**entries[0], "name": "teacher_untuned", "role": "reference", "checkpoint_dir": "u"}
    with_reference = [entries[0], untuned] + entries[1:]
    report = render_report({"models": with_reference, "examples": 5,
                            "summary": summarise(with_reference, baseline="kl")}, "kl")
    assert "Seeds per student: jsd 2, kl 1." in report
    assert "| metric | teacher | teacher_untuned | jsd | kl | jsd vs kl |" in report
    assert "teacher_untuned vs kl" not in report
    # the reference is the teacher's own scores under another name: its share of the teacher's is 1
    assert _cells(report, "ROUGE-L, share of the teacher's")[:2] == ["–", "100.0%"]
    assert len(_cells(report, "ROUGE-L")) == len(_cells(report, "ROUGE-L, share of the teacher's")) == 5


def test_rows_without_numbers_are_left_out(entries):
    no_logs = [{k: v for k, v in e.items() if k not in ("training", "curves")} for e in entries]
    report = render_report({"models": no_logs, "examples": 5, "summary": summarise(no_logs, baseline="kl")}, "kl")
    assert "| ROUGE-L |" in report and "final total loss" not in report and "steps to within" not in report


def test_fmt_stat():
    assert fmt_stat({"mean": 0.123456, "std": 0.0123, "n": 3}) == "0.1235 ± 0.012"
    assert fmt_stat({"mean": 0.123456, "std": 0.0, "n": 1}) == "0.1235"
