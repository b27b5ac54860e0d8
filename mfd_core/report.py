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
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_score_vs_time(runs: list[RunResult], path: Path, *, fault_times: list[float] = ()) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    _policy_lines(ax, runs, lambda run: run.times)
    for t in fault_times:
        ax.axvline(t, color="red", linestyle=":", linewidth=1)
    return _finish(fig, ax, path, xlabel="simulated time (s)", ylabel="mean test accuracy over nodes",
                   title="Score over simulated time (one line per seed)")


def plot_score_vs_bytes(runs: list[RunResult], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    _policy_lines(ax, runs, lambda run: np.asarray(run.bytes, dtype=float) / 1e6)
    ax.set_xscale("symlog", linthresh=0.1)
    return _finish(fig, ax, path, xlabel="bytes on all links so far (MB)", ylabel="mean test accuracy over nodes",
                   title="Score per byte sent")


def plot_per_node(run: RunResult, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    arr = np.asarray(run.scores, dtype=float)
    for k, node in enumerate(run.node_ids):
        ax.plot(run.times, arr[:, k], linewidth=0.9, alpha=0.7)
    ax.plot(run.times, run.mean_scores(), color="black", linewidth=2, label="mean")
    return _finish(fig, ax, path, xlabel="simulated time (s)", ylabel="test accuracy",
                   title=f"Per-node curves: {run.policy}, seed {run.seed} (gaps: node away)")


def summary_rows(runs: list[RunResult]) -> list[dict]:
    rows = []
    for policy, group in sorted(_by_policy(runs).items()):
        finals = [r.final_mean_score for r in group]
        total = [r.bytes[-1] if r.bytes else 0 for r in group]
        rows.append({
            "policy": policy, "seeds": len(group),
            "final_mean_score": float(np.mean(finals)), "final_score_std": float(np.std(finals)),
            "total_MB": float(np.mean(total)) / 1e6,
            "data_bytes": int(max((r.data_bytes[-1] if r.data_bytes else 0) for r in group)),
            "wall_s": float(np.mean([r.wall_seconds for r in group])),
        })
    return rows


def write_report(results: str | Path, out: str | Path | None = None, title: str | None = None) -> Path:
    """Draw the plots and write ``index.html`` (plus ``summary.json``) into ``out``."""
    results = Path(results)
    runs = find_runs(results)
    out = Path(out) if out else results / "report"
    out.mkdir(parents=True, exist_ok=True)
    faults = sorted({f["at"] for r in runs for f in r.extra.get("faults", []) if isinstance(f, dict)})
    images = [plot_score_vs_time(runs, out / "score_vs_time.png", fault_times=faults),
              plot_score_vs_bytes(runs, out / "score_vs_bytes.png")]
    for policy, group in sorted(_by_policy(runs).items()):
        images.append(plot_per_node(group[0], out / f"per_node_{policy}.png"))
    rows = summary_rows(runs)
    (out / "summary.json").write_text(json.dumps(rows, indent=2))
    title = title or f"MFD results: {runs[0].scenario}"
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row.values()) + "</tr>" for row in rows)
    pictures = "".join(f'<figure><img src="{p.name}" alt="{p.stem}"><figcaption>{p.stem.replace("_", " ")}'
                       f"</figcaption></figure>" for p in images)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}figure{{display:inline-block;margin:8px}}
img{{max-width:520px}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{len(runs)} runs from <code>{html.escape(str(results))}</code>. Scores are each node's model on the held-out
test set, averaged over nodes; bytes count every byte on every link it crossed.</p>
<table><tr>{head}</tr>{body}</table>
{pictures}
</body></html>"""
    (out / "index.html").write_text(page)
    return out / "index.html"


def _fmt(value) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4g}"
    return html.escape(str(value))
