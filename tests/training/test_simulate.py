"""The stream simulator: deterministic, and its surges are where its labels say."""

from __future__ import annotations

import math

import numpy as np

from training.simulate import (
    BEARISH,
    FeatureBank,
    SimConfig,
    no_volume_change,
    simulate_streams,
    synthetic_feature_bank,
)

CONFIG = SimConfig(n_steps=300, duration=(30, 80), surge_counts=(0.0, 0.5, 0.5))


def test_same_seed_gives_identical_streams_and_another_seed_differs() -> None:
    bank = synthetic_feature_bank(n=300, seed=3)
    a = simulate_streams(bank, 4, seed=11, config=CONFIG)
    b = simulate_streams(bank, 4, seed=11, config=CONFIG)
    c = simulate_streams(bank, 4, seed=12, config=CONFIG)
    for x, y in zip(a, b, strict=True):
        for attr in ("features", "hours", "true_rate", "in_surge", "labels", "quiet"):
            assert np.array_equal(getattr(x, attr), getattr(y, attr)), attr
        assert x.surges == y.surges
    assert not np.array_equal(a[0].features, c[0].features)


def test_surges_are_where_the_labels_say_and_raise_the_bearish_share() -> None:
    bank = synthetic_feature_bank(n=600, seed=0)
    streams = simulate_streams(bank, 40, seed=5, config=CONFIG)
    in_bear, quiet_bear = [], []
    for s in streams:
        expected = np.zeros(len(s.labels), dtype=bool)
        for surge in s.surges:
            assert CONFIG.warmup <= surge.onset < surge.end <= CONFIG.n_steps
            expected[surge.onset : surge.end] = True
            # the rate rises from the onset and is at its highest inside the surge
            assert s.true_rate[surge.onset] > s.base_rate
            assert s.true_rate[surge.onset : surge.end].max() > s.base_rate + 0.1
        assert np.array_equal(s.in_surge, expected)
        assert not (s.quiet & s.in_surge).any()
        # quiet documents keep the base rate, raised a little (never to a surge) in bursts
        usual = s.quiet & (s.volume < 1.0 + 1e-9)
        assert np.allclose(s.true_rate[usual], s.base_rate)
        lift = s.true_rate[s.quiet] - s.base_rate
        assert lift.min() > -1e-6 and lift.max() <= CONFIG.burst_rate_lift[1] + 1e-6
        in_bear.append((s.labels[s.in_surge] == BEARISH).sum() / max(1, s.in_surge.sum()))
        quiet_bear.append((s.labels[s.quiet] == BEARISH).mean())
    assert sum(len(s.surges) for s in streams) >= 40
    assert np.mean(in_bear) > np.mean(quiet_bear) + 0.15


def test_features_are_the_bank_outputs_with_the_time_gap() -> None:
    bank = synthetic_feature_bank(n=300, doc_vector_dim=5, seed=1)
    s = simulate_streams(bank, 1, seed=2, config=CONFIG)[0]
    assert s.features.shape == (CONFIG.n_steps, bank.feature_dim)
    assert s.features.dtype == np.float32
    assert s.features[0, 5] == 1.0 and np.all(s.features[1:, 5] == 0.0)  # first-document flag
    gap_h = np.diff(s.hours)
    np.testing.assert_allclose(s.features[1:, 4], np.log1p(gap_h), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(s.features[:, 0], s.p_bearish)
    assert np.all(np.diff(s.hours) >= 0)


def test_surge_volume_can_be_switched_off() -> None:
    cfg = no_volume_change(CONFIG)
    assert cfg.surge_volume == (1.0, 1.0) and cfg.n_steps == CONFIG.n_steps


def test_feature_bank_halves_are_disjoint_and_keep_every_class(tmp_path) -> None:
    bank = synthetic_feature_bank(n=200, seed=4)
    a, b = bank.halves(0)
    assert len(a.labels) + len(b.labels) == len(bank.labels)
    for half in (a, b):
        assert set(half.labels.tolist()) == {0, 1, 2}
    bank.save(tmp_path / "bank.npz")
    again = FeatureBank.load(tmp_path / "bank.npz")
    assert np.array_equal(again.probs, bank.probs) and again.source == bank.source
    assert not math.isnan(float(again.topic_confidence.mean()))


def test_volume_episodes_are_the_runs_of_doubled_arrivals_and_score_like_surges() -> None:
    bank = synthetic_feature_bank(n=300, seed=0)
    streams = simulate_streams(bank, 30, seed=7, config=CONFIG)
    assert sum(len(s.volume_surges) for s in streams) >= 10
    for s in streams:
        high = s.volume >= CONFIG.volume_surge_multiplier
        for e in s.volume_surges:
            assert high[e.onset : e.end].all() and e.onset >= CONFIG.warmup
            assert e.end == len(high) or not high[e.end]
        assert not (s.volume_quiet & high).any()
        task = s.as_volume_task()
        assert task.surges == s.volume_surges and task.quiet is s.volume_quiet
        # arrivals really are faster inside an episode than in usual-volume stretches
        if s.volume_surges and s.volume_quiet.sum() > 20:
            inside = np.concatenate([s.features[e.onset : e.end, 4] for e in s.volume_surges])
            assert inside.mean() < s.features[s.volume_quiet, 4].mean()
