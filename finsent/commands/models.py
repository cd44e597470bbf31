"""``finsent models list | promote V | rollback``: the model registry (champion and
challengers in ``model_versions``); running workers switch between batches."""

from __future__ import annotations

import argparse
from typing import Any

from finsent.commands.common import migrated_engine
from pipeline import registry
from pipeline.errors import InputError
from pipeline.settings import Settings


def register(sub: Any) -> None:
    p = sub.add_parser("models", help="model versions: list | promote V | rollback")
    p.add_argument("action", choices=["list", "promote", "rollback"])
    p.add_argument("version", nargs="?", help="the version to promote")
    p.set_defaults(func=models)


def models(args: argparse.Namespace, settings: Settings) -> int:
    engine = migrated_engine(settings)
    try:
        if args.action == "list":
            versions = registry.list_versions(engine)
            if not versions:
                print(
                    f"no model versions registered; workers serve the shipped model in {settings.model_dir}"
                )
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
                raise InputError(
                    "'finsent models promote' needs the version to promote; see 'finsent models list'"
                )
            with engine.begin() as conn:
                registry.promote(conn, args.version)
            print(
                f"{args.version} is now the champion; running workers switch to it between batches"
            )
            return 0
        if args.version:
            raise InputError(
                "'finsent models rollback' takes no version: it restores the previous champion "
                "(use 'finsent models promote V' for a specific one)"
            )
        with engine.begin() as conn:
            demoted, restored = registry.rollback(conn)
        print(
            f"rolled back: {demoted.version} -> rejected; {restored.version} is the champion again"
        )
        return 0
    finally:
        engine.dispose()
