"""``finsent label``: topics by id or by name, and ``--list-topics``."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from finsent.cli import main
from finsent.commands.label import topic_id
from pipeline.errors import InputError
from pipeline.records import TOPICS
from tests.pipeline.test_labels import add_document


def test_list_topics_prints_every_topic_with_its_id(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["label", "--list-topics"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{i:3d}  {name}" for i, name in enumerate(TOPICS)]


@pytest.mark.parametrize(
    ("given", "expected"),
    [("5", 5), ("Earnings", 5), ("earnings", 5), ("Fed / Central Banks", 1), ("gold", 10)],
)
def test_a_topic_is_taken_by_id_name_or_unambiguous_start(given: str, expected: int) -> None:
    assert topic_id(given) == expected


@pytest.mark.parametrize(
    ("given", "reason"),
    [
        ("20", "topic ids run 0-19"),
        ("Stock", "matches 'Stock Commentary', 'Stock Movement'"),
        ("Crypto", "is no topic"),
    ],
)
def test_an_unknown_or_ambiguous_topic_is_refused_pointing_at_the_list(
    given: str, reason: str
) -> None:
    with pytest.raises(InputError, match="--list-topics") as exc:
        topic_id(given)
    assert reason in str(exc.value)


def test_label_command_stores_a_topic_given_by_name(
    engine: sa.Engine, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with engine.begin() as conn:
        add_document(conn, "doc-1", "Quarterly results beat estimates")
    argv = ["--database-url", database_url, "label", "doc-1", "--topic", "earnings", "--by", "desk"]
    assert main(argv) == 0
    with engine.connect() as conn:
        assert conn.execute(sa.text("select topic_id from labels")).scalar() == TOPICS.index(
            "Earnings"
        )
    argv = ["--database-url", database_url, "label", "doc-1", "--topic", "Stock", "--by", "desk"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "--list-topics" in err
