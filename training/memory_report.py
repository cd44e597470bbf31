"""The memory's evaluation for people: ``memory_report.md`` (tables per held-out set),
``memory_report.json`` (everything, for tools) and ``memory_detection.png`` (delay vs
false alarms). Written beside ``memory.onnx`` so a model directory explains its own cell.
"""

from __future__ import annotations

import json
from pathlib import Path


def report_markdown(result: dict) -> str:
    """The human report: tables per held-out set, then the setup."""
    lines = ["# Memory cell: surge detection vs baselines", ""]
    head = [f"Feature source: {result.get('feature_source', 'unknown')}."]
    if "train_seconds" in result:
        head.append(
            f"Trained in {result['train_seconds']:.0f} s ({result['config']['iterations']} iterations, "
            f"best at {result['best_iteration']})."
        )
    if "export" in result:
        head.append(f"ONNX parity max |diff| {result['export']['max_abs_diff']:.2g}.")
    if "memory_file" in result:
        head.append(f"Memory evaluated: {result['memory_file']}.")
    if "documents" in result:
        head.append(
            f"Documents: {result['documents']}, split in two halves: training streams draw from "
            "one, the held-out streams from the other."
        )
    cfg = result.get("config") or {}
    if cfg:
        head.append(
            f"Cell: state {cfg.get('state_dim')} = GRU hidden units + running statistics "
            f"({'on' if cfg.get('stats', True) else 'off'}); doc-vector dropout "
            f"{cfg.get('doc_vector_dropout')} (1.0 = the doc vector is ignored)."
        )
    lines.append(" ".join(head))
    lines.append("")
    lines.append(
        "Delay = documents from a surge's onset to the first alarm inside it; a missed surge "
        "counts its whole labelled length. False alarms = alarm episodes starting on quiet "
        "documents, per 1000 quiet documents. Each detector's threshold is the fastest one "
        "within the false-alarm budget; baselines' hyper-parameters were tuned on the training "
        "streams, like the memory."
    )
    for name, info in result["baselines"].items():
        lines.append(f"- {name}: {info['description']}")
    for set_name, data in result["sets"].items():
        lines += [
            "",
            f"## {set_name} ({data['streams']} streams, {data['documents']} documents, "
            f"{data['surges']} surges)",
            "",
        ]
        names = ["memory"] + list(result["baselines"])
        header = (
            "| FA / 1000 quiet docs | "
            + " | ".join(f"{n} delay docs (median) / hours / detected" for n in names)
            + " | "
            + " | ".join(f"memory ÷ {n}" for n in result["baselines"])
            + " |"
        )
        lines.append(header)
        lines.append("|" + "---|" * (1 + len(names) + len(result["baselines"])))
        for row in data["table"]:
            cells = [f"{row['false_alarms_per_1000']:g}"]
            for n in names:
                p = row[n]
                cells.append(
                    "—"
                    if p is None
                    else f"{p['mean_delay_docs']:.1f} ({p['median_delay_docs']:.0f}) / "
                    f"{p['mean_delay_hours']:.1f} h / {100 * p['detected']:.0f}%"
                )
            for n in result["baselines"]:
                r = row[f"delay_ratio_vs_{n}"]
                cells.append("—" if r is None else f"{r:.2f}")
            lines.append("| " + " | ".join(cells) + " |")
        bd = data.get("breakdown_at_selection_false_alarms") or {}
        if bd:
            fa = (result.get("config") or {}).get("selection_false_alarms", 2.0)
            kinds = list(next(iter(bd.values())))
            lines += [
                "",
                f"Mean delay (documents) by kind of surge at {fa:g} false alarms per 1000 quiet documents:",
                "",
                "| detector | " + " | ".join(kinds) + " |",
                "|---|" + "---|" * len(kinds),
            ]
            for name, row in bd.items():
                lines.append(
                    f"| {name} | "
                    + " | ".join(f"{row.get(k, float('nan')):.1f}" for k in kinds)
                    + " |"
                )
    lines += _burst_lines(result) + _volume_lines(result)
    lines += [
        "",
        "Expected negative rate, mean absolute error vs the true rate: "
        + ", ".join(f"{k} {v:.3f}" for k, v in result["rate_error"].items()),
        "",
    ]
    lines.append(f"Verdict: {result['verdict']}")
    return "\n".join(lines) + "\n"


def _burst_lines(result: dict) -> list[str]:
    """Negativity alarms inside quiet volume bursts: the memory vs the reference cell."""
    info = result.get("false_alarms_in_volume_bursts") or {}
    cells = info.get("cells") or {}
    if not cells:
        return []
    out = [
        "",
        "## Negativity alarms in quiet volume bursts (first held-out set)",
        "",
        f"Each cell's negativity score at its threshold for {info['at_false_alarms_per_1000']:g} "
        "false alarms per 1000 quiet documents; bursts = quiet documents arriving at >= 2x the "
        "key's usual rate with no negative surge"
        + (f"; reference cell: `{info['reference_onnx']}`" if info.get("reference_onnx") else "")
        + ".",
        "",
        "| cell | mean delay docs | alarms per 1000 burst docs | alarms per 1000 other quiet docs | share of false alarms in bursts |",
        "|---|---|---|---|---|",
    ]
    for name, row in cells.items():
        out.append(
            f"| {name} | {row['mean_delay_docs']:.1f} | {row['alarms_in_bursts_per_1000']:.2f} | "
            f"{row['alarms_elsewhere_per_1000']:.2f} | {100 * row['share_of_false_alarms_in_bursts']:.0f}% |"
        )
    return out


def _volume_lines(result: dict) -> list[str]:
    """The volume output on volume episodes, beside a log-gap EWMA detector."""
    vol = result.get("volume")
    if not vol:
        return []
    names = [n for n in vol["table"][0] if n != "false_alarms_per_1000"]
    out = [
        "",
        f"## Volume surge score (first held-out set, {vol['episodes']} episodes of >= 2x arrivals)",
        "",
        "| FA / 1000 usual-volume docs | "
        + " | ".join(f"{n} delay docs / detected" for n in names)
        + " |",
        "|---|" + "---|" * len(names),
    ]
    for row in vol["table"]:
        cells = [f"{row['false_alarms_per_1000']:g}"]
        for n in names:
            p = row[n]
            cells.append(
                "—" if p is None else f"{p['mean_delay_docs']:.1f} / {100 * p['detected']:.0f}%"
            )
        out.append("| " + " | ".join(cells) + " |")
    return out


def plot_curves(result: dict, path: Path) -> None:
    """Mean delay against false alarms (log scale), one panel per held-out set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(result["sets"])
    fig, axes = plt.subplots(1, len(sets), figsize=(6 * len(sets), 4.5), squeeze=False)
    for ax, set_name in zip(axes[0], sets, strict=True):
        for name, curve in result["sets"][set_name]["curves"].items():
            pts = sorted(
                (p["false_alarms_per_1000"], p["mean_delay_docs"])
                for p in curve
                if p["false_alarms_per_1000"] > 0
            )
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, label=name, lw=2 if name == "memory" else 1.2)
        ax.set_xscale("log")
        ax.set_xlim(0.1, 50)
        ax.set_xlabel("false alarms per 1000 quiet documents")
        ax.set_ylabel("mean detection delay (documents)")
        ax.set_title(set_name)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(
    result: dict, out_dir: Path, stem: str = "memory_report", png: str = "memory_detection.png"
) -> None:
    """``<stem>.json``, ``<stem>.md`` and the ``png`` plot into ``out_dir`` (overwritten)."""
    out_dir = Path(out_dir)
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out_dir / f"{stem}.md").write_text(report_markdown(result))
    plot_curves(result, out_dir / png)


def jsonable(obj: object) -> object:
    """``obj`` with tuples as lists, so a config dict round-trips through JSON unchanged."""
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    return obj
