"""The base-station report a person reads: ``index.html`` with a table per scenario and
PNG charts; ``results.json`` / ``results.csv`` hold every (scenario, policy, seed) row and
``summary.csv`` the means over seeds.
"""
from __future__ import annotations

import csv
import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .evaluation import COLOURS, KPIS, LABELS, POLICIES, aggregate

__all__ = ["write_report"]


def _bar_chart(summary: list[dict], key: str, label: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(dict.fromkeys(r["scenario"] for r in summary))
    policies = [p for p in POLICIES if any(r["policy"] == p for r in summary)]
    width = 0.8 / max(len(policies), 1)
    fig, ax = plt.subplots(figsize=(8, 4))
    for k, pol in enumerate(policies):
        vals = [next((r.get(key, math.nan) for r in summary if r["scenario"] == s and r["policy"] == pol), math.nan)
                for s in scenarios]
        ax.bar(np.arange(len(scenarios)) + (k - (len(policies) - 1) / 2) * width, vals, width,
               label=LABELS.get(pol, pol), color=COLOURS.get(pol))
    ax.set_xticks(np.arange(len(scenarios)), scenarios)
    ax.set_ylabel(label)
    ax.set_title(label)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _training_curves(models: Path, scenarios: list[str], path: Path) -> Path | None:
    """Each RL policy's mean test score (1.0 = static configuration) over training."""
    from mfd_core.metrics import RunResult

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(s, p, Path(models) / s / p / "run") for s in scenarios for p in ("isolated", "fedavg", "mfd")]
    runs = [(s, p, f) for s, p, f in runs if (f / "summary.json").is_file()]
    if not runs:
        return None
    fig, axes = plt.subplots(1, len(scenarios), figsize=(3.2 * len(scenarios), 3.2), squeeze=False)
    for ax, scen in zip(axes[0], scenarios):
        for s, p, folder in runs:
            if s != scen:
                continue
            r = RunResult.load(folder)
            ax.plot(r.times, r.mean_scores(), label=LABELS[p], color=COLOURS[p])
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle=":")
        ax.set_title(scen)
        ax.set_xlabel("round (simulated s)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("station score (1 = static config)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.4g}"
    return html.escape(str(v))


def write_report(rows: list[dict[str, Any]], out: Path, *, models: Path | None = None,
                 notes: list[str] = (), title: str = "LM4Net: base-station coordination") -> Path:
    """Write ``index.html`` with PNG charts, ``results.json``, ``results.csv``, ``summary.csv``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = aggregate(rows)
    (out / "results.json").write_text(json.dumps({"rows": rows, "summary": summary, "notes": list(notes)},
                                                 indent=2))
    for name, table in (("results.csv", rows), ("summary.csv", summary)):
        fields = list(dict.fromkeys(k for r in table for k in r))
        with open(out / name, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(table)
    images = [_bar_chart(summary, key, label, out / f"{key}.png") for key, label in KPIS] if summary else []
    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    if models is not None:
        curves = _training_curves(models, scenarios, out / "training_scores.png")
        if curves is not None:
            images.append(curves)
    columns = ["policy", "seeds"] + [k for k, _ in KPIS] + ["sleeping_stations"]
    tables = []
    for scen in scenarios:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td>{_fmt(LABELS.get(r[c], r[c]) if c == 'policy' else r.get(c, math.nan))}"
                                         f"</td>" for c in columns) + "</tr>"
                       for r in summary if r["scenario"] == scen)
        tables.append(f"<h2>{html.escape(scen)}</h2><table><tr>{head}</tr>{body}</table>")
    pictures = "".join(f'<figure><img src="{p.name}" alt="{p.stem}"><figcaption>{p.stem.replace("_", " ")}'
                       f"</figcaption></figure>" for p in images)
    note_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}figure{{display:inline-block;margin:6px}}
img{{max-width:560px}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Every policy on every scenario, greedy actions, means over {len(set(r['seed'] for r in rows))} seeds.
Rates and PF utility are per-step means over the episode; energy and handovers are episode totals;
energy efficiency is all bits over all joules. Model traffic is what training sent over the X2 links
(FedAvg: every link on the way to and from its server). Files: results.json, results.csv, summary.csv.</p>
{"<ul>" + note_html + "</ul>" if note_html else ""}
{''.join(tables)}
{pictures}
</body></html>"""
    (out / "index.html").write_text(page)
    return out / "index.html"
