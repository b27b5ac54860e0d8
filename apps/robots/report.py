"""The robots report: success-rate curves per robot, bytes over time, the robots acting,
and an HTML page with a summary table.

It reads a results folder written by :mod:`apps.robots.run` (any number of policies and
seeds), so ``demo`` (one policy) and ``compare`` (four) make the same page. Scores are
success rates on each robot's held-out episodes in its own cell; steps are the robot's
own env steps (its own experience), counted from when it joined.
"""
from __future__ import annotations

import html
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mfd_core.metrics import RunResult  # noqa: E402
from mfd_core.report import COLOURS  # noqa: E402

ARM_STYLES = {"panda": "-", "kuka": "--", "xarm6": ":"}


def load_runs(folder: str | Path) -> list[tuple[RunResult, dict[str, Any]]]:
    """Every run under ``folder``: its core result and its ``robots.json``."""
    folder = Path(folder)
    runs = []
    for path in sorted(folder.rglob("robots.json")):
        runs.append((RunResult.load(path.parent), json.loads(path.read_text())))
    if not runs:
        raise FileNotFoundError(f"{folder}: no robots runs found (expected <policy>/seed<k>/robots.json)")
    return runs


def _by_policy(runs):
    groups: dict[str, list] = defaultdict(list)
    for result, record in runs:
        groups[result.policy].append((result, record))
    order = ["isolated", "fedavg", "gossip", "mfd"]
    return dict(sorted(groups.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else 9, kv[0])))


def _colour(policy: str, i: int) -> str:
    return COLOURS.get(policy, plt.rcParams["axes.prop_cycle"].by_key()["color"][i % 10])


def plot_per_robot(result: RunResult, record: dict, path: Path) -> Path:
    """Each robot's success rate over simulated time (the joiner's starts when it joins)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    scores = np.asarray(result.scores, dtype=float)
    steps = np.asarray(record["env_steps"], dtype=float)
    for k, robot in enumerate(record["robots"]):
        label = f"robot {robot['node']} ({robot['arm']}{', joins' if robot['join_time'] is not None else ''})"
        style = ARM_STYLES.get(robot["arm"], "-")
        axes[0].plot(result.times, scores[:, k], style, label=label, linewidth=1.6)
        axes[1].plot(steps[:, k], scores[:, k], style, label=label, linewidth=1.6)
    for t in {r["join_time"] for r in record["robots"] if r["join_time"] is not None}:
        axes[0].axvline(t, color="red", linestyle=":", linewidth=1)
    axes[0].set_xlabel("simulated time (s of robot time)")
    axes[1].set_xlabel("the robot's own env steps")
    for ax in axes:
        ax.axhline(record["target"], color="grey", linewidth=0.8, linestyle="--")
        ax.set_ylabel("success rate (held-out episodes)")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Per-robot success: {result.policy}, seed {result.seed}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_policies(runs, path: Path) -> Path:
    """Mean success over the robots present, per policy (one line per seed)."""
    return _plot_per_policy(runs, path, lambda result: result.mean_scores(),
                            ylabel="mean success rate over robots present", ylim=(-0.03, 1.03),
                            title="Fleet success over time (one line per seed)")


def plot_bytes(runs, path: Path) -> Path:
    """Bytes on all links over time, per policy."""
    return _plot_per_policy(runs, path, lambda result: np.asarray(result.bytes, dtype=float) / 1e6,
                            ylabel="MB on all links so far",
                            title="Bytes over time (model packets, reports, every hop)")


def _plot_per_policy(runs, path: Path, values, *, ylabel: str, title: str, ylim=None) -> Path:
    """One colour a policy, one line a seed (the first seed drawn boldest) of ``values(result)``
    against simulated time."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (policy, group) in enumerate(_by_policy(runs).items()):
        for j, (result, _) in enumerate(group):
            ax.plot(result.times, values(result), color=_colour(policy, i), alpha=0.9 if j == 0 else 0.45,
                    label=policy if j == 0 else None)
    ax.set_xlabel("simulated time (s of robot time)")
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _median(values):
    values = [v for v in values if v is not None]
    return float(np.median(values)) if values else None


def policy_rows(runs) -> list[dict[str, Any]]:
    """Per policy: steps to the target (medians over seeds of the robots' own steps)."""
    rows = []
    for policy, group in _by_policy(runs).items():
        founders, joiners, finals, mbs, missed = [], [], [], [], 0
        for result, record in group:
            f = [r["steps_to_target"] for r in record["robots"] if r["join_time"] is None]
            j = [r["steps_to_target"] for r in record["robots"] if r["join_time"] is not None]
            missed += sum(v is None for v in f + j)
            founders.append(float(np.mean(f)) if f and None not in f else None)
            joiners.append(float(np.mean(j)) if j and None not in j else None)
            finals.append(result.final_mean_score)
            mbs.append((result.bytes[-1] if result.bytes else 0) / 1e6)
        rows.append({
            "policy": policy, "seeds": len(group),
            "mean steps to target (founders)": _median(founders),
            "steps to target (joiner)": _median(joiners),
            "robots that missed it": missed,
            "final mean success": float(np.mean(finals)),
            "MB sent": float(np.mean(mbs)),
            "data bytes": int(max((r.data_bytes[-1] if r.data_bytes else 0) for r, _ in group)),
        })
    return rows


def robot_rows(record: dict) -> list[dict[str, Any]]:
    rows = []
    for r in record["robots"]:
        cell = r["cell"]
        rows.append({
            "robot": r["node"], "arm": r["arm"],
            "goal region": f"({cell['goal_center'][0]:+.2f}, {cell['goal_center'][1]:+.2f}) "
                           f"+-{cell['goal_xy_range'] / 2:.2f}",
            "table": f"{cell['table_height']:+.2f}",
            "joins at": "start" if r["join_time"] is None else f"{r['join_time']:.0f} s",
            f"steps to {record['target']:.0%}": r["steps_to_target"],
            "final success": r["final_success"], "env steps": r["env_steps"],
            "scoring steps": r.get("score_env_steps", 0),
            "kB sent": r["bytes_sent"] / 1e3,
            "accepted / refused": f"{r['counters']['accepted']} / {r['counters']['refused']}",
        })
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row.values()) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value) -> str:
    if value is None:
        return "not reached"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.3g}"
    return html.escape(str(value))


def write_report(results: str | Path, out: str | Path | None = None, *, title: str | None = None,
                 media: list[Path] = ()) -> Path:
    """Plots and ``index.html`` for a robots results folder; ``media``: extra images
    already in ``out`` (the strip and GIF of the robots acting)."""
    results = Path(results)
    runs = load_runs(results)
    out = Path(out) if out else results / "report"
    out.mkdir(parents=True, exist_ok=True)
    images = [plot_policies(runs, out / "success_vs_time.png"), plot_bytes(runs, out / "bytes_vs_time.png")]
    per_robot = []
    for policy, group in _by_policy(runs).items():
        result, record = group[0]
        per_robot.append((policy, record, plot_per_robot(result, record, out / f"per_robot_{policy}.png")))
    rows = policy_rows(runs)
    (out / "summary.json").write_text(json.dumps(
        {"policies": rows, "robots": {p: robot_rows(rec) for p, rec, _ in per_robot}}, indent=2))
    title = title or f"Net4LM robots: {runs[0][0].scenario}"
    target = runs[0][1]["target"]

    def figure(p: Path, caption: str) -> str:
        return f'<figure><img src="{p.name}" alt="{p.stem}"><figcaption>{html.escape(caption)}</figcaption></figure>'

    sections = []
    for policy, record, image in per_robot:
        sections.append(f"<h3>{html.escape(policy)}, seed {record['seed']}</h3>{_table(robot_rows(record))}"
                        + figure(image, f"per-robot success ({policy})"))
    media_html = "".join(figure(Path(m), {".gif": "the robots acting (animated)"}.get(
        Path(m).suffix, "the trained robots acting, one episode each in its own cell")) for m in media)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}figure{{display:inline-block;margin:8px}}
img{{max-width:1100px}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{len(runs)} run(s) from <code>{html.escape(str(results))}</code>. Each robot learns on its own cell with
its own experience; only policies travel, as MFD model packets over lossy radio links (data bytes must stay 0).
Success is measured on held-out episodes of the robot's own cell; steps are the robot's own env steps, counted
from when it joined, to its first measurement at {target:.0%} success or more (medians over seeds).
"Scoring steps" are the env steps a robot spent on its own fixed episodes to decide what to share and what
to accept (the gate): on a real robot, episodes too (or a digital twin's).</p>
{_table(rows)}
{media_html}
{''.join(figure(p, p.stem.replace('_', ' ')) for p in images)}
{''.join(sections)}
</body></html>"""
    (out / "index.html").write_text(page)
    return out / "index.html"
