"""One output folder for every kind of run (core scenarios, robot fleets, base stations).

::

    RUNDIR/
      run.json        what ran: kind, command, package version, git commit, network,
                      the runs planned and done, interrupted or not
      scenario.json   the resolved scenario (every default filled in): the run can be
                      reproduced from the folder alone
      results.csv     every measurement, one tidy row each (run, policy, seed, node, time,
                      metric, value), appended as the run goes
      events.jsonl    what happened (gates, joins, faults), appended as the run goes
      summary.csv     one row per run (policy, seed): final figures
      summary.json    the same, the per-policy median and range, and the comparisons
                      (speed-up against isolated learning, bytes against FedAvg)
      checkpoints/    <policy>/seed<k>/node<i>.mfdm: each node's served model (MFD model
                      files, :func:`mfd_core.codec.load_model`), saved at most every
                      ``CHECKPOINT_EVERY_S`` of wall time and at the end, with
                      ``checkpoint.json`` saying when (simulator runs: on udp and ray the
                      node processes hold the models)
      report/         pictures and an HTML page (``mfd report RUNDIR`` rebuilds them)

``metric`` names what a row measures: ``score`` per node (test accuracy, success rate,
...: ``run.json``'s ``score_name`` says which), and per run (``node`` empty) the traffic
counters ``bytes``, ``model_bytes``, ``data_bytes`` and ``packets``; apps add their own
metrics (``env_steps``, ``pf_utility``, ...) in the same schema.
"""
from __future__ import annotations

import csv
import datetime
import json
import math
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .metrics import RunResult

FORMAT = 1
# Wall seconds between two checkpoints of a run's models: a stopped run loses at most this
# much training, and saving (a few ms for a fleet of small models) stays off the bill.
CHECKPOINT_EVERY_S = 30.0
COLUMNS = ("run", "policy", "seed", "node", "time", "metric", "value")
TRAFFIC = ("bytes", "model_bytes", "data_bytes", "packets")
KINDS = ("core", "robots", "basestation")


def package_version() -> str:
    from . import __version__

    return __version__


def git_commit(where: Path | None = None) -> str:
    """The commit of the checkout the package runs from ('+dirty' with local changes), or 'unknown'."""
    where = where or Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def run_id(policy: str, seed: int) -> str:
    return f"{policy}/seed{seed}"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _number(value: float) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    return repr(value) if isinstance(value, float) else str(value)


class RunFolder:
    """Writes a run folder as the runs go; every write is complete on disk when it returns.

    :param path: the folder (created; the caller has checked it is new or ``--force``d).
    :param kind: ``"core"``, ``"robots"`` or ``"basestation"``: which report draws it.
    :param scenario: the resolved scenario, as plain data.
    :param plan: the runs this command will make: ``[(policy, seed), ...]``.
    :param info: anything else ``run.json`` should say (network, score name, ...).
    """

    def __init__(self, path: str | Path, kind: str, *, command: Iterable[str], scenario: Mapping[str, Any],
                 plan: Iterable[tuple[str, int]], info: Mapping[str, Any] | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.meta: dict[str, Any] = {
            "format": FORMAT, "kind": kind, "command": list(command), "version": package_version(),
            "commit": git_commit(), "started": _now(), "finished": None, "interrupted": False,
            "planned": [run_id(p, s) for p, s in plan], "done": [], **dict(info or {})}
        (self.path / "scenario.json").write_text(json.dumps(scenario, indent=2, default=str) + "\n")
        self._write_meta()
        self._results = self.path / "results.csv"
        if not self._results.exists():
            with open(self._results, "w", newline="") as fh:
                csv.writer(fh).writerow(COLUMNS)
        self._rows_written: dict[str, int] = {}
        self._events_written: dict[str, int] = {}
        self._checkpointed: dict[str, float] = {}  # run -> monotonic time of its last save

    @classmethod
    def reopen(cls, path: str | Path) -> "RunFolder":
        """A stopped run's folder, to resume it: the rows of the runs not done are dropped."""
        path = Path(path)
        meta_path = path / "run.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{path}: not a run folder (no run.json)")
        self = cls.__new__(cls)
        self.path = path
        self.meta = json.loads(meta_path.read_text())
        self._results = path / "results.csv"
        done = set(self.meta.get("done", []))
        if self._results.exists():
            with open(self._results, newline="") as fh:
                rows = [row for row in csv.reader(fh)]
            with open(self._results, "w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(COLUMNS)
                writer.writerows(row for row in rows[1:] if row and row[0] in done)
        events = path / "events.jsonl"
        if events.exists():
            kept = [line for line in events.read_text().splitlines()
                    if line.strip() and json.loads(line).get("run") in done]
            events.write_text("".join(line + "\n" for line in kept))
        self.meta.update(interrupted=False, finished=None, resumed=_now())
        self._write_meta()
        self._rows_written, self._events_written = {}, {}
        self._checkpointed = {}
        return self

    @property
    def done(self) -> list[str]:
        return list(self.meta["done"])

    # -- as a run goes --------------------------------------------------------------------

    def stream(self, result: RunResult) -> None:
        """Append the measurements and events ``result`` has gained since the last call."""
        rid = run_id(result.policy, result.seed)
        start = self._rows_written.get(rid, 0)
        if len(result.times) > start:
            with open(self._results, "a", newline="") as fh:
                csv.writer(fh).writerows(self._rows(result, rid, start))
            self._rows_written[rid] = len(result.times)
        seen = self._events_written.get(rid, 0)
        if len(result.events) > seen:
            with open(self.path / "events.jsonl", "a") as fh:
                for event in result.events[seen:]:
                    fh.write(json.dumps({"run": rid, **event}, default=_plain) + "\n")
            self._events_written[rid] = len(result.events)

    @staticmethod
    def _rows(result: RunResult, rid: str, start: int) -> Iterable[list[Any]]:
        series = result.node_metrics
        for i in range(start, len(result.times)):
            t = _number(result.times[i])
            for node, score in zip(result.node_ids, result.scores[i]):
                yield [rid, result.policy, result.seed, node, t, "score", _number(score)]
            for name, rows in series.items():
                if i < len(rows):
                    for node, value in zip(result.node_ids, rows[i]):
                        yield [rid, result.policy, result.seed, node, t, name, _number(value)]
            for name in TRAFFIC:
                values = getattr(result, name)
                if i < len(values):
                    yield [rid, result.policy, result.seed, "", t, name, _number(values[i])]

    def checkpoint(self, policy: str, seed: int, t: float, models: Callable[[], Mapping[int, Mapping[str, Any]]],
                   final: bool = False) -> bool:
        """Save the models of run (``policy``, ``seed``) at simulated time ``t`` under
        ``checkpoints/<policy>/seed<k>/``, if ``CHECKPOINT_EVERY_S`` of wall time went by
        since its last save, or ``final``; returns whether it saved. ``models()`` gives
        ``{node: state_dict}`` (called only to save). Each file is replaced whole, and
        ``checkpoint.json`` is written last: it names a complete set."""
        from .codec import save_model

        rid = run_id(policy, seed)
        now = time.monotonic()
        last = self._checkpointed.get(rid)
        if not final and last is not None and now - last < CHECKPOINT_EVERY_S:
            return False
        if last is None and not final:  # the first measurement: start the clock, nothing worth saving yet
            self._checkpointed[rid] = now
            return False
        where = self.path / "checkpoints" / policy / f"seed{seed}"
        states = models()
        for node, state in states.items():
            save_model(where / f"node{node}.mfdm", state, meta={"run": rid, "node": node, "time": t})
        _write_whole(where / "checkpoint.json",
                     {"run": rid, "time": t, "final": final, "nodes": sorted(states), "saved": _now()})
        self._checkpointed[rid] = now
        return True

    def finish_run(self, result: RunResult, *, interrupted: bool = False) -> None:
        """A run ended: its last rows, its summary; counted done unless interrupted."""
        self.stream(result)
        rid = run_id(result.policy, result.seed)
        summaries = self._summaries()
        summaries[rid] = _clean(dict(result.summary(), run=rid, interrupted=interrupted))
        (self.path / "runs.json").write_text(json.dumps(summaries, indent=1) + "\n")
        if not interrupted and rid not in self.meta["done"]:
            self.meta["done"].append(rid)
        self._write_meta()

    def add_rows(self, rows: Iterable[Iterable[Any]], *, done: str | None = None) -> None:
        """Append rows an app measured itself (not through a :class:`RunResult`), in the
        tidy schema (run, policy, seed, node, time, metric, value); ``done`` names a run
        that is now complete."""
        with open(self._results, "a", newline="") as fh:
            csv.writer(fh).writerows([_number(v) if isinstance(v, float) else v for v in row] for row in rows)
        if done is not None and done not in self.meta["done"]:
            self.meta["done"].append(done)
            self._write_meta()

    def close(self, *, interrupted: bool = False) -> None:
        """Close ``run.json`` (finished, interrupted) for an app that writes its own summary."""
        self.meta.update(finished=_now(), interrupted=interrupted)
        self._write_meta()

    def finish(self, *, interrupted: bool = False, reference: str = "isolated", byte_reference: str = "fedavg",
               higher_is_better: bool = True) -> dict[str, Any]:
        """Write ``summary.csv`` / ``summary.json`` over the runs so far; close ``run.json``."""
        self.meta.update(finished=_now(), interrupted=interrupted)
        self._write_meta()
        runs = list(self._summaries().values())
        summary = summarise(read_results(self.path), reference=reference, byte_reference=byte_reference,
                            higher_is_better=higher_is_better)
        summary.update(kind=self.meta["kind"], interrupted=interrupted, score_name=self.meta.get("score_name", "score"))
        (self.path / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        columns = ["run", "policy", "seed", "final_mean_score", "final_min_score", "total_bytes", "model_bytes",
                   "data_bytes", "packets", "simulated_seconds", "wall_seconds", "interrupted"]
        with open(self.path / "summary.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(columns)
            for run in runs:
                writer.writerow([_number(run.get(c, "")) if isinstance(run.get(c), float) else run.get(c, "")
                                 for c in columns])
        return summary

    def _summaries(self) -> dict[str, Any]:
        path = self.path / "runs.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def _write_meta(self) -> None:
        _write_whole(self.path / "run.json", self.meta)


def _write_whole(path: Path, doc: Any) -> None:
    """``doc`` as JSON at ``path``, whole or not at all (written beside it, then renamed)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    os.replace(partial, path)


# -- reading a folder back -------------------------------------------------------------------


def read_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    meta = path / "run.json"
    if not meta.exists():
        raise FileNotFoundError(f"{path}: not a run folder (no run.json); run folders are what "
                                "mfd run / compare / robots / basestation write")
    return json.loads(meta.read_text())


def read_results(path: str | Path) -> list[RunResult]:
    """The runs of a folder, rebuilt from ``results.csv``, ``events.jsonl`` and ``runs.json``."""
    path = Path(path)
    read_meta(path)
    by_run: dict[str, dict[str, Any]] = {}
    with open(path / "results.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            rec = by_run.setdefault(row["run"], {"policy": row["policy"], "seed": int(row["seed"]), "times": [],
                                                 "cells": {}})
            t = float(row["time"])
            if not rec["times"] or rec["times"][-1] != t:
                if t not in rec["times"]:
                    rec["times"].append(t)
            value = float(row["value"]) if row["value"] != "" else math.nan
            rec["cells"][(t, row["node"], row["metric"])] = value
    summaries = json.loads((path / "runs.json").read_text()) if (path / "runs.json").exists() else {}
    events: dict[str, list[dict[str, Any]]] = {}
    if (path / "events.jsonl").exists():
        for line in (path / "events.jsonl").read_text().splitlines():
            if line.strip():
                event = json.loads(line)
                events.setdefault(event.pop("run", ""), []).append(event)
    meta = read_meta(path)
    results = []
    for rid, rec in by_run.items():
        nodes = sorted({int(node) for (_, node, metric) in rec["cells"] if metric == "score" and node != ""})
        result = RunResult(meta.get("name", "run"), rec["policy"], rec["seed"], nodes)
        extra_metrics = sorted({m for (_, node, m) in rec["cells"] if node != "" and m != "score"})
        result.node_metrics = {m: [] for m in extra_metrics}
        for t in rec["times"]:
            result.times.append(t)
            result.scores.append([rec["cells"].get((t, str(n), "score"), math.nan) for n in nodes])
            for m in extra_metrics:
                result.node_metrics[m].append([rec["cells"].get((t, str(n), m), math.nan) for n in nodes])
            for name in TRAFFIC:
                value = rec["cells"].get((t, "", name))
                getattr(result, name).append(0 if value is None or math.isnan(value) else int(value))
        summary = summaries.get(rid, {})
        known = set(RunResult("", "", 0, []).summary())
        result.extra = {k: v for k, v in summary.items() if k not in known and k not in ("run",)}
        result.wall_seconds = float(summary.get("wall_seconds", 0.0) or 0.0)
        result.scenario = summary.get("scenario", result.scenario)
        result.events = events.get(rid, [])
        results.append(result)
    return results


# -- summaries -------------------------------------------------------------------------------


def spread(values: Iterable[float | None]) -> dict[str, float] | None:
    """Median, lowest and highest, over the finite values (None if there are none)."""
    finite = [float(v) for v in values if _finite(v)]
    if not finite:
        return None
    return {"median": statistics.median(finite), "min": min(finite), "max": max(finite), "n": len(finite)}


def speedup(result: RunResult, reference: RunResult, *, higher_is_better: bool = True) -> float | None:
    """How much sooner ``result`` reaches the final mean score of ``reference`` (isolated
    learning, same seed) than the reference itself does: ``t_reference / t_result``.
    None when it never reaches it."""
    ref = reference.mean_scores()
    mine = result.mean_scores()
    if not len(ref) or not len(mine) or not _finite(ref[-1]):
        return None
    target = float(ref[-1])
    reached = (lambda v: v >= target - 1e-12) if higher_is_better else (lambda v: v <= target + 1e-12)
    t_ref = next((t for t, v in zip(reference.times, ref) if _finite(v) and reached(v)), None)
    t_mine = next((t for t, v in zip(result.times, mine) if _finite(v) and reached(v)), None)
    if t_ref is None or t_mine is None:
        return None
    return t_ref / t_mine if t_mine > 0 else math.inf


def summarise(results: list[RunResult], *, reference: str = "isolated", byte_reference: str = "fedavg",
              higher_is_better: bool = True) -> dict[str, Any]:
    """Per policy: each figure's median and range over seeds; and the seed-paired
    comparisons a reader asks for: the speed-up against isolated learning (how much
    sooner it reaches isolated learning's final score), the final score's difference
    from isolated learning, and bytes over FedAvg's."""
    runs = [_clean(dict(r.summary(), run=run_id(r.policy, r.seed))) for r in results]
    by_policy: dict[str, list[RunResult]] = {}
    for r in results:
        by_policy.setdefault(r.policy, []).append(r)
    figures = ("final_mean_score", "final_min_score", "total_bytes", "model_bytes", "wall_seconds")
    policies = {}
    for policy, group in sorted(by_policy.items()):
        docs = [dict(r.summary()) for r in group]
        policies[policy] = {name: spread(d.get(name) for d in docs) for name in figures} | {"seeds": len(group)}
    comparisons: dict[str, Any] = {}
    ref = {r.seed: r for r in by_policy.get(reference, [])}
    bref = {r.seed: r for r in by_policy.get(byte_reference, [])}
    for policy, group in sorted(by_policy.items()):
        entry: dict[str, Any] = {}
        if ref and policy != reference:
            pairs = [(r, ref[r.seed]) for r in group if r.seed in ref]
            entry[f"speedup_vs_{reference}"] = spread(
                speedup(r, o, higher_is_better=higher_is_better) for r, o in pairs)
            entry[f"speedup_vs_{reference}_never"] = sum(
                speedup(r, o, higher_is_better=higher_is_better) is None for r, o in pairs)
            sign = 1.0 if higher_is_better else -1.0
            entry[f"score_minus_{reference}"] = spread(
                sign * (r.final_mean_score - o.final_mean_score) for r, o in pairs)
        if bref and policy != byte_reference:
            entry[f"bytes_over_{byte_reference}"] = spread(
                r.bytes[-1] / bref[r.seed].bytes[-1] for r in group
                if r.seed in bref and r.bytes and bref[r.seed].bytes and bref[r.seed].bytes[-1])
        if entry:
            comparisons[policy] = entry
    return {"policies": policies, "comparisons": comparisons, "runs": runs}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _clean(value: Any) -> Any:
    """JSON-able, with every NaN or infinity as null."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return _clean(_plain(value))
