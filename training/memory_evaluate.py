"""How good is a memory cell? Its exported graph, run over held-out streams, against the
EWMA and CUSUM baselines (:mod:`training.baselines`) tuned on the memory's own training
streams: detection delay at each false-alarm budget, per kind of surge, and the error of
its expected negative rate.

The comparison runs the ONNX graph through onnxruntime, not PyTorch, because that is what
the trends worker serves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from training.baselines import (
    Detector,
    baseline_grid,
    delay_at_false_alarm,
    describe,
    detection_curve,
    input_prior,
    point_dict,
    run_detector,
    surge_delays,
    surge_kinds,
)
from training.memory import OUTPUT_NAMES
from training.memory_train import MemoryTrainConfig, selection_delay
from training.simulate import Stream, stack


def onnx_memory_outputs(path: Path, streams: Sequence[Stream]) -> tuple[np.ndarray, np.ndarray]:
    """Same as :func:`training.memory_train.memory_outputs` through onnxruntime: what the trends worker computes."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feats = stack(streams, "features").astype(np.float32)
    b, t, _ = feats.shape
    h = int(session.get_inputs()[0].shape[1])
    state = np.zeros((b, h), dtype=np.float32)
    surge = np.empty((b, t), dtype=np.float32)
    rate = np.empty((b, t), dtype=np.float32)
    for i in range(t):
        state, out = session.run(
            list(OUTPUT_NAMES), {"state": state, "features": np.ascontiguousarray(feats[:, i])}
        )
        rate[:, i] = out[:, 0]
        surge[:, i] = out[:, 1]
    return surge, rate


def _tune_baselines(
    streams: Sequence[Stream], prior: dict[str, float], fa: float
) -> dict[str, Detector]:
    """Best EWMA and best CUSUM configuration on the *training* streams (the memory's own
    tuning data), judged like the memory: mean delay at ``fa`` false alarms per 1000."""
    best: dict[str, tuple[float, Detector]] = {}
    for det in baseline_grid():
        delay = selection_delay(streams, run_detector(det, streams, prior), fa)
        if det.name not in best or delay < best[det.name][0]:
            best[det.name] = (delay, det)
    return {name: det for name, (_, det) in best.items()}


def compare_detectors(
    train_streams: Sequence[Stream],
    eval_sets: dict[str, Sequence[Stream]],
    memory_scores: dict[str, np.ndarray],
    config: MemoryTrainConfig,
) -> dict:
    """The delay / false-alarm comparison of the memory with the tuned baselines on each
    held-out set. Returns a JSON-able dict with the curves and the table."""
    prior = input_prior(train_streams)
    tuned = _tune_baselines(train_streams, prior, config.selection_false_alarms)
    result: dict = {
        "baselines": {
            name: {"config": asdict(det), "description": describe(det)}
            for name, det in tuned.items()
        },
        "sets": {},
    }
    for set_name, streams in eval_sets.items():
        curves = {"memory": detection_curve(streams, memory_scores[set_name])}
        for name, det in tuned.items():
            curves[name] = detection_curve(streams, run_detector(det, streams, prior))
        table = []
        for fa in config.report_false_alarms:
            row: dict = {"false_alarms_per_1000": fa}
            for name, curve in curves.items():
                row[name] = point_dict(delay_at_false_alarm(curve, fa))
            for name in tuned:
                m, b = row["memory"], row[name]
                row[f"delay_ratio_vs_{name}"] = (
                    m["mean_delay_docs"] / b["mean_delay_docs"]
                    if m and b and b["mean_delay_docs"] > 0
                    else None
                )
            table.append(row)
        breakdown: dict[str, dict[str, float]] = {}
        kinds = surge_kinds(streams)
        for name, curve in curves.items():
            point = delay_at_false_alarm(curve, config.selection_false_alarms)
            if point is None:
                continue
            scores_ = (
                memory_scores[set_name]
                if name == "memory"
                else run_detector(tuned[name], streams, prior)
            )
            delays = surge_delays(streams, scores_, point.threshold)
            breakdown[name] = {
                kind: float(delays[mask].mean()) for kind, mask in kinds.items() if mask.any()
            }
        n_surges = sum(len(s.surges) for s in streams)
        result["sets"][set_name] = {
            "streams": len(streams),
            "documents": int(sum(len(s.labels) for s in streams)),
            "quiet_documents": int(sum(int(s.quiet.sum()) for s in streams)),
            "surges": n_surges,
            "table": table,
            "breakdown_at_selection_false_alarms": breakdown,
            "curves": {name: [asdict(p) for p in curve] for name, curve in curves.items()},
        }
    return result


def rate_error(
    streams: Sequence[Stream], memory_rate: np.ndarray, slow: float = 0.02
) -> dict[str, float]:
    """Mean absolute error of the expected negative rate vs the truth, next to a plain slow
    EWMA of the bearish probability (what a dashboard would otherwise show)."""
    truth = stack(streams, "true_rate")
    p = stack(streams, "p_bearish").astype(np.float64)
    ewma = np.empty_like(p)
    m = np.full(p.shape[0], float(p[:, :50].mean()))
    for i in range(p.shape[1]):
        m = (1 - slow) * m + slow * p[:, i]
        ewma[:, i] = m
    return {
        "memory_mae": float(np.abs(memory_rate - truth).mean()),
        f"ewma{slow}_p_bearish_mae": float(np.abs(ewma - truth).mean()),
    }


def verdict(result: dict, set_name: str) -> str:
    """One sentence: does the memory beat every baseline at every budget on ``set_name``?"""
    rows = result["sets"][set_name]["table"]
    wins, total = 0, 0
    for row in rows:
        for n in result["baselines"]:
            r = row[f"delay_ratio_vs_{n}"]
            if r is not None:
                total += 1
                wins += r < 1.0
    if total and wins == total:
        return f"the memory detects earlier than every baseline at every false-alarm budget on '{set_name}'"
    return (
        f"the memory is earlier in {wins} of {total} (budget, baseline) comparisons on '{set_name}'; "
        "it does NOT beat the baselines everywhere"
    )


def evaluate_memory(
    onnx_path: Path,
    train: Sequence[Stream],
    eval_sets: dict[str, list[Stream]],
    config: MemoryTrainConfig,
) -> dict:
    """Run the exported ``memory.onnx`` (what the trends worker runs) over the held-out sets
    and compare it with the baselines tuned on ``train``."""
    scores: dict[str, np.ndarray] = {}
    rates: dict[str, np.ndarray] = {}
    for name, streams in eval_sets.items():
        scores[name], rates[name] = onnx_memory_outputs(Path(onnx_path), streams)
    result = compare_detectors(train, eval_sets, scores, config)
    first = next(iter(eval_sets))
    result["rate_error"] = rate_error(eval_sets[first], rates[first])
    result["surge_score_thresholds"] = {
        str(row["false_alarms_per_1000"]): row["memory"]["threshold"]
        for row in result["sets"][first]["table"]
        if row["memory"]
    }
    result["verdict"] = verdict(result, first)
    return result
