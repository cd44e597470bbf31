"""Temperature scaling fixes overconfident heads without changing any argmax."""

from __future__ import annotations

import numpy as np
import pytest

from training.calibrate import expected_calibration_error, fit_temperature, nll


def _overconfident(n: int, temperature: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose calibrated version is ``logits / temperature``: labels drawn from
    softmax(true logits), logits reported ``temperature`` times too large."""
    rng = np.random.default_rng(seed)
    true = rng.normal(0.0, 2.0, size=(n, 3))
    p = np.exp(true) / np.exp(true).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(3, p=row) for row in p])
    return true * temperature, labels


def test_fitted_temperature_recovers_the_overconfidence_and_lowers_ece() -> None:
    logits, labels = _overconfident(20_000, 2.5)
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(2.5, rel=0.05)
    before = expected_calibration_error(
        np.exp(logits) / np.exp(logits).sum(1, keepdims=True), labels
    )
    scaled = logits / t
    after = expected_calibration_error(
        np.exp(scaled) / np.exp(scaled).sum(1, keepdims=True), labels
    )
    assert after < before / 3
    assert nll(logits, labels, t) < nll(logits, labels)


def test_ece_of_a_perfectly_calibrated_constant_predictor_is_zero() -> None:
    probs = np.tile([0.5, 0.25, 0.25], (8, 1))
    labels = np.array([0, 0, 0, 0, 1, 2, 1, 2])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0)


def test_calibrating_a_model_keeps_every_argmax() -> None:
    torch = pytest.importorskip("torch")
    from training.calibrate import calibrate_model
    from training.data import build_examples
    from training.model import build_model
    from training.tiny import tiny_rows
    from training.train import load_tokenizer, predict

    model = build_model(tiny=True).eval()
    with torch.no_grad():
        model.sentiment_head.weight.mul_(25.0)  # make it overconfident
    examples = build_examples(load_tokenizer(32), tiny_rows(), 32)
    before = predict(model, examples)
    report = calibrate_model(model, {"dev": examples})
    after = predict(model, examples)
    assert (before[0].argmax(1) == after[0].argmax(1)).all()
    assert (before[1].argmax(1) == after[1].argmax(1)).all()
    assert report["sentiment"]["temperature"] > 1.0
    assert report["sentiment"]["dev"]["nll_after"] <= report["sentiment"]["dev"]["nll_before"]
