"""``finsent label DOC_ID --sentiment S [--topic ID]`` and ``finsent label export DIR``:
human feedback for retraining (the ``labels`` table, :mod:`pipeline.labels`)."""

from __future__ import annotations

import argparse
import getpass
from typing import Any

from finsent.commands.common import migrated_engine
from pipeline import labels
from pipeline.errors import InputError
from pipeline.records import SENTIMENTS, n_topics
from pipeline.settings import Settings


def register(sub: Any) -> None:
    p = sub.add_parser(
        "label",
        help="human feedback for retraining: label DOC_ID --sentiment S [--topic ID] | label export DIR",
        description="'finsent label DOC_ID --sentiment bearish|neutral|bullish [--topic ID] [--by NAME]' stores a "
        "label; 'finsent label export DIR' writes every label as training CSVs into DIR.",
    )
    p.add_argument("doc_id", metavar="DOC_ID|export", help="the document to label, or 'export'")
    p.add_argument(
        "out", nargs="?", metavar="DIR", help="with 'export': the directory to write the CSVs into"
    )
    p.add_argument("--sentiment", choices=list(SENTIMENTS))
    p.add_argument("--topic", type=int, metavar="ID", help=f"topic id 0-{n_topics() - 1}")
    p.add_argument("--by", default=None, help="who labels (default: the login name)")
    p.set_defaults(func=label)


def label(args: argparse.Namespace, settings: Settings) -> int:
    if args.doc_id == "export":
        if not args.out:
            raise InputError("'finsent label export' needs the directory to write the CSVs into")
        if args.sentiment or args.topic is not None:
            raise InputError("'finsent label export DIR' takes no --sentiment/--topic")
        engine = migrated_engine(settings)
        try:
            written = labels.export_labels(engine, args.out)
        finally:
            engine.dispose()
        for head, (path, count) in written.items():
            print(f"{head}: {count} rows -> {path}")
        return 0
    if args.out:
        raise InputError(
            f"unexpected argument {args.out!r}: use 'finsent label DOC_ID --sentiment S [--topic ID]'"
        )
    engine = migrated_engine(settings)
    try:
        with engine.begin() as conn:
            label_id = labels.store_label(
                conn,
                args.doc_id,
                sentiment=args.sentiment,
                topic_id=args.topic,
                labelled_by=args.by or getpass.getuser(),
            )
    finally:
        engine.dispose()
    print(f"label {label_id} stored for document {args.doc_id}")
    return 0
