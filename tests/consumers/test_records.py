"""Parsing what arrives on the Kafka topics: anything at all either parses or raises
InputError (which sends it to the dead-letter topic); nothing else escapes."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from consumers.trends import parse_scored
from pipeline.documents import Document
from pipeline.errors import InputError
from pipeline.records import keys_of

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=6)
    ),
    max_leaves=20,
)
SCORED_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "key": st.sampled_from(["topic:Markets", "entity:NVLX", "bogus", ""]) | st.integers(),
        "document_id": st.text(max_size=5) | st.none(),
        "event_at": st.sampled_from(["2026-03-02T10:00:00+00:00", "2026-03-02T10:00:00", "nope"])
        | st.integers(),
        "sentiment": st.sampled_from(["bearish", "neutral", "bullish", "angry"]) | st.none(),
        "p_bearish": st.floats() | st.text(max_size=3),
        "p_neutral": st.floats(),
        "p_bullish": st.floats(),
        "topic_confidence": st.floats() | st.none(),
        "doc_vector": st.lists(st.floats(), max_size=3) | st.text(max_size=3),
    },
)


@given(st.binary(max_size=300))
def test_any_bytes_are_a_document_or_an_input_error(raw: bytes) -> None:
    try:
        Document.from_json_bytes(raw)
    except InputError as exc:
        assert str(exc)


@given(JSON)
def test_any_json_is_a_document_or_an_input_error(value: object) -> None:
    try:
        Document.from_json_bytes(json.dumps(value).encode())
    except InputError as exc:
        assert str(exc)


@given(
    st.binary(max_size=200)
    | JSON.map(lambda v: json.dumps(v).encode())
    | SCORED_FIELDS.map(lambda v: json.dumps(v).encode())
)
def test_any_scored_record_parses_or_raises_input_error(raw: bytes) -> None:
    try:
        item = parse_scored(raw)
    except InputError as exc:
        assert str(exc)
    else:
        assert item.key.startswith(("topic:", "entity:")) and item.event_at.tzinfo is not None


def test_keys_are_the_topic_and_each_entity_once() -> None:
    assert keys_of("Markets", ("nvlx", "NVLX", " brwl ", "")) == [
        "topic:Markets",
        "entity:NVLX",
        "entity:BRWL",
    ]
