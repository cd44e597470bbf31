"""The web console: three server-rendered pages over :mod:`finsent.console.queries`.

* ``/`` (now): the ranking of :func:`~finsent.console.queries.top_keys`, each row with a
  sparkline of its negative share and a link to its page; ``?since=6h&kind=entity&limit=20
  &now=latest`` choose the window, the kind, the length and the instant.
* ``/keys/{key}``: negative share, volume and surge score over time (``?range=2d``), alert
  episodes shaded on the charts, the newest headlines with their predictions and a label
  button per headline, which posts ``{document_id, sentiment}`` to ``POST /v1/labels``
  (served by the daemon's HTTP server, not by these routes).
* ``/alerts``: firing, pending and resolved episodes, and the silences.

Charts are SVG drawn on the server (no CDN, no JavaScript library); all text goes through
Jinja2 with autoescaping, and the SVG is built from numbers and escaped text only. "Now"
defaults to the wall clock, or to the newest document's time when ``FINSENT_ALERT_CLOCK=data``
(a replayed history, the sample stream), the same choice the alert service makes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from jinja2 import DictLoader, Environment, select_autoescape
from markupsafe import Markup, escape
from sqlalchemy.engine import Engine
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from alerts.rules import format_duration, parse_duration
from finsent.console import queries
from finsent.console.queries import AlertEpisode, KeySeries
from pipeline.errors import InputError
from pipeline.settings import Settings

#: where the label buttons post (the daemon's HTTP API)
LABELS_PATH = "/v1/labels"
#: bucket sizes a chart may use, smallest first
_BUCKETS = tuple(
    timedelta(seconds=s)
    for s in (60, 300, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 604800)
)


def nice_bucket(span: timedelta, points: int = 48) -> timedelta:
    """The smallest of the usual bucket sizes that splits ``span`` into at most ``points``.

    >>> nice_bucket(timedelta(hours=48))
    datetime.timedelta(seconds=3600)
    >>> nice_bucket(timedelta(hours=6), points=12)
    datetime.timedelta(seconds=1800)
    """
    for bucket in _BUCKETS:
        if span / bucket <= points:
            return bucket
    return _BUCKETS[-1]


def key_url(key: str) -> str:
    """The key page's path: ``'topic:Stock Commentary'`` -> ``'/keys/topic:Stock%20Commentary'``."""
    return "/keys/" + quote(key, safe=":")


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "–"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f} %"


def _odds(evidence: float) -> str:
    """Evidence in plain words: ``-log10 p`` as "1 in N"."""
    if evidence < 0.3:
        return "usual"
    if evidence > 15:
        return f"1 in 10^{evidence:.0f}"
    return f"1 in {10**evidence:,.0f}"


# --- SVG -----------------------------------------------------------------------------------


def sparkline(values: Sequence[float | None], *, width: int = 120, height: int = 28) -> Markup:
    """A small polyline of values in [0, 1] (None: a gap), the newest at the right."""
    n = len(values)
    if n == 0 or all(v is None for v in values):
        return Markup(
            f'<svg class="spark" width="{width}" height="{height}" role="img" aria-label="no data"></svg>'
        )
    step = width / max(n - 1, 1)
    segments: list[list[str]] = [[]]
    for i, v in enumerate(values):
        if v is None:
            if segments[-1]:
                segments.append([])
            continue
        segments[-1].append(f"{i * step:.1f},{height - 2 - v * (height - 4):.1f}")
    lines = "".join(
        f'<polyline points="{" ".join(s)}" fill="none" stroke="#c0392b" stroke-width="1.5"/>'
        if len(s) > 1
        else f'<circle cx="{s[0].split(",")[0]}" cy="{s[0].split(",")[1]}" r="1.5" fill="#c0392b"/>'
        for s in segments
        if s
    )
    return Markup(
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="negative share over time">'
        f'<rect width="{width}" height="{height}" fill="#fafafa"/>{lines}</svg>'
    )


def chart(
    series: KeySeries,
    values: Sequence[float | None],
    *,
    title: str,
    y_min: float | None = None,
    y_max: float | None = None,
    bars: bool = False,
    fmt: str = "{:.2f}",
    episodes: Sequence[AlertEpisode] = (),
    css_class: str = "chart",
) -> Markup:
    """A time chart of one value per bucket of ``series``: points (or bars) joined by a
    line, the y range labelled, alert episodes shaded (pending yellow, firing red)."""
    width, height, left, right, top, bottom = 880, 180, 56, 12, 22, 26
    plot_w, plot_h = width - left - right, height - top - bottom
    start = series.points[0].start if series.points else series.start
    end = series.end
    span = max((end - start).total_seconds(), 1.0)
    present = [v for v in values if v is not None]
    lo = y_min if y_min is not None else (min(present) if present else 0.0)
    hi = y_max if y_max is not None else (max(present) if present else 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 1.0, hi + 1.0

    def x_of(t: datetime) -> float:
        return left + plot_w * min(max((t - start).total_seconds() / span, 0.0), 1.0)

    def y_of(v: float) -> float:
        return top + plot_h * (1.0 - (v - lo) / (hi - lo))

    half = series.bucket / 2
    parts = [
        f'<svg class="{css_class}" width="100%" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}" preserveAspectRatio="xMinYMin meet">',
        f'<text x="{left}" y="14" class="title">{escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fcfcfc" stroke="#ddd"/>',
    ]
    marks = 0
    for ep in episodes:
        begin = ep.pending_since
        finish = ep.resolved_at or end
        if finish < start or begin > end:
            continue
        x0, x1 = x_of(begin), x_of(finish)
        colour = "#f5b7b1" if ep.fired_at else "#fcf3cf"
        parts.append(
            f'<rect class="episode" x="{x0:.1f}" y="{top}" width="{max(x1 - x0, 2):.1f}" '
            f'height="{plot_h}" fill="{colour}" opacity="0.7"><title>{escape(ep.rule_name)} '
            f"({escape(ep.state)}): {escape(_when(ep.pending_since))} – "
            f"{escape(_when(ep.resolved_at)) if ep.resolved_at else 'open'}</title></rect>"
        )
        if ep.fired_at and start <= ep.fired_at <= end:
            xf = x_of(ep.fired_at)
            near_left = xf < left + 0.6 * plot_w
            parts.append(
                f'<line x1="{xf:.1f}" x2="{xf:.1f}" y1="{top}" y2="{top + plot_h}" stroke="#c0392b" '
                f'stroke-dasharray="3,2"/><text x="{xf + 3 if near_left else xf - 3:.1f}" '
                f'y="{top + 10 + 12 * marks}" text-anchor="{"start" if near_left else "end"}" '
                f'class="mark">{escape(ep.rule_name)} fired</text>'
            )
            marks += 1
    if lo < 0 < hi:
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y_of(0):.1f}" y2="{y_of(0):.1f}" stroke="#bbb"/>'
        )
    coords: list[tuple[float, float, float, datetime]] = []
    for point, v in zip(series.points, values, strict=True):
        if v is None:
            continue
        coords.append((x_of(point.start + half), y_of(v), v, point.start))
    if bars:
        bar_w = max(plot_w * series.bucket.total_seconds() / span - 1, 1)
        for x, y, v, t in coords:
            x0 = max(x - bar_w / 2, left)
            w = max(min(x + bar_w / 2, left + plot_w) - x0, 1)
            parts.append(
                f'<rect class="point" x="{x0:.1f}" y="{y:.1f}" width="{w:.1f}" '
                f'height="{top + plot_h - y:.1f}" fill="#5d6d7e"><title>{escape(_when(t))}: '
                f"{escape(fmt.format(v))}</title></rect>"
            )
    else:
        if len(coords) > 1:
            parts.append(
                '<polyline points="'
                + " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in coords)
                + '" fill="none" stroke="#c0392b" stroke-width="1.5"/>'
            )
        for x, y, v, t in coords:
            parts.append(
                f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="#c0392b">'
                f"<title>{escape(_when(t))}: {escape(fmt.format(v))}</title></circle>"
            )
    parts.append(
        f'<text x="{left - 4}" y="{top + 4}" text-anchor="end" class="axis">{escape(fmt.format(hi))}</text>'
        f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end" class="axis">{escape(fmt.format(lo))}</text>'
        f'<text x="{left}" y="{height - 8}" class="axis">{escape(_when(start))}</text>'
        f'<text x="{left + plot_w}" y="{height - 8}" text-anchor="end" class="axis">{escape(_when(end))}</text>'
    )
    if not coords:
        parts.append(
            f'<text x="{left + plot_w / 2}" y="{top + plot_h / 2}" text-anchor="middle" class="axis">'
            "no documents in this range</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


# --- templates -----------------------------------------------------------------------------

_BASE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{% block title %}finsent{% endblock %} · finsent</title>
<style>
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #222; background: #fff; }
header { background: #1f2d3d; color: #fff; padding: 8px 20px; display: flex; gap: 24px; align-items: baseline; }
header a { color: #dfe6ee; text-decoration: none; } header a.here { color: #fff; font-weight: 600; }
header .brand { font-weight: 700; font-size: 16px; color: #fff; }
main { padding: 12px 20px 40px; max-width: 1240px; }
h1 { font-size: 20px; margin: 8px 0; } h2 { font-size: 16px; margin: 20px 0 6px; }
p.lead, p.note { color: #555; margin: 4px 0 10px; max-width: 980px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid #e6e6e6; vertical-align: top; }
th { font-size: 12px; color: #555; font-weight: 600; background: #f6f7f8; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.bearish { color: #b03a2e; font-weight: 600; } .bullish { color: #1e8449; } .neutral { color: #666; }
.pill { display: inline-block; padding: 0 6px; border-radius: 8px; font-size: 12px; background: #eee; }
.pill.firing { background: #f5b7b1; } .pill.pending { background: #fcf3cf; } .pill.resolved { background: #d5f5e3; }
.small { font-size: 12px; color: #666; } .headline { max-width: 420px; }
form.filters { margin: 6px 0 12px; display: flex; gap: 10px; align-items: center; flex-wrap: wrap; }
form.label button { font-size: 12px; padding: 1px 6px; margin-right: 2px; cursor: pointer; }
dl.legend { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; font-size: 12px; color: #555; }
dl.legend dt { font-weight: 600; }
svg.chart { display: block; margin: 4px 0 10px; max-width: 900px; }
svg text.title { font-size: 13px; font-weight: 600; fill: #333; } svg text.axis, svg text.mark { font-size: 11px; fill: #666; }
.error { background: #fdedec; border: 1px solid #f5b7b1; padding: 8px 12px; }
</style></head><body>
<header><span class="brand">finsent</span>
<a href="/" class="{{ 'here' if page == 'now' }}">now</a>
<a href="/alerts" class="{{ 'here' if page == 'alerts' }}">alerts</a>
<span class="small">as of {{ when(now) }}</span></header>
<main>{% block main %}{% endblock %}</main>
</body></html>
"""

_NOW = """{% extends "base.html" %}
{% block title %}now{% endblock %}
{% block main %}
<h1>Which names and topics are turning negative</h1>
<p class="lead">Documents published in the last <b>{{ since }}</b> (up to {{ when(now) }}), compared with
each key's own previous {{ baseline }}. A key ranks high when its bearish count in the window is
unlikely under its usual share of bearish news, so a few bearish headlines on a quiet name count for
less than a broad turn on a busy one.</p>
<form class="filters" method="get" action="/">
  <label>window <input name="since" value="{{ since }}" size="5"></label>
  <label>kind <select name="kind">
    {% for value, text in [("", "entities and topics"), ("entity", "entities"), ("topic", "topics")] %}
    <option value="{{ value }}" {{ 'selected' if (kind or '') == value }}>{{ text }}</option>{% endfor %}
  </select></label>
  <label>rows <input name="limit" value="{{ limit }}" size="3"></label>
  <label>now <input name="now" value="{{ now_arg }}" size="16" placeholder="latest or ISO time"></label>
  <button type="submit">show</button>
</form>
{% if not ranking.keys %}
<p class="note">No documents in this window. Try a longer window{% if now_arg != 'latest' %} or <a href="/?now=latest&amp;since={{ since }}">the newest data</a>{% endif %}.</p>
{% else %}
<table id="ranking">
<thead><tr><th>#</th><th>key</th><th class="num">bearish now</th><th class="num">usual</th>
<th class="num">how unusual</th><th>negative share, last {{ spark_span }}</th><th class="num">surge score</th>
<th>alerts</th><th>why: most bearish headlines</th></tr></thead>
<tbody>
{% for k in ranking.keys %}
<tr class="key-row" data-key="{{ k.key }}">
<td class="num">{{ loop.index }}</td>
<td><a href="{{ key_url(k.key) }}?now={{ now_arg|urlencode }}&amp;since={{ since|urlencode }}"><b>{{ k.name }}</b></a><br><span class="small">{{ k.kind }}{% if k.driver %}; {{ k.driver_bearish }} of its {{ k.bearish }} bearish are about <a href="{{ key_url(k.driver) }}">{{ k.driver }}</a>{% endif %}</span></td>
<td class="num"><span class="{{ 'bearish' if k.evidence >= 2 }}">{{ k.bearish }} of {{ k.documents }}</span><br><span class="small">{{ pct(k.negative_share) }}</span></td>
<td class="num">{{ pct(k.expected_share) }}<br><span class="small">{{ k.baseline_bearish }} of {{ k.baseline_documents }} before</span></td>
<td class="num">{{ odds(k.evidence) }}<br><span class="small">evidence {{ '%.1f' % k.evidence }}</span></td>
<td>{{ sparks[k.key] }}</td>
<td class="num">{{ '%.2f' % k.surge_score if k.surge_score is not none else '–' }}{% if k.volume_surge_score is not none %}<br><span class="small">volume {{ '%.2f' % k.volume_surge_score }}</span>{% endif %}</td>
<td>{% for a in k.open_alerts %}<span class="pill {{ a.state }}">{{ a.state }}</span> {{ a.rule_name }}{% if a.silenced %} (silenced){% endif %}<br>{% else %}<span class="small">none</span>{% endfor %}</td>
<td class="headline">{% for h in k.headlines %}<div>{{ h.headline }} <span class="small">{{ when(h.published_at) }} · p(bearish) {{ '%.2f' % h.p_bearish }}</span></div>{% else %}<span class="small">no bearish document</span>{% endfor %}</td>
</tr>
{% endfor %}
</tbody></table>
{% endif %}
<h2>What the columns mean</h2>
<dl class="legend">
<dt>bearish now</dt><dd>bearish documents of all the key's documents in the window, and that share.</dd>
<dt>usual</dt><dd>the key's usual bearish share, estimated from its previous {{ baseline }} (pulled towards the all-keys average, {{ pct(ranking.prior_share) }}, when it has few documents).</dd>
<dt>how unusual</dt><dd>the chance of seeing this many bearish documents or more if the key's usual share still held ("1 in 1,000"); the ranking sorts by it. Evidence is the same number as -log10 of that chance.</dd>
<dt>negative share</dt><dd>the share of bearish documents per time bucket, oldest at the left; gaps had no documents.</dd>
<dt>surge score</dt><dd>the recurrent memory's negativity score after the key's newest document (higher: more likely inside a negative surge, whatever the volume; above about 1 is unusual); below it, its volume score (higher: much more news than the key usually gets, whatever its tone).</dd>
<dt>alerts</dt><dd>pending or firing alerts on the key now.</dd>
<dt>order</dt><dd>a topic whose bearish documents are mostly about one name that ranks too is listed right under that name: the name is the news, the topic its echo.</dd>
</dl>
{% endblock %}
"""

_KEY = """{% extends "base.html" %}
{% block title %}{{ key }}{% endblock %}
{% block main %}
<h1>{{ name }} <span class="small">{{ kind }}</span></h1>
{% if ranked %}
<p class="lead">Last {{ since }}: <b>{{ ranked.bearish }} of {{ ranked.documents }}</b> documents bearish
({{ pct(ranked.negative_share) }}) against a usual {{ pct(ranked.expected_share) }}; the chance of that under the usual
share is {{ odds(ranked.evidence) }}. Memory surge score {{ '%.2f' % ranked.surge_score if ranked.surge_score is not none else '–' }}.</p>
{% else %}
<p class="lead">No documents in the last {{ since }}.</p>
{% endif %}
<form class="filters" method="get"><label>range <input name="range" value="{{ range }}" size="5"></label>
<input type="hidden" name="now" value="{{ now_arg }}"><input type="hidden" name="since" value="{{ since }}"><button type="submit">show</button>
<span class="small">buckets of {{ bucket }}; shaded: alert episodes (yellow pending, red firing)</span></form>
<div id="charts">{{ share_chart }}{{ volume_chart }}{{ surge_chart }}</div>
<h2>Headlines</h2>
<p class="note">The newest documents of this key with the model's prediction. If the model is wrong, say what
the sentiment really is: the label goes to the training data of the next retraining.</p>
<table id="headlines">
<thead><tr><th>published</th><th>headline</th><th>predicted</th><th class="num">p(bearish)</th><th>model</th><th>label it</th></tr></thead>
<tbody>
{% for h in headlines %}
<tr data-document="{{ h.document_id }}">
<td class="small">{{ when(h.published_at) }}<br>{{ h.source }}</td>
<td class="headline">{% if h.url %}<a href="{{ h.url }}" rel="noopener noreferrer">{{ h.headline }}</a>{% else %}{{ h.headline }}{% endif %}<br><span class="small">{{ h.document_id }}</span></td>
<td class="{{ h.sentiment }}">{{ h.sentiment }}</td>
<td class="num">{{ '%.2f' % h.p_bearish }}</td>
<td class="small">{{ h.model_version or '–' }}</td>
<td><form class="label" data-document="{{ h.document_id }}">
{% for s in ["bearish", "neutral", "bullish"] %}<button type="submit" name="sentiment" value="{{ s }}">{{ s }}</button>{% endfor %}
<span class="status small">{% if h.label %}labelled {{ h.label }}{% endif %}</span></form></td>
</tr>
{% else %}<tr><td colspan="6" class="small">no documents</td></tr>{% endfor %}
</tbody></table>
<h2>Alert episodes on this key</h2>
{% include "episodes.html" %}
<script>
document.querySelectorAll("form.label").forEach(function (form) {
  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    var sentiment = event.submitter ? event.submitter.value : "bearish";
    var status = form.querySelector(".status");
    status.textContent = "saving…";
    try {
      var response = await fetch({{ labels_path|tojson }}, {
        method: "POST", credentials: "same-origin",
        headers: {"Content-Type": "application/json"},
        body: JSON.stringify({document_id: form.dataset.document, sentiment: sentiment, labelled_by: "console"})
      });
      status.textContent = response.ok ? "labelled " + sentiment : "not saved (" + response.status + "): " + (await response.text()).slice(0, 200);
    } catch (error) {
      status.textContent = "not saved: " + error;
    }
  });
});
</script>
{% endblock %}
"""

_EPISODES = """<table class="episodes">
<thead><tr><th>state</th><th>rule</th><th>key</th><th>severity</th><th class="num">value</th><th>pending since</th><th>fired</th><th>resolved</th><th>summary</th></tr></thead>
<tbody>
{% for e in episodes %}
<tr><td><span class="pill {{ e.state }}">{{ e.state }}</span>{% if e.silenced %} <span class="small">silenced</span>{% endif %}</td>
<td>{{ e.rule_name }}</td><td><a href="{{ key_url(e.key) }}">{{ e.key }}</a></td><td>{{ e.severity }}</td>
<td class="num">{{ '%.2f' % e.value if e.value is not none else '–' }}</td>
<td class="small">{{ when(e.pending_since) }}</td><td class="small">{{ when(e.fired_at) }}</td><td class="small">{{ when(e.resolved_at) }}</td>
<td class="small">{{ e.summary }}</td></tr>
{% else %}<tr><td colspan="9" class="small">none</td></tr>{% endfor %}
</tbody></table>
"""

_ALERTS = """{% extends "base.html" %}
{% block title %}alerts{% endblock %}
{% block main %}
<h1>Alerts</h1>
<p class="lead">An alert is <b>pending</b> while its rule's condition holds but not yet for the rule's
<i>for</i> time, <b>firing</b> once it has (people were notified), and <b>resolved</b> when the rule's
resolve condition held. A <b>silenced</b> alert is still evaluated, but its notifications are not sent.</p>
{% for title, episodes in [("Firing", board.firing), ("Pending", board.pending), ("Resolved", board.resolved)] %}
<h2 id="{{ title|lower }}">{{ title }} ({{ episodes|length }})</h2>
{% include "episodes.html" %}
{% endfor %}
<h2 id="silences">Silences ({{ board.silences|length }})</h2>
<table class="silences"><thead><tr><th>id</th><th>matches</th><th>from</th><th>until</th><th>by</th><th>comment</th><th>active</th></tr></thead>
<tbody>
{% for s in board.silences %}
<tr><td>{{ s.id }}</td><td>{% for name, value in s.matchers.items() %}{{ name }}={{ value }}{% if not loop.last %}, {% endif %}{% endfor %}</td>
<td class="small">{{ when(s.starts_at) }}</td><td class="small">{{ when(s.ends_at) }}</td><td>{{ s.created_by }}</td><td>{{ s.comment }}</td><td>{{ 'yes' if s.active else 'not yet' }}</td></tr>
{% else %}<tr><td colspan="7" class="small">none (add one with: finsent alerts silence add --match key=entity:TICKER --for 2h)</td></tr>{% endfor %}
</tbody></table>
{% endblock %}
"""

_ERROR = """{% extends "base.html" %}
{% block main %}<h1>That did not work</h1><p class="error">{{ message }}</p><p><a href="/">back to the ranking</a></p>{% endblock %}
"""


def _environment() -> Environment:
    env = Environment(
        loader=DictLoader(
            {
                "base.html": _BASE,
                "now.html": _NOW,
                "key.html": _KEY,
                "alerts.html": _ALERTS,
                "episodes.html": _EPISODES,
                "error.html": _ERROR,
            }
        ),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )
    env.globals.update(when=_when, pct=_pct, odds=_odds, key_url=key_url)
    return env


# --- routes --------------------------------------------------------------------------------


def _duration(request: Request, name: str, default: str) -> timedelta:
    raw = request.query_params.get(name) or default
    try:
        value = parse_duration(raw)
    except ValueError as exc:
        raise InputError(f"{name}: {exc}") from None
    if value <= timedelta(0):
        raise InputError(f"{name} must be longer than zero, got {raw!r}")
    return value


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit") or "20"
    try:
        value = int(raw)
    except ValueError:
        raise InputError(f"limit must be a whole number, got {raw!r}") from None
    if not 1 <= value <= 500:
        raise InputError(f"limit must be between 1 and 500, got {value}")
    return value


def console_routes(engine: Engine, settings: Settings) -> list[Route]:
    """The console's pages as Starlette routes, reading ``engine``. Mount them in any
    Starlette app; ``POST /v1/labels`` (the label buttons' target) is the HTTP API's, not
    theirs."""
    env = _environment()
    default_now = "latest" if settings.alert_clock == "data" else "now"

    def render(template: str, status: int = 200, **context: Any) -> HTMLResponse:
        return HTMLResponse(env.get_template(template).render(**context), status_code=status)

    def guarded(page: Any) -> Any:
        def endpoint(request: Request) -> HTMLResponse:
            try:
                return page(request)  # type: ignore[no-any-return]
            except InputError as exc:
                return render("error.html", status=400, message=str(exc), page="", now=None)

        endpoint.__name__ = page.__name__
        return endpoint

    def now_page(request: Request) -> HTMLResponse:
        since = _duration(request, "since", "6h")
        kind = request.query_params.get("kind") or None
        limit = _limit(request)
        now_arg = request.query_params.get("now") or default_now
        ranking = queries.top_keys(engine, since=since, kind=kind, limit=limit, now=now_arg)
        spark_span = since * 4
        sparks = {}
        for k in ranking.keys:
            series = queries.key_series(
                engine, k.key, spark_span, nice_bucket(spark_span, 24), now=ranking.now
            )
            sparks[k.key] = sparkline([p.negative_share for p in series.points])
        return render(
            "now.html",
            page="now",
            now=ranking.now,
            now_arg=now_arg,
            ranking=ranking,
            since=format_duration(since),
            baseline=format_duration(ranking.baseline),
            kind=ranking.kind,
            limit=limit,
            sparks=sparks,
            spark_span=format_duration(spark_span),
        )

    def key_page(request: Request) -> HTMLResponse:
        key = request.path_params["key"]
        now_arg = request.query_params.get("now") or default_now
        at = queries.resolve_now(engine, now_arg)
        span = _duration(request, "range", "2d")
        since = _duration(request, "since", "6h")
        bucket = nice_bucket(span)
        series = queries.key_series(engine, key, span, bucket, now=at)
        board = queries.alert_episodes(engine, key)
        ranking = queries.top_keys(engine, since=since, now=at, only_key=key, limit=1)
        shares = [p.negative_share for p in series.points]
        volumes = [float(p.documents) if p.documents else None for p in series.points]
        surges = [p.surge_score for p in series.points]
        return render(
            "key.html",
            page="key",
            now=at,
            now_arg=now_arg,
            key=key,
            name=queries.key_name(key),
            kind=queries.key_kind(key),
            ranked=ranking.keys[0] if ranking.keys else None,
            since=format_duration(since),
            range=format_duration(span),
            bucket=format_duration(bucket),
            share_chart=chart(
                series,
                shares,
                title=f"negative share per {format_duration(bucket)} (bearish / all documents)",
                y_min=0.0,
                y_max=1.0,
                fmt="{:.0%}",
                episodes=board.all,
                css_class="chart share",
            ),
            volume_chart=chart(
                series,
                volumes,
                title=f"volume: documents per {format_duration(bucket)}",
                y_min=0.0,
                bars=True,
                fmt="{:.0f}",
                episodes=board.all,
                css_class="chart volume",
            ),
            surge_chart=chart(
                series,
                surges,
                title="memory surge score (after the bucket's newest document)",
                fmt="{:.2f}",
                episodes=board.all,
                css_class="chart surge",
            ),
            headlines=queries.key_headlines(engine, key, 30, now=at),
            episodes=board.all,
            labels_path=LABELS_PATH,
        )

    def alerts_page(request: Request) -> HTMLResponse:
        board = queries.alert_episodes(engine)
        now_arg = request.query_params.get("now") or default_now
        return render(
            "alerts.html",
            page="alerts",
            now=queries.resolve_now(engine, now_arg),
            board=board,
        )

    return [
        Route("/", guarded(now_page), methods=["GET"], name="console-now"),
        Route("/keys/{key:path}", guarded(key_page), methods=["GET"], name="console-key"),
        Route("/alerts", guarded(alerts_page), methods=["GET"], name="console-alerts"),
    ]
