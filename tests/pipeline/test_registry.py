"""The model registry: register complete directories only, promote, roll back, list."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipeline import registry
from pipeline.errors import ModelError


def fake_model_dir(root: Path, version: str) -> Path:
    """A directory with every file a manifest names (contents do not matter to the registry)."""
    path = root / version
    path.mkdir(parents=True)
    manifest = {
        "version": version,
        "classifier": {"cpu": "classifier.int8.onnx", "gpu": "classifier.onnx"},
        "memory": {"file": "memory.onnx"},
        "tokenizer": "tokenizer.json",
    }
    (path / "manifest.json").write_text(json.dumps(manifest))
    for name in ("classifier.int8.onnx", "classifier.onnx", "memory.onnx", "tokenizer.json"):
        (path / name).write_bytes(b"x")
    return path


def register(engine: sa.Engine, root: Path, version: str, f1: float = 0.5) -> Path:
    path = fake_model_dir(root, version)
    with engine.begin() as conn:
        registry.register_version(conn, version, path, {"sentiment": {"macro_f1": f1}})
    return path


def statuses(engine: sa.Engine) -> dict[str, str]:
    return {v.version: v.status for v in registry.list_versions(engine)}


def test_promote_makes_one_champion_and_retires_the_previous(
    engine: sa.Engine, tmp_path: Path
) -> None:
    register(engine, tmp_path, "v1")
    register(engine, tmp_path, "v2")
    assert registry.current_champion(engine) is None
    with engine.begin() as conn:
        registry.promote(conn, "v1")
    with engine.begin() as conn:
        registry.promote(conn, "v2")
    assert statuses(engine) == {"v1": "retired", "v2": "champion"}
    champion = registry.current_champion(engine)
    assert (
        champion is not None
        and champion.version == "v2"
        and champion.metrics["sentiment"]["macro_f1"] == 0.5
    )


def test_rollback_restores_the_previous_champion_and_never_flips_back(
    engine: sa.Engine, tmp_path: Path
) -> None:
    for v in ("v1", "v2", "v3"):
        register(engine, tmp_path, v)
        with engine.begin() as conn:
            registry.promote(conn, v)
    with engine.begin() as conn:
        demoted, restored = registry.rollback(conn)
    assert (demoted.version, restored.version) == ("v3", "v2")
    with engine.begin() as conn:
        demoted, restored = registry.rollback(conn)
    assert (demoted.version, restored.version) == ("v2", "v1")
    assert statuses(engine) == {"v1": "champion", "v2": "rejected", "v3": "rejected"}
    with engine.begin() as conn, pytest.raises(ModelError, match="nothing to roll back to"):
        registry.rollback(conn)
    assert registry.current_champion(engine).version == "v1"  # type: ignore[union-attr]


def test_rollback_without_a_champion_says_so(engine: sa.Engine) -> None:
    with engine.begin() as conn, pytest.raises(ModelError, match="no champion"):
        registry.rollback(conn)


def test_incomplete_or_unknown_versions_are_refused(engine: sa.Engine, tmp_path: Path) -> None:
    path = fake_model_dir(tmp_path, "half")
    (path / "classifier.int8.onnx").unlink()
    with (
        engine.begin() as conn,
        pytest.raises(ModelError, match="incomplete.*classifier.int8.onnx"),
    ):
        registry.register_version(conn, "half", path, {})
    with engine.begin() as conn, pytest.raises(ModelError, match="no manifest"):
        registry.register_version(conn, "empty", tmp_path / "nothing", {})
    with engine.begin() as conn, pytest.raises(ModelError, match="not registered"):
        registry.promote(conn, "ghost")
    register(engine, tmp_path, "v1")
    with engine.begin() as conn, pytest.raises(ModelError, match="already registered"):
        registry.register_version(conn, "v1", tmp_path / "v1", {})
    (tmp_path / "v1" / "memory.onnx").unlink()  # the directory was damaged after registration
    with engine.begin() as conn, pytest.raises(ModelError, match="incomplete"):
        registry.promote(conn, "v1")
    assert registry.current_champion(engine) is None
