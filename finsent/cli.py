"""The ``finsent`` command line: one entry point, one sub-command per job.

Each group of sub-commands lives in a module of ``finsent/commands/`` exposing
``register(subparsers)``; handlers import what they need lazily, so ``finsent --help`` and
the light commands start fast and never import torch. Settings come from ``FINSENT_*``
variables; a flag given on the command line overrides its variable.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from finsent import __version__
from finsent.commands import alerts as alerts_commands
from finsent.commands import (
    classify,
    db,
    demo,
    ingest,
    label,
    models,
    retrain,
    run,
    top,
    train,
)
from pipeline.errors import FinsentError

#: in the order ``finsent --help`` lists them: what users type, by job
GROUPS = (db, run, demo, ingest, classify, train, retrain, models, label, alerts_commands, top)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="finsent",
        description="Streaming financial-sentiment monitoring: Kafka in, ONNX topic and "
        "sentiment classifier with per-key recurrent memory, PostgreSQL out, alerts.",
    )
    parser.add_argument("--version", action="version", version=f"finsent {__version__}")
    parser.add_argument(
        "--log-level",
        default=None,
        help="DEBUG, INFO, WARNING (default: FINSENT_LOG_LEVEL or INFO)",
    )
    parser.add_argument("--database-url", default=None, help="overrides FINSENT_DATABASE_URL")
    parser.add_argument("--kafka-bootstrap", default=None, help="overrides FINSENT_KAFKA_BOOTSTRAP")
    parser.add_argument("--model-dir", default=None, help="overrides FINSENT_MODEL_DIR")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from finsent.commands.common import settings_from_args

        settings = settings_from_args(args)
        logging.basicConfig(
            level=(args.log_level or settings.log_level).upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        if logging.getLogger().level > logging.DEBUG:
            # apscheduler: two INFO lines per alert evaluation ("Running job", "executed")
            for noisy in ("alembic", "kafka", "apscheduler"):
                logging.getLogger(noisy).setLevel(logging.WARNING)
        code = int(args.func(args, settings) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below
        return code
    except BrokenPipeError:
        # the reader went away (`finsent ... | head -1`): stop quietly, as the Python docs
        # advise for SIGPIPE, and point stdout at devnull so the flush at exit is quiet too
        _stdout_to_devnull()
        return 1
    except FinsentError as exc:
        print(f"finsent: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _stdout_to_devnull() -> None:
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced stdout (tests): nothing to flush
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
