"""Temperature scaling of both heads (Guo et al., 2017) and the expected calibration error.

Alerts and the console read the probabilities (``p_bearish``), not only the argmax, so an
overconfident head ("losses narrower than feared" -> bearish 0.99) misleads them. One
temperature per head, fitted on the dev split by minimising the negative log-likelihood,
divides the head's logits; it never changes the argmax. The temperature is folded into the
head's weights before export, so serving needs no change.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

ECE_BINS = 15


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    logp = _log_softmax(logits.astype(np.float64) / temperature)
    return float(-logp[np.arange(len(labels)), labels].mean())


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> float:
    """ECE: the confidence-weighted gap between confidence and accuracy over equal-width
    confidence bins (top-label)."""
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            total += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(total)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature in [0.05, 20] minimising the NLL: a log-spaced grid, then a golden-
    section refinement around the best grid point (the NLL is unimodal in log T)."""
    if len(labels) == 0:
        return 1.0
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 61))
    losses = [nll(logits, labels, t) for t in grid]
    k = int(np.argmin(losses))
    lo, hi = np.log(grid[max(k - 1, 0)]), np.log(grid[min(k + 1, len(grid) - 1)])
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    for _ in range(40):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if nll(logits, labels, float(np.exp(a))) < nll(logits, labels, float(np.exp(b))):
            hi = b
        else:
            lo = a
    return float(np.exp((lo + hi) / 2.0))


def _softmax(logits: np.ndarray) -> np.ndarray:
    return np.exp(_log_softmax(logits.astype(np.float64)))


def calibration_report(
    logits: np.ndarray, labels: np.ndarray, temperature: float
) -> dict[str, Any]:
    """ECE and NLL before and after dividing ``logits`` by ``temperature``."""
    return {
        "n": int(len(labels)),
        "ece_before": round(expected_calibration_error(_softmax(logits), labels), 4),
        "ece_after": round(expected_calibration_error(_softmax(logits / temperature), labels), 4),
        "nll_before": round(nll(logits, labels), 4),
        "nll_after": round(nll(logits, labels, temperature), 4),
    }


def calibrate_model(model: Any, splits: dict[str, Sequence[Any]]) -> dict[str, Any]:
    """Fit one temperature per head on the labelled rows of every split together, fold it
    into the head (``weight`` and ``bias`` divided by T: the argmax is unchanged) and return
    the temperatures with ECE/NLL before and after, per head and split.

    ``splits`` maps a name ("dev", "news_dev") to :class:`training.data.Example` lists (a
    head's ``IGNORE`` rows are skipped)."""
    import torch

    from training.data import IGNORE
    from training.train import predict

    per_head: dict[str, list[tuple[str, np.ndarray, np.ndarray]]] = {"topic": [], "sentiment": []}
    for name, examples in splits.items():
        if not examples:
            continue
        topic, sentiment, _ = predict(model, examples)
        for head, logits in (("topic", topic), ("sentiment", sentiment)):
            gold = np.array([getattr(e, head) for e in examples])
            keep = gold != IGNORE
            if keep.any():
                per_head[head].append((name, logits[keep], gold[keep]))
    report: dict[str, Any] = {
        "method": "temperature scaling, NLL on the dev splits",
        "bins": ECE_BINS,
    }
    for head, parts in per_head.items():
        if not parts:
            continue
        t = fit_temperature(
            np.concatenate([lg for _, lg, _ in parts]), np.concatenate([lb for _, _, lb in parts])
        )
        layer = getattr(model, f"{head}_head")
        with torch.no_grad():
            layer.weight.div_(t)
            layer.bias.div_(t)
        report[head] = {
            "temperature": round(t, 4),
            "fitted_on": [name for name, _, _ in parts],
            **{name: calibration_report(lg, lb, t) for name, lg, lb in parts},
        }
    return report
