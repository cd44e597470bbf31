"""Helpers shared by every command module: settings from flags, "not implemented yet"."""

from __future__ import annotations

import argparse
from typing import Any

from pipeline.errors import NotImplementedYet
from pipeline.settings import Settings, load_settings

GLOBAL_OVERRIDES = {
    "database_url": "database_url",
    "kafka_bootstrap": "kafka_bootstrap",
    "model_dir": "model_dir",
}


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment, with the global flags given on the command line."""
    overrides: dict[str, Any] = {
        field: getattr(args, attr, None) for attr, field in GLOBAL_OVERRIDES.items()
    }
    return load_settings(**overrides)


def not_implemented(issue: str) -> Any:
    """A handler for a command whose implementation has not landed yet."""

    def handler(args: argparse.Namespace, settings: Settings) -> int:
        raise NotImplementedYet(f"'finsent {args.command}' is not implemented yet ({issue})")

    return handler


def migrated_engine(settings: Settings, *, pool_size: int = 2) -> Any:
    """An engine on the configured database, migrated to the code's schema first (the
    light commands' way in: models, label)."""
    from pipeline import db

    url = db.database_url(settings)
    db.upgrade(url)
    return db.make_engine(url, pool_size=pool_size)
