"""Weight averaging of checkpoints (model soup): exact means, clear errors, a loadable result."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from training.soup import average_state_dicts, greedy_soup  # noqa: E402
from training.tiny import tiny_rows  # noqa: E402
from training.train import TrainConfig, load_checkpoint, train_classifier  # noqa: E402


def _run(work: Path, seed: int, steps: int) -> Path:
    config = TrainConfig(
        tiny=True,
        epochs=1,
        max_steps=steps,
        batch_size=8,
        max_tokens=32,
        progress=False,
        lr=1e-3,
        head_lr=1e-3,
        seed=seed,
    )
    train_classifier(config, tiny_rows(), tiny_rows(), work_dir=work)
    return work / "checkpoints" / "epoch1.pt"


def test_average_is_the_elementwise_mean_and_keeps_integer_buffers() -> None:
    a = {"w": torch.tensor([1.0, 3.0]), "ids": torch.tensor([0, 1])}
    b = {"w": torch.tensor([3.0, 5.0]), "ids": torch.tensor([0, 1])}
    out = average_state_dicts([a, b])
    assert out["w"].tolist() == [2.0, 4.0] and out["ids"].dtype == torch.int64


def test_average_refuses_checkpoints_of_different_shapes() -> None:
    with pytest.raises(ValueError, match="shape"):
        average_state_dicts([{"w": torch.zeros(2)}, {"w": torch.zeros(3)}])
    with pytest.raises(ValueError, match="different parameters"):
        average_state_dicts([{"w": torch.zeros(2)}, {"v": torch.zeros(2)}])


def test_greedy_soup_writes_a_checkpoint_the_exporter_loads(tmp_path: Path) -> None:
    first = _run(tmp_path / "a", seed=1, steps=2)
    second = _run(tmp_path / "b", seed=1, steps=3)
    summary = greedy_soup(
        [first, second], tiny_rows(), tmp_path / "soup" / "checkpoints" / "soup.pt"
    )
    assert summary["members"][0] in (str(first), str(second))
    assert {t["checkpoint"] for t in summary["tried"]} == {str(first), str(second)}
    model, config = load_checkpoint(tmp_path / "soup" / "checkpoints" / "soup.pt")
    assert config.tiny is True
    if len(summary["members"]) == 1:  # the soup is then exactly its one member
        member, _ = load_checkpoint(Path(summary["members"][0]))
        for k, v in member.state_dict().items():
            assert torch.equal(v, model.state_dict()[k]), k
