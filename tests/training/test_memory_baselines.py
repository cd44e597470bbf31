"""Baseline detectors and the delay / false-alarm scoring."""

from __future__ import annotations

import numpy as np

from training.baselines import (
    Cusum,
    EwmaZ,
    delay_at_false_alarm,
    detection_curve,
    surge_delays,
    surge_kinds,
)
from training.simulate import Stream, Surge


def _stream(p: np.ndarray, onset: int, end: int) -> Stream:
    n = len(p)
    in_surge = np.zeros(n, dtype=bool)
    in_surge[onset:end] = True
    quiet = ~in_surge
    quiet[:20] = False
    quiet[end : end + 20] = False
    return Stream(
        features=np.zeros((n, 6), np.float32),
        p_bearish=p.astype(np.float32),
        is_bearish_pred=p > 0.5,
        labels=np.zeros(n, np.int64),
        hours=np.arange(n, dtype=float),
        true_rate=np.where(in_surge, 0.8, 0.1).astype(np.float32),
        in_surge=in_surge,
        quiet=quiet,
        base_rate=0.1,
        surges=[Surge(onset, end, 0.7, 0, 0)],
    )


def test_baselines_detect_an_obvious_surge_quickly_without_false_alarms() -> None:
    rng = np.random.default_rng(0)
    p = np.clip(rng.normal(0.1, 0.05, 280), 0, 1)
    p[200:260] = np.clip(rng.normal(0.85, 0.05, 60), 0, 1)
    stream = _stream(p, 200, 260)
    for det in (EwmaZ(fast=0.2, slow=0.01), Cusum(k=0.5, slow=0.01)):
        scores = det.scores(p[None, :].astype(np.float64), prior_mean=0.1, prior_var=0.0025)
        quiet_max = scores[0, stream.quiet].max()
        first = int(np.argmax(scores[0, 200:] > quiet_max))
        assert first <= 3, f"{det} needed {first} documents"
        point = delay_at_false_alarm(detection_curve([stream], scores), 0.0)
        assert point is not None and point.detected == 1.0 and point.mean_delay_docs <= 3


def test_scoring_counts_alarm_episodes_on_quiet_documents_and_misses_at_full_length() -> None:
    p = np.zeros(200)
    stream = _stream(p, 100, 150)
    scores = np.zeros((1, 200))
    scores[0, 50:53] = 5.0  # one false-alarm episode (3 documents long)
    scores[0, 60] = 5.0  # a second one
    scores[0, 110:150] = 5.0  # detection 10 documents after onset
    (point,) = detection_curve([stream], scores, thresholds=[1.0])
    assert point.false_alarms_per_1000 == 2 * 1000 / stream.quiet.sum()
    assert point.mean_delay_docs == 10 and point.mean_delay_hours == 10 and point.detected == 1.0
    (missed,) = detection_curve([stream], scores, thresholds=[6.0])
    assert (
        missed.false_alarms_per_1000 == 0
        and missed.detected == 0.0
        and missed.mean_delay_docs == 50
    )
    assert surge_delays([stream], scores, 1.0).tolist() == [10.0]
    assert surge_delays([stream], scores, 6.0).tolist() == [50.0]
    assert {k: m.tolist() for k, m in surge_kinds([stream]).items()}["step onset"] == [True]
