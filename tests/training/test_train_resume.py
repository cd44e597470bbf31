"""An interrupted training run resumes at its last finished epoch and ends where an
uninterrupted run ends (same history, same weights)."""

from __future__ import annotations

from pathlib import Path

import torch

from training.data import HeadRows
from training.train import TrainConfig, train_classifier

# invented rows (data-file ids: sentiment 0 bearish, 1 bullish, 2 neutral)
SENTIMENT = [
    ("Airline collapses, stranding thousands of passengers", 0),
    ("Retailer enters administration as talks with lenders fail", 0),
    ("Chipmaker beats forecasts and lifts its outlook", 1),
    ("Brewer's sales jump to a record on strong summer demand", 1),
    ("Carmaker names a new head of design", 2),
    ("What a rate rise means for your mortgage", 2),
] * 6
TOPIC = [
    ("Central bank holds rates steady", 1),
    ("Oil climbs as supply tightens", 6),
    ("Quarterly profit beats estimates", 5),
] * 8


def _config(**overrides: object) -> TrainConfig:
    values = {"tiny": True, "epochs": 2, "batch_size": 8, "progress": False, "threads": 1}
    values.update(overrides)
    return TrainConfig(**values)  # type: ignore[arg-type]


def test_a_run_stopped_after_one_epoch_resumes_and_matches_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    rows = HeadRows(SENTIMENT, TOPIC)
    dev = HeadRows(SENTIMENT[:6], TOPIC[:3])
    whole = train_classifier(_config(), rows, dev, work_dir=tmp_path / "whole")

    # time_budget_s=0 stops the loop after the first epoch, as a kill after it would
    first = train_classifier(_config(time_budget_s=0.0), rows, dev, work_dir=tmp_path / "cut")
    assert [h["epoch"] for h in first.history] == [1]
    assert (tmp_path / "cut" / "checkpoints" / "resume.pt").is_file()
    resumed = train_classifier(_config(), rows, dev, work_dir=tmp_path / "cut")

    assert [h["epoch"] for h in resumed.history] == [1, 2]
    strip = [{k: v for k, v in h.items() if k != "elapsed_s"} for h in resumed.history]
    assert strip == [{k: v for k, v in h.items() if k != "elapsed_s"} for h in whole.history]
    for name, tensor in whole.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name


def test_a_changed_config_starts_afresh_instead_of_resuming(tmp_path: Path) -> None:
    rows = HeadRows(SENTIMENT, TOPIC)
    dev = HeadRows(SENTIMENT[:6], TOPIC[:3])
    train_classifier(_config(time_budget_s=0.0), rows, dev, work_dir=tmp_path / "run")
    other = train_classifier(_config(lr=1e-4), rows, dev, work_dir=tmp_path / "run")
    assert [h["epoch"] for h in other.history] == [1, 2]
    assert other.history[0]["step"] == 8  # 60 examples / batch 8, counted from zero again
