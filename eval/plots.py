"""Precision-recall curves, one PNG per class (matplotlib, Agg backend: no display needed).

plot_pr_curves(result, classes, "runs/eval/pr")  # -> [runs/eval/pr/001_n02672831.png, ...]
"""

from __future__ import annotations

from pathlib import Path

from detector.core.structures import ClassList
from eval.ilsvrc_ap import EvalResult


def plot_pr_curves(
    result: EvalResult, classes: ClassList | None, out_dir: str | Path
) -> list[Path]:
    """One PNG per class with positives or detections; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")  # before pyplot: headless machines, CI
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for c in range(1, result.num_classes + 1):
        if result.npos[c - 1] == 0 and result.num_dets[c - 1] == 0:
            continue
        wnid = classes.wnids[c - 1] if classes and c <= len(classes) else str(c)
        name = classes.names[c - 1] if classes and c <= len(classes) else str(c)
        fig, ax = plt.subplots(figsize=(4, 4), dpi=80)
        ax.step(result.recall[c - 1], result.precision[c - 1], where="post")
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision")
        ax.set_title(f"{name} ({wnid}): AP {100 * result.ap[c - 1]:.1f}", fontsize=9)
        ax.grid(alpha=0.3)
        path = out_dir / f"{c:03d}_{_safe(wnid)}.png"
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in text)
