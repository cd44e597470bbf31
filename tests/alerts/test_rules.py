"""The rules loader fails at load time with messages that name the file, the rule and the
field; property tests for the parser and for the state machine's guarantees."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.errors import RuleError
from alerts.evaluator import grid_instant, grid_instants, judge
from alerts.lifecycle import apply, decide
from alerts.rules import (
    AnomalyRule,
    MemorySurgeRule,
    ThresholdRule,
    format_duration,
    load_rules,
    parse_duration,
    parse_rules,
)
from pipeline.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
GOOD = {"name": "neg", "kind": "threshold", "window": "1h", "value": 0.6, "notifiers": ["email"]}


def _load(tmp_path: Path, text: str) -> str:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(RuleError) as exc:
        load_rules(path)
    message = str(exc.value)
    assert str(path) in message
    return message


def test_example_rules_file_loads() -> None:
    ruleset = load_rules(ROOT / "examples" / "rules.yaml")
    assert [r.kind for r in ruleset.rules] == [
        "anomaly",
        "anomaly",
        "threshold",
        "threshold",
        "spike",
        "memory_surge",
    ]
    assert set(ruleset.notifiers) == {"risk-desk", "ops-hook"}
    assert ruleset.rule("topic-negative-share").for_ == timedelta(minutes=10)  # type: ignore[union-attr]


def test_example_anomaly_rules_are_generic_defaults() -> None:
    ruleset = load_rules(ROOT / "examples" / "rules.yaml")
    entity, topic = (r for r in ruleset.rules if isinstance(r, AnomalyRule))
    assert (entity.select.key_kind, entity.metric) == ("entity", "negative_count")
    assert (topic.select.key_kind, topic.metric) == ("topic", "negative_share")
    for rule in (entity, topic):  # every name of the kind, judged by the evidence alone
        assert not rule.select.names and not rule.select.globs
        assert "min_volume" not in rule.select.model_fields_set
        assert rule.baseline == timedelta(days=30) and rule.p_value == 0.001


ANOMALY = {"name": "anom", "kind": "anomaly", "window": "1d", "notifiers": ["email"]}


def test_anomaly_defaults() -> None:
    rule = parse_rules({"rules": [ANOMALY]}).rules[0]
    assert isinstance(rule, AnomalyRule)
    assert (rule.metric, rule.baseline, rule.seasonality) == (
        "negative_count",
        timedelta(days=30),
        "none",
    )
    assert (rule.p_value, rule.min_lift, rule.min_share_lift, rule.min_count) == (
        0.001,
        1.5,
        1.25,
        3,
    )


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"select": {"min_volume": 5}}, "select", "min_volume does not apply to anomaly rules"),
        ({"baseline": "6h"}, "baseline", "must be at least the window (1d)"),
        ({"seasonality": "weekly", "baseline": "3d"}, "baseline", "must be at least 1w"),
        ({"seasonality": "weekly", "window": "8d", "baseline": "30d"}, "baseline", "at most 1w"),
        ({"resolve": {"p_value": 0.0001}}, "resolve", "calm side"),
        (
            {"metric": "negative_share", "min_share_lift": 2},
            "min_share_lift",
            "negative_count only",
        ),
        ({"metric": "mean_sentiment"}, "metric", "negative_count"),
        ({"p_value": 1.5}, "p_value", "less than 1"),
        ({"min_lift": 0.5}, "min_lift", "greater than or equal to 1"),
        ({"seasonality": "daily"}, "seasonality", "weekly"),
    ],
)
def test_anomaly_mistakes_name_the_rule_and_field(
    tmp_path: Path, fields: dict, field: str, words: str
) -> None:
    msg = _load(tmp_path, yaml.safe_dump({"rules": [{**ANOMALY, **fields}]}))
    assert "rule 'anom' (rules[0])" in msg and f"field '{field}'" in msg and words in msg


def test_unknown_kind_names_rule_field_and_the_kinds(tmp_path: Path) -> None:
    msg = _load(
        tmp_path,
        "rules:\n  - name: surge\n    kind: surgey\n    window: 1h\n    notifiers: [email]\n",
    )
    assert "rule 'surge' (rules[0])" in msg and "field 'kind'" in msg and "'surgey'" in msg
    assert "threshold, spike, memory_surge, anomaly" in msg


def test_negative_window_names_rule_and_field(tmp_path: Path) -> None:
    msg = _load(
        tmp_path, yaml.safe_dump({"rules": [GOOD, {**GOOD, "name": "second", "window": "-30m"}]})
    )
    assert "rule 'second' (rules[1])" in msg and "field 'window'" in msg and "negative" in msg
    assert "rule 'neg'" not in msg


def test_zero_window_is_refused(tmp_path: Path) -> None:
    msg = _load(tmp_path, yaml.safe_dump({"rules": [{**GOOD, "window": 0}]}))
    assert "field 'window'" in msg and "positive" in msg


def test_missing_notifier_names_the_notifier_and_what_exists(tmp_path: Path) -> None:
    msg = _load(
        tmp_path,
        yaml.safe_dump(
            {
                "notifiers": {"desk": {"type": "email", "to": ["a@example.com"]}},
                "rules": [{**GOOD, "notifiers": ["desk", "pager"]}],
            }
        ),
    )
    assert (
        "rule 'neg' (rules[0])" in msg
        and "field 'notifiers'" in msg
        and "'pager' is not defined" in msg
    )
    assert "desk" in msg


def test_no_notifiers_at_all_is_refused(tmp_path: Path) -> None:
    rule = dict(GOOD)
    del rule["notifiers"]
    msg = _load(tmp_path, yaml.safe_dump({"rules": [rule]}))
    assert "field 'notifiers': is required" in msg


def test_builtin_notifier_without_its_setting_is_refused() -> None:
    with pytest.raises(RuleError, match="'webhook' needs FINSENT_WEBHOOK__URL"):
        parse_rules({"rules": [{**GOOD, "notifiers": ["webhook"]}]}, settings=load_settings())


def test_bad_yaml_names_line_and_column(tmp_path: Path) -> None:
    msg = _load(tmp_path, "rules:\n  - name: a\n    kind: threshold\n   window: [1h\n")
    assert "line 4" in msg and "not valid YAML" in msg


def test_several_problems_are_all_reported(tmp_path: Path) -> None:
    msg = _load(
        tmp_path,
        yaml.safe_dump(
            {
                "rules": [
                    {**GOOD, "windw": "1h"},
                    {**GOOD, "name": "b", "value": 0.5, "resolve": {"value": 0.7}},
                    {**GOOD, "name": "c", "labels": {"rule": "x"}},
                    {**GOOD, "name": "c"},
                ]
            }
        ),
    )
    assert "field 'windw': unknown field" in msg
    assert "rule 'b' (rules[1])" in msg and "resolve.value (0.7) must be <= value (0.5)" in msg
    assert "rule 'c' (rules[2])" in msg and "reserved" in msg
    assert "rule 'c' (rules[3]), field 'name': duplicate" in msg


def test_missing_file_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(RuleError, match="rules file not found"):
        load_rules(tmp_path / "nope.yaml")
    assert "no 'rules' list" in _load(tmp_path, "")


def test_selector_matches_kind_names_and_globs() -> None:
    rule = parse_rules(
        {
            "rules": [
                {
                    **GOOD,
                    "select": {"key_kind": "topic", "names": ["earnings"], "globs": ["energy*"]},
                }
            ]
        }
    ).rules[0]
    assert rule.select.matches("topic:Earnings") and rule.select.matches("topic:Energy / Oil")
    assert not rule.select.matches("entity:EARNINGS") and not rule.select.matches("topic:Markets")


# --- properties ---------------------------------------------------------------------------


@given(st.integers(min_value=1, max_value=10**8))
def test_durations_round_trip(seconds: int) -> None:
    delta = timedelta(seconds=seconds)
    assert parse_duration(format_duration(delta)) == delta


@given(st.text(max_size=12))
def test_duration_parser_accepts_or_explains(text: str) -> None:
    try:
        value = parse_duration(text)
    except ValueError as exc:
        assert "duration" in str(exc) or "negative" in str(exc)
    else:
        assert value >= timedelta(0)


_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False), st.text(max_size=6)
)
_fields = st.sampled_from(
    [
        "name",
        "kind",
        "window",
        "for",
        "value",
        "notifiers",
        "op",
        "select",
        "resolve",
        "metric",
        "cooldown",
        "labels",
        "ratio",
        "bogus",
    ]
)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        _fields,
        st.one_of(
            _scalars,
            st.lists(_scalars, max_size=3),
            st.dictionaries(st.text(max_size=5), _scalars, max_size=3),
        ),
        max_size=8,
    )
)
def test_arbitrary_rule_documents_load_or_fail_with_rule_error(raw: dict) -> None:
    try:
        ruleset = parse_rules({"rules": [raw]}, source="fuzz.yaml")
    except RuleError as exc:
        assert str(exc).startswith("invalid alert rules:") and "fuzz.yaml" in str(exc)
    else:
        assert len(ruleset.rules) == 1 and ruleset.rules[0].window.total_seconds() > 0


@given(st.floats(-1e3, 1e3), st.floats(0, 100))
def test_hysteresis_band_is_validated(value: float, gap: float) -> None:
    ok = {**GOOD, "kind": "memory_surge", "value": value, "resolve": {"value": value - gap}}
    assert parse_rules({"rules": [ok]}).rules[0].resolve.value == value - gap  # type: ignore[union-attr]
    if value + gap > value:
        bad = {**GOOD, "kind": "memory_surge", "value": value, "resolve": {"value": value + gap}}
        with pytest.raises(RuleError, match="calm side"):
            parse_rules({"rules": [bad]})


def _simulate(
    rule: MemorySurgeRule, values: list[float]
) -> list[tuple[datetime, datetime | None, datetime | None]]:
    """Run the pure state machine over one value per minute; return (pending, fired, resolved)."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    current = None
    last_resolved = None
    episodes = []
    for i, v in enumerate(values):
        obs = judge(
            rule,
            "entity:X",
            start + timedelta(minutes=i),
            {"documents": 1, "negative": 0, "surge_score": v},
        )
        if current is None and not obs.breach:
            continue
        d = decide(rule, obs, current, last_resolved)
        after = apply(rule, obs, current, d)
        if d.action == "cancel":
            current = None
        elif after is not None and after.state == "resolved":
            episodes.append((after.pending_since, after.fired_at, after.resolved_at))
            last_resolved, current = obs.at, None
        else:
            current = after
    if current is not None and current.fired_at is not None:
        episodes.append((current.pending_since, current.fired_at, None))
    return episodes


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(st.floats(0, 6, allow_nan=False), max_size=60),
    fire=st.floats(2, 4),
    gap=st.floats(0, 2),
    for_min=st.integers(0, 4),
    cooldown_min=st.integers(0, 10),
)
def test_state_machine_guarantees(
    values: list[float], fire: float, gap: float, for_min: int, cooldown_min: int
) -> None:
    rule = MemorySurgeRule(
        name="p",
        kind="memory_surge",
        window="5m",
        value=fire,
        resolve={"value": fire - gap},
        notifiers=["webhook"],
        **{"for": f"{for_min}m", "cooldown": f"{cooldown_min}m"},
    )
    start = datetime(2026, 1, 1, tzinfo=UTC)
    at = {start + timedelta(minutes=i): v for i, v in enumerate(values)}
    episodes = _simulate(rule, values)
    previous_resolved = None
    for pending, fired, resolved in episodes:
        assert fired is not None and fired - pending >= rule.for_
        # the firing condition held at every instant of the pending period and at firing
        assert all(at[t] > fire for t in at if pending <= t <= fired)
        # while firing, values inside the band never resolved it
        assert all(
            at[t] > fire - gap
            for t in at
            if fired <= t < (resolved or datetime.max.replace(tzinfo=UTC))
        )
        if resolved is not None:
            assert at[resolved] <= fire - gap
        if previous_resolved is not None:
            assert pending >= previous_resolved + rule.cooldown
        previous_resolved = resolved


@given(
    st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ),
    st.sampled_from([1.0, 15.0, 30.0, 60.0, 0.25]),
)
def test_grid_instants_are_shared_by_live_and_backtest(now: datetime, interval: float) -> None:
    t = grid_instant(now, interval)
    assert t <= now < t + timedelta(seconds=interval)
    assert grid_instant(t, interval) == t
    assert t in grid_instants(now - timedelta(seconds=3 * interval), now, interval)


def test_threshold_metric_needs_volume() -> None:
    rule = ThresholdRule(
        name="t",
        kind="threshold",
        window="1h",
        value=0.5,
        notifiers=["email"],
        select={"min_volume": 10},
    )
    at = datetime(2026, 1, 1, tzinfo=UTC)
    few = judge(rule, "topic:X", at, {"documents": 3, "negative": 3, "negative_share": 1.0})
    many = judge(rule, "topic:X", at, {"documents": 10, "negative": 9, "negative_share": 0.9})
    assert (few.breach, few.calm) == (False, True)
    assert (many.breach, many.calm) == (True, False)
