"""``python -m training train|export``: the training entry point (``finsent train|export`` call it).

    python -m training train --sentiment-csv S.csv --topic-csv T.csv --work-dir runs/r1 \\
        --out runs/r1/model --epochs 5 --class-weighting none
    python -m training export --checkpoint runs/r1/checkpoints/epoch4.pt --out models \\
        --sentiment-csv S.csv --topic-csv T.csv
    python -m training soup runs/a/checkpoints/epoch5.pt runs/b/checkpoints/epoch5.pt \\
        --out runs/soup/checkpoints/soup.pt --sentiment-csv S.csv --topic-csv T.csv

Every ``TrainConfig`` field is a flag (``--layer-decay 0.9``, ``--tasks sentiment`` ...).
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

from training.train import TrainConfig


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        if isinstance(default, bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default)
        elif f.type in ("int | None", "float | None"):
            kind = int if f.type.startswith("int") else float
            parser.add_argument(flag, dest=f.name, type=kind, default=default)
        else:
            parser.add_argument(flag, dest=f.name, type=type(default), default=default)


def _config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="fine-tune, then export the best epoch to --out")
    t.add_argument("--sentiment-csv", type=Path)
    t.add_argument("--topic-csv", type=Path)
    t.add_argument("--work-dir", type=Path, required=True, help="checkpoints, history, config (not the repo)")
    t.add_argument("--out", type=Path, help="model directory to write (default WORK_DIR/model)")
    t.add_argument("--no-export", action="store_true", help="train and evaluate only (ablations)")
    t.add_argument("--version")
    t.add_argument("--memory", action="store_true", help="also train the memory cell into the model directory")
    _add_config_flags(t)
    e = sub.add_parser("export", help="export a checkpoint to a complete model directory")
    e.add_argument("--checkpoint", type=Path, required=True)
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--sentiment-csv", type=Path)
    e.add_argument("--topic-csv", type=Path)
    e.add_argument("--version")
    e.add_argument("--gpu-precision", choices=["fp16", "fp32"])
    e.add_argument("--memory", action="store_true", help="also train the memory cell into the model directory")
    e.add_argument("--memory-from", type=Path, help="copy memory.onnx from this model directory")
    e.add_argument("--note", default="", help="a remark on the training run for the model card")
    a = sub.add_parser("soup", help="average checkpoints greedily (model soup) into one checkpoint")
    a.add_argument("checkpoints", type=Path, nargs="+")
    a.add_argument("--out", type=Path, required=True, help="the averaged checkpoint (.pt) to write")
    a.add_argument("--sentiment-csv", type=Path)
    a.add_argument("--topic-csv", type=Path)
    return parser


def train_memory(model_dir: Path, sentiment_csv: Path | None, quick: bool = False) -> bool:
    """Hand the model directory to the memory cell's trainer (training.memory), which
    builds its streams from the classifier's outputs on the sentiment dev rows."""
    try:
        from training.memory import train_memory_into  # type: ignore[attr-defined]
    except ImportError:
        logging.getLogger(__name__).warning("training.memory.train_memory_into is not available; "
                                            "the model directory keeps a random-init memory cell")
        return False
    if sentiment_csv is None:
        logging.getLogger(__name__).warning("no sentiment CSV: the memory cell stays random-init")
        return False
    train_memory_into(model_dir, sentiment_csv, quick=quick, progress=not quick)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("onnx_model", "fusion_base", "fusion_utils", "onnx_model_bert", "root"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    reproduce = "python -m training " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    if args.command == "train":
        from training.api import _export, _training_info, finish_model_dir
        from training.data import fixed_dev_split
        from training.train import train_classifier

        if not args.sentiment_csv and not args.topic_csv:
            print("error: give --sentiment-csv and/or --topic-csv", file=sys.stderr)
            return 2
        config = _config(args)
        train, dev = fixed_dev_split(args.sentiment_csv, args.topic_csv)
        result = train_classifier(config, train, dev, work_dir=args.work_dir)
        info = _training_info(result)
        (args.work_dir / "result.json").write_text(json.dumps(info, indent=2))
        print(json.dumps({"best_epoch": result.best_epoch, "dev_pytorch": info["dev_pytorch"],
                          "wall_s": info["wall_s"], "train_docs_per_s": info["train_docs_per_s"]}), flush=True)
        if args.no_export:
            return 0
        out = args.out or args.work_dir / "model"
        model_dir = _export(result.model, config, out, dev, version=args.version, tiny=config.tiny, memory_from=None)
        if args.memory:
            train_memory(model_dir, args.sentiment_csv, quick=config.tiny)
        metrics = finish_model_dir(model_dir, dev, training=info, reproduce=reproduce,
                                   data={"sentiment_csv": str(args.sentiment_csv), "topic_csv": str(args.topic_csv)})
        print(json.dumps({"model_dir": str(model_dir), "int8": metrics["summary_int8"]}), flush=True)
        return 0
    if args.command == "soup":
        from training.data import fixed_dev_split
        from training.soup import greedy_soup

        _, dev = fixed_dev_split(args.sentiment_csv, args.topic_csv)
        print(json.dumps(greedy_soup(args.checkpoints, dev, args.out), indent=1), flush=True)
        return 0
    from training.api import _export, finish_model_dir
    from training.data import fixed_dev_split
    from training.train import load_checkpoint

    training_info = None
    result_json = args.checkpoint.parent.parent / "result.json"
    history_json = args.checkpoint.parent.parent / "history.json"
    if result_json.is_file():
        training_info = json.loads(result_json.read_text())
    elif history_json.is_file():
        training_info = {"history": json.loads(history_json.read_text())}
    model, config = load_checkpoint(args.checkpoint)
    if training_info is not None:
        training_info.setdefault("config", dataclasses.asdict(config))
        training_info["exported_checkpoint"] = args.checkpoint.name
        if args.note:
            training_info["note"] = args.note
    _, dev = fixed_dev_split(args.sentiment_csv, args.topic_csv)
    model_dir = _export(model, config, args.out, dev, version=args.version, tiny=config.tiny,
                        memory_from=args.memory_from, gpu_precision=args.gpu_precision)
    if args.memory:
        train_memory(model_dir, args.sentiment_csv, quick=config.tiny)
    metrics = finish_model_dir(model_dir, dev, training=training_info, reproduce=reproduce,
                               data={"sentiment_csv": str(args.sentiment_csv), "topic_csv": str(args.topic_csv),
                                     "dev_rows": {"sentiment": len(dev.sentiment), "topic": len(dev.topic)}})
    print(json.dumps({"model_dir": str(model_dir), "int8": metrics["summary_int8"]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
