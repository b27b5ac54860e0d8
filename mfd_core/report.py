"""Results to pictures: score vs simulated time, score vs bytes, per-node curves, and
an HTML page that shows them above a summary table.

A results folder holds one sub-folder per run (``<policy>/seed<k>/`` with
``metrics.jsonl``, ``events.jsonl`` and ``summary.json``); :func:`write_report` finds
them all, so the same call reports one run or a whole comparison.
"""
from __future__ import annotations

import html
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, none opened
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .metrics import RunResult  # noqa: E402

# One colour per policy, the same on every plot and page.
COLOURS = {"isolated": "#7f7f7f", "fedavg": "#1f77b4", "gossip": "#ff7f0e", "mfd": "#2ca02c",
           "mfd-travel": "#9467bd"}


def find_runs(folder: str | Path) -> list[RunResult]:
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"{folder}: no such results folder")
    runs = [RunResult.load(p.parent) for p in sorted(folder.rglob("summary.json")) if (p.parent / "metrics.jsonl").exists()]
    if not runs:
        raise FileNotFoundError(f"{folder}: no runs found (expected */summary.json with metrics.jsonl beside it)")
    return runs


def _by_policy(runs: Iterable[RunResult]) -> dict[str, list[RunResult]]:
    groups: dict[str, list[RunResult]] = defaultdict(list)
    for run in runs:
        groups[run.policy].append(run)
    return dict(groups)


def _colour(policy: str, i: int) -> str:
    return COLOURS.get(policy, plt.rcParams["axes.prop_cycle"].by_key()["color"][i % 10])


def _policy_lines(ax, runs: list[RunResult], x_of) -> None:
    """One line per run, coloured by policy, labelled once per policy (first seed solid)."""
    for i, (policy, group) in enumerate(sorted(_by_policy(runs).items())):
        for j, run in enumerate(group):
            ax.plot(x_of(run), run.mean_scores(), color=_colour(policy, i), alpha=0.9 if j == 0 else 0.45,
                    label=policy if j == 0 else None)


def _finish(fig, ax, path: Path, *, xlabel: str, ylabel: str, title: str) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        # outside the data: a legend over the curves hides what it labels
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_score_vs_time(runs: list[RunResult], path: Path, *, fault_times: list[float] = (),
                       score_name: str = "test accuracy") -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    _policy_lines(ax, runs, lambda run: run.times)
    for t in fault_times:
        ax.axvline(t, color="red", linestyle=":", linewidth=1)
    return _finish(fig, ax, path, xlabel="simulated time (s)", ylabel=f"mean {score_name} over nodes",
                   title="Score over simulated time (one line per seed)")


def plot_score_vs_bytes(runs: list[RunResult], path: Path, *, score_name: str = "test accuracy") -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    _policy_lines(ax, runs, lambda run: np.asarray(run.bytes, dtype=float) / 1e6)
    if max((max(run.bytes) for run in runs if run.bytes), default=0) > 1e6:
        ax.set_xscale("symlog", linthresh=0.1)  # isolated's zero beside MB of the others
    return _finish(fig, ax, path, xlabel="bytes on all links so far (MB)", ylabel=f"mean {score_name} over nodes",
                   title="Score per byte sent")


def plot_per_node(run: RunResult, path: Path, *, score_name: str = "test accuracy") -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    arr = np.asarray(run.scores, dtype=float)
    for k, node in enumerate(run.node_ids):
        ax.plot(run.times, arr[:, k], linewidth=0.9, alpha=0.7)
    ax.plot(run.times, run.mean_scores(), color="black", linewidth=2, label="mean")
    return _finish(fig, ax, path, xlabel="simulated time (s)", ylabel=score_name,
                   title=f"Per-node curves: {run.policy}, seed {run.seed} (gaps: node away)")


def summary_rows(runs: list[RunResult]) -> list[dict]:
    """One row per policy: the figures a reader compares, median and range over seeds."""
    from .runfolder import summarise

    summary = summarise(runs)
    rows = []
    for policy, figures in summary["policies"].items():
        comp = summary["comparisons"].get(policy, {})
        rows.append({
            "policy": policy, "seeds": figures["seeds"],
            "final_mean_score": figures["final_mean_score"],
            "speedup_vs_isolated": comp.get("speedup_vs_isolated"),
            "never_reaches_isolated": comp.get("speedup_vs_isolated_never"),
            "score_minus_isolated": comp.get("score_minus_isolated"),
            "total_MB": _scaled(figures["total_bytes"], 1e-6),
            "bytes_over_fedavg": comp.get("bytes_over_fedavg"),
            "data_bytes": max((r.data_bytes[-1] if r.data_bytes else 0) for r in runs if r.policy == policy),
            "wall_s": figures["wall_seconds"],
        })
    return rows


def _scaled(spread: dict | None, factor: float) -> dict | None:
    if spread is None:
        return None
    return {k: (v * factor if k != "n" else v) for k, v in spread.items()}


# Column headings a person reads (no snake_case on the page).
HEADINGS = {
    "policy": "policy", "seeds": "seeds", "final_mean_score": "final score",
    "speedup_vs_isolated": "speed-up vs isolated", "never_reaches_isolated": "seeds never reaching isolated",
    "score_minus_isolated": "score minus isolated", "total_MB": "MB sent", "bytes_over_fedavg": "bytes vs FedAvg",
    "data_bytes": "raw data bytes sent", "wall_s": "wall time (s)",
}


def write_report(results: str | Path, out: str | Path | None = None, title: str | None = None) -> Path:
    """Draw the plots and write ``index.html`` (plus ``summary.json``) into ``out``.

    ``results`` is a run folder (``run.json``, ``results.csv``: what ``mfd run`` and
    ``mfd compare`` write) or an older results folder (``*/summary.json`` with
    ``metrics.jsonl``)."""
    results = Path(results)
    score_name = "test accuracy"
    if (results / "run.json").exists():
        from .runfolder import read_meta, read_results

        meta = read_meta(results)
        if meta.get("kind", "core") != "core":
            raise ValueError(f"{results} is a {meta['kind']} run: its report is drawn by its app")
        runs = read_results(results)
        score_name = meta.get("score_name", score_name)
        if not runs:
            raise FileNotFoundError(f"{results}: the run folder holds no measurements yet")
    else:
        runs = find_runs(results)
    out = Path(out) if out else results / "report"
    out.mkdir(parents=True, exist_ok=True)
    faults = sorted({f["at"] for r in runs for f in r.extra.get("faults", []) if isinstance(f, dict)})
    images = [plot_score_vs_time(runs, out / "score_vs_time.png", fault_times=faults, score_name=score_name),
              plot_score_vs_bytes(runs, out / "score_vs_bytes.png", score_name=score_name)]
    for policy, group in sorted(_by_policy(runs).items()):
        images.append(plot_per_node(group[0], out / f"per_node_{policy}.png", score_name=score_name))
    rows = summary_rows(runs)
    (out / "summary.json").write_text(json.dumps(rows, indent=2))
    title = title or f"MFD results: {runs[0].scenario}"
    head = "".join(f"<th>{html.escape(HEADINGS.get(k, k))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row.values()) + "</tr>" for row in rows)
    pictures = "".join(f'<figure><img src="{p.name}" alt="{p.stem}"><figcaption>{p.stem.replace("_", " ")}'
                       f"</figcaption></figure>" for p in images)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em}}
.table{{overflow-x:auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#f4f4f4}}
figure{{display:inline-block;margin:8px;max-width:100%}}img{{max-width:100%;width:560px}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{len(runs)} runs from <code>{html.escape(str(results))}</code>. Score: each node's {html.escape(score_name)},
averaged over nodes. Figures are medians over seeds with the range in brackets. Speed-up vs isolated: how much
sooner a policy reaches the final score of isolated learning on the same seed. Bytes count every byte on every
link it crossed.</p>
<div class="table"><table><tr>{head}</tr>{body}</table></div>
{pictures}
</body></html>"""
    (out / "index.html").write_text(page)
    return out / "index.html"


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, dict) and "median" in value:
        if value["min"] == value["max"]:
            return _fmt(value["median"])
        return f"{_fmt(value['median'])} [{_fmt(value['min'])}&ndash;{_fmt(value['max'])}]"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else "&infin;" if math.isinf(value) else f"{value:.3g}"
    return html.escape(str(value))
