"""Turning user input into Documents: event-time parsing, cleaning, stable ids, and hostile
input that must end as a clear error, never a crash or an unstorable document."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.documents import Document
from pipeline.errors import InputError
from pipeline.producers.base import incoming_from_mapping, parse_event_time

MAY1 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "value",
    [
        "2024-05-01T12:00:00Z",
        "2024-05-01T12:00:00+00:00",
        "2024-05-01T14:00:00+02:00",
        "2024-05-01 12:00:00",
        "Wed, 01 May 2024 12:00:00 GMT",
        "Wed, 01 May 2024 08:00:00 -0400",
        1714564800,
        1714564800.0,
        "1714564800",
        1714564800000,
        "1714564800000",
        1714564800000000,
        datetime(2024, 5, 1, 12),
        datetime(2024, 5, 1, 7, tzinfo=timezone(timedelta(hours=-5))),
    ],
)
def test_event_time_formats_all_become_the_same_utc_instant(value: object) -> None:
    parsed = parse_event_time(value)
    assert parsed == MAY1 and parsed.tzinfo is not None and parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "value",
    ["", "yesterday", "2024-13-45", True, None, [], {}, float("nan"), "1e400", "Mon, 99 Foo 2024"],
)
def test_unparseable_times_raise_value_error_with_a_hint(value: object) -> None:
    with pytest.raises(ValueError):
        parse_event_time(value)


def test_same_item_twice_gets_the_same_id_and_different_items_different_ids() -> None:
    a = incoming_from_mapping(
        {"text": "Boeing falls", "id": "wire-1", "published_at": "2024-05-01"}
    )
    b = incoming_from_mapping(
        {"text": "Boeing falls (updated)", "id": "wire-1", "published_at": "2024-05-02"}
    )
    c = incoming_from_mapping(
        {"text": "Boeing falls", "id": "wire-2", "published_at": "2024-05-01"}
    )
    assert a.to_document(source="wire").id == b.to_document(source="wire").id
    assert a.to_document(source="wire").id != c.to_document(source="wire").id
    assert a.to_document(source="wire").id != a.to_document(source="other").id
    no_id = {"text": "Boeing falls", "published_at": "2024-05-01"}
    assert (
        incoming_from_mapping(no_id).to_document(source="s").id
        == incoming_from_mapping(dict(no_id)).to_document(source="s").id
    )


def test_html_entities_null_bytes_controls_and_surrogates_are_cleaned_from_every_field() -> None:
    incoming = incoming_from_mapping(
        {
            "text": "<p>Boeing&nbsp;&amp;\x00 Airbus</p>\x07 \ud800 end",
            "title": "T\x00itle <b>x</b>",
            "author": "Jane\x00 Doe\n",
            "url": "https://x.test/a\x00b",
            "published_at": "2024-05-01T12:00:00Z",
            "entities": [" ba ", "BA", "aapl"],
        }
    )
    doc = incoming.to_document(source="s\x00rc")
    dumped = doc.to_json_bytes().decode("utf-8")
    assert "\\u0000" not in dumped and "\x00" not in dumped
    assert doc.text.startswith("Boeing & Airbus") and "<p>" not in doc.text
    assert doc.author == "Jane Doe"
    assert doc.entities == ("AAPL", "BA")
    assert Document.from_json_bytes(doc.to_json_bytes()) == doc


def test_one_megabyte_text_is_capped_not_refused() -> None:
    doc = incoming_from_mapping({"text": "x " * 500_000, "published_at": 1714564800}).to_document(
        source="s"
    )
    assert 0 < len(doc.text) <= 20_000


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"text": 5}, ["text"]),
        ({"text": None}, ["text"]),
        ({}, ["text"]),
        ({"text": "ok", "published_at": "soon"}, ["published_at"]),
        ({"text": "ok", "kind": "blog"}, ["kind"]),
        ({"text": "ok", "entities": "BA"}, ["entities"]),
        ({"text": "ok", "colour": "red"}, ["colour"]),
        ({"text": ["a"], "title": 3}, ["text", "title"]),
    ],
)
def test_wrong_types_are_reported_per_field(body: dict, fields: list[str]) -> None:
    with pytest.raises(InputError) as exc:
        incoming_from_mapping(body)
    for field in fields:
        assert f"{field}:" in str(exc.value)


@pytest.mark.parametrize("text", ["", "   ", "<br/><p></p>", "\x00\x01\x02", "&nbsp;"])
def test_text_that_is_empty_after_normalisation_is_an_input_error(text: str) -> None:
    incoming = incoming_from_mapping({"text": text, "published_at": "2024-05-01"})
    with pytest.raises(InputError, match="text"):
        incoming.to_document(source="s")


def test_far_future_and_missing_times_are_refused_with_the_reason() -> None:
    future = incoming_from_mapping({"text": "x", "published_at": "2999-01-01"})
    with pytest.raises(InputError, match="future"):
        future.to_document(source="s")
    with pytest.raises(InputError, match="published_at: missing"):
        incoming_from_mapping({"text": "x"}).to_document(source="s")
    assert (
        incoming_from_mapping({"text": "x"}).to_document(source="s", default_time=MAY1).published_at
        == MAY1
    )


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = st.sampled_from(
    [
        "text",
        "title",
        "published_at",
        "id",
        "guid",
        "url",
        "source",
        "kind",
        "author",
        "language",
        "entities",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(JSON, st.dictionaries(FIELDS, JSON, max_size=8)))
def test_arbitrary_json_becomes_a_storable_document_or_an_input_error(data: object) -> None:
    try:
        doc = incoming_from_mapping(data).to_document(source="prop", default_time=MAY1)
    except InputError as exc:
        assert str(exc)
        return
    raw = doc.to_json_bytes()
    assert b"\\u0000" not in raw
    assert Document.from_json_bytes(raw).id == doc.id
    json.loads(raw)
