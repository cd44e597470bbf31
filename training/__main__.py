"""``python -m training train|export|soup``: flags in, :mod:`training.api` calls out.

    python -m training train --sentiment-csv S.csv --topic-csv T.csv --work-dir runs/r1 \\
        --out runs/r1/model --epochs 5 --class-weighting none
    python -m training export --checkpoint runs/r1/checkpoints/epoch4.pt --out finsent/model \\
        --sentiment-csv S.csv --topic-csv T.csv
    python -m training soup runs/a/checkpoints/epoch5.pt runs/b/checkpoints/epoch5.pt \\
        --out runs/soup/checkpoints/soup.pt --sentiment-csv S.csv --topic-csv T.csv

Every ``TrainConfig`` field is a flag (``--layer-decay 0.9``, ``--tasks sentiment`` ...).
Nothing but parsing and printing lives here: the work is in the api functions.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.errors import FinsentError
from training import api
from training.train import TrainConfig


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        if isinstance(default, bool):
            parser.add_argument(
                flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default
            )
        elif f.type in ("int | None", "float | None"):
            kind = int if f.type.startswith("int") else float
            parser.add_argument(flag, dest=f.name, type=kind, default=default)
        else:
            parser.add_argument(flag, dest=f.name, type=type(default), default=default)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="fine-tune, then export the best epoch to --out")
    t.add_argument("--sentiment-csv", type=Path)
    t.add_argument("--topic-csv", type=Path)
    t.add_argument(
        "--work-dir", type=Path, required=True, help="checkpoints, history, config (not the repo)"
    )
    t.add_argument("--out", type=Path, help="model directory to write (default WORK_DIR/model)")
    t.add_argument("--no-export", action="store_true", help="train and evaluate only (ablations)")
    t.add_argument("--version")
    t.add_argument(
        "--memory", action="store_true", help="also train the memory cell into the model directory"
    )
    _add_config_flags(t)
    e = sub.add_parser("export", help="export a checkpoint to a complete model directory")
    e.add_argument("--checkpoint", type=Path, required=True)
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--sentiment-csv", type=Path)
    e.add_argument("--topic-csv", type=Path)
    e.add_argument("--version")
    e.add_argument("--gpu-precision", choices=["fp16", "fp32"])
    e.add_argument(
        "--memory", action="store_true", help="also train the memory cell into the model directory"
    )
    e.add_argument("--memory-from", type=Path, help="copy memory.onnx from this model directory")
    e.add_argument("--note", default="", help="a remark on the training run for the model card")
    c = sub.add_parser("card", help="rewrite a model directory's MODEL_CARD.md (adding speed)")
    c.add_argument("model_dir", type=Path)
    c.add_argument("--speed", type=Path, help="a bench/model.py result (bench/results/model.json)")
    a = sub.add_parser("soup", help="average checkpoints greedily (model soup) into one checkpoint")
    a.add_argument("checkpoints", type=Path, nargs="+")
    a.add_argument("--out", type=Path, required=True, help="the averaged checkpoint (.pt) to write")
    a.add_argument("--sentiment-csv", type=Path)
    a.add_argument("--topic-csv", type=Path)
    return parser


def _print(record: dict) -> None:
    print(json.dumps(record), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    api.quiet_third_party_logs()
    args = build_parser().parse_args(argv)
    reproduce = "python -m training " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    data = {
        "sentiment_csv": getattr(args, "sentiment_csv", None),
        "topic_csv": getattr(args, "topic_csv", None),
    }
    if args.command == "train":
        if not args.sentiment_csv and not args.topic_csv:
            print("error: give --sentiment-csv and/or --topic-csv", file=sys.stderr)
            return 2
        config = TrainConfig(
            **{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
        )
        run = api.train(
            args.work_dir,
            **data,
            config=config,
            out=args.out,
            version=args.version,
            export_model=not args.no_export,
            memory=args.memory,
            reproduce=reproduce,
        )
        _print(
            {
                "best_epoch": run.best_epoch,
                "dev_pytorch": run.dev_pytorch,
                "wall_s": run.wall_s,
                "train_docs_per_s": run.train_docs_per_s,
            }
        )
        if run.exported is not None:
            _print({"model_dir": str(run.exported.model_dir), "int8": run.exported.int8})
    elif args.command == "card":
        from training.card import rewrite_card

        _print({"card": str(rewrite_card(args.model_dir, args.speed))})
    elif args.command == "soup":
        print(json.dumps(api.soup(args.checkpoints, args.out, **data), indent=1), flush=True)
    else:
        exported = api.export(
            args.checkpoint,
            args.out,
            **data,
            version=args.version,
            gpu_precision=args.gpu_precision,
            memory=args.memory,
            memory_from=args.memory_from,
            note=args.note,
            reproduce=reproduce,
        )
        _print({"model_dir": str(exported.model_dir), "int8": exported.int8})
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except FinsentError as exc:  # raised, not caught, in main(): finsent's CLI reports its own way
        print(f"python -m training: error: {exc}", file=sys.stderr)
        sys.exit(2)
