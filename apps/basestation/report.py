"""The base-station report a person reads, and the summary behind it.

Two kinds of page, one per stage of a base-station run folder:

- an evaluation (``mfd basestation evaluate``): per scenario, a table of every
  controller's figures (median and range over seeds) and one chart per KPI that shows
  each controller's difference from the best of the heuristics in that scenario,
  seed by seed (the same evaluation seeds), with the range over seeds as error bars;
- a training (``mfd basestation train``): the stations' scores over the rounds, and the
  final score, bytes and env steps of each sharing policy.

``rebuild_report(RUNDIR)`` (what ``mfd report RUNDIR`` calls) redraws either from the run
folder alone. The summary (:func:`evaluation_summary`) is also what ``summary.json`` and
``summary.csv`` hold.
"""
from __future__ import annotations

import csv
import html
import json
import math
import statistics
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from . import evaluation
from .evaluation import COLOURS, KPIS, LABELS, POLICIES

__all__ = ["HEURISTICS", "LOWER_IS_BETTER", "evaluation_summary", "write_summary", "write_report",
           "write_training_report", "rows_from_results", "rebuild_report"]

# The references a controller is measured against: the better of these per scenario
# and KPI (evaluation.HEURISTICS where it names them, e.g. with a tuned rule).
HEURISTICS = tuple(getattr(evaluation, "HEURISTICS", ("full_power", "heuristic")))
# KPIs where less is better; every other one is better higher.
LOWER_IS_BETTER = frozenset({"energy_kj", "handovers", "model_mb", "mean_power_w", "unserved_users",
                             "measurement_mb"})
# Short table headers (the chart titles use the long KPI labels).
HEADERS = {
    "mean_user_rate_mbps": "mean rate<br>Mbit/s", "p5_user_rate_mbps": "5th-pct rate<br>Mbit/s",
    "pf_utility": "PF utility<br>per step", "energy_kj": "energy<br>kJ", "energy_efficiency_kbit_per_j":
    "efficiency<br>kbit/J", "handovers": "handovers", "model_mb": "model traffic<br>MB",
    "sleeping_stations": "stations<br>asleep", "measurement_mb": "measurements<br>MB",
    "pingpong_handovers": "ping-pong<br>handovers",
}
SHORT = {"full_power": "full power", "heuristic": "load balancing", "tuned_rule": "tuned rule"}
TABLE_KPIS = tuple(k for k, _ in KPIS) + ("sleeping_stations",)
# Drawn as differences from the best heuristic: the heuristics send no models, so model
# traffic is a table column, not a chart.
CHART_KPIS = tuple((k, label) for k, label in KPIS if k != "model_mb")
STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1240px}
table{border-collapse:collapse;font-size:13px;margin-bottom:1em}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right;vertical-align:top}
th{background:#f3f3f3;font-weight:600}td:first-child,th:first-child{text-align:left}
td small{color:#666}figure{display:inline-block;margin:6px;vertical-align:top}
img{max-width:590px}figcaption{font-size:13px;color:#444;max-width:590px}"""


# -- the summary -------------------------------------------------------------------------


def _spread(values: Iterable[float]) -> dict[str, float] | None:
    finite = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not finite:
        return None
    return {"median": statistics.median(finite), "min": min(finite), "max": max(finite), "n": len(finite)}


def _numeric(row: dict[str, Any]) -> list[str]:
    skip = {"seed", "train_seed", "steps", "training_env_steps"}
    return [k for k, v in row.items() if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)]


def _better(key: str, a: float, b: float) -> bool:
    return a < b if key in LOWER_IS_BETTER else a > b


def evaluation_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per scenario and controller: every KPI's median and range over seeds; the better
    heuristic per KPI (by median); and each controller's difference from it, paired by
    evaluation seed (a trained controller with several training seeds has one pair per
    training seed and evaluation seed; against a trained heuristic, the tuned rule, it
    pairs with the rule of its own training seed)."""
    scenarios: dict[str, Any] = {}
    for scen in dict.fromkeys(r["scenario"] for r in rows):
        mine = [r for r in rows if r["scenario"] == scen]
        order = {p: i for i, p in enumerate(POLICIES)}
        policies = sorted(dict.fromkeys(r["policy"] for r in mine), key=lambda p: order.get(p, 99))
        keys = list(dict.fromkeys(k for r in mine for k in _numeric(r)))
        figures = {p: {"seeds": sum(r["policy"] == p for r in mine),
                       **{k: _spread(r.get(k, math.nan) for r in mine if r["policy"] == p) for k in keys}}
                   for p in policies}
        reference: dict[str, str] = {}
        for k in keys:
            best = None
            for h in HEURISTICS:
                med = (figures.get(h, {}).get(k) or {}).get("median")
                if med is not None and (best is None or _better(k, med, best[1])):
                    best = (h, med)
            if best is not None:
                reference[k] = best[0]
        differences: dict[str, dict[str, Any]] = {}
        for p in policies:
            entry = {}
            for k, h in reference.items():
                # a trained reference (the tuned rule) has a row per training seed: a
                # trained controller pairs with the one of its own training seed
                ref = [q for q in mine if q["policy"] == h and q.get(k) is not None]
                entry[k] = _spread(r.get(k, math.nan) - q[k] for r in mine if r["policy"] == p for q in ref
                                   if q["seed"] == r["seed"] and (q.get("train_seed") is None
                                                                  or r.get("train_seed") is None
                                                                  or q["train_seed"] == r["train_seed"]))
            differences[p] = entry
        scenarios[scen] = {"policies": figures, "best_heuristic": reference, "minus_best_heuristic": differences}
    return {"scenarios": scenarios}


def write_summary(summary: dict[str, Any], folder: Path, **extra: Any) -> None:
    """``summary.json`` (the summary and ``extra``) and ``summary.csv``: one row per
    (scenario, controller, KPI) with its median and range over seeds, the better
    heuristic and the difference from it."""
    folder = Path(folder)
    (folder / "summary.json").write_text(json.dumps({**extra, **summary}, indent=2) + "\n")
    with open(folder / "summary.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["scenario", "policy", "metric", "seeds", "median", "min", "max", "best_heuristic",
                         "minus_best_heuristic_median", "minus_best_heuristic_min", "minus_best_heuristic_max"])
        for scen, doc in summary["scenarios"].items():
            for policy, figures in doc["policies"].items():
                for metric, s in figures.items():
                    if metric == "seeds" or s is None:
                        continue
                    d = doc["minus_best_heuristic"].get(policy, {}).get(metric) or {}
                    writer.writerow([scen, policy, metric, s["n"], s["median"], s["min"], s["max"],
                                     doc["best_heuristic"].get(metric, ""), d.get("median", ""), d.get("min", ""),
                                     d.get("max", "")])


# -- reading a run folder back -------------------------------------------------------------


def rows_from_results(folder: str | Path) -> list[dict[str, Any]]:
    """An evaluation run folder's ``results.csv`` back as one row per episode.

    The ``run`` column is ``SCENARIO/POLICY/seedS`` or, for models of a training seed T,
    ``SCENARIO/POLICY/trainT/seedS``; ``seed`` is the evaluation seed S."""
    by_run: dict[str, dict[str, Any]] = {}
    with open(Path(folder) / "results.csv", newline="") as fh:
        for rec in csv.DictReader(fh):
            parts = rec["run"].split("/")
            row = by_run.setdefault(rec["run"], {"scenario": parts[0], "policy": rec["policy"],
                                                 "seed": int(rec["seed"])})
            train = next((p for p in parts if p.startswith("train")), None)
            if train is not None:
                row["train_seed"] = int(train[5:])
            row[rec["metric"]] = float(rec["value"]) if rec["value"] != "" else math.nan
    return list(by_run.values())


def rebuild_report(folder: str | Path, out: str | Path | None = None) -> Path:
    """Redraw a base-station run folder's report (``RUNDIR/report`` unless ``out``) from
    the folder alone; it never touches another kind's files."""
    from mfd_core.runfolder import read_meta

    folder = Path(folder)
    meta = read_meta(folder)
    if meta.get("kind") != "basestation":
        raise ValueError(f"{folder}: a {meta.get('kind')} run, not a base-station one")
    out = Path(out) if out else folder / "report"
    title = meta.get("title")
    if meta.get("stage") == "train":
        return write_training_report(folder, out, title=title)
    trained = [folder / p for p in meta.get("training_folders", [])]  # relative ones are inside the folder
    trained = [p for p in trained if (p / "run.json").is_file()]
    models = Path(meta["models"]) if meta.get("models") and not trained else None
    return write_report(rows_from_results(folder), out, notes=meta.get("notes", ()), training=trained,
                        models=models if models is not None and models.is_dir() else None,
                        title=title or "LM4Net: base-station coordination",
                        interrupted=bool(meta.get("interrupted")))


# -- charts ----------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(policy: str) -> str:
    return LABELS.get(policy, policy)


def _words(name: str) -> str:
    """A scenario name as a heading: ``rush_hour`` -> ``rush hour``."""
    return name.replace("_", " ")


def _difference_chart(summary: dict[str, Any], key: str, label: str, path: Path) -> Path | None:
    """Each controller's difference from the best heuristic, per scenario: the median
    over seeds as a dot, the range over seeds as the error bar; 0 is the heuristic."""
    scenarios = list(summary["scenarios"])
    if not any(key in doc["best_heuristic"] for doc in summary["scenarios"].values()):
        return None
    policies = [p for p in POLICIES if any(p in doc["policies"] for doc in summary["scenarios"].values())]
    policies += [p for doc in summary["scenarios"].values() for p in doc["policies"] if p not in policies]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    width = 0.8 / max(len(policies), 1)
    for k, pol in enumerate(policies):
        xs, med, low, high = [], [], [], []
        for i, scen in enumerate(scenarios):
            d = summary["scenarios"][scen]["minus_best_heuristic"].get(pol, {}).get(key)
            if d is None:
                continue
            xs.append(i + (k - (len(policies) - 1) / 2) * width)
            med.append(d["median"])
            low.append(d["median"] - d["min"])
            high.append(d["max"] - d["median"])
        if xs:
            ax.errorbar(xs, med, yerr=[low, high], fmt="o", capsize=3, markersize=5, label=_label(pol),
                        color=COLOURS.get(pol))
    ax.axhline(0.0, color="black", linewidth=0.8)
    ticks = [f"{_words(s)}\n(vs {SHORT.get(summary['scenarios'][s]['best_heuristic'].get(key), '?')})"
             for s in scenarios]
    ax.set_xticks(np.arange(len(scenarios)), ticks, fontsize=8)
    direction = "lower is better" if key in LOWER_IS_BETTER else "higher is better"
    ax.set_ylabel(f"difference ({direction})", fontsize=8)
    ax.set_title(f"{label}: difference from the best heuristic", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def _curves(ax, results: list, policies: list[str]) -> None:
    """Median of the stations' mean score over seeds, with the range over seeds as a band."""
    for pol in policies:
        runs = [r for r in results if r.policy == pol and len(r.times)]
        if not runs:
            continue
        n = min(len(r.times) for r in runs)
        times = np.asarray(runs[0].times[:n])
        series = np.stack([r.mean_scores()[:n] for r in runs])
        ax.plot(times, np.median(series, axis=0), label=_label(pol), color=COLOURS.get(pol))
        if len(runs) > 1:
            ax.fill_between(times, series.min(axis=0), series.max(axis=0), color=COLOURS.get(pol), alpha=0.2)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle=":")
    ax.set_xlabel("round (simulated s)", fontsize=8)
    ax.grid(alpha=0.3)


def _training_curves(training: list[Path], path: Path) -> Path | None:
    """Each training run folder's curves, one panel per scenario."""
    from mfd_core.runfolder import read_meta, read_results

    panels = []
    for folder in training:
        results = [r for r in read_results(folder) if r.policy != "central" and r.node_ids]
        if results:
            panels.append((read_meta(folder).get("name", folder.name), results))
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels) + 1.6, 3.2), squeeze=False)
    for ax, (name, results) in zip(axes[0], panels):
        _curves(ax, results, [p for p in POLICIES if any(r.policy == p for r in results)])
        ax.set_title(_words(name), fontsize=9)
    axes[0][0].set_ylabel("station score (1 = static config)", fontsize=8)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def _legacy_training_curves(models: Path, scenarios: list[str], path: Path) -> Path | None:
    """Curves from a models folder laid out as ``MODELS/<scenario>/<policy>/run`` (what
    benchmarks/basestation.py trains into)."""
    from mfd_core.metrics import RunResult

    runs = [(s, p, Path(models) / s / p / "run") for s in scenarios for p in ("isolated", "fedavg", "mfd")]
    runs = [(s, p, f) for s, p, f in runs if (f / "summary.json").is_file()]
    if not runs:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(scenarios), figsize=(3.4 * len(scenarios) + 1.6, 3.2), squeeze=False)
    for ax, scen in zip(axes[0], scenarios):
        _curves(ax, [RunResult.load(f) for s, _, f in runs if s == scen], ["isolated", "fedavg", "mfd"])
        ax.set_title(_words(scen), fontsize=9)
    axes[0][0].set_ylabel("station score (1 = static config)", fontsize=8)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


# -- pages -------------------------------------------------------------------------------------


def _num(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"


def _fmt(spread: dict[str, float] | None) -> str:
    """``median`` over a small ``min–max`` line (just the median when every seed agrees)."""
    if not spread:
        return "n/a"
    if spread["n"] == 1 or spread["min"] == spread["max"]:
        return _num(spread["median"])
    return f"{_num(spread['median'])}<br><small>{_num(spread['min'])}&ndash;{_num(spread['max'])}</small>"


def _signed(v: float) -> str:
    return ("+" if v > 0 else "") + _num(v)


def _findings(summary: dict[str, Any]) -> list[str]:
    """One sentence per scenario: the best controller on PF utility and mean rate, against
    the best heuristic, with the range over seeds."""
    lines = []
    units = {"pf_utility": "", "mean_user_rate_mbps": " Mbit/s"}
    for scen, doc in summary["scenarios"].items():
        parts = []
        for key, name in (("pf_utility", "PF utility"), ("mean_user_rate_mbps", "mean user rate")):
            ref = doc["best_heuristic"].get(key)
            learned = {p: d[key] for p, d in doc["minus_best_heuristic"].items()
                       if p not in HEURISTICS and d.get(key)}
            if ref is None or not learned:
                continue
            best = max(learned, key=lambda p: -learned[p]["median"] if key in LOWER_IS_BETTER
                       else learned[p]["median"])
            d = learned[best]
            spread = "the same on every seed" if d["min"] == d["max"] else \
                f"range over seeds {_signed(d['min'])} to {_signed(d['max'])}"
            parts.append(f"{name}: {_label(best)} {_signed(d['median'])}{units[key]} against the "
                         f"{_label(ref)} ({spread})")
        if parts:
            lines.append(f"<b>{html.escape(_words(scen))}</b>: " + "; ".join(parts) + ".")
    return lines


def write_report(rows: list[dict[str, Any]], out: str | Path, *, models: Path | None = None,
                 notes: Iterable[str] = (), title: str = "LM4Net: base-station coordination",
                 training: Iterable[Path] = (), interrupted: bool = False) -> Path:
    """Write ``index.html`` and its PNG charts into ``out`` from evaluation rows (one per
    scenario, controller and seed, as :func:`apps.basestation.evaluation.evaluate` gives).

    :param models: a models folder in the ``MODELS/<scenario>/<policy>/run`` layout, for
        the training curves; ``training``: training run folders, for the same.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = evaluation_summary(rows)
    images = [p for key, label in CHART_KPIS if (p := _difference_chart(summary, key, label, out / f"{key}.png"))]
    scenarios = list(summary["scenarios"])
    training = [Path(t) for t in training]
    curves = _training_curves(training, out / "training_scores.png") if training else None
    if curves is None and models is not None:
        curves = _legacy_training_curves(models, scenarios, out / "training_scores.png")
    if curves is not None:
        images.append(curves)
    columns = [k for k in TABLE_KPIS if any(k in r for r in rows)]
    tables = []
    for scen, doc in summary["scenarios"].items():
        head = "<th>controller</th><th>episodes</th>" + "".join(
            f"<th>{HEADERS.get(c, html.escape(c.replace('_', ' ')))}</th>" for c in columns)
        body = "".join(
            f"<tr><td>{html.escape(_label(p))}</td><td>{figures['seeds']}</td>"
            + "".join(f"<td>{_fmt(figures.get(c))}</td>" for c in columns) + "</tr>"
            for p, figures in doc["policies"].items())
        tables.append(f"<h2>{html.escape(_words(scen))}</h2><table><tr>{head}</tr>{body}</table>")
    captions = {f"{k}.png": f"{label}: each controller minus the best heuristic of the scenario (named under "
                            f"the axis), seed by seed; dot = median, bar = range over seeds"
                for k, label in CHART_KPIS}
    captions["training_scores.png"] = ("training: the stations' mean score on their validation twins "
                                       "(1 = the static configuration: the tuned MLB rule for residual agents, "
                                       "full power for absolute ones); line = median, band = range over seeds")
    pictures = "".join(f'<figure><img src="{p.name}" alt="{html.escape(captions.get(p.name, p.stem))}">'
                       f"<figcaption>{html.escape(captions.get(p.name, p.stem))}</figcaption></figure>"
                       for p in images)
    note_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    findings = "".join(f"<li>{line}</li>" for line in _findings(summary))
    trains = {r["train_seed"] for r in rows if r.get("train_seed") is not None}
    seeds = f"{len({r['seed'] for r in rows})} evaluation seed(s)" + (
        f" and {len(trains)} training seeds" if len(trains) > 1 else "")
    stopped = "<p><b>Interrupted</b>: these are the episodes measured before the run was stopped.</p>" \
        if interrupted else ""
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>{stopped}
{"<ul>" + findings + "</ul>" if findings else ""}
<p>Every controller on every scenario, greedy actions, over {seeds}: each cell is the median over seeds
with the range below it (episodes: evaluation seeds, times training seeds for a trained controller). Rates and PF utility are per-step means over the episode; energy and handovers are
episode totals; efficiency is all bits over all joules. Model traffic is what training sent over the X2 links
(FedAvg: every link on the way to and from its server). Files: results.csv (one row per measurement),
summary.csv and summary.json (medians, ranges, differences from the best heuristic).</p>
{"<ul>" + note_html + "</ul>" if note_html else ""}
{''.join(tables)}
{pictures}
</body></html>"""
    (out / "index.html").write_text(page)
    return out / "index.html"


def write_training_report(folder: str | Path, out: str | Path | None = None, *, title: str | None = None) -> Path:
    """A training run folder's page: the curves and a table of each policy's final
    figures (median and range over seeds), bytes against FedAvg."""
    from mfd_core.runfolder import read_meta

    folder = Path(folder)
    meta = read_meta(folder)
    out = Path(out) if out else folder / "report"
    out.mkdir(parents=True, exist_ok=True)
    summary = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").is_file() else {}
    curves = _training_curves([folder], out / "training_scores.png")
    rows = []
    for policy, figures in summary.get("policies", {}).items():
        comp = summary.get("comparisons", {}).get(policy, {})
        rows.append((_label(policy), figures.get("seeds"), _fmt(figures.get("final_mean_score")),
                     _fmt(_scaled(figures.get("model_bytes"), 1e-6)), _fmt(comp.get("bytes_over_fedavg")),
                     _fmt(figures.get("env_steps")), _fmt(figures.get("wall_seconds"))))
    for policy, figures in summary.get("controllers", {}).items():
        sent = figures.get("measurement_bytes")
        rows.append((_label(policy), figures.get("seeds"), "n/a",
                     "0" + (f" (sends measurements: {_fmt(_scaled(sent, 1e-6))} MB)" if sent else ""), "n/a",
                     _fmt(figures.get("env_steps")), _fmt(figures.get("wall_seconds"))))
    head = "".join(f"<th>{h}</th>" for h in ("policy", "seeds", "final station score", "model traffic MB",
                                             "bytes / FedAvg's", "env steps", "wall s"))
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    name = meta.get("name", folder.name)
    title = title or f"LM4Net training: {name}"
    stopped = "<p><b>Interrupted</b>: these are the rounds measured before the run was stopped.</p>" \
        if meta.get("interrupted") else ""
    picture = (f'<figure><img src="{curves.name}" alt="training scores"><figcaption>the stations\' mean score '
               f"on their validation twins (1 = the static configuration: the tuned MLB rule for residual agents, "
               f"full power for absolute ones); line = median, band = range over "
               f"seeds</figcaption></figure>") if curves else ""
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>{stopped}
<p>Scenario {html.escape(name)}, seeds {html.escape(', '.join(map(str, meta.get('seeds', []))))}, on the
{html.escape(str(meta.get('network', 'sim')))} network. Each cell is the median over seeds with the range below it.
The models are in models/seed&lt;k&gt;/; compare them with the heuristics:
<code>mfd basestation evaluate --models {html.escape(str(folder))}</code>.</p>
<table><tr>{head}</tr>{body}</table>
{picture}
</body></html>"""
    (out / "index.html").write_text(page)
    return out / "index.html"


def _scaled(spread: dict[str, float] | None, factor: float) -> dict[str, float] | None:
    if not spread:
        return None
    return {k: (v * factor if k != "n" else v) for k, v in spread.items()}
