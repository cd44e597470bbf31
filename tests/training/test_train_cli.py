"""``finsent train`` and ``finsent export`` end to end on the tiny config."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from finsent.cli import main
from pipeline.inference import load_model
from pipeline.records import TOPICS
from pipeline.settings import load_settings

pytest.importorskip("torch")


def _csvs(tmp_path: Path) -> tuple[Path, Path]:
    s, t = tmp_path / "s.csv", tmp_path / "t.csv"
    with s.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(60):
            w.writerow(
                [
                    f"$T{i} shares {'fall' if i % 3 == 0 else 'rise' if i % 3 == 1 else 'hold'} https://t.co/x{i}",
                    i % 3,
                ]
            )
    with t.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(80):
            w.writerow([f"headline {i} about {TOPICS[i % 20]}", i % 20])
    return s, t


def test_train_then_export_write_loadable_model_directories(tmp_path: Path) -> None:
    s, t = _csvs(tmp_path)
    work = tmp_path / "work"
    code = main(
        [
            "train",
            "--sentiment-csv",
            str(s),
            "--topic-csv",
            str(t),
            "--work-dir",
            str(work),
            "--version",
            "cli-1",
            "--tiny",
            "--max-steps",
            "2",
            "--epochs",
            "1",
            "--max-tokens",
            "32",
        ]
    )
    assert code == 0
    model_dir = work / "model"
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert set(metrics["dev_int8"]) == {"sentiment", "topic"} and metrics["version"] == "cli-1"
    assert (model_dir / "MODEL_CARD.md").read_text().startswith("# finsent classifier cli-1")
    assert (model_dir / "confusion_topic.png").stat().st_size > 1000
    loaded = load_model(model_dir, load_settings(ort_providers=("CPUExecutionProvider",)))
    assert loaded.version == "cli-1" and len(loaded.classifier.classify(["Oil slides"])) == 1

    out = tmp_path / "exported"
    code = main(
        [
            "export",
            "--checkpoint",
            str(work / "checkpoints" / "epoch1.pt"),
            "--out",
            str(out),
            "--sentiment-csv",
            str(s),
            "--topic-csv",
            str(t),
            "--version",
            "cli-2",
        ]
    )
    assert code == 0
    assert json.loads((out / "manifest.json").read_text())["version"] == "cli-2"


def test_train_without_data_says_which_settings_to_give(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", "--work-dir", str(tmp_path)]) == 2
    assert "FINSENT_TRAIN_SENTIMENT_CSV" in capsys.readouterr().err
    assert (
        main(["export", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "o")])
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
