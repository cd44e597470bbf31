"""Baseline surge detectors (EWMA z-score, CUSUM) and the detection-delay scoring that
compares any detector with them.

The baselines see what a plain monitoring system would: one number per document, the
classifier's bearish probability (or the 0/1 "argmax is bearish" indicator), and no time
information. Both adapt to each key's own level with a slow EWMA of mean and variance,
because keys differ in their quiet bearish rate. They are vectorised over streams:
inputs are ``[B, T]`` arrays (B streams of T documents), outputs ``[B, T]`` scores where
higher means "more surge"; an alarm is a score above a threshold.

Scoring (:func:`detection_curve`): for each threshold, false alarms are alarm *episodes*
(rising edges of score > threshold) that start on a quiet document, per 1000 quiet
documents; a surge's detection delay is the number of documents (and hours) from its onset
to the first alarming document inside it. A surge never alarmed on is a miss and counts its
whole labelled length as its delay, so a detector cannot look fast by giving up on the
hard surges. Detectors are compared at matched false-alarm rates
(:func:`delay_at_false_alarm`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from training.simulate import Stream, stack


@dataclass(frozen=True)
class EwmaZ:
    """z = (fast EWMA - slow EWMA mean) / (slow EWMA std scaled to the fast EWMA's variance)."""

    fast: float = 0.1
    slow: float = 0.01
    use_indicator: bool = False
    name: str = "ewma_z"

    def scores(self, x: np.ndarray, prior_mean: float, prior_var: float) -> np.ndarray:
        b, t = x.shape
        out = np.empty((b, t))
        mean = np.full(b, prior_mean)
        var = np.full(b, prior_var)
        fast = np.full(b, prior_mean)
        scale = self.fast / (2.0 - self.fast)
        for i in range(t):
            xi = x[:, i]
            fast = (1 - self.fast) * fast + self.fast * xi
            out[:, i] = (fast - mean) / np.sqrt(var * scale + 1e-6)
            d = xi - mean
            mean = mean + self.slow * d
            var = (1 - self.slow) * (var + self.slow * d * d)
        return out


@dataclass(frozen=True)
class Cusum:
    """One-sided upper CUSUM on the standardised input: S = min(cap, max(0, S + (x - m)/s - k)),
    with m, s a slow EWMA of the key's own mean and variance. The cap (far above any useful
    threshold) lets S fall back within a few documents after a long surge instead of
    staying in alarm for hundreds."""

    k: float = 0.5
    slow: float = 0.01
    use_indicator: bool = False
    name: str = "cusum"
    cap: float = 30.0

    def scores(self, x: np.ndarray, prior_mean: float, prior_var: float) -> np.ndarray:
        b, t = x.shape
        out = np.empty((b, t))
        mean = np.full(b, prior_mean)
        var = np.full(b, prior_var)
        s = np.zeros(b)
        for i in range(t):
            xi = x[:, i]
            s = np.minimum(
                self.cap, np.maximum(0.0, s + (xi - mean) / np.sqrt(var + 1e-6) - self.k)
            )
            out[:, i] = s
            d = xi - mean
            mean = mean + self.slow * d
            var = (1 - self.slow) * (var + self.slow * d * d)
        return out


Detector = EwmaZ | Cusum


def detector_input(streams: Sequence[Stream], use_indicator: bool) -> np.ndarray:
    return stack(streams, "is_bearish_pred" if use_indicator else "p_bearish").astype(np.float64)


def run_detector(det: Detector, streams: Sequence[Stream], prior: dict[str, float]) -> np.ndarray:
    """Scores ``[B, T]``. ``prior`` holds the starting mean/var of both inputs (from the
    training streams' quiet documents), so a new key does not alarm on its first documents."""
    key = "indicator" if det.use_indicator else "p_bearish"
    return det.scores(
        detector_input(streams, det.use_indicator), prior[f"{key}_mean"], prior[f"{key}_var"]
    )


def input_prior(streams: Sequence[Stream]) -> dict[str, float]:
    quiet = stack(streams, "quiet")
    p = stack(streams, "p_bearish")[quiet]
    ind = stack(streams, "is_bearish_pred")[quiet].astype(np.float64)
    return {
        "p_bearish_mean": float(p.mean()),
        "p_bearish_var": float(p.var()),
        "indicator_mean": float(ind.mean()),
        "indicator_var": float(ind.var()),
    }


def baseline_grid() -> list[Detector]:
    """Hyper-parameters tried for each baseline (tuned on training streams, like the memory)."""
    grid: list[Detector] = []
    for fast, slow, ind in itertools.product(
        (0.05, 0.1, 0.2, 0.3), (0.005, 0.01, 0.02), (False, True)
    ):
        grid.append(EwmaZ(fast, slow, ind))
    for k, slow, ind in itertools.product((0.25, 0.5, 1.0), (0.005, 0.01, 0.02), (False, True)):
        grid.append(Cusum(k, slow, ind))
    return grid


# ----------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class CurvePoint:
    threshold: float
    false_alarms_per_1000: float
    mean_delay_docs: float  # misses count their full labelled length
    median_delay_docs: float
    mean_delay_hours: float  # misses count their full labelled duration in hours
    detected: float  # share of surges alarmed on before their labelled end


def _surge_table(streams: Sequence[Stream]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(stream index, onset, end) of every surge."""
    rows = [(b, s.onset, s.end) for b, st in enumerate(streams) for s in st.surges]
    arr = np.array(rows, dtype=np.int64).reshape(-1, 3)
    return arr[:, 0], arr[:, 1], arr[:, 2]


def detection_curve(
    streams: Sequence[Stream],
    scores: np.ndarray,
    thresholds: Iterable[float] | None = None,
    n_thresholds: int = 160,
) -> list[CurvePoint]:
    """False-alarm rate and delay for each threshold (by default, quantiles of the scores
    on quiet documents, from the median to beyond the maximum)."""
    scores = np.asarray(scores, dtype=np.float64)
    quiet = stack(streams, "quiet")
    hours = stack(streams, "hours")
    n_quiet = int(quiet.sum())
    if thresholds is None:
        qs = 1.0 - np.geomspace(0.5, 1e-5, n_thresholds)
        quiet_scores = scores[quiet] if n_quiet else scores.reshape(-1)
        thresholds = np.unique(
            np.concatenate(
                [np.quantile(quiet_scores, qs), [quiet_scores.max(), scores.max() + 1e-9]]
            )
        )
    sb, so, se = _surge_table(streams)
    points: list[CurvePoint] = []
    for th in thresholds:
        alarm = scores > th
        rising = alarm.copy()
        rising[:, 1:] &= ~alarm[:, :-1]
        fa = float((rising & quiet).sum()) * 1000.0 / max(n_quiet, 1)
        delays, delays_h, hit = [], [], []
        for b, on, end in zip(sb, so, se, strict=True):
            idx = np.flatnonzero(alarm[b, on:end])
            if idx.size:
                delays.append(float(idx[0]))
                delays_h.append(float(hours[b, on + idx[0]] - hours[b, on]))
                hit.append(1.0)
            else:
                delays.append(float(end - on))
                delays_h.append(float(hours[b, end - 1] - hours[b, on]))
                hit.append(0.0)
        points.append(
            CurvePoint(
                float(th),
                fa,
                float(np.mean(delays)) if delays else float("nan"),
                float(np.median(delays)) if delays else float("nan"),
                float(np.mean(delays_h)) if delays_h else float("nan"),
                float(np.mean(hit)) if hit else float("nan"),
            )
        )
    return points


def surge_delays(streams: Sequence[Stream], scores: np.ndarray, threshold: float) -> np.ndarray:
    """Delay in documents of every surge (in :func:`_surge_table` order) at ``threshold``;
    a miss counts the surge's whole labelled length."""
    alarm = np.asarray(scores) > threshold
    sb, so, se = _surge_table(streams)
    out = np.empty(len(sb))
    for n, (b, on, end) in enumerate(zip(sb, so, se, strict=True)):
        idx = np.flatnonzero(alarm[b, on:end])
        out[n] = idx[0] if idx.size else end - on
    return out


def surge_kinds(streams: Sequence[Stream]) -> dict[str, np.ndarray]:
    """Boolean masks over all surges (in :func:`_surge_table` order) by onset and size."""
    surges = [s for st in streams for s in st.surges]
    ramp = np.array([s.ramp_up > 0 for s in surges], dtype=bool)
    large = np.array([s.lift >= 0.3 for s in surges], dtype=bool)
    return {
        "step onset": ~ramp,
        "ramp onset": ramp,
        "small (+12-30 points)": ~large,
        "large (+30-55 points)": large,
    }


def delay_at_false_alarm(curve: Sequence[CurvePoint], target: float) -> CurvePoint | None:
    """The fastest operating point whose false-alarm rate is at most ``target`` per 1000
    quiet documents (None when no threshold is that quiet)."""
    ok = [p for p in curve if p.false_alarms_per_1000 <= target]
    if not ok:
        return None
    return min(ok, key=lambda p: (p.mean_delay_docs, p.false_alarms_per_1000))


def point_dict(p: CurvePoint | None) -> dict | None:
    return None if p is None else asdict(p)


def describe(det: Detector) -> str:
    inp = "indicator" if det.use_indicator else "p_bearish"
    if isinstance(det, EwmaZ):
        return f"EWMA z-score (fast={det.fast}, slow={det.slow}, input={inp})"
    return f"CUSUM (k={det.k}, slow={det.slow}, input={inp})"
