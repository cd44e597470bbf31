"""The ``Document``: what every producer emits and the scorer consumes.

A document's ``id`` is stable: the source plus its guid or URL, else a hash of its content,
so re-ingesting the same item yields the same id and the database upsert makes it
harmless. Text is normalised (HTML entities, control characters, invalid UTF-8,
whitespace) and capped in length before it is accepted; what cannot be made into a valid
document raises ``InputError`` with a reason the caller sends to the dead-letter topic.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import unicodedata
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline.errors import InputError
from pipeline.records import TimePrecision

MAX_TEXT_CHARS = 20_000
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SPACE = re.compile(r"\s+")
_TAG = re.compile(r"<[^>]{0,500}>")


def normalise_text(value: str | bytes, max_chars: int = MAX_TEXT_CHARS) -> str:
    """Decode (invalid UTF-8 replaced), unescape HTML entities, drop tags and control
    characters, collapse whitespace, NFC-normalise and cap at ``max_chars``."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    text = html.unescape(value)
    text = _TAG.sub(" ", text)
    text = _CONTROL.sub(" ", text)
    text = unicodedata.normalize("NFC", text)
    text = _SPACE.sub(" ", text).strip()
    if len(text) > max_chars:
        text = text[:max_chars].rstrip()
    return text


def make_document_id(
    source: str,
    *,
    guid: str | None = None,
    url: str | None = None,
    text: str | None = None,
    published_at: datetime | None = None,
) -> str:
    """Stable id: sha256 of the source and guid, else URL, else text (+ published time)."""
    if guid:
        basis = f"guid:{guid.strip()}"
    elif url:
        basis = f"url:{url.strip()}"
    elif text:
        stamp = published_at.astimezone(UTC).isoformat() if published_at else ""
        basis = f"text:{normalise_text(text)}|{stamp}"
    else:
        raise InputError("cannot make a document id: no guid, url or text")
    digest = hashlib.sha256(f"{source.strip()}|{basis}".encode()).hexdigest()[:32]
    return f"{source.strip()[:40]}:{digest}"


class Document(BaseModel):
    """One news item or social post, normalised. Times are timezone-aware UTC.

    ``time_precision`` says how much of ``published_at`` the source gave (see
    :data:`pipeline.records.TIME_PRECISIONS`): a ``day`` document's ``published_at`` is the
    start of its day and stands for the whole day. Records without the field (written
    before it existed) are ``second``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, max_length=200)
    source: str = Field(min_length=1, max_length=200)
    kind: Literal["news", "social"] = "news"
    published_at: datetime
    title: str | None = None
    text: str = Field(min_length=1)
    url: str | None = Field(None, max_length=4000)
    author: str | None = Field(None, max_length=500)
    language: str | None = Field(None, max_length=20)
    entities: tuple[str, ...] = ()
    time_precision: TimePrecision = "second"

    @field_validator("published_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    @field_validator("text")
    @classmethod
    def _text(cls, value: str) -> str:
        text = normalise_text(value)
        if not text:
            raise ValueError("text is empty after normalisation")
        return text

    @field_validator("title")
    @classmethod
    def _title(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return normalise_text(value, max_chars=1000) or None

    @property
    def content(self) -> str:
        """What the classifier reads: the title and the text, once each."""
        if self.title and not self.text.startswith(self.title):
            return f"{self.title}. {self.text}"
        return self.text

    def to_json_bytes(self) -> bytes:
        return self.model_dump_json().encode("utf-8")

    @classmethod
    def from_json_bytes(cls, raw: bytes) -> Document:
        """Parse a Kafka record value; InputError with the reason when it is not a document."""
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise InputError(f"record is not UTF-8: {exc}") from None
        except json.JSONDecodeError as exc:
            raise InputError(f"record is not JSON: {exc.msg} at position {exc.pos}") from None
        return cls.parse_obj_or_raise(data)

    @classmethod
    def parse_obj_or_raise(cls, data: Any) -> Document:
        if not isinstance(data, dict):
            raise InputError(f"document must be a JSON object, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise InputError("invalid document: " + describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    """'field: message; field: message' from a pydantic error, for DLQ reasons and 400s."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '(body)'}: {err['msg']}" for err in exc.errors()
    )
