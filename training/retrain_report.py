"""What a retraining run tells people: :class:`RetrainOutcome` (and its summary, printed by
``finsent retrain --now``) and the artefacts of each run in
``<model_registry_dir>/runs/run-<id>/``: ``metrics.json``, the training-curve PNG and the
confusion matrices of both models. Plots are for people: :mod:`training.retrain_run`
logs their failure and keeps the run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.records import SENTIMENTS, TOPICS
from training.evaluate import plot_confusion
from training.retrain_gate import HEADS


@dataclass
class RetrainOutcome:
    """What one run did: status is 'promoted', 'rejected' or 'failed'."""

    run_id: int
    status: str
    reason: str
    challenger_version: str | None = None
    champion_version: str | None = None
    challenger_metrics: dict[str, Any] | None = None
    champion_metrics: dict[str, Any] | None = None
    wall_s: float = 0.0
    run_dir: Path | None = None

    def summary(self) -> str:
        """A few lines for people: the decision, why, and both models' headline figures."""
        lines = [
            f"retraining run {self.run_id}: {self.status.upper()} ({self.wall_s:.1f} s)",
            f"  why: {self.reason}",
        ]
        for name, version, metrics in (
            ("challenger", self.challenger_version, self.challenger_metrics),
            ("champion", self.champion_version, self.champion_metrics),
        ):
            if version is None and metrics is None:
                continue
            figures = (
                ", ".join(
                    f"{head} macro-F1 {metrics[head]['macro_f1']:.4f} acc {metrics[head]['accuracy']:.4f}"
                    for head in HEADS
                    if metrics and head in metrics
                )
                or "no metrics"
            )
            lines.append(f"  {name} {version or '-'}: {figures}")
        if self.run_dir is not None:
            lines.append(f"  artefacts: {self.run_dir}")
        if self.status != "promoted":
            lines.append(
                f"  the champion ({self.champion_version or 'shipped model'}) keeps serving"
            )
        return "\n".join(lines)


def read_history(model_dir: Path) -> list[dict[str, Any]]:
    """Per-epoch history the training code left in the model directory, if any."""
    for name in ("history.json", "metrics.json"):
        path = model_dir / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            continue
        if isinstance(data, list):
            return data
        if isinstance(data, dict):
            for holder in (data, data.get("training") or {}):
                if isinstance(holder, dict) and isinstance(holder.get("history"), list):
                    return list(holder["history"])
    return []


def plot_training_curve(history: list[dict[str, Any]], path: Path) -> bool:
    """Loss and dev macro-F1 per epoch as a PNG; False when there is no history to plot."""
    if not history:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(epochs, [h.get("loss", float("nan")) for h in history], marker="o")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss (smoothed)")
    for head in HEADS:
        key = f"{head}_macro_f1"
        if any(key in h for h in history):
            ax2.plot(epochs, [h.get(key, float("nan")) for h in history], marker="o", label=head)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("dev macro-F1")
    ax2.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_artefacts(run_dir: Path, payload: dict[str, Any], history: list[dict[str, Any]]) -> None:
    """``metrics.json`` (``payload``), the training curve and both models' confusion matrices."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").write_text(json.dumps(payload, indent=2, default=str))
    plot_training_curve(history, run_dir / "training_curve.png")
    for who in ("challenger", "champion"):
        metrics = payload.get(f"{who}_metrics") or {}
        for head, names in (("sentiment", SENTIMENTS), ("topic", TOPICS)):
            if head in metrics and "confusion" in metrics[head]:
                plot_confusion(
                    metrics[head],
                    names,
                    f"{who} {payload.get(f'{who}_version')} {head}",
                    run_dir / f"confusion_{who}_{head}.png",
                )
