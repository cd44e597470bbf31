"""The entity watchlist: which tickers a document mentions.

A watchlist is a YAML mapping from a ticker to the names and aliases that mean it::

    BA: [Boeing, "737 MAX"]
    AAPL: [Apple, "Apple Inc."]
    F:                       # a one-letter ticker: never matched as a bare word
      names: [Ford, Ford Motor]
    IT:
      names: [Gartner]
      symbol: false          # "IT" is a common word in capitals: match only $IT and names

A document mentions a ticker when its title or text contains

* the **cashtag** (``$BA``, any case; ``$BAX`` does not match ``BA``);
* the **bare symbol** as a whole word, **case-sensitive** (``BA`` but not ``ba``, ``Ba``
  or the ``BA`` inside ``BANK``/``OBAMA``), for symbols of two or more characters unless
  ``symbol: false``; skipped in text written in capitals (a shouted headline says "IT"
  and "ON" without meaning tickers);
* an **alias** as a whole word or phrase: case-sensitive when the alias is a short
  all-capitals token (``GE``, ``AT&T``: up to 5 characters), case-insensitive otherwise
  (``Boeing``, ``boeing``, ``BOEING``). Word boundaries are "no letter, digit or
  underscore directly before or after", so aliases that end in punctuation work too.

Overlapping mentions resolve as a regex search would: within each rule, scanning left to
right, the longest form that starts at a position and ends on a word boundary wins, and the
scan resumes after it (``Bank of America Movil`` is one mention, of whichever name starts
first). "Any case" compares characters as Python's ``re`` does with ``IGNORECASE`` (simple
lower-case mappings plus its equivalences such as ``ı``/``i``, ``ſ``/``s``, ``σ``/``ς``);
the watched form is the name's ``casefold()``, so the alias ``Straße`` matches ``STRASSE``
and ``strasse`` but not ``Straße`` itself (kept from the regex matcher, like every rule here).

Matching is two Aho–Corasick passes over each text (``pyahocorasick``): cashtags and aliases
over its case-folded copy, bare symbols and short capitals over the text itself. The cost
hardly grows with the watchlist: at 5,000 tickers about 0.03 ms of CPU for a 0.5 kB news
item and 0.2 ms for a 4 kB article, some 300 times less than the regex alternation it
replaced (``bench/entities.py``).

>>> wl = Watchlist.from_mapping({"BA": ["Boeing"], "GE": ["General Electric"]})
>>> wl.match("BOEING and $ge", "BANK of OBAMA")
('BA', 'GE')
>>> wl.match("Boeingish", "ge", "BA_1")
()

Keys of the recurrent memory are the predicted topic and every matched ticker, so a false
hit moves a ticker's memory: when in doubt the rules prefer missing a mention.
Loading validates the file with pydantic; an error names the file, the ticker and the
field, and says how to fix it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import ahocorasick
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline.errors import ConfigurationError

_TICKER = re.compile(r"^[A-Z0-9][A-Z0-9.\-]{0,14}$")
_SHORT_CAPS = re.compile(r"^[A-Z0-9&.\-]{1,5}$")
SHOUTING_MIN_LETTERS = 20
SHOUTING_UPPER_SHARE = 0.8


class WatchedTicker(BaseModel):
    """One ticker of the watchlist and how to recognise it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ticker: str
    names: tuple[str, ...] = ()
    symbol: bool | None = Field(
        None, description="match the bare symbol as a word (default: yes for 2+ characters)"
    )

    @field_validator("ticker")
    @classmethod
    def _ticker(cls, value: str) -> str:
        value = value.strip()
        if not _TICKER.match(value):
            raise ValueError(
                f"{value!r} is not a ticker: use capital letters, digits, '.' or '-' "
                "(at most 15 characters), e.g. BA or BRK.B"
            )
        return value

    @field_validator("names")
    @classmethod
    def _names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        cleaned = []
        for i, name in enumerate(value):
            name = " ".join(name.split())
            if len(name) < 2:
                raise ValueError(
                    f"name {i} ({name!r}) is shorter than 2 characters: it would match everywhere"
                )
            cleaned.append(name)
        return tuple(dict.fromkeys(cleaned))

    @property
    def match_symbol(self) -> bool:
        return self.symbol if self.symbol is not None else len(self.ticker) >= 2


_NOT_LETTER = bytes(c for c in range(256) if not (65 <= c <= 90 or 97 <= c <= 122))
_NOT_UPPER = bytes(c for c in range(256) if not 65 <= c <= 90)


def _shouting(text: str) -> bool:
    """Mostly capitals (ASCII letters counted): a headline in capitals, where "IT" or "ON"
    are words rather than tickers.

    >>> _shouting("BOEING SHARES PLUNGE AS IT GOES ON"), _shouting("Boeing says IT spending grows")
    (True, False)
    """
    ascii_text = text.encode("ascii", "ignore")
    letters = len(ascii_text.translate(None, _NOT_LETTER))
    if letters < SHOUTING_MIN_LETTERS:
        return False
    return len(ascii_text.translate(None, _NOT_UPPER)) / letters >= SHOUTING_UPPER_SHARE


# After str.lower(), characters re's IGNORECASE treats as one letter although their lower
# cases differ (CPython's re._casefix), mapped to one representative: the smallest code
# point, so ASCII text needs no translation. tests/pipeline/test_entities.py checks this
# table against the running Python's re.
_RE_CASE_EQUIVALENT = str.maketrans(
    {
        "\u0131": "i",  # dotless i
        "\u017f": "s",  # long s
        "\u03b9": "\u0345",  # iota -> combining ypogegrammeni
        "\u03bc": "\u00b5",  # mu -> micro sign
        "\u03c3": "\u03c2",  # sigma -> final sigma
        "\u03d0": "\u03b2",  # beta symbol
        "\u03d1": "\u03b8",  # theta symbol
        "\u03d5": "\u03c6",  # phi symbol
        "\u03d6": "\u03c0",  # pi symbol
        "\u03f0": "\u03ba",  # kappa symbol
        "\u03f1": "\u03c1",  # rho symbol
        "\u03f5": "\u03b5",  # lunate epsilon
        "\u1c80": "\u0432",  # Cyrillic rounded ve
        "\u1c81": "\u0434",  # long-legged de
        "\u1c82": "\u043e",  # narrow o
        "\u1c83": "\u0441",  # wide es
        "\u1c84": "\u0442",  # tall te
        "\u1c85": "\u0442",  # three-legged te
        "\u1c86": "\u044a",  # tall hard sign
        "\u1c87": "\u0463",  # tall yat
        "\u1e9b": "\u1e61",  # long s with dot above
        "\u1fbe": "\u0345",  # prosgegrammeni
        "\u1fd3": "\u0390",  # iota with dialytika and oxia -> ... and tonos
        "\u1fe3": "\u03b0",  # upsilon with dialytika and oxia -> ... and tonos
        "\ua64b": "\u1c88",  # monograph uk
        "\ufb06": "\ufb05",  # ligature st -> ligature long s t
    }
)


def _fold(text: str) -> str:
    """``text`` with each character replaced by its class under re's IGNORECASE, one
    character for one (positions are the text's): two strings fold alike exactly when a
    case-insensitive regex of one matches the other.

    >>> _fold("BOEING İnc ſtraſſe ΣΑΣ")
    'boeing inc strasse ςας'
    """
    if text.isascii():
        return text.lower()
    # U+0130 is the one character whose full lower case (str.lower) is two characters.
    return text.replace("\u0130", "i").lower().translate(_RE_CASE_EQUIVALENT)


# Word boundaries: "no letter, digit or underscore" is what (?<!\w) and (?!\w) test in a
# str regex, i.e. not (char.isalnum() or char == "_"); the loops below inline that test.


class _FoldedForm(NamedTuple):
    """A string the case-insensitive automaton searches for, folded, and the ticker it
    means as a cashtag ("$" + ticker) and as an alias (None: not a form of that rule)."""

    length: int
    cashtag: str | None
    name: str | None


class _ExactForm(NamedTuple):
    """A string the case-sensitive automaton searches for, and the ticker it means as a
    bare symbol and as a short all-capitals alias (None: not a form of that rule)."""

    length: int
    symbol: str | None
    short: str | None


def _automaton(forms: Mapping[str, tuple[Any, ...]]) -> Any:
    if not forms:
        return None
    automaton = ahocorasick.Automaton()
    for key, form in forms.items():
        automaton.add_word(key, form)
    automaton.make_automaton()
    return automaton


def _leftmost_longest(spans: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """What ``re.finditer`` over an alternation sorted longest first returns, given every
    boundary-valid occurrence of one rule as ``(start, -end, ticker)`` (the end negated, so
    that plain tuple order is leftmost, then longest): scanning left to right, the longest
    one at the first position that has one, then on from its end.

    >>> _leftmost_longest([(0, -6, "BA"), (0, -9, "BCO"), (7, -13, "CO"), (10, -16, "X")])
    [(0, -9, 'BCO'), (10, -16, 'X')]
    """
    if len(spans) < 2:
        return spans
    spans.sort()
    kept: list[tuple[int, int, str]] = []
    resume = 0
    for span in spans:
        if span[0] >= resume:
            kept.append(span)
            resume = -span[1]
    return kept


class Watchlist:
    """Compiled matching rules for a set of tickers. Thread-safe (immutable after build)."""

    def __init__(self, tickers: Iterable[WatchedTicker], origin: str = "<watchlist>") -> None:
        self.tickers: tuple[WatchedTicker, ...] = tuple(tickers)
        self.origin = origin
        # A later ticker with the same form takes it over, as a YAML reader would expect
        # from a mapping; the lookups by case-folded text keep re's choice of owner.
        self._cashtag_owner: dict[str, str] = {}
        self._name_owner: dict[str, str] = {}
        symbols: dict[str, str] = {}
        shorts: dict[str, str] = {}
        for t in self.tickers:
            self._cashtag_owner[t.ticker.casefold()] = t.ticker
            if t.match_symbol:
                symbols[t.ticker] = t.ticker
            for name in t.names:
                if _SHORT_CAPS.match(name):
                    shorts[name] = t.ticker
                else:
                    self._name_owner[name.casefold()] = t.ticker
        folded: dict[str, _FoldedForm] = {}
        for form, ticker in self._cashtag_owner.items():
            key = _fold("$" + form)
            folded[key] = _FoldedForm(len(key), ticker, None)
        for form, ticker in self._name_owner.items():
            key = _fold(form)
            cashtag = folded[key].cashtag if key in folded else None
            # Names that fold alike ("Iss", "ıss"): the form's owner is the one whose
            # casefold() is the fold itself, what ASCII text case-folds to.
            folded[key] = _FoldedForm(len(key), cashtag, self._name_owner.get(key, ticker))
        exact = {s: _ExactForm(len(s), ticker, None) for s, ticker in symbols.items()}
        for s, ticker in shorts.items():
            exact[s] = _ExactForm(len(s), exact[s].symbol if s in exact else None, ticker)
        self._folded = _automaton(folded)
        self._exact = _automaton(exact)

    def __len__(self) -> int:
        return len(self.tickers)

    def match(self, *texts: str | None) -> tuple[str, ...]:
        """The tickers mentioned in any of ``texts``, sorted, each once."""
        found: set[str] = set()
        for text in texts:
            if text:
                found.update(self._case_insensitive(text))
                exact = self._case_sensitive(text)
                if exact and not _shouting(text):
                    found.update(exact)
        return tuple(sorted(found))

    # Both scans pad the text with a space on each side, so every occurrence has a character
    # before and after it to test: positions below are the padded text's. The owner of a
    # case-insensitive match is that of its case-folded text, as the regex matcher looked it
    # up (for ASCII text, the form's); else (re's İ/ı, which casefold() keeps apart from I/i)
    # that of its fold.

    def _case_insensitive(self, text: str) -> list[str]:
        """Cashtags and aliases, any case."""
        if self._folded is None:
            return []
        padded = f" {text} "
        cashtags: list[tuple[int, int, str]] = []
        names: list[tuple[int, int, str]] = []
        for last, (length, cashtag, name) in self._folded.iter(_fold(padded)):
            after = padded[last + 1]
            if after.isalnum() or after == "_":
                continue
            start = last + 1 - length
            if cashtag is not None:
                cashtags.append((start, -last - 1, cashtag))
            if name is not None:
                before = padded[start - 1]
                if not (before.isalnum() or before == "_"):
                    names.append((start, -last - 1, name))
        if text.isascii():
            return [t for *_, t in _leftmost_longest(cashtags) + _leftmost_longest(names)]
        found = [
            self._cashtag_owner.get(padded[start + 1 : -neg_end].casefold(), ticker)
            for start, neg_end, ticker in _leftmost_longest(cashtags)
        ]
        found.extend(
            self._name_owner.get(padded[start:-neg_end].casefold(), ticker)
            for start, neg_end, ticker in _leftmost_longest(names)
        )
        return found

    def _case_sensitive(self, text: str) -> list[str]:
        """Bare symbols (not after "$") and short all-capitals aliases, exact case."""
        if self._exact is None:
            return []
        padded = f" {text} "
        symbols: list[tuple[int, int, str]] = []
        shorts: list[tuple[int, int, str]] = []
        for last, (length, symbol, short) in self._exact.iter(padded):
            after = padded[last + 1]
            before = padded[last - length]
            if after.isalnum() or after == "_" or before.isalnum() or before == "_":
                continue
            if symbol is not None and before != "$":
                symbols.append((last + 1 - length, -last - 1, symbol))
            if short is not None:
                shorts.append((last + 1 - length, -last - 1, short))
        return [t for *_, t in _leftmost_longest(symbols) + _leftmost_longest(shorts)]

    @classmethod
    def from_mapping(cls, data: Any, origin: str = "<watchlist>") -> Watchlist:
        """Validate a parsed YAML document; ConfigurationError names origin, ticker and field."""
        if data is None:
            return cls((), origin)
        if not isinstance(data, Mapping):
            raise ConfigurationError(
                f"watchlist {origin}: the top level must be a mapping of ticker to names "
                f"(e.g. 'BA: [Boeing, \"737 MAX\"]'), got {type(data).__name__}"
            )
        tickers: list[WatchedTicker] = []
        seen: set[str] = set()
        for raw_ticker, spec in data.items():
            label = str(raw_ticker)
            if isinstance(raw_ticker, bool):
                raise ConfigurationError(
                    f"watchlist {origin}: ticker {label!r}: YAML reads ON, OFF, YES, NO, Y and N as "
                    "booleans; quote the ticker, e.g. 'ON': [onsemi]"
                )
            if isinstance(raw_ticker, int | float):
                raw_ticker = label
            if spec is None:
                fields: dict[str, Any] = {}
            elif isinstance(spec, str):
                fields = {"names": [spec]}
            elif isinstance(spec, list):
                fields = {"names": spec}
            elif isinstance(spec, Mapping):
                fields = {str(k): v for k, v in spec.items()}
                if "ticker" in fields:
                    raise ConfigurationError(
                        f"watchlist {origin}: ticker {label!r}: field 'ticker' is not allowed here; "
                        "the mapping key is the ticker"
                    )
            else:
                raise ConfigurationError(
                    f"watchlist {origin}: ticker {label!r}: expected a list of names or a mapping "
                    f"with 'names' and 'symbol', got {type(spec).__name__}"
                )
            try:
                ticker = WatchedTicker(ticker=raw_ticker, **fields)
            except ValidationError as exc:
                problems = "; ".join(
                    f"field '{'.'.join(str(p) for p in err['loc']) or 'ticker'}': {err['msg']}"
                    for err in exc.errors()
                )
                raise ConfigurationError(
                    f"watchlist {origin}: ticker {label!r}: {problems}"
                ) from None
            if ticker.ticker in seen:
                raise ConfigurationError(
                    f"watchlist {origin}: ticker {label!r} appears twice; merge its names"
                )
            seen.add(ticker.ticker)
            tickers.append(ticker)
        return cls(tickers, origin)

    @classmethod
    def load(cls, path: Path | str) -> Watchlist:
        """Read and validate a watchlist YAML file (FINSENT_WATCHLIST)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigurationError(
                f"watchlist {path} does not exist: fix FINSENT_WATCHLIST or --watchlist "
                "(see examples/watchlist.yaml)"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"watchlist {path} cannot be read: {exc}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigurationError(f"watchlist {path} is not valid YAML: {exc}") from None
        return cls.from_mapping(data, origin=str(path))


def load_watchlist(path: Path | str | None) -> Watchlist | None:
    """The watchlist at ``path``, or None when no watchlist is configured."""
    return Watchlist.load(path) if path else None
