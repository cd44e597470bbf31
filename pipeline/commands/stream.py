"""``finsent demo | run | worker | ingest``: the streaming data path (issue 4)."""

from __future__ import annotations

import argparse
from typing import Any

from pipeline.commands.common import not_implemented
from pipeline.settings import Settings

ISSUE = "the streaming pipeline, issue 4"


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="embedded everything, a sample stream, a summary")
    p.set_defaults(func=demo)
    p = sub.add_parser("run", help="the daemon: every role in one process")
    p.set_defaults(func=not_implemented(ISSUE))
    p = sub.add_parser("worker", help="run one role: scorer or trends")
    p.add_argument("role", choices=["scorer", "trends"])
    p.set_defaults(func=not_implemented(ISSUE))
    p = sub.add_parser("ingest", help="produce documents: rss URL… | replay FILE | http")
    p.add_argument("source", choices=["rss", "replay", "http"])
    p.add_argument("inputs", nargs="*")
    p.set_defaults(func=not_implemented(ISSUE))


def demo(args: argparse.Namespace, settings: Settings) -> int:
    """Until the pipeline lands: start the embedded services, migrate, print status."""
    from pipeline.commands.core import collect_status
    from pipeline.services import start_services

    with start_services(settings) as services:
        print(f"broker:   {services.descriptions['broker']}")
        print(f"database: {services.descriptions['database']}")
        for name, value in collect_status(settings).items():
            if name not in ("broker", "database"):
                print(f"{name}: {value}")
    print("the streaming pipeline (issue 4) has not landed yet: nothing is replayed or scored")
    return 0
