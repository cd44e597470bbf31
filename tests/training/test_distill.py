"""Self-distillation: a teacher model directory fills in the head a row has no label for."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pipeline.inference import Classifier  # noqa: E402
from pipeline.records import SENTIMENTS, TOPICS  # noqa: E402
from pipeline.settings import Settings  # noqa: E402
from training.data import IGNORE, build_examples  # noqa: E402
from training.distill import attach_teacher  # noqa: E402
from training.tiny import tiny_rows  # noqa: E402
from training.train import (  # noqa: E402
    TrainConfig,
    collate_soft,
    load_tokenizer,
    soft_cross_entropy,
    train_classifier,
)


def test_teacher_labels_only_the_head_without_a_gold_label(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    rows = tiny_rows()
    examples = build_examples(load_tokenizer(32), rows, 32)
    taught = attach_teacher(examples, rows, [tiny_model_dir], cache_dir=tmp_path)
    texts = [t for t, _ in rows.sentiment] + [t for t, _ in rows.topic]
    clf = Classifier.load(tiny_model_dir, Settings())
    topic_logits, sent_logits, _ = clf.logits(clf.encode(texts))
    for i, ex in enumerate(taught):
        if ex.sentiment != IGNORE:  # a sentiment row: gold sentiment, teacher topic
            assert ex.sentiment_soft is None and ex.topic_soft is not None
            expected = np.exp(topic_logits[i] - topic_logits[i].max())
            np.testing.assert_allclose(ex.topic_soft, expected / expected.sum(), atol=1e-5)
        else:
            assert ex.topic_soft is None and ex.sentiment_soft is not None
            assert len(ex.sentiment_soft) == len(SENTIMENTS)
            assert int(np.argmax(ex.sentiment_soft)) == int(np.argmax(sent_logits[i]))
    assert len(list(tmp_path.glob("teacher-*.npz"))) == 1


def test_cached_teacher_outputs_are_reused(tiny_model_dir: Path, tmp_path: Path) -> None:
    rows = tiny_rows()
    examples = build_examples(load_tokenizer(32), rows, 32)
    first = attach_teacher(examples, rows, [tiny_model_dir], cache_dir=tmp_path)
    cache = next(tmp_path.glob("teacher-*.npz"))
    blob = dict(np.load(cache))
    blob["topic"] = np.full_like(blob["topic"], 1.0 / len(TOPICS))
    np.savez_compressed(cache, **blob)  # a cache hit must read this, not rerun the teacher
    second = attach_teacher(examples, rows, [tiny_model_dir], cache_dir=tmp_path)
    assert first[0].topic_soft != second[0].topic_soft
    assert second[0].topic_soft == pytest.approx([1.0 / len(TOPICS)] * len(TOPICS))


def test_attach_teacher_rejects_examples_built_from_other_rows(tiny_model_dir: Path) -> None:
    rows = tiny_rows()
    examples = build_examples(load_tokenizer(32), rows, 32)[:-1]
    with pytest.raises(ValueError, match="same rows"):
        attach_teacher(examples, rows, [tiny_model_dir])


def test_soft_cross_entropy_is_minimal_at_the_teacher_distribution() -> None:
    target = torch.tensor([[0.7, 0.2, 0.1]])
    at_target = soft_cross_entropy(torch.log(target), target, 1.0)
    elsewhere = soft_cross_entropy(torch.tensor([[0.0, 2.0, 0.0]]), target, 1.0)
    entropy = -(target * torch.log(target)).sum()
    assert at_target.item() == pytest.approx(entropy.item(), abs=1e-6)
    assert elsewhere.item() > at_target.item()


def test_collate_soft_picks_the_rows_with_a_distribution(tiny_model_dir: Path) -> None:
    rows = tiny_rows()
    examples = attach_teacher(build_examples(load_tokenizer(32), rows, 32), rows, [tiny_model_dir])
    batch = [examples[0], examples[-1]]  # a sentiment row, then a topic row
    idx, targets = collate_soft(batch, "sentiment", len(SENTIMENTS))  # type: ignore[misc]
    assert idx.tolist() == [1] and targets.shape == (1, 3)
    idx, targets = collate_soft(batch, "topic", len(TOPICS))  # type: ignore[misc]
    assert idx.tolist() == [0] and targets.shape == (1, len(TOPICS))
    assert collate_soft([examples[0]], "sentiment", len(SENTIMENTS)) is None


def test_training_with_a_teacher_runs_and_records_it(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = TrainConfig(
        tiny=True,
        epochs=1,
        max_steps=2,
        batch_size=8,
        max_tokens=32,
        progress=False,
        teacher=str(tiny_model_dir),
        distill_temperature=2.0,
    )
    result = train_classifier(config, tiny_rows(), tiny_rows(), work_dir=tmp_path)
    assert result.steps == 2
    assert json.loads((tmp_path / "config.json").read_text())["teacher"] == str(tiny_model_dir)
    assert list(tmp_path.glob("teacher-*.npz"))
