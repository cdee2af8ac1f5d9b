from jsd_loss.eval import summarise, write_plots


def _is_png(path):
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_are_written(tmp_path, entries):
    write_plots({"models": entries, "summary": summarise(entries, baseline="kl")}, tmp_path)
    assert _is_png(tmp_path / "loss_curves.png") and _is_png(tmp_path / "metrics.png")


def test_no_curves_without_training_logs(tmp_path, entries):
    no_logs = [{k: v for k, v in e.items() if k not in ("training", "curves")} for e in entries]
    write_plots({"models": no_logs, "summary": summarise(no_logs, baseline="kl")}, tmp_path)
    assert _is_png(tmp_path / "metrics.png") and not (tmp_path / "loss_curves.png").exists()
