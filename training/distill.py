"""Teacher soft labels for self-distillation ("noisy student").

The two corpora share no text, so every training row has a label for one head only. A
teacher (one or more exported model directories, averaged as an ensemble) fills in the
*other* head with its probability distribution: the 15k topic tweets become extra,
softly-labelled sentiment examples and the 8.6k sentiment tweets extra topic examples.
The student trains on gold labels where they exist and on the teacher's distribution
(soft cross-entropy at a temperature) where they do not, with dropout as its noise.

The teacher runs through the serving runtime (onnxruntime, no torch), so any shipped
champion can teach; outputs are cached beside the run, keyed by the teacher directories.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from training.data import IGNORE, Example, HeadRows

log = logging.getLogger(__name__)


def _softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def teacher_distributions(
    teacher_dirs: Sequence[Path], texts: Sequence[str], temperature: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """``(topic probs [N,20], sentiment probs [N,3])`` averaged over the teachers (the
    serving runtime's CPU file of each model directory; sentiment in model order)."""
    from pipeline.inference import Classifier
    from pipeline.settings import Settings

    if not teacher_dirs:
        raise ValueError("distillation needs at least one teacher model directory")
    topic_sum: np.ndarray | None = None
    sent_sum: np.ndarray | None = None
    for directory in teacher_dirs:
        clf = Classifier.load(Path(directory), Settings())
        t, s, _ = clf.logits(clf.encode(texts))
        tp, sp = _softmax(t, temperature), _softmax(s, temperature)
        topic_sum = tp if topic_sum is None else topic_sum + tp
        sent_sum = sp if sent_sum is None else sent_sum + sp
        log.info("teacher %s (%s) labelled %d texts", directory, clf.version, len(texts))
    assert topic_sum is not None and sent_sum is not None
    k = float(len(teacher_dirs))
    return (topic_sum / k).astype(np.float32), (sent_sum / k).astype(np.float32)


def _cache_key(teacher_dirs: Sequence[Path], texts: Sequence[str], temperature: float) -> str:
    h = hashlib.sha256()
    for d in teacher_dirs:
        manifest = Path(d) / "manifest.json"
        h.update(str(Path(d).resolve()).encode())
        if manifest.exists():
            h.update(manifest.read_bytes())
    h.update(json.dumps([temperature, len(texts)]).encode())
    for t in texts:
        h.update(t.encode("utf-8", "replace"))
    return h.hexdigest()[:16]


def attach_teacher(
    examples: Sequence[Example],
    rows: HeadRows,
    teacher_dirs: Sequence[Path],
    temperature: float = 1.0,
    cache_dir: Path | None = None,
) -> list[Example]:
    """Examples (as built by ``build_examples`` from ``rows``, same order) with the
    teacher's distribution on the head each row has no gold label for."""
    texts = [t for t, _ in rows.sentiment] + [t for t, _ in rows.topic]
    if len(texts) != len(examples):
        raise ValueError(
            f"{len(examples)} examples but {len(texts)} rows: build them from the same rows"
        )
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"teacher-{_cache_key(teacher_dirs, texts, temperature)}.npz"
    if cache is not None and cache.exists():
        blob = np.load(cache)
        topic_p, sent_p = blob["topic"], blob["sentiment"]
        log.info("teacher outputs read from %s", cache)
    else:
        topic_p, sent_p = teacher_distributions(teacher_dirs, texts, temperature)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(cache, topic=topic_p, sentiment=sent_p)
    out: list[Example] = []
    for i, ex in enumerate(examples):
        if ex.topic == IGNORE:
            ex = replace(ex, topic_soft=tuple(float(x) for x in topic_p[i]))
        if ex.sentiment == IGNORE:
            ex = replace(ex, sentiment_soft=tuple(float(x) for x in sent_p[i]))
        out.append(ex)
    return out
