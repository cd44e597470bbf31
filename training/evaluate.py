"""Classification metrics and the evaluation report written beside a model.

Plain numpy (no sklearn at serving-adjacent call sites): accuracy, macro-F1, per-class
precision / recall / F1 / support and the confusion matrix (rows = truth, columns =
prediction). Classes absent from both truth and prediction are left out of the macro mean,
as sklearn does with ``labels`` unset.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def classification_report(
    y_true: Sequence[int], y_pred: Sequence[int], names: Sequence[str]
) -> dict[str, Any]:
    """{"accuracy", "macro_f1", "n", "precision": {name: p}, "recall": {...}, "f1": {...},
    "support": {...}, "confusion": [[...]]}."""
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    k = len(names)
    cm = np.zeros((k, k), dtype=np.int64)
    if t.size:
        np.add.at(cm, (t, p), 1)
    tp = np.diag(cm).astype(np.float64)
    pred_n = cm.sum(axis=0).astype(np.float64)
    true_n = cm.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, pred_n, out=np.zeros(k), where=pred_n > 0)
    recall = np.divide(tp, true_n, out=np.zeros(k), where=true_n > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    present = (true_n + pred_n) > 0
    return {
        "n": int(t.size),
        "accuracy": float(tp.sum() / t.size) if t.size else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "precision": {names[i]: round(float(precision[i]), 4) for i in range(k)},
        "recall": {names[i]: round(float(recall[i]), 4) for i in range(k)},
        "f1": {names[i]: round(float(f1[i]), 4) for i in range(k)},
        "support": {names[i]: int(true_n[i]) for i in range(k)},
        "confusion": cm.tolist(),
    }


def plot_confusion(report: dict[str, Any], names: Sequence[str], title: str, path: Path) -> None:
    """A row-normalised confusion-matrix PNG (counts annotated) for the model card."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(report["confusion"], dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    size = max(4.0, 0.45 * len(names) + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), labels=list(names), rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), labels=list(names), fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(
        f"{title}  acc {report['accuracy']:.3f}  macro-F1 {report['macro_f1']:.3f}", fontsize=9
    )
    for i in range(len(names)):
        for j in range(len(names)):
            if cm[i, j]:
                ax.text(
                    j,
                    i,
                    str(int(cm[i, j])),
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
