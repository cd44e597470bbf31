"""A complete, tiny model directory for tests (needs torch; a few seconds).

Random-init two-layer BERT-shaped encoder (hidden 32), the real MiniLM ``tokenizer.json``,
two training steps on a handful of built-in rows, the full export path (fp32 -> fused ->
int8, fp32 GPU variant, memory.onnx with a random-init cell) and the same manifest as a
real model. Its predictions are meaningless; its shapes, files and code paths are real.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.records import TOPICS
from training.data import HeadRows

SENTIMENT_ROWS = [
    ("$AAPL shares plunge after weak guidance", 0),
    ("Stocks rally as earnings beat estimates", 1),
    ("Company to hold annual meeting on Tuesday", 2),
    ("$TSLA downgraded to sell at Goldman", 0),
    ("Upgrade: analysts see 30% upside https://t.co/abc", 1),
    ("Fed minutes due at 2pm &amp; markets wait", 2),
]
TOPIC_ROWS = [(f"sample headline number {i} about {name}", i) for i, name in enumerate(TOPICS)]


def tiny_rows() -> HeadRows:
    return HeadRows(list(SENTIMENT_ROWS), list(TOPIC_ROWS))


def build_tiny_model_dir(dest: Path, *, seed: int = 0, version: str | None = None) -> Path:
    """Train the tiny model two steps and export a complete model directory to ``dest``."""
    from training.data import build_examples
    from training.model_dir import write_model_dir
    from training.train import TrainConfig, load_tokenizer, train_classifier

    config = TrainConfig(
        tiny=True,
        epochs=1,
        max_steps=2,
        batch_size=8,
        max_tokens=32,
        seed=seed,
        save_checkpoints=False,
        progress=False,
        lr=1e-3,
        head_lr=1e-3,
    )
    rows = tiny_rows()
    result = train_classifier(config, rows, rows)
    examples = build_examples(load_tokenizer(config.max_tokens), rows, config.max_tokens)
    out, report = write_model_dir(
        result.model,
        Path(dest),
        examples,
        version=version or f"tiny-{seed}",
        max_tokens=config.max_tokens,
        gpu_precision="fp32",
        int8_min_agreement=0.0,
        seed=seed,
        extra_manifest={"tiny": True},
    )
    (out / "metrics.json").write_text(json.dumps({"dev": result.dev, "export": report}, indent=2))
    (out / "MODEL_CARD.md").write_text(
        "# tiny test model\n\nRandom-init encoder for tests; predictions are meaningless.\n"
    )
    return out
