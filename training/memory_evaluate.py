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


def onnx_memory_outputs(
    path: Path, streams: Sequence[Stream]
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Same as :func:`training.memory_train.memory_outputs` through onnxruntime: what the
    trends worker computes. The volume score is None for a cell exported before the split
    (two outputs)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feats = stack(streams, "features").astype(np.float32)
    b, t, _ = feats.shape
    h = int(session.get_inputs()[0].shape[1])
    state = np.zeros((b, h), dtype=np.float32)
    surge = np.empty((b, t), dtype=np.float32)
    rate = np.empty((b, t), dtype=np.float32)
    volume: np.ndarray | None = None
    for i in range(t):
        state, out = session.run(
            list(OUTPUT_NAMES), {"state": state, "features": np.ascontiguousarray(feats[:, i])}
        )
        rate[:, i] = out[:, 0]
        surge[:, i] = out[:, 1]
        if out.shape[1] > 2:
            if volume is None:
                volume = np.empty((b, t), dtype=np.float32)
            volume[:, i] = out[:, 2]
    return surge, rate, volume


def burst_false_alarms(streams: Sequence[Stream], scores: np.ndarray, threshold: float) -> dict:
    """Alarms of a *negativity* detector that start inside quiet volume bursts (arrivals at
    least ``volume_surge_multiplier`` times usual, no negative surge): per 1000 such
    documents, and the share of all its false alarms they are. What "tracks volume, not
    negativity" looks like in numbers."""
    alarm = np.asarray(scores) > threshold
    rising = alarm.copy()
    rising[:, 1:] &= ~alarm[:, :-1]
    quiet = stack(streams, "quiet")
    in_burst = np.zeros_like(quiet)
    for b, st in enumerate(streams):
        for e in st.volume_surges:
            in_burst[b, e.onset : e.end] = True
    burst_quiet = quiet & in_burst
    n_burst = int(burst_quiet.sum())
    total = int((rising & quiet).sum())
    inside = int((rising & burst_quiet).sum())
    return {
        "burst_documents": n_burst,
        "alarms_in_bursts_per_1000": inside * 1000.0 / max(n_burst, 1),
        "alarms_elsewhere_per_1000": (total - inside) * 1000.0 / max(int(quiet.sum()) - n_burst, 1),
        "share_of_false_alarms_in_bursts": inside / total if total else 0.0,
    }


def volume_comparison(
    streams: Sequence[Stream], volume_scores: np.ndarray | None, config: MemoryTrainConfig
) -> dict | None:
    """How the volume output detects volume episodes (arrivals >= the multiplier): delay
    and detection at each false-alarm budget, against a plain detector on the same
    statistic (fast minus slow EWMA of the log gap, decays 0.1 / 0.01)."""
    if volume_scores is None:
        return None
    tasks = [st.as_volume_task() for st in streams]
    gaps = stack(streams, "features")[..., 4].astype(np.float64)
    fast = np.empty_like(gaps)
    slow = np.empty_like(gaps)
    f = s_ = np.full(gaps.shape[0], float(gaps[:, 1:50].mean()))
    for i in range(gaps.shape[1]):
        g = gaps[:, i] if i else f
        f = f + 0.1 * (g - f)
        s_ = s_ + 0.01 * (g - s_)
        fast[:, i], slow[:, i] = f, s_
    curves = {
        "memory volume": detection_curve(tasks, volume_scores),
        "log-gap EWMA difference": detection_curve(tasks, slow - fast),
    }
    return {
        "episodes": sum(len(t.surges) for t in tasks),
        "table": [
            {
                "false_alarms_per_1000": fa,
                **{n: point_dict(delay_at_false_alarm(c, fa)) for n, c in curves.items()},
            }
            for fa in config.report_false_alarms
        ],
    }


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
    *,
    reference_onnx: Path | None = None,
) -> dict:
    """Run the exported ``memory.onnx`` (what the trends worker runs) over the held-out sets
    and compare it with the baselines tuned on ``train``; with ``reference_onnx`` (e.g. the
    champion's cell) that cell's false alarms in quiet volume bursts beside the new one's."""
    scores: dict[str, np.ndarray] = {}
    rates: dict[str, np.ndarray] = {}
    volumes: dict[str, np.ndarray | None] = {}
    for name, streams in eval_sets.items():
        scores[name], rates[name], volumes[name] = onnx_memory_outputs(Path(onnx_path), streams)
    result = compare_detectors(train, eval_sets, scores, config)
    first = next(iter(eval_sets))
    result["rate_error"] = rate_error(eval_sets[first], rates[first])
    result["volume"] = volume_comparison(eval_sets[first], volumes[first], config)
    cells = {"memory": scores[first]}
    if reference_onnx is not None and Path(reference_onnx).exists():
        cells["reference cell"] = onnx_memory_outputs(Path(reference_onnx), eval_sets[first])[0]
    bursts: dict[str, dict] = {}
    for cell, cell_scores in cells.items():
        point = delay_at_false_alarm(
            detection_curve(eval_sets[first], cell_scores), config.selection_false_alarms
        )
        if point is not None:
            bursts[cell] = {
                "threshold": point.threshold,
                "mean_delay_docs": point.mean_delay_docs,
                **burst_false_alarms(eval_sets[first], cell_scores, point.threshold),
            }
    result["false_alarms_in_volume_bursts"] = {
        "at_false_alarms_per_1000": config.selection_false_alarms,
        "reference_onnx": str(reference_onnx) if reference_onnx else None,
        "cells": bursts,
    }
    result["surge_score_thresholds"] = {
        str(row["false_alarms_per_1000"]): row["memory"]["threshold"]
        for row in result["sets"][first]["table"]
        if row["memory"]
    }
    result["verdict"] = verdict(result, first)
    return result
