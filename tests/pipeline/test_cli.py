"""The finsent CLI: help, status, db upgrade, and clear errors for unlanded commands."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finsent.cli import main
from pipeline import db

ROOT = Path(__file__).resolve().parents[2]


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in (
        "db",
        "run",
        "demo",
        "worker",
        "ingest",
        "classify",
        "train",
        "export",
        "models",
        "retrain",
        "alerts",
        "label",
        "status",
    ):
        assert command in out


def test_db_upgrade_then_status_reports_revision_and_no_champion(
    empty_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--database-url", empty_database_url, "db", "upgrade"]) == 0
    assert main(["--database-url", empty_database_url, "db", "status"]) == 0
    assert main(["--database-url", empty_database_url, "status"]) == 0
    out = capsys.readouterr().out
    assert f"database at revision {db.head_revision()}" in out
    assert "champion_model" in out and "none registered" in out
    assert "execution_provider  CPUExecutionProvider" in out


def test_bad_setting_exits_2_with_the_variable_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FINSENT_DATABASE_URL", "sqlite:///x.db")
    assert main(["status"]) == 2
    assert "FINSENT_DATABASE_URL" in capsys.readouterr().err


def _closed_port_url() -> str:
    from pipeline.embedded import free_port

    return f"postgresql+psycopg://finsent:db-pa55word@127.0.0.1:{free_port()}/finsent"


@pytest.mark.parametrize(
    "argv", [["status"], ["status", "--json"], ["db", "status"], ["db", "downgrade", "base"]]
)
def test_an_unreachable_database_is_one_line_naming_the_variable_and_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--database-url", _closed_port_url(), *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith(
        "finsent: error: cannot connect to the database postgresql+psycopg://finsent:***@127.0.0.1:"
    )
    assert "FINSENT_DATABASE_URL" in line and "Start PostgreSQL" in line
    assert "db-pa55word" not in captured.err


def test_status_of_an_unreachable_database_prints_no_traceback_from_the_shell() -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if not k.startswith("FINSENT_")}
    env["FINSENT_DATABASE_URL"] = _closed_port_url()
    done = subprocess.run(
        [sys.executable, "-m", "finsent.cli", "status"],
        env=env,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=60,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr
    assert "FINSENT_DATABASE_URL" in done.stderr and "db-pa55word" not in done.stderr + done.stdout


def test_status_exits_2_when_the_broker_is_not_reachable(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.embedded import free_port

    bootstrap = f"127.0.0.1:{free_port()}"
    assert main(["--database-url", database_url, "--kafka-bootstrap", bootstrap, "status"]) == 2
    captured = capsys.readouterr()
    assert f"{bootstrap} (NOT reachable)" in captured.out and "schema_revision" in captured.out
    assert "FINSENT_KAFKA_BOOTSTRAP" in captured.err


def _finsent(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m finsent.cli ARGS`` from the repository root, no FINSENT_* of the shell."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FINSENT_")}
    return subprocess.run(
        [sys.executable, "-m", "finsent.cli", *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
    )


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    from finsent import __version__

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"finsent {__version__}"


# a scheduler job every 0.1 s after the CLI set logging up: what the alert service does
_SCHEDULER_AFTER_CLI = """
import sys, time
from apscheduler.schedulers.background import BackgroundScheduler
from finsent.cli import main
from pipeline import db
main(sys.argv[1:])
scheduler = BackgroundScheduler()
scheduler.add_job(lambda: None, "interval", seconds=0.1)
scheduler.start()
time.sleep(0.6)
scheduler.shutdown()
"""


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_apscheduler_logs_only_warnings_unless_the_log_level_is_debug(level: str) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _SCHEDULER_AFTER_CLI,
            "--log-level",
            level,
            "label",
            "--list-topics",
        ],
        env={k: v for k, v in os.environ.items() if not k.startswith("FINSENT_")},
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if " apscheduler." in line]
    if level == "DEBUG":
        assert any("Running job" in line for line in lines), done.stderr
    else:
        assert lines == []


def test_a_closed_stdout_pipe_ends_quietly_without_a_traceback() -> None:
    """`finsent alerts check --rules examples/rules.yaml | head -1`: the reader is gone
    before finsent writes."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FINSENT_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "finsent.cli", "alerts", "check", "--rules", "examples/rules.yaml"],
        env={**clean, "FINSENT_WEBHOOK__URL": "http://127.0.0.1:9/hook"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # like head after its line: before the interpreter has even started
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1
    assert err == ""


@pytest.mark.parametrize(
    "argv", [["run"], ["ingest", "replay", "finsent/demo/stream.jsonl"]], ids=["run", "replay"]
)
def test_an_unreachable_kafka_bootstrap_is_one_line_and_exit_2_within_10_s(
    argv: list[str], database_url: str
) -> None:
    from pipeline.embedded import free_port

    bootstrap = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    done = _finsent(
        *argv, env={"FINSENT_KAFKA_BOOTSTRAP": bootstrap, "FINSENT_DATABASE_URL": database_url}
    )
    assert time.monotonic() - started < 10
    assert done.returncode == 2 and done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"finsent: error: cannot reach the Kafka broker at {bootstrap}")
    assert "FINSENT_KAFKA_BOOTSTRAP" in line and "Connection refused" in line
