"""The robots report: what a fleet run found, from its run folder alone.

A robots run folder (:mod:`apps.robots.run`, kind ``"robots"`` in ``run.json``) holds
every measurement in ``results.csv``; this module turns it into

- ``summary.json`` / ``summary.csv``: per policy, the robots' own env steps to the target
  success rate (the founders' mean, and the joiner's), the speed-up against isolated
  learning on the same seed (isolated's steps over the policy's), final success and bytes,
  the bytes against FedAvg's; each as the median and range over seeds;
- ``report/index.html`` with success and bytes over time, each robot's curve, the robots
  acting (when the run drew them) and the tables, in words.

``mfd report RUNDIR`` calls :func:`rebuild_report`, so the robots page is rebuilt, never
replaced by the generic one. Success is measured on held-out episodes of each robot's own
cell; steps are the robot's own env steps, counted from when it joined.
"""
from __future__ import annotations

import csv
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
from mfd_core.runfolder import read_meta, read_results, spread, summarise  # noqa: E402

from .config import RobotsScenario  # noqa: E402
from .run import load_scenario, policy_words, steps_to_target  # noqa: E402

ARM_STYLES = {"panda": "-", "kuka": "--", "xarm6": ":"}
ORDER = ["isolated", "fedavg", "gossip", "mfd", "mfd-travel"]
MEDIA = ("robots_acting.png", "robots_acting.gif")


def load_runs(folder: str | Path) -> list[RunResult]:
    """Every run of a robots run folder (kind "robots")."""
    folder = Path(folder)
    meta = read_meta(folder)
    if meta.get("kind") != "robots":
        raise ValueError(f"{folder}: a {meta.get('kind')} run folder, not a robot fleet's")
    runs = read_results(folder)
    if not runs:
        raise FileNotFoundError(f"{folder}: no measurements yet (results.csv is empty)")
    return runs


def _by_policy(runs: list[RunResult]) -> dict[str, list[RunResult]]:
    groups: dict[str, list[RunResult]] = defaultdict(list)
    for result in sorted(runs, key=lambda r: r.seed):
        groups[result.policy].append(result)
    return dict(sorted(groups.items(), key=lambda kv: (ORDER.index(kv[0]) if kv[0] in ORDER else 9, kv[0])))


def _colour(policy: str, i: int) -> str:
    return COLOURS.get(policy, plt.rcParams["axes.prop_cycle"].by_key()["color"][i % 10])


# --------------------------------------------------------------------------- figures


def run_figures(result: RunResult, scenario: RobotsScenario) -> dict[str, Any]:
    """One run's robot figures: steps to the target per robot, founders' mean, joiner's."""
    steps = steps_to_target(result, scenario.target)
    founders = [steps[k] for k, n in enumerate(result.node_ids) if scenario.robots[n].join_at is None]
    joiners = [steps[k] for k, n in enumerate(result.node_ids) if scenario.robots[n].join_at is not None]
    return {"steps": steps,
            "founders": float(np.mean(founders)) if founders and None not in founders else None,
            "joiner": float(np.mean(joiners)) if joiners and None not in joiners else None,
            "missed": sum(v is None for v in steps)}


def robots_summary(runs: list[RunResult], scenario: RobotsScenario, *, interrupted: bool = False,
                   score_name: str = "success rate") -> dict[str, Any]:
    """The core's summary (medians and ranges over seeds, bytes against FedAvg) with the
    robots' figures: steps to the target and the speed-up against isolated learning in the
    robots' own env steps (isolated's steps over the policy's, seed by seed)."""
    summary = summarise(runs)
    figures = {(r.policy, r.seed): run_figures(r, scenario) for r in runs}
    isolated = {seed: f for (policy, seed), f in figures.items() if policy == "isolated"}
    for policy, group in _by_policy(runs).items():
        mine = [figures[(r.policy, r.seed)] for r in group]
        summary["policies"][policy].update(
            founders_steps_to_target=spread(f["founders"] for f in mine),
            joiner_steps_to_target=spread(f["joiner"] for f in mine),
            robots_that_missed_the_target=sum(f["missed"] for f in mine))
        if isolated and policy != "isolated":
            entry = summary["comparisons"].setdefault(policy, {})
            pairs = [(isolated[r.seed], figures[(r.policy, r.seed)]) for r in group if r.seed in isolated]
            for who in ("founders", "joiner"):
                ratios = [ref[who] / own[who] if ref[who] and own[who] else None for ref, own in pairs]
                key = "speedup_vs_isolated" if who == "founders" else "joiner_speedup_vs_isolated"
                entry[key] = spread(ratios)
                entry[f"{key}_never"] = sum(v is None for v in ratios)
    for run in summary["runs"]:
        f = figures[(run["policy"], run["seed"])]
        run.update(founders_steps_to_target=f["founders"], joiner_steps_to_target=f["joiner"],
                   steps_to_target=f["steps"])
    summary.update(kind="robots", interrupted=interrupted, score_name=score_name, target=scenario.target,
                   speedup="isolated learning's env steps to the target over the policy's (founders' mean; "
                           "seed by seed), median and range over seeds")
    return summary


SUMMARY_COLUMNS = ("run", "policy", "seed", "final_mean_score", "founders_steps_to_target", "joiner_steps_to_target",
                   "total_bytes", "model_bytes", "data_bytes", "packets", "simulated_seconds", "wall_seconds",
                   "interrupted")


def write_summary(folder: str | Path, *, interrupted: bool | None = None) -> dict[str, Any]:
    """``summary.json`` and ``summary.csv`` of a robots run folder, from its measurements."""
    folder = Path(folder)
    meta = read_meta(folder)
    runs = load_runs(folder)
    scenario = load_scenario(folder)
    flag = meta.get("interrupted", False) if interrupted is None else interrupted
    summary = robots_summary(runs, scenario, interrupted=flag, score_name=meta.get("score_name", "success rate"))
    done = set(meta.get("done", []))
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    with open(folder / "summary.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(SUMMARY_COLUMNS)
        for run in summary["runs"]:
            row = dict(run, interrupted=run["run"] not in done)
            writer.writerow(["" if row.get(c) is None else row.get(c) for c in SUMMARY_COLUMNS])
    return summary


# --------------------------------------------------------------------------- plots


def plot_per_robot(result: RunResult, scenario: RobotsScenario, path: Path) -> Path:
    """Each robot's success rate over simulated time and over its own env steps."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    scores = np.asarray(result.scores, dtype=float)
    steps = np.asarray(result.node_metrics.get("env_steps", [[math.nan] * len(result.node_ids)] * len(result.times)),
                       dtype=float)
    joins = set()
    for k, node_id in enumerate(result.node_ids):
        robot = scenario.robots[node_id]
        if robot.join_at is not None:
            joins.add(robot.join_at * scenario.duration)
        label = f"robot {node_id} ({robot.arm}{', joins' if robot.join_at is not None else ''})"
        style = ARM_STYLES.get(robot.arm, "-")
        axes[0].plot(result.times, scores[:, k], style, label=label, linewidth=1.6)
        axes[1].plot(steps[:, k], scores[:, k], style, label=label, linewidth=1.6)
    for t in joins:
        axes[0].axvline(t, color="red", linestyle=":", linewidth=1)
    axes[0].set_xlabel("simulated time (s of robot time)")
    axes[1].set_xlabel("the robot's own env steps")
    for ax in axes:
        ax.axhline(scenario.target, color="grey", linewidth=0.8, linestyle="--")
        ax.set_ylabel("success rate (held-out episodes)")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Each robot's success: {policy_words(result.policy)}, seed {result.seed}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plot_per_policy(runs, path: Path, values, *, ylabel: str, title: str, ylim=None, target=None) -> Path:
    """One colour a policy, one line a seed (the first seed boldest) of ``values(result)``
    against simulated time; the legend outside the data."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for i, (policy, group) in enumerate(_by_policy(runs).items()):
        for j, result in enumerate(group):
            ax.plot(result.times, values(result), color=_colour(policy, i), alpha=0.95 if j == 0 else 0.45,
                    linewidth=2 if j == 0 else 1.2, label=policy_words(policy) if j == 0 else None)
    if target is not None:
        ax.axhline(target, color="grey", linewidth=0.8, linestyle="--", label=f"target {target:.0%}")
    ax.set_xlabel("simulated time (s of robot time)")
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_policies(runs, path: Path, target: float | None = None, score_name: str = "success rate") -> Path:
    success = score_name == "success rate"
    return _plot_per_policy(runs, path, lambda r: r.mean_scores(), ylabel=f"mean {score_name} of the robots there",
                            ylim=(-0.03, 1.03) if success else None, target=target if success else None,
                            title=f"Fleet {score_name} over time (one line per seed)")


def plot_bytes(runs, path: Path) -> Path:
    return _plot_per_policy(runs, path, lambda r: np.asarray(r.bytes, dtype=float) / 1e6,
                            ylabel="MB on all links so far", title="Bytes over time (every packet, every hop)")


# --------------------------------------------------------------------------- tables


def _range(s: dict | None, fmt: str = "{:.0f}", scale: float = 1.0) -> str:
    if not s:
        return "not reached"
    text = fmt.format(s["median"] * scale)
    if s["n"] > 1:
        text += f" ({fmt.format(s['min'] * scale)} to {fmt.format(s['max'] * scale)})"
    return text


def policy_rows(summary: dict[str, Any]) -> list[dict[str, str]]:
    """The summary table, in words: medians over seeds, ranges in brackets."""
    target = summary.get("target", 0.9)
    success = summary.get("score_name", "success rate") == "success rate"
    final_header = "Final success" if success else f"Final {summary['score_name']}"
    final_fmt = "{:.0%}" if success else "{:.1f}"
    rows = []
    ordered = sorted(summary["policies"].items(), key=lambda kv: (ORDER.index(kv[0]) if kv[0] in ORDER else 9, kv[0]))
    for policy, fig in ordered:
        comp = summary["comparisons"].get(policy, {})
        speed = comp.get("speedup_vs_isolated")
        joiner_speed = comp.get("joiner_speedup_vs_isolated")
        bytes_vs = comp.get("bytes_over_fedavg")
        rows.append({
            "Policy": policy_words(policy), "Seeds": str(fig["seeds"]),
            f"Founders' steps to {target:.0%}": _range(fig.get("founders_steps_to_target")),
            "Speed-up vs isolated": ("reference" if policy == "isolated" else
                                     "no isolated run" if "speedup_vs_isolated" not in comp else
                                     _range(speed, "{:.2f}x") if speed else "not reached"),
            f"Joiner's steps to {target:.0%}": _range(fig.get("joiner_steps_to_target")),
            "Joiner's speed-up": ("reference" if policy == "isolated" else
                                  "-" if "joiner_speedup_vs_isolated" not in comp else
                                  _range(joiner_speed, "{:.2f}x") if joiner_speed else "not reached"),
            final_header: _range(fig.get("final_mean_score"), final_fmt),
            "MB sent": _range(fig.get("total_bytes"), "{:.1f}", 1e-6),
            "Bytes vs FedAvg": ("reference" if policy == "fedavg" else
                                _range(bytes_vs, "{:.2f}x") if bytes_vs else "no FedAvg run"),
            "Robots that missed it": str(fig.get("robots_that_missed_the_target", 0)),
        })
    return rows


def robot_rows(result: RunResult, scenario: RobotsScenario, success: bool = True) -> list[dict[str, str]]:
    steps = steps_to_target(result, scenario.target)
    extra = {r["node"]: r for r in result.extra.get("robots", [])}
    rows = []
    for k, node_id in enumerate(result.node_ids):
        robot = scenario.robots[node_id]
        record = extra.get(node_id, {})
        counters = record.get("counters", {})
        final = result.scores[-1][k] if result.scores else math.nan
        rows.append({
            "Robot": str(node_id), "Arm": robot.arm,
            "Goal region": f"({robot.goal_center[0]:+.2f}, {robot.goal_center[1]:+.2f}) +-{robot.goal_xy_range / 2:.2f}",
            "Table": f"{robot.table_height:+.2f}",
            "Joins at": "start" if robot.join_at is None else f"{robot.join_at * scenario.duration:.0f} s",
            f"Steps to {scenario.target:.0%}": "not reached" if steps[k] is None else str(steps[k]),
            "Final score": "n/a" if math.isnan(final) else f"{final:.0%}" if success else f"{final:.1f}",
            "Env steps": str(record.get("env_steps", "n/a")),
            "Scoring steps": str(record.get("score_env_steps", "n/a")),
            "kB sent": f"{record['bytes_sent'] / 1e3:.0f}" if "bytes_sent" in record else "n/a",
            "Accepted / refused": f"{counters.get('accepted', 0)} / {counters.get('refused', 0)}",
        })
    return rows


def _table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row.values()) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _verdict(summary: dict[str, Any]) -> str:
    """One sentence that states the result."""
    target = summary.get("target", 0.9)
    parts = []
    for policy, comp in summary["comparisons"].items():
        speed = comp.get("speedup_vs_isolated")
        if speed:
            parts.append(f"under {policy_words(policy)} the founding robots reached {target:.0%} success in "
                         f"{1 / speed['median']:.2f}x the env steps of isolated learning "
                         f"(a {speed['median']:.2f}x speed-up, median of {speed['n']} seed(s))")
        elif "speedup_vs_isolated" in comp:
            mine = summary["policies"][policy].get("founders_steps_to_target")
            alone = summary["policies"].get("isolated", {}).get("founders_steps_to_target")
            if mine and not alone:
                parts.append(f"under {policy_words(policy)} the founding robots reached {target:.0%} success in "
                             f"{mine['median']:.0f} env steps (median); alone they did not reach it in the run")
            else:
                parts.append(f"under {policy_words(policy)} the founding robots did not reach {target:.0%} "
                             "on every seed")
        bytes_vs = comp.get("bytes_over_fedavg")
        if bytes_vs:
            parts.append(f"{policy_words(policy)} sent {bytes_vs['median']:.2f}x FedAvg's bytes")
    if not parts:
        return ""
    return "<p class=verdict><b>Result:</b> " + html.escape("; ".join(parts)) + ".</p>"


def write_report(folder: str | Path, out: str | Path | None = None, *, title: str | None = None) -> Path:
    """Plots and ``index.html`` for a robots run folder (the media, if the run drew the
    robots acting, are the files of :data:`MEDIA` already in the report folder)."""
    folder = Path(folder)
    runs = load_runs(folder)
    scenario = load_scenario(folder)
    meta = read_meta(folder)
    summary = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").exists() else None
    if not summary or "target" not in summary:
        summary = robots_summary(runs, scenario, interrupted=meta.get("interrupted", False),
                                 score_name=meta.get("score_name", "success rate"))
    out = Path(out) if out else folder / "report"
    out.mkdir(parents=True, exist_ok=True)
    images = [plot_policies(runs, out / "success_vs_time.png", scenario.target, meta.get("score_name", "success rate")),
              plot_bytes(runs, out / "bytes_vs_time.png")]
    success = meta.get("score_name", "success rate") == "success rate"
    sections = []
    for policy, group in _by_policy(runs).items():
        result = group[0]
        image = plot_per_robot(result, scenario, out / f"per_robot_{policy}.png")
        sections.append(f"<h3>{html.escape(policy_words(policy))}, seed {result.seed}</h3>"
                        f"{_table(robot_rows(result, scenario, success))}"
                        + _figure(image, f"each robot's success under {policy_words(policy)}"))
    acting = meta.get("acting") or "mfd"
    media = [out / name for name in MEDIA if (out / name).exists()]
    captions = {".gif": f"{policy_words(acting)}: the robots' policies acting (animated)",
                ".png": f"{policy_words(acting)}: the robots' trained policies acting, one episode each in its own cell"}
    media_html = "".join(_figure(m, captions[m.suffix]) for m in media)
    title = title or meta.get("title") or f"Net4LM robots: {scenario.name}"
    note = ("<p class=warn>This run was interrupted: the figures are what was measured before it stopped.</p>"
            if meta.get("interrupted") else "")
    captions_img = {"success_vs_time": "fleet success over time", "bytes_vs_time": "bytes over time"}
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:1.5em;max-width:1240px}}table{{border-collapse:collapse;margin:1em 0;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 7px;text-align:right}}th{{background:#f4f4f4}}figure{{display:inline-block;margin:8px}}
img{{max-width:100%}}.verdict{{font-size:1.1em}}.warn{{color:#a00}}</style></head><body>
<h1>{html.escape(title)}</h1>
{note}{_verdict(summary)}
<p>{len(runs)} run(s) of {len(scenario.robots)} robots learning {html.escape(scenario.task)} for
{scenario.duration:g} s of robot time, from <code>{html.escape(str(folder))}</code>. Each robot learns in its own
cell from its own experience; only policies travel, as MFD model packets over lossy radio links (no raw data:
data bytes stay 0). Success is measured on held-out episodes of the robot's own cell. Steps are the robot's own
env steps, counted from when it joined, to its first measurement at {scenario.target:.0%} success or more; the
speed-up is isolated learning's steps over the policy's on the same seed. Figures are medians over seeds, with
the range in brackets. "Scoring steps" are env steps a robot spent scoring policies on its own episodes (the
gate), 0 when its critic scores them.</p>
{_table(policy_rows(summary))}
{media_html}
{''.join(_figure(p, captions_img.get(p.stem, p.stem)) for p in images)}
{''.join(sections)}
</body></html>"""
    (out / "index.html").write_text(page)
    return out / "index.html"


def _figure(path: Path, caption: str) -> str:
    return (f'<figure><img src="{html.escape(Path(path).name)}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def rebuild_report(folder: str | Path, out: str | Path | None = None) -> Path:
    """``mfd report RUNDIR`` on a robots run folder: its summary and its robots page."""
    write_summary(folder)
    return write_report(folder, out)


__all__ = ["load_runs", "rebuild_report", "robots_summary", "write_report", "write_summary"]
