"""A non-editable install carries what ``finsent demo`` and ``finsent classify`` need: the
shipped model, the demo assets and the migrations are package data of the wheel (a wheel
without them failed with "…/site-packages/models is not a model directory")."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_ships_the_model_demo_assets_and_migrations(tmp_path: Path) -> None:
    # build from a copy: an in-tree build leaves build/ behind in the checkout
    source = tmp_path / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "runs", "__pycache__", "*.egg-info", ".*_cache"
        ),
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--wheel-dir",
            str(tmp_path),
            str(source),
        ],
        check=True,
        cwd=tmp_path,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("finsent-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    manifest = ROOT / "finsent" / "model" / "manifest.json"
    shipped = {f"finsent/model/{p.name}" for p in manifest.parent.iterdir() if p.is_file()}
    assert shipped <= names, sorted(shipped - names)
    for needed in (
        "finsent/demo/stream.jsonl",
        "finsent/demo/watchlist.yaml",
        "finsent/demo/rules.yaml",
        "finsent/cli.py",
        "finsent/roles.py",
        "migrations/versions/0002_partition_watermarks.py",
        "pipeline/settings.py",
        "consumers/worker.py",
        "alerts/templates/email.txt.j2",
    ):
        assert needed in names, needed
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "finsent = finsent.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    assert not any(n.startswith(("tests/", "bench/")) for n in names)
