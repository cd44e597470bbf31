"""``finsent retrain | models | label``: feedback and scheduled retraining (issue 6).

``retrain`` needs the ``train`` extra (torch); it is imported only when the command runs,
so ``finsent --help``, ``models`` and ``label`` stay light.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import Any

from pipeline.errors import InputError
from pipeline.settings import Settings

#: exit code of ``retrain --now`` when another run holds the lock (distinct from 1 = failed run,
#: 2 = configuration or input error), so a cron wrapper can tell "busy" from "broken".
EXIT_LOCKED = 3


def register(sub: Any) -> None:
    p = sub.add_parser("retrain", help="retrain now or on a schedule, champion/challenger gated")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--now", action="store_true", help="run one retraining now and exit")
    g.add_argument("--schedule", metavar="CRON",
                   help="run forever, retraining on this crontab schedule (5 fields, UTC; "
                        "a 6-field form with leading seconds is accepted too)")
    p.add_argument("--sentiment-csv", default=None, help="overrides FINSENT_TRAIN_SENTIMENT_CSV")
    p.add_argument("--topic-csv", default=None, help="overrides FINSENT_TRAIN_TOPIC_CSV")
    p.add_argument("--train-config", default=None, metavar="JSON",
                   help="TrainConfig overrides as a JSON object, e.g. '{\"epochs\": 1}' for a shorter run")
    p.set_defaults(func=retrain)

    p = sub.add_parser("models", help="model versions: list | promote V | rollback")
    p.add_argument("action", choices=["list", "promote", "rollback"])
    p.add_argument("version", nargs="?", help="the version to promote")
    p.set_defaults(func=models)

    p = sub.add_parser(
        "label", help="human feedback for retraining: label DOC_ID --sentiment S [--topic ID] | label export DIR",
        description="'finsent label DOC_ID --sentiment bearish|neutral|bullish [--topic ID] [--by NAME]' stores a "
                    "label; 'finsent label export DIR' writes every label as training CSVs into DIR.",
    )
    p.add_argument("doc_id", metavar="DOC_ID|export", help="the document to label, or 'export'")
    p.add_argument("out", nargs="?", metavar="DIR", help="with 'export': the directory to write the CSVs into")
    p.add_argument("--sentiment", choices=["bearish", "neutral", "bullish"])
    p.add_argument("--topic", type=int, metavar="ID", help="topic id 0-19")
    p.add_argument("--by", default=None, help="who labels (default: the login name)")
    p.set_defaults(func=label)


def _engine(settings: Settings) -> Any:
    from pipeline import db

    url = db.database_url(settings)
    db.upgrade(url)
    return db.make_engine(url, pool_size=2)


def retrain(args: argparse.Namespace, settings: Settings) -> int:
    overrides = {k: Path(v) for k, v in (("train_sentiment_csv", args.sentiment_csv),
                                         ("train_topic_csv", args.topic_csv)) if v is not None}
    if overrides:
        settings = settings.model_copy(update=overrides)
    try:
        from training import retrain as job
    except ImportError as exc:
        from pipeline.errors import ConfigurationError

        raise ConfigurationError(f"retraining needs the train extra ({exc}); pip install 'finsent[train]'") from exc
    config = job.train_config_from_json(args.train_config)
    if args.schedule:
        job.run_schedule(settings, args.schedule, config=config)
        return 0
    try:
        outcome = job.run_retraining(settings, trigger="manual", config=config)
    except job.RetrainLocked as exc:
        print(f"finsent: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    print(outcome.summary())
    return 0 if outcome.status in ("promoted", "rejected") else 1


def models(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline import registry

    engine = _engine(settings)
    try:
        if args.action == "list":
            versions = registry.list_versions(engine)
            if not versions:
                print(f"no model versions registered; workers serve the shipped model in {settings.model_dir}")
                return 0
            print(f"{'VERSION':<34} {'STATUS':<10} {'SENT_F1':>8} {'TOPIC_F1':>8}  PATH")
            for v in versions:
                s_f1 = (v.metrics.get("sentiment") or {}).get("macro_f1")
                t_f1 = (v.metrics.get("topic") or {}).get("macro_f1")
                fmt = lambda x: f"{x:.4f}" if isinstance(x, (int, float)) else "-"  # noqa: E731
                print(f"{v.version:<34} {v.status:<10} {fmt(s_f1):>8} {fmt(t_f1):>8}  {v.path}")
            return 0
        if args.action == "promote":
            if not args.version:
                raise InputError("'finsent models promote' needs the version to promote; see 'finsent models list'")
            with engine.begin() as conn:
                registry.promote(conn, args.version)
            print(f"{args.version} is now the champion; running workers switch to it between batches")
            return 0
        if args.version:
            raise InputError("'finsent models rollback' takes no version: it restores the previous champion "
                             "(use 'finsent models promote V' for a specific one)")
        with engine.begin() as conn:
            demoted, restored = registry.rollback(conn)
        print(f"rolled back: {demoted.version} -> rejected; {restored.version} is the champion again")
        return 0
    finally:
        engine.dispose()


def label(args: argparse.Namespace, settings: Settings) -> int:
    from pipeline import labels

    if args.doc_id == "export":
        if not args.out:
            raise InputError("'finsent label export' needs the directory to write the CSVs into")
        if args.sentiment or args.topic is not None:
            raise InputError("'finsent label export DIR' takes no --sentiment/--topic")
        engine = _engine(settings)
        try:
            written = labels.export_labels(engine, args.out)
        finally:
            engine.dispose()
        for head, (path, count) in written.items():
            print(f"{head}: {count} rows -> {path}")
        return 0
    if args.out:
        raise InputError(f"unexpected argument {args.out!r}: use 'finsent label DOC_ID --sentiment S [--topic ID]'")
    engine = _engine(settings)
    try:
        with engine.begin() as conn:
            label_id = labels.store_label(conn, args.doc_id, sentiment=args.sentiment, topic_id=args.topic,
                                          labelled_by=args.by or getpass.getuser())
    finally:
        engine.dispose()
    print(f"label {label_id} stored for document {args.doc_id}")
    return 0
