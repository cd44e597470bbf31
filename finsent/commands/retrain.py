"""``finsent retrain --now | --schedule CRON``: retrain on the labelled data plus human
feedback, gate the challenger against the champion, promote only when it is better
(:mod:`training.api`; needs the ``train`` extra, which the api checks and names)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigurationError
from pipeline.settings import Settings
from training import api

#: exit code of ``retrain --now`` when another run holds the lock (distinct from 1 = failed run,
#: 2 = configuration or input error), so a cron wrapper can tell "busy" from "broken".
EXIT_LOCKED = 3


def register(sub: Any) -> None:
    p = sub.add_parser("retrain", help="retrain now or on a schedule, champion/challenger gated")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--now", action="store_true", help="run one retraining now and exit")
    g.add_argument(
        "--candidate",
        metavar="MODEL_DIR",
        type=Path,
        help="gate a model directory trained elsewhere (python -m training train/export) "
        "against the champion, exactly as a retrained challenger: registered, and promoted "
        "only if it passes",
    )
    g.add_argument(
        "--schedule",
        metavar="CRON",
        help="run forever, retraining on this crontab schedule (5 fields, UTC; "
        "a 6-field form with leading seconds is accepted too)",
    )
    p.add_argument("--sentiment-csv", default=None, help="overrides FINSENT_TRAIN_SENTIMENT_CSV")
    p.add_argument("--topic-csv", default=None, help="overrides FINSENT_TRAIN_TOPIC_CSV")
    p.add_argument(
        "--news-csv",
        default=None,
        help="overrides FINSENT_TRAIN_NEWS_CSV (rss_finance_headlines_2021.csv.gz: news train "
        "rows, and the news dev set the gate compares)",
    )
    p.add_argument(
        "--train-config",
        default=None,
        metavar="JSON",
        help="TrainConfig overrides as a JSON object, e.g. '{\"epochs\": 1}' for a shorter run",
    )
    p.set_defaults(func=retrain)


def retrain(args: argparse.Namespace, settings: Settings) -> int:
    overrides = {
        k: Path(v)
        for k, v in (
            ("train_sentiment_csv", args.sentiment_csv),
            ("train_topic_csv", args.topic_csv),
            ("train_news_csv", args.news_csv),
        )
        if v is not None
    }
    if overrides:
        settings = settings.model_copy(update=overrides)
    config = api.train_config_from_json(args.train_config)
    if args.schedule:
        check_schedule_can_train(settings)
        api.run_retrain_schedule(settings, args.schedule, config=config)
        return 0
    try:
        if args.candidate is not None:
            outcome = api.retrain_once(
                settings, trigger="candidate", config=config, candidate=args.candidate
            )
        else:
            outcome = api.retrain_once(settings, trigger="manual", config=config)
    except api.RetrainLocked as exc:
        print(f"finsent: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    print(outcome.summary())
    return 0 if outcome.status in ("promoted", "rejected") else 1


def check_schedule_can_train(settings: Settings) -> None:
    """ConfigurationError (one line, exit 2) unless a scheduled run could train: torch
    imports and the base training data settings name existing files. Checked before the
    schedule is stored, so a broken setup fails now instead of at 02:00 in a log."""
    try:
        import torch  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken install's OSError
        raise ConfigurationError(
            f"retrain --schedule needs torch, which does not import ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())}): pip install -e '.[train]'"
        ) from None
    files = {
        "FINSENT_TRAIN_SENTIMENT_CSV (--sentiment-csv)": settings.train_sentiment_csv,
        "FINSENT_TRAIN_TOPIC_CSV (--topic-csv)": settings.train_topic_csv,
    }
    if all(path is None for path in files.values()):
        raise ConfigurationError(
            "retrain --schedule needs base training data: set FINSENT_TRAIN_SENTIMENT_CSV "
            "and/or FINSENT_TRAIN_TOPIC_CSV (or --sentiment-csv/--topic-csv) to labelled CSVs"
        )
    for name, path in files.items():
        if path is not None and not Path(path).is_file():
            raise ConfigurationError(
                f"retrain --schedule: {name} is {path}, which is not a file; "
                "point it at a labelled CSV (text,label)"
            )
