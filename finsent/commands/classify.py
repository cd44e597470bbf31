"""``finsent classify FILE --output OUT``: batch-classify a CSV or JSONL file with the
serving model (onnxruntime + tokenizers only, never torch), streamed in chunks so memory
stays flat whatever the file's size.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import InputError
from pipeline.settings import Settings

OUTPUT_COLUMNS = (
    "topic",
    "topic_confidence",
    "sentiment",
    "p_bearish",
    "p_neutral",
    "p_bullish",
    "model_version",
)
CHUNK = 256
#: what an input column named like an output column is renamed to (``sentiment`` ->
#: ``sentiment_input``): a labelled file keeps its own labels next to the predictions
CLASH_SUFFIX = "_input"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "classify",
        help="batch-classify a CSV/JSONL file",
        description="Classify every row of a CSV or JSONL file. The output keeps the input "
        "columns and adds: " + ", ".join(OUTPUT_COLUMNS) + "; an input column of one of "
        f"those names is kept as NAME{CLASH_SUFFIX}.",
    )
    p.add_argument("input", type=Path, help="a .csv (with a header) or .jsonl/.ndjson file")
    p.add_argument(
        "--output",
        type=Path,
        required=True,
        help="where to write (.csv or .jsonl; format from the extension)",
    )
    p.add_argument(
        "--text-column", default="text", help="the column holding the text (default: text)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=classify_command)


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    raise InputError(
        f"{path}: unknown format {suffix or '(no extension)'}; use a .csv or .jsonl file"
    )


def _read_rows(
    path: Path, fmt: str, text_column: str
) -> tuple[list[str], Iterator[dict[str, Any]]]:
    """(column names, row iterator); errors name the file, line and what to do."""
    try:
        handle = path.open(newline="", encoding="utf-8")
        handle.read(1)
        handle.seek(0)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InputError(
            f"cannot read {path}: {reason}; check the path and that it is a UTF-8 text file"
        ) from exc
    if fmt == "csv":
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        if text_column not in columns:
            handle.close()
            raise InputError(
                f"{path} has no column {text_column!r} (columns: {', '.join(columns) or 'none'}); "
                "choose one with --text-column"
            )

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
                    raise InputError(
                        f"{path} line {number} is not valid JSON ({exc.msg})"
                    ) from None
                if not isinstance(record, dict):
                    raise InputError(f"{path} line {number} is not a JSON object")
                if text_column not in record:
                    raise InputError(
                        f"{path} line {number} has no field {text_column!r} (fields: "
                        f"{', '.join(record) or 'none'}); choose one with --text-column"
                    )
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


def clash_free_name(name: str, taken: set[str] | dict[str, Any]) -> str:
    """The name an input column clashing with an output column is written under.

    >>> clash_free_name("sentiment", {"text", "sentiment"})
    'sentiment_input'
    >>> clash_free_name("topic", {"topic", "topic_input"})
    'topic_input_input'
    """
    renamed = name + CLASH_SUFFIX
    while renamed in taken or renamed in OUTPUT_COLUMNS:
        renamed += CLASH_SUFFIX
    return renamed


def classify_file(
    input_path: Path,
    output_path: Path,
    settings: Settings,
    *,
    text_column: str = "text",
    progress: bool = True,
) -> int:
    """Classify every row of ``input_path`` into ``output_path``; return the row count."""
    from tqdm import tqdm

    from pipeline.inference import Classifier

    in_fmt, out_fmt = _format(input_path), _format(output_path)
    if input_path.resolve() == output_path.resolve():
        raise InputError("--output must differ from the input file")
    columns, rows = _read_rows(input_path, in_fmt, text_column)
    if "ort_intra_threads" not in settings.model_fields_set:
        # a batch job has the cores to itself (the stream's default of 1 leaves room for
        # the other roles): onnxruntime's default, one thread per core
        settings = settings.model_copy(update={"ort_intra_threads": 0})
    classifier = Classifier.load(settings.model_dir, settings)
    total = _count_rows(input_path, in_fmt) if progress else None
    try:
        output_path.parent.mkdir(parents=True, exist_ok=True)
        out = output_path.open("w", newline="", encoding="utf-8")
    except OSError as exc:
        raise InputError(
            f"cannot write {output_path}: {exc.strerror}; choose a writable --output path"
        ) from exc
    count = 0
    writer: csv.DictWriter[str] | None = None
    # never overwrite an input column with a prediction: rename it (and say so once)
    renamed: dict[str, str] = {
        c: clash_free_name(c, set(columns)) for c in columns if c in OUTPUT_COLUMNS
    }
    columns = [renamed.get(c, c) for c in columns]
    told: set[str] = set()
    with out, tqdm(total=total, unit="doc", disable=not progress, file=sys.stderr) as bar:
        for chunk in _chunks(rows, CHUNK):
            texts = [str(row.get(text_column) or "") for row in chunk]
            for row, pred in zip(chunk, classifier.classify(texts), strict=True):
                for name in [k for k in row if k in OUTPUT_COLUMNS]:
                    new_name = renamed.get(name) or clash_free_name(name, row)
                    row = {(new_name if k == name else k): v for k, v in row.items()}
                    if name not in told:
                        told.add(name)
                        print(
                            f"finsent: input column {name!r} kept as {new_name!r} "
                            "(the output adds its own)",
                            file=sys.stderr,
                        )
                row.update(
                    {
                        "topic": pred.topic,
                        "topic_confidence": round(pred.topic_confidence, 6),
                        "sentiment": pred.sentiment,
                        "p_bearish": round(pred.p_bearish, 6),
                        "p_neutral": round(pred.p_neutral, 6),
                        "p_bullish": round(pred.p_bullish, 6),
                        "model_version": classifier.version,
                    }
                )
                if out_fmt == "jsonl":
                    out.write(json.dumps(row, ensure_ascii=False) + "\n")
                else:
                    if writer is None:
                        names = columns or [k for k in row if k not in OUTPUT_COLUMNS]
                        names = names + list(OUTPUT_COLUMNS)
                        writer = csv.DictWriter(out, fieldnames=names, extrasaction="ignore")
                        writer.writeheader()
                    writer.writerow(
                        {
                            k: (json.dumps(v) if isinstance(v, (dict, list)) else v)
                            for k, v in row.items()
                        }
                    )
            count += len(chunk)
            bar.update(len(chunk))
        if out_fmt == "csv" and writer is None:
            csv.writer(out).writerow(columns + list(OUTPUT_COLUMNS))
    return count


def classify_command(args: argparse.Namespace, settings: Settings) -> int:
    count = classify_file(
        args.input,
        args.output,
        settings,
        text_column=args.text_column,
        progress=not args.no_progress,
    )
    print(f"classified {count} documents into {args.output}", file=sys.stderr)
    return 0
