"""``finsent classify | train | export``: the classifier (issue 3).

``classify`` needs only onnxruntime and tokenizers. ``train`` and ``export`` need the
``train`` extra (torch, transformers) and import it lazily, inside the handler, so the rest
of the command line never loads torch.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigurationError, InputError
from pipeline.settings import Settings

OUTPUT_COLUMNS = ("topic", "topic_confidence", "sentiment", "p_bearish", "p_neutral", "p_bullish", "model_version")
CHUNK = 256
#: training knobs offered by ``finsent train`` (all of TrainConfig: ``python -m training train -h``)
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
    p = sub.add_parser("classify", help="batch-classify a CSV/JSONL file",
                       description="Classify every row of a CSV or JSONL file. The output keeps the input "
                       "columns and adds: " + ", ".join(OUTPUT_COLUMNS) + ".")
    p.add_argument("input", type=Path, help="a .csv (with a header) or .jsonl/.ndjson file")
    p.add_argument("--output", type=Path, required=True, help="where to write (.csv or .jsonl; format from the extension)")
    p.add_argument("--text-column", default="text", help="the column holding the text (default: text)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=classify_command)

    p = sub.add_parser("train", help="fine-tune the classifier and memory cell (needs the train extra)",
                       description="Fine-tune the classifier on the labelled CSVs (FINSENT_TRAIN_SENTIMENT_CSV / "
                       "FINSENT_TRAIN_TOPIC_CSV or the flags), export the best epoch to --out and train the "
                       "memory cell into it. Every knob: 'python -m training train --help'.")
    p.add_argument("--sentiment-csv", type=Path)
    p.add_argument("--topic-csv", type=Path)
    p.add_argument("--work-dir", type=Path, default=Path("runs/train"), help="checkpoints and history (default runs/train)")
    p.add_argument("--out", type=Path, help="model directory to write (default WORK_DIR/model)")
    p.add_argument("--version")
    for flag, kind, text in TRAIN_KNOBS:
        p.add_argument(flag, type=kind, help=text)
    p.add_argument("--tiny", action="store_true", help="random-init tiny encoder (smoke tests)")
    p.set_defaults(func=train_command)

    p = sub.add_parser("export", help="export a trained model to ONNX (+ int8)",
                       description="Export a training checkpoint to a complete model directory (fp32 -> fused "
                       "-> int8 for CPU, fp16 for GPU, memory cell), parity-checked against PyTorch on the dev split.")
    p.add_argument("--checkpoint", type=Path, required=True, help="runs/.../checkpoints/epochN.pt")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--sentiment-csv", type=Path)
    p.add_argument("--topic-csv", type=Path)
    p.add_argument("--version")
    p.add_argument("--gpu-precision", choices=["fp16", "fp32"])
    p.add_argument("--memory", action="store_true", help="train the memory cell into the exported directory")
    p.set_defaults(func=export_command)


# --- classify -----------------------------------------------------------------------------

def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    raise InputError(f"{path}: unknown format {suffix or '(no extension)'}; use a .csv or .jsonl file")


def _read_rows(path: Path, fmt: str, text_column: str) -> tuple[list[str], Iterator[dict[str, Any]]]:
    """(column names, row iterator); errors name the file, line and what to do."""
    try:
        handle = path.open(newline="", encoding="utf-8")
        handle.read(1)
        handle.seek(0)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InputError(f"cannot read {path}: {reason}; check the path and that it is a UTF-8 text file") from exc
    if fmt == "csv":
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        if text_column not in columns:
            handle.close()
            raise InputError(f"{path} has no column {text_column!r} (columns: {', '.join(columns) or 'none'}); "
                             "choose one with --text-column")

        def csv_rows() -> Iterator[dict[str, Any]]:
            with handle:
                try:
                    yield from reader
                except (csv.Error, UnicodeDecodeError) as exc:
                    raise InputError(f"{path} line {reader.line_num}: {exc}") from exc

        return columns, csv_rows()

    def json_rows() -> Iterator[dict[str, Any]]:
        with handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{path} line {number} is not valid JSON ({exc.msg})") from None
                if not isinstance(record, dict):
                    raise InputError(f"{path} line {number} is not a JSON object")
                if text_column not in record:
                    raise InputError(f"{path} line {number} has no field {text_column!r} (fields: "
                                     f"{', '.join(record) or 'none'}); choose one with --text-column")
                yield record

    return [], json_rows()


def _count_rows(path: Path, fmt: str) -> int | None:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            if fmt == "csv":
                return max(sum(1 for _ in csv.reader(handle)) - 1, 0)
            return sum(1 for line in handle if line.strip())
    except (OSError, UnicodeDecodeError, csv.Error):
        return None


def _chunks(rows: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def classify_file(input_path: Path, output_path: Path, settings: Settings, *, text_column: str = "text",
                  progress: bool = True) -> int:
    """Classify every row of ``input_path`` into ``output_path``; return the row count."""
    from tqdm import tqdm

    from pipeline.inference import Classifier

    in_fmt, out_fmt = _format(input_path), _format(output_path)
    if input_path.resolve() == output_path.resolve():
        raise InputError("--output must differ from the input file")
    columns, rows = _read_rows(input_path, in_fmt, text_column)
    classifier = Classifier.load(settings.model_dir, settings)
    total = _count_rows(input_path, in_fmt) if progress else None
    try:
        output_path.parent.mkdir(parents=True, exist_ok=True)
        out = output_path.open("w", newline="", encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write {output_path}: {exc.strerror}; choose a writable --output path") from exc
    count = 0
    writer: csv.DictWriter[str] | None = None
    with out, tqdm(total=total, unit="doc", disable=not progress, file=sys.stderr) as bar:
        for chunk in _chunks(rows, CHUNK):
            texts = [str(row.get(text_column) or "") for row in chunk]
            for row, pred in zip(chunk, classifier.classify(texts), strict=True):
                row.update({"topic": pred.topic, "topic_confidence": round(pred.topic_confidence, 6),
                            "sentiment": pred.sentiment, "p_bearish": round(pred.p_bearish, 6),
                            "p_neutral": round(pred.p_neutral, 6), "p_bullish": round(pred.p_bullish, 6),
                            "model_version": classifier.version})
                if out_fmt == "jsonl":
                    out.write(json.dumps(row, ensure_ascii=False) + "\n")
                else:
                    if writer is None:
                        names = columns or [k for k in row if k not in OUTPUT_COLUMNS]
                        names = [c for c in names if c not in OUTPUT_COLUMNS] + list(OUTPUT_COLUMNS)
                        writer = csv.DictWriter(out, fieldnames=names, extrasaction="ignore")
                        writer.writeheader()
                    writer.writerow({k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in row.items()})
            count += len(chunk)
            bar.update(len(chunk))
        if out_fmt == "csv" and writer is None:
            csv.writer(out).writerow([c for c in columns if c not in OUTPUT_COLUMNS] + list(OUTPUT_COLUMNS))
    return count


def classify_command(args: argparse.Namespace, settings: Settings) -> int:
    count = classify_file(args.input, args.output, settings, text_column=args.text_column,
                          progress=not args.no_progress)
    print(f"classified {count} documents into {args.output}", file=sys.stderr)
    return 0


# --- train / export -----------------------------------------------------------------------

def _training_module() -> Any:
    try:
        import training.__main__ as entry
    except ImportError as exc:
        raise ConfigurationError(f"training needs the train extra ({exc.name} is missing): "
                                 "pip install -e '.[train]'") from exc
    return entry


def train_command(args: argparse.Namespace, settings: Settings) -> int:
    sentiment = args.sentiment_csv or settings.train_sentiment_csv
    topic = args.topic_csv or settings.train_topic_csv
    if not sentiment and not topic:
        raise ConfigurationError("no training data: pass --sentiment-csv/--topic-csv or set "
                                 "FINSENT_TRAIN_SENTIMENT_CSV / FINSENT_TRAIN_TOPIC_CSV")
    argv = ["train", "--work-dir", str(args.work_dir), "--memory"]
    if sentiment:
        argv += ["--sentiment-csv", str(sentiment)]
    if topic:
        argv += ["--topic-csv", str(topic)]
    if args.out:
        argv += ["--out", str(args.out)]
    if args.version:
        argv += ["--version", args.version]
    for flag, _, _ in TRAIN_KNOBS:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            argv += [flag, str(value)]
    if args.tiny:
        argv.append("--tiny")
    return int(_training_module().main(argv))


def export_command(args: argparse.Namespace, settings: Settings) -> int:
    sentiment = args.sentiment_csv or settings.train_sentiment_csv
    topic = args.topic_csv or settings.train_topic_csv
    if not args.checkpoint.is_file():
        raise InputError(f"checkpoint {args.checkpoint} does not exist; 'finsent train' writes WORK_DIR/checkpoints/epochN.pt")
    if not sentiment and not topic:
        raise ConfigurationError("export checks parity on the dev split: pass --sentiment-csv/--topic-csv or set "
                                 "FINSENT_TRAIN_SENTIMENT_CSV / FINSENT_TRAIN_TOPIC_CSV")
    argv = ["export", "--checkpoint", str(args.checkpoint), "--out", str(args.out)]
    if sentiment:
        argv += ["--sentiment-csv", str(sentiment)]
    if topic:
        argv += ["--topic-csv", str(topic)]
    if args.version:
        argv += ["--version", args.version]
    if args.gpu_precision:
        argv += ["--gpu-precision", args.gpu_precision]
    if args.memory:
        argv.append("--memory")
    return int(_training_module().main(argv))
