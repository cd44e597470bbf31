"""``finsent label DOC_ID --sentiment S [--topic ID|NAME]``, ``finsent label export DIR``
and ``finsent label --list-topics``: human feedback for retraining (the ``labels`` table,
:mod:`pipeline.labels`)."""

from __future__ import annotations

import argparse
import getpass
from typing import Any

from finsent.commands.common import migrated_engine
from pipeline import labels
from pipeline.errors import InputError
from pipeline.records import SENTIMENTS, TOPICS
from pipeline.settings import Settings


def register(sub: Any) -> None:
    p = sub.add_parser(
        "label",
        help="human feedback for retraining: label DOC_ID --sentiment S [--topic ID|NAME] | "
        "label export DIR | label --list-topics",
        description="'finsent label DOC_ID --sentiment bearish|neutral|bullish [--topic ID|NAME] "
        "[--by NAME]' stores a label; 'finsent label export DIR' writes every label as training "
        "CSVs into DIR; 'finsent label --list-topics' lists the topics with their ids.",
    )
    p.add_argument(
        "doc_id", nargs="?", metavar="DOC_ID|export", help="the document to label, or 'export'"
    )
    p.add_argument(
        "out", nargs="?", metavar="DIR", help="with 'export': the directory to write the CSVs into"
    )
    p.add_argument("--sentiment", choices=list(SENTIMENTS))
    p.add_argument(
        "--topic",
        metavar="ID|NAME",
        help=f"topic id 0-{len(TOPICS) - 1} or name, e.g. Earnings (see --list-topics)",
    )
    p.add_argument("--by", default=None, help="who labels (default: the login name)")
    p.add_argument(
        "--list-topics", action="store_true", help="list the topics and their ids, then exit"
    )
    p.set_defaults(func=label)


def topic_id(value: str) -> int:
    """The topic id of ``value``: an id, a topic name (any case), or the start of exactly
    one topic's name. InputError otherwise, pointing at ``--list-topics``.

    >>> topic_id("5"), topic_id("Earnings"), topic_id("fed / central banks"), topic_id("ipo")
    (5, 5, 1, 11)
    """
    text = value.strip()
    if text.lstrip("-").isdigit():
        number = int(text)
        if 0 <= number < len(TOPICS):
            return number
        raise InputError(
            f"--topic {value}: topic ids run 0-{len(TOPICS) - 1}; see finsent label --list-topics"
        )
    folded = text.casefold()
    exact = [i for i, name in enumerate(TOPICS) if name.casefold() == folded]
    matches = exact or [i for i, name in enumerate(TOPICS) if name.casefold().startswith(folded)]
    if folded and len(matches) == 1:
        return matches[0]
    which = f"matches {', '.join(repr(TOPICS[i]) for i in matches)}" if matches else "is no topic"
    raise InputError(
        f"--topic {value!r} {which}: give a topic id or name; see finsent label --list-topics"
    )


def label(args: argparse.Namespace, settings: Settings) -> int:
    if args.list_topics:
        for number, name in enumerate(TOPICS):
            print(f"{number:3d}  {name}")
        return 0
    if args.doc_id is None:
        raise InputError(
            "finsent label needs DOC_ID --sentiment S [--topic ID|NAME], 'export DIR' or "
            "--list-topics"
        )
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
            f"unexpected argument {args.out!r}: use 'finsent label DOC_ID --sentiment S [--topic ID|NAME]'"
        )
    topic = topic_id(args.topic) if args.topic is not None else None
    engine = migrated_engine(settings)
    try:
        with engine.begin() as conn:
            label_id = labels.store_label(
                conn,
                args.doc_id,
                sentiment=args.sentiment,
                topic_id=topic,
                labelled_by=args.by or getpass.getuser(),
            )
    finally:
        engine.dispose()
    print(f"label {label_id} stored for document {args.doc_id}")
    return 0
