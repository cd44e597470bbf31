"""``finsent train | export``: fine-tune the classifier and its memory cell, or export a
checkpoint to a model directory. Both need the ``train`` extra (torch, transformers):
:mod:`training.api` checks it and says how to install it; nothing else in the command
line loads torch.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigurationError, InputError
from pipeline.settings import Settings
from training import api

#: training knobs offered by ``finsent train`` (fields of ``training.train.TrainConfig``)
TRAIN_KNOBS: tuple[tuple[str, type, str], ...] = (
    ("--epochs", int, "passes over the training data (default 4)"),
    ("--lr", float, "learning rate of the top encoder layer (default 8e-5)"),
    ("--layer-decay", float, "layer-wise learning-rate decay per layer downwards (default 0.9)"),
    ("--class-weighting", str, "none | sqrt (default none)"),
    ("--batch-size", int, "documents per step (default 32)"),
    ("--max-tokens", int, "tokenizer truncation (default 64)"),
    ("--max-steps", int, "stop after this many steps"),
    ("--threads", int, "torch threads"),
    ("--seed", int, "random seed (default 13)"),
)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune the classifier and memory cell (needs the train extra)",
        description="Fine-tune the classifier on the labelled CSVs (FINSENT_TRAIN_SENTIMENT_CSV / "
        "FINSENT_TRAIN_TOPIC_CSV or the flags), export the best epoch to --out and train the "
        "memory cell into it. Every knob: 'python -m training train --help'.",
    )
    p.add_argument("--sentiment-csv", type=Path)
    p.add_argument("--topic-csv", type=Path)
    p.add_argument(
        "--work-dir",
        type=Path,
        default=Path("runs/train"),
        help="checkpoints and history (default runs/train)",
    )
    p.add_argument("--out", type=Path, help="model directory to write (default WORK_DIR/model)")
    p.add_argument("--version")
    for flag, kind, text in TRAIN_KNOBS:
        p.add_argument(flag, type=kind, help=text)
    p.add_argument("--tiny", action="store_true", help="random-init tiny encoder (smoke tests)")
    p.set_defaults(func=train_command)

    p = sub.add_parser(
        "export",
        help="export a trained model to ONNX (+ int8)",
        description="Export a training checkpoint to a complete model directory (fp32 -> fused "
        "-> int8 for CPU, fp16 for GPU, memory cell), parity-checked against PyTorch on the dev split.",
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="runs/.../checkpoints/epochN.pt")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--sentiment-csv", type=Path)
    p.add_argument("--topic-csv", type=Path)
    p.add_argument("--version")
    p.add_argument("--gpu-precision", choices=["fp16", "fp32"])
    p.add_argument(
        "--memory", action="store_true", help="train the memory cell into the exported directory"
    )
    p.set_defaults(func=export_command)


def _data(args: argparse.Namespace, settings: Settings) -> tuple[Path | None, Path | None]:
    return (
        args.sentiment_csv or settings.train_sentiment_csv,
        args.topic_csv or settings.train_topic_csv,
    )


def _reproduce() -> str:
    return shlex.join(["finsent", *sys.argv[1:]])


def train_command(args: argparse.Namespace, settings: Settings) -> int:
    sentiment, topic = _data(args, settings)
    if not sentiment and not topic:
        raise ConfigurationError(
            "no training data: pass --sentiment-csv/--topic-csv or set "
            "FINSENT_TRAIN_SENTIMENT_CSV / FINSENT_TRAIN_TOPIC_CSV"
        )
    api.quiet_third_party_logs()
    knobs = {
        flag[2:].replace("-", "_"): getattr(args, flag[2:].replace("-", "_"))
        for flag, _, _ in TRAIN_KNOBS
    }
    config = api.train_config(**{k: v for k, v in knobs.items() if v is not None}, tiny=args.tiny)
    run = api.train(
        args.work_dir,
        sentiment_csv=sentiment,
        topic_csv=topic,
        config=config,
        out=args.out,
        version=args.version,
        memory=True,
        reproduce=_reproduce(),
    )
    print(
        json.dumps(
            {
                "best_epoch": run.best_epoch,
                "dev_pytorch": run.dev_pytorch,
                "wall_s": run.wall_s,
                "train_docs_per_s": run.train_docs_per_s,
            }
        ),
        flush=True,
    )
    if run.exported is not None:
        print(
            json.dumps({"model_dir": str(run.exported.model_dir), "int8": run.exported.int8}),
            flush=True,
        )
    return 0


def export_command(args: argparse.Namespace, settings: Settings) -> int:
    sentiment, topic = _data(args, settings)
    if not args.checkpoint.is_file():
        raise InputError(
            f"checkpoint {args.checkpoint} does not exist; 'finsent train' writes WORK_DIR/checkpoints/epochN.pt"
        )
    if not sentiment and not topic:
        raise ConfigurationError(
            "export checks parity on the dev split: pass --sentiment-csv/--topic-csv or set "
            "FINSENT_TRAIN_SENTIMENT_CSV / FINSENT_TRAIN_TOPIC_CSV"
        )
    api.quiet_third_party_logs()
    exported = api.export(
        args.checkpoint,
        args.out,
        sentiment_csv=sentiment,
        topic_csv=topic,
        version=args.version,
        gpu_precision=args.gpu_precision,
        memory=args.memory,
        reproduce=_reproduce(),
    )
    print(json.dumps({"model_dir": str(exported.model_dir), "int8": exported.int8}), flush=True)
    return 0
