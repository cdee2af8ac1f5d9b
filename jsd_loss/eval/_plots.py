"""The report's figures: training curves of every student run, and the answer-quality and
agreement means per name with their spread over seeds."""

from pathlib import Path
from typing import Any, Dict

import numpy as np

from jsd_loss.eval._scoring import CURVE_KEYS

BAR_METRICS = ["rouge1", "rouge2", "rougeL", "f1", "teacher_rougeL", "teacher_top1_agreement"]


def write_plots(results: Dict[str, Any], output_dir: Path) -> None:
    """``loss_curves.png`` (when any model has training curves) and ``metrics.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output_dir = Path(output_dir)
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
        fig.savefig(output_dir / "loss_curves.png", dpi=120)
        plt.close(fig)
    summary = results["summary"]
    names = list(summary)
    fig, ax = plt.subplots(figsize=(12, 4))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        means = [summary[name][k]["mean"] for k in BAR_METRICS]
        stds = [summary[name][k]["std"] for k in BAR_METRICS]
        ax.bar(np.arange(len(BAR_METRICS)) + i * width, means, width, yerr=stds, capsize=3, label=name)
    ax.set_xticks(np.arange(len(BAR_METRICS)) + width * (len(names) - 1) / 2, BAR_METRICS)
    ax.legend()
    ax.set_title("answer quality and agreement with the teacher (error bars: std over seeds)")
    fig.tight_layout()
    fig.savefig(output_dir / "metrics.png", dpi=120)
    plt.close(fig)
