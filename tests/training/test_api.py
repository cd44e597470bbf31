"""``training.api``, the application's entry point: it loads without torch, says what to
install when the train extra is missing, and rejects bad arguments with FinsentErrors
(one readable line in the CLI). Whole runs through it: test_train_cli.py, test_retrain*.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import ConfigurationError, InputError

ROOT = Path(__file__).resolve().parents[2]


def test_importing_the_api_loads_no_torch() -> None:
    code = "import sys, training.api; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_a_missing_train_extra_names_the_module_and_the_install_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import training.extra
    from training import api

    real = training.extra.find_spec
    monkeypatch.setattr(
        training.extra, "find_spec", lambda name: None if name == "torch" else real(name)
    )
    csv = tmp_path / "s.csv"
    csv.write_text("text,label\nshares fall,0\n")
    with pytest.raises(
        api.TrainExtraMissing, match=r"\(torch is missing\): pip install -e '\.\[train\]'"
    ) as info:
        api.train(tmp_path / "work", sentiment_csv=csv)
    assert isinstance(info.value, ConfigurationError)
    with pytest.raises(api.TrainExtraMissing):
        api.train_config_from_json('{"epochs": 1}')
    assert api.train_config_from_json(None) is None  # nothing to build: no check, no torch


def test_training_config_overrides_are_checked() -> None:
    pytest.importorskip("torch")
    from training import api

    assert api.train_config(epochs=1, tiny=True).epochs == 1
    assert api.train_config_from_json('{"epochs": 2}').epochs == 2  # type: ignore[union-attr]
    with pytest.raises(InputError, match="training config: .*'epoch'"):
        api.train_config(epoch=1)
    with pytest.raises(InputError, match="--train-config is not JSON"):
        api.train_config_from_json("{epochs: 1}")
    with pytest.raises(InputError, match="must be a JSON object"):
        api.train_config_from_json("[1]")
    with pytest.raises(InputError, match="--train-config: .*'epoch'"):
        api.train_config_from_json('{"epoch": 1}')


def test_train_and_export_without_data_or_checkpoint_say_what_to_give(tmp_path: Path) -> None:
    from training import api

    with pytest.raises(ConfigurationError, match="FINSENT_TRAIN_SENTIMENT_CSV"):
        api.train(tmp_path / "work")
    with pytest.raises(InputError, match="does not exist"):
        api.export(tmp_path / "none.pt", tmp_path / "out", sentiment_csv=tmp_path / "s.csv")
    checkpoint = tmp_path / "epoch1.pt"
    checkpoint.write_bytes(b"")
    with pytest.raises(ConfigurationError, match="parity on the dev split"):
        api.export(checkpoint, tmp_path / "out")
