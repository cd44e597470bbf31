"""Weight averaging ("model soups", Wortsman et al. 2022) of fine-tuned checkpoints.

Checkpoints fine-tuned from the same pretrained encoder tend to sit in one basin of the
loss, so the average of their weights is a model of the same size and speed that is often
better than each of them: an ensemble's gain at a single model's inference cost. The
greedy recipe adds checkpoints best-first and keeps each only if the average improves the
dev selection score (the same score and dev split that pick the best epoch of a run).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from training.data import Example, HeadRows, build_examples
from training.train import (
    TrainConfig,
    evaluate_examples,
    load_checkpoint,
    load_tokenizer,
    selection_score,
)

log = logging.getLogger(__name__)


def average_state_dicts(state_dicts: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of floating-point tensors (integer buffers are taken from the
    first). Raises ValueError when the checkpoints do not share keys and shapes."""
    if not state_dicts:
        raise ValueError("nothing to average: give at least one checkpoint")
    first = state_dicts[0]
    for i, sd in enumerate(state_dicts[1:], start=2):
        if sd.keys() != first.keys():
            raise ValueError(
                f"checkpoint {i} has different parameters than checkpoint 1: "
                "only checkpoints of the same architecture can be averaged"
            )
        for k, v in sd.items():
            if v.shape != first[k].shape:
                raise ValueError(
                    f"checkpoint {i}: {k} has shape {tuple(v.shape)}, checkpoint 1 {tuple(first[k].shape)}"
                )
    out: dict[str, torch.Tensor] = {}
    for k, v in first.items():
        if v.is_floating_point():
            out[k] = torch.stack([sd[k].float() for sd in state_dicts]).mean(dim=0).to(v.dtype)
        else:
            out[k] = v.clone()
    return out


def _score(
    state: dict[str, torch.Tensor], config: TrainConfig, dev_ex: Sequence[Example]
) -> tuple[float, dict[str, Any]]:
    from training.model import build_model

    model = build_model(tiny=config.tiny, seed=config.seed, dropout=config.dropout)
    model.load_state_dict(state)
    model.eval()
    dev = evaluate_examples(model, dev_ex, config.eval_batch_size)
    return selection_score(dev), dev


def greedy_soup(checkpoints: Sequence[Path], dev: HeadRows, out: Path) -> dict[str, Any]:
    """Average ``checkpoints`` greedily (best single first) into ``out`` (a checkpoint
    ``load_checkpoint`` and ``python -m training export`` read). Returns what was tried."""
    if not checkpoints:
        raise ValueError("give at least one checkpoint")
    models = []
    config: TrainConfig | None = None
    for path in checkpoints:
        model, cfg = load_checkpoint(Path(path))
        config = config or cfg
        models.append((Path(path), {k: v.detach().clone() for k, v in model.state_dict().items()}))
    assert config is not None
    dev_ex = build_examples(load_tokenizer(config.max_tokens), dev, config.max_tokens)
    singles = []
    for path, state in models:
        score, report = _score(state, config, dev_ex)
        singles.append((score, path, state, report))
        log.info("soup: %s alone scores %.4f", path, score)
    singles.sort(key=lambda s: -s[0])
    best_score, first_path, first_state, best_dev = singles[0]
    members = [(first_path, first_state)]
    tried = [{"checkpoint": str(p), "alone": round(s, 4)} for s, p, _, _ in singles]
    for _alone, path, state, _ in singles[1:]:
        candidate = average_state_dicts([s for _, s in members] + [state])
        score, report = _score(candidate, config, dev_ex)
        kept = score > best_score
        log.info("soup: + %s -> %.4f (%s)", path, score, "kept" if kept else "dropped")
        next(t for t in tried if t["checkpoint"] == str(path))["with_soup"] = round(score, 4)
        if kept:
            members.append((path, state))
            best_score, best_dev = score, report
    averaged = average_state_dicts([s for _, s in members])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "members": [str(p) for p, _ in members],
        "score": round(best_score, 4),
        "tried": tried,
        "dev": {
            h: {m: round(best_dev[h][m], 4) for m in ("accuracy", "macro_f1")} for h in best_dev
        },
    }
    torch.save(
        {
            "state_dict": averaged,
            "config": asdict(config),
            "epoch": "soup",
            "dev": best_dev,
            "soup": summary,
        },
        out,
    )
    return summary
