"""The entity watchlist: loading with clear errors, and matching without false hits."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.entities import Watchlist, load_watchlist
from pipeline.errors import ConfigurationError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "watchlist.yaml"


@pytest.fixture(scope="module")
def watchlist() -> Watchlist:
    return Watchlist.from_mapping(
        {
            "BA": ["Boeing", "737 MAX"],
            "AAPL": ["Apple", "Apple Inc."],
            "GE": ["General Electric"],
            "T": ["AT&T"],
            "F": {"names": ["Ford Motor"]},
            "IT": {"names": ["Gartner"], "symbol": False},
            "BRK.B": ["Berkshire Hathaway"],
        }
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Boeing cuts deliveries", ("BA",)),
        ("boeing and BOEING and Boeing's", ("BA",)),
        ("the 737 max is grounded again", ("BA",)),
        ("$BA and $ba both count", ("BA",)),
        ("BA shares slide", ("BA",)),
        ("“Boeing” said, (Boeing).", ("BA",)),
        ("Apple Inc. and AT&T sign a deal", ("AAPL", "T")),
        ("Berkshire Hathaway ($BRK.B) buys", ("BRK.B",)),
        ("Ford Motor recalls trucks", ("F",)),
        ("General Electric and GE Aerospace", ("GE",)),
        ("Gartner says IT spending grows", ("IT",)),
    ],
)
def test_mentions_by_name_alias_cashtag_and_symbol_are_found(
    watchlist: Watchlist, text: str, expected: tuple[str, ...]
) -> None:
    assert watchlist.match(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "BANK of Obama, BAR BABA baseball",  # BA inside words
        "ba ba black sheep; Ba",  # wrong case for a short symbol
        "$BAX and $BAT and BA_1 and xBA",  # cashtag/symbol prefixes of other words
        "an F grade; a T-shirt; IT is here",  # one-letter symbols and symbol: false
        "ge or Ge, in general",  # short all-caps symbols are case-sensitive
        "pineapple Applebee's Boeingish",  # names inside longer words
    ],
)
def test_no_false_hits_inside_words_or_in_the_wrong_case(watchlist: Watchlist, text: str) -> None:
    assert watchlist.match(text) == ()


def test_shouted_headline_matches_names_and_cashtags_but_not_bare_symbols(
    watchlist: Watchlist,
) -> None:
    assert watchlist.match("BOEING SHARES PLUNGE AS IT GOES ON AND ON AND BA") == ("BA",)
    assert watchlist.match("GE SHARES PLUNGE AFTER THE EARNINGS MISS") == ()
    assert watchlist.match("$GE SHARES PLUNGE AFTER THE EARNINGS MISS") == ("GE",)


def test_title_and_text_are_both_searched(watchlist: Watchlist) -> None:
    assert watchlist.match("Apple rises", None, "Boeing falls") == ("AAPL", "BA")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_matching_never_fails_and_only_returns_watched_tickers(
    watchlist: Watchlist, text: str
) -> None:
    found = watchlist.match(text)
    assert set(found) <= {t.ticker for t in watchlist.tickers}
    assert list(found) == sorted(set(found))


def test_example_watchlist_loads(tmp_path: Path) -> None:
    wl = load_watchlist(EXAMPLE)
    assert wl is not None and len(wl) >= 5
    assert wl.match("Boeing and $TSLA") == ("BA", "TSLA")
    assert load_watchlist(None) is None


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        ("BA: [Boeing, X]", ["ticker 'BA'", "field 'names'", "shorter than 2"]),
        ("ba-!: [Boeing]", ["ticker 'ba-!'", "not a ticker"]),
        ("BA: {names: [Boeing], colour: red}", ["ticker 'BA'", "field 'colour'"]),
        ("BA: {names: [Boeing], symbol: maybe}", ["ticker 'BA'", "field 'symbol'"]),
        ("ON: [onsemi]", ["ticker 'True'", "quote the ticker"]),
        ("BA: 5", ["ticker 'BA'", "expected a list"]),
        ("- BA\n- AAPL", ["top level must be a mapping"]),
        ("BA: [Boeing\n", ["not valid YAML"]),
    ],
)
def test_invalid_watchlist_errors_name_file_ticker_and_field(
    tmp_path: Path, content: str, fragments: list[str]
) -> None:
    path = tmp_path / "watch.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigurationError) as exc:
        Watchlist.load(path)
    message = str(exc.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


def test_missing_watchlist_file_says_which_setting_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="FINSENT_WATCHLIST"):
        Watchlist.load(tmp_path / "nope.yaml")


def test_lowercase_ticker_keys_are_refused_with_the_rule(tmp_path: Path) -> None:
    path = tmp_path / "w.yaml"
    path.write_text("aapl: [Apple]\n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match="capital letters"):
        Watchlist.load(path)
