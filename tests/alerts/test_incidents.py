"""Rules scored against known incidents: the pure scoring of ``alerts.incidents`` (no
database) and the incidents file parser."""

from __future__ import annotations

import doctest
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import alerts.incidents
from alerts.incidents import (
    Incident,
    IncidentError,
    format_report,
    load_incidents,
    parse_incidents,
    score,
)
from alerts.lifecycle import Episode

ROOT = Path(__file__).resolve().parents[2]
START = datetime(2026, 1, 1, tzinfo=UTC)
END = START + timedelta(days=60)
ONSET = datetime(2026, 1, 20, 12, 0, tzinfo=UTC)
H = timedelta(hours=1)


def alert(
    key: str,
    fired: datetime | None,
    *,
    pending: datetime | None = None,
    rule: str = "r",
    resolved: datetime | None = None,
) -> Episode:
    """An episode of ``rule`` on ``key`` (fired None: pending only, never an alert)."""
    start = pending or fired
    assert start is not None
    state = "pending" if fired is None else ("resolved" if resolved else "firing")
    return Episode(f"fp-{rule}-{key}-{start:%s}", rule, key, state, start, fired, resolved)


def card(incidents: list[Incident], episodes: list[Episode], **kwargs):
    return score(incidents, episodes, start=START, end=END, **kwargs)


def test_the_doctests_hold() -> None:
    assert doctest.testmod(alerts.incidents).failed == 0


def test_an_incident_is_detected_by_the_first_alert_on_its_key() -> None:
    acme = Incident("entity:ACME", ONSET, "probe")
    episodes = [
        alert("entity:ACME", ONSET + 5 * H, rule="late-rule"),
        alert("entity:ACME", ONSET + 2 * H, rule="quick-rule"),
        alert("entity:OTHER", ONSET + H, rule="quick-rule"),  # another key: not a detection
    ]
    (d,) = card([acme], episodes).detections
    assert d.status == "detected" and d.alert is not None
    assert d.alert.rule_name == "quick-rule" and d.delay == 2 * H


def test_a_late_detection_and_a_missed_incident() -> None:
    late = Incident("entity:ACME", ONSET)
    missed = Incident("topic:Markets", ONSET)
    never = Incident("entity:GLOBEX", ONSET)
    episodes = [
        alert("entity:ACME", ONSET + timedelta(days=3)),  # within 7 d, after 24 h: late
        alert("topic:Markets", ONSET + timedelta(days=8)),  # after the match window
        alert("entity:GLOBEX", None, pending=ONSET + H),  # pending only: not an alert
    ]
    result = card([late, missed, never], episodes)
    assert [d.status for d in result.detections] == ["late", "missed", "missed"]
    assert result.detections[0].delay == timedelta(days=3)
    assert result.detections[1].alert is None and result.detections[1].delay is None
    totals = result.as_dict()["totals"]
    assert (totals["incidents"], totals["detected"], totals["late"], totals["missed"]) == (
        3,
        0,
        1,
        2,
    )
    # the Markets alert 8 days on started outside the incident's span: a false alert
    markets = next(k for k in result.keys if k.key == "topic:Markets")
    assert (markets.alerts, markets.false_alerts) == (1, 1)


def test_detect_within_is_configurable() -> None:
    incident = Incident("entity:ACME", ONSET)
    episodes = [alert("entity:ACME", ONSET + 30 * H)]
    assert card([incident], episodes).detections[0].status == "late"
    assert (
        card([incident], episodes, detect_within=timedelta(hours=36)).detections[0].status
        == "detected"
    )


def test_tolerance_edges() -> None:
    incident = Incident("entity:ACME", ONSET)
    tolerance = timedelta(hours=6)
    at_edge = alert("entity:ACME", ONSET - tolerance)
    (d,) = card([incident], [at_edge]).detections
    assert d.status == "detected" and d.delay == -tolerance
    just_before = alert("entity:ACME", ONSET - tolerance - timedelta(seconds=1))
    result = card([incident], [just_before])
    assert result.detections[0].status == "missed"
    assert result.keys[0].false_alerts == 1  # it started before the span too
    # a wider tolerance takes it in
    assert (
        card([incident], [just_before], tolerance=timedelta(hours=7)).detections[0].status
        == "detected"
    )


def test_an_episode_that_began_before_the_tolerance_but_fired_inside_is_no_false_alert() -> None:
    incident = Incident("entity:ACME", ONSET)
    early = alert("entity:ACME", ONSET - 5 * H, pending=ONSET - 8 * H)
    result = card([incident], [early])
    assert result.detections[0].status == "detected"
    assert result.keys[0].false_alerts == 0


def test_match_window_edges_decide_false_alerts() -> None:
    incident = Incident("entity:ACME", ONSET)
    week = timedelta(days=7)
    first = alert("entity:ACME", ONSET + H, rule="a")
    on_edge = alert("entity:ACME", ONSET + week, rule="b")  # starts on the edge: explained
    after = alert("entity:ACME", ONSET + week + timedelta(seconds=1), rule="c")  # false
    result = card([incident], [first, on_edge, after])
    (acme,) = result.keys
    assert (acme.alerts, acme.false_alerts) == (3, 1)
    assert result.false_by_rule == {"c": 1}
    shorter = card([incident], [first, on_edge, after], match_window=timedelta(days=2))
    assert shorter.keys[0].false_alerts == 2


def test_false_alerts_per_30_days_and_the_worst_key_of_each_kind() -> None:
    incidents = [Incident("entity:ACME", ONSET)]
    episodes = [
        alert("entity:ACME", ONSET + H),  # the detection
        alert("entity:ACME", START + timedelta(days=2)),
        alert("entity:ACME", START + timedelta(days=50)),
        alert("entity:GLOBEX", START + timedelta(days=5)),
        alert("topic:Markets", START + timedelta(days=9)),
        alert("topic:Markets", START + timedelta(days=10)),
        alert("topic:Markets", START + timedelta(days=40)),
    ]
    result = card(incidents, episodes)  # 60 days: 2 months of 30 days
    per = {k.key: (k.false_alerts, k.false_per_30d) for k in result.keys}
    assert per == {"entity:ACME": (2, 1.0), "entity:GLOBEX": (1, 0.5), "topic:Markets": (3, 1.5)}
    worst = result.as_dict()["totals"]["worst_false_per_30d"]
    assert worst == {
        "entity": {"key": "entity:ACME", "per_30d": 1.0},
        "topic": {"key": "topic:Markets", "per_30d": 1.5},
    }
    assert result.worst("entity") is not None and result.worst("nothing") is None


def test_an_incident_outside_the_backtest_is_not_counted() -> None:
    outside = Incident("entity:ACME", END + timedelta(days=1))
    inside = Incident("entity:ACME", ONSET)
    result = card([outside, inside], [alert("entity:ACME", ONSET + H)])
    assert [d.status for d in result.detections] == ["detected", "outside"]
    assert result.as_dict()["totals"]["incidents"] == 1
    assert "1 outside the backtest's span" in format_report(result)


def test_the_report_and_its_json() -> None:
    incidents = [Incident("entity:ACME", ONSET, "ACME probe"), Incident("topic:Markets", ONSET)]
    episodes = [
        alert("entity:ACME", ONSET + 90 * timedelta(minutes=1), rule="spike"),
        alert("entity:ACME", START + timedelta(days=2), rule="spike"),
    ]
    result = card(incidents, episodes)
    text = format_report(result)
    assert "ACME probe" in text and "spike" in text and "+1h30m" in text and "missed" in text
    assert "2026-01-20 12:00" in text
    assert "totals: 1/2 incidents detected within 24h (0 late, 1 missed)" in text
    assert "entity 0.50 (entity:ACME), topic 0.00" in text
    data = json.loads(json.dumps(result.as_dict()))
    first = data["incidents"][0]
    assert first["status"] == "detected" and first["delay_s"] == 5400 and first["rule"] == "spike"
    assert data["keys"][0]["false_alerts"] == 1
    assert data["totals"]["worst_false_per_30d"]["topic"] == {"key": None, "per_30d": 0.0}


def test_score_refuses_a_span_that_ends_before_it_starts() -> None:
    with pytest.raises(ValueError):
        score([], [], start=END, end=START)


# --- the incidents file ---------------------------------------------------------------------


def test_the_example_incidents_file_loads() -> None:
    incidents = load_incidents(ROOT / "examples" / "incidents.yaml")
    assert len(incidents) >= 3
    assert all(
        i.onset.tzinfo is UTC and i.key.split(":")[0] in ("topic", "entity") for i in incidents
    )
    recall = next(i for i in incidents if i.name == "ACME product recall")
    assert recall.onset == datetime(2026, 5, 19, 5, 0, tzinfo=UTC)  # +02:00 converted


def test_onsets_dates_and_a_bare_list() -> None:
    parsed = parse_incidents(
        [
            {"key": "entity:ACME", "onset": "2026-03-10"},
            {"key": "topic:Energy / Oil", "onset": datetime(2026, 3, 10, 9, 30), "name": "x"},
        ]
    )
    assert parsed[0].onset == datetime(2026, 3, 10, tzinfo=UTC) and parsed[0].name is None
    assert parsed[1].onset == datetime(2026, 3, 10, 9, 30, tzinfo=UTC)


def _error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "incidents.yaml"
    path.write_text(text)
    with pytest.raises(IncidentError) as info:
        load_incidents(path)
    message = str(info.value)
    assert str(path) in message
    return message


def test_bad_entries_are_named_with_the_field(tmp_path: Path) -> None:
    message = _error(
        tmp_path,
        "incidents:\n"
        "  - {key: entity:ACME, onset: 2026-02-03T14:30, name: ok}\n"
        "  - {key: ACME, onset: 2026-02-03, name: no kind}\n"
        "  - {key: entity:ACME, name: no onset}\n"
        "  - {key: entity:ACME, onset: yesterday}\n"
        "  - {key: entity:ACME, onset: 2026-02-04, severity: high}\n"
        "  - just text\n"
        "  - {key: entity:ACME, onset: '2026-02-03T14:30Z'}\n",
    )
    assert "incident 'no kind' (incidents[1]), field 'key'" in message and "entity:ACME" in message
    assert "incident 'no onset' (incidents[2]), field 'onset': is required" in message
    assert "incidents[3], field 'onset'" in message and "'yesterday' is not a time" in message
    assert "incidents[4], field 'severity': unknown field" in message
    assert "incidents[5]: each incident must be a mapping" in message
    assert "incidents[6]: duplicate of incidents[0]" in message


def test_bad_files_say_what_is_wrong(tmp_path: Path) -> None:
    assert "line 3, column 11: not valid YAML" in _error(
        tmp_path, "incidents:\n  - key: entity:ACME\n     onset: 2026-02-03\n"
    )
    assert "no incidents" in _error(tmp_path, "")
    assert "empty" in _error(tmp_path, "incidents: []\n")
    assert "must be a list" in _error(tmp_path, "incidents: {key: entity:ACME}\n")
    assert "unknown top-level section(s) ['rules']" in _error(tmp_path, "rules: []\n")
    missing = tmp_path / "nowhere.yaml"
    with pytest.raises(IncidentError, match="incidents file not found"):
        load_incidents(missing)
