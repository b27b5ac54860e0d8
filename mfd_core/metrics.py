"""Per-node scores, bytes and packets over simulated time, and the summaries built on them.

A run records one row per measurement (simulated time, every node's test score, the
bytes and packets on the air so far) and a list of events; :class:`RunResult` holds
both, writes them as JSON lines plus a summary, and answers the questions the
benchmarks ask: final score, time and bytes to reach a score.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class RunResult:
    """What one run of one scenario under one policy and seed produced."""

    scenario: str
    policy: str
    seed: int
    node_ids: list[int]
    times: list[float] = field(default_factory=list)
    scores: list[list[float]] = field(default_factory=list)  # [time][node], NaN = node away
    bytes: list[int] = field(default_factory=list)  # all bytes on the links so far
    model_bytes: list[int] = field(default_factory=list)
    data_bytes: list[int] = field(default_factory=list)  # raw samples sent: must stay 0
    packets: list[int] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    wall_seconds: float = 0.0
    # more per-node measurements beside the score, by name: [time][node] (env steps, ...)
    node_metrics: dict[str, list[list[float]]] = field(default_factory=dict)

    def record(self, t: float, scores: list[float], stats: dict[str, Any],
               measures: dict[str, list[float]] | None = None) -> None:
        self.times.append(float(t))
        self.scores.append([float(s) for s in scores])
        for name, values in (measures or {}).items():
            self.node_metrics.setdefault(name, []).append([float(v) for v in values])
        kinds = stats.get("kinds", {})
        self.bytes.append(int(stats.get("air_bytes", 0)))
        self.model_bytes.append(int(kinds.get("model", {}).get("air_bytes", 0)))
        self.data_bytes.append(int(kinds.get("data", {}).get("air_bytes", 0)))
        self.packets.append(int(stats.get("air_packets", 0)))

    # -- questions ------------------------------------------------------------------

    def mean_scores(self) -> np.ndarray:
        arr = np.asarray(self.scores, dtype=float)
        if arr.size == 0:
            return np.zeros(0)
        with np.errstate(all="ignore"):
            return np.nanmean(arr, axis=1)

    @property
    def final_mean_score(self) -> float:
        means = self.mean_scores()
        return float(means[-1]) if len(means) else math.nan

    def first_reach(self, target: float) -> int | None:
        """Index of the first measurement whose mean score is at least ``target``."""
        for i, value in enumerate(self.mean_scores()):
            if value >= target:
                return i
        return None

    def time_to(self, target: float) -> float:
        i = self.first_reach(target)
        return self.times[i] if i is not None else math.inf

    def bytes_to(self, target: float) -> float:
        i = self.first_reach(target)
        return float(self.bytes[i]) if i is not None else math.inf

    def node_series(self, node: int) -> np.ndarray:
        return np.asarray(self.scores, dtype=float)[:, self.node_ids.index(node)]

    def summary(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario, "policy": self.policy, "seed": self.seed,
            "final_mean_score": self.final_mean_score,
            "final_min_score": float(np.nanmin(self.scores[-1])) if self.scores else math.nan,
            "total_bytes": self.bytes[-1] if self.bytes else 0,
            "model_bytes": self.model_bytes[-1] if self.model_bytes else 0,
            "data_bytes": self.data_bytes[-1] if self.data_bytes else 0,
            "packets": self.packets[-1] if self.packets else 0,
            "simulated_seconds": self.times[-1] if self.times else 0.0,
            "wall_seconds": round(self.wall_seconds, 3),
            **self.extra,
        }

    # -- across processes -------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-able): what a node process or a Ray actor hands back."""
        doc = {name: getattr(self, name) for name in self.__dataclass_fields__}
        doc["scores"] = [_clean(row) for row in self.scores]
        doc["node_metrics"] = {name: [_clean(row) for row in rows] for name, rows in self.node_metrics.items()}
        return json.loads(json.dumps(doc, default=_jsonable))

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "RunResult":
        result = cls(**{k: v for k, v in doc.items() if k in cls.__dataclass_fields__})
        result.scores = [[math.nan if v is None else float(v) for v in row] for row in result.scores]
        result.node_metrics = {name: [[math.nan if v is None else float(v) for v in row] for row in rows]
                               for name, rows in result.node_metrics.items()}
        result.node_ids = [int(n) for n in result.node_ids]
        return result

    @classmethod
    def merge(cls, parts: list["RunResult"]) -> "RunResult":
        """One run from the records of its parts (each hosted some of the nodes).

        Times are the measurement times of the part that measured longest; a part that
        stopped early (a killed process) has no score after its last row (NaN) and its
        traffic counts as it last stood. Traffic is summed (each part counts what its own
        nodes put on the links); counters are summed; events are merged in time order.
        """
        if not parts:
            raise ValueError("no parts to merge")
        first = parts[0]
        longest = max(parts, key=lambda p: len(p.times))
        merged = cls(first.scenario, first.policy, first.seed, sorted(n for p in parts for n in p.node_ids))
        merged.times = list(longest.times)
        column = {n: (p, p.node_ids.index(n)) for p in parts for n in p.node_ids}
        for i in range(len(merged.times)):
            merged.scores.append([column[n][0].scores[i][column[n][1]] if i < len(column[n][0].scores)
                                  else math.nan for n in merged.node_ids])
            for name in {m for p in parts for m in p.node_metrics}:
                merged.node_metrics.setdefault(name, []).append([
                    column[n][0].node_metrics[name][i][column[n][1]]
                    if i < len(column[n][0].node_metrics.get(name, [])) else math.nan for n in merged.node_ids])
            for series in ("bytes", "model_bytes", "data_bytes", "packets"):
                getattr(merged, series).append(sum(
                    getattr(p, series)[min(i, len(getattr(p, series)) - 1)] for p in parts if getattr(p, series)))
        merged.events = sorted((e for p in parts for e in p.events), key=lambda e: e.get("t", 0.0))
        for p in parts:
            for key, value in p.extra.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "server":
                    merged.extra[key] = merged.extra.get(key, 0) + value
                else:
                    merged.extra.setdefault(key, value)
        merged.wall_seconds = max(p.wall_seconds for p in parts)
        return merged

    # -- files ----------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        """Write ``metrics.jsonl`` (one row per measurement), ``events.jsonl`` and ``summary.json``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "metrics.jsonl", "w") as fh:
            for i, t in enumerate(self.times):
                fh.write(json.dumps({"t": t, "scores": dict(zip(map(str, self.node_ids), _clean(self.scores[i]))),
                                     "bytes": self.bytes[i], "model_bytes": self.model_bytes[i],
                                     "data_bytes": self.data_bytes[i], "packets": self.packets[i]}) + "\n")
        with open(folder / "events.jsonl", "w") as fh:
            for event in self.events:
                fh.write(json.dumps(event, default=_jsonable) + "\n")
        (folder / "summary.json").write_text(json.dumps(_clean_doc(self.summary()), indent=2, default=_jsonable))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "RunResult":
        folder = Path(folder)
        summary = json.loads((folder / "summary.json").read_text())
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
        node_ids = [int(k) for k in rows[0]["scores"]] if rows else []
        result = cls(summary["scenario"], summary["policy"], int(summary["seed"]), node_ids)
        for row in rows:
            result.times.append(row["t"])
            result.scores.append([math.nan if v is None else v for v in row["scores"].values()])
            result.bytes.append(row["bytes"])
            result.model_bytes.append(row.get("model_bytes", 0))
            result.data_bytes.append(row.get("data_bytes", 0))
            result.packets.append(row.get("packets", 0))
        events = folder / "events.jsonl"
        if events.exists():
            result.events = [json.loads(line) for line in events.read_text().splitlines() if line.strip()]
        result.wall_seconds = float(summary.get("wall_seconds", 0.0))
        known = set(cls("", "", 0, []).summary())
        result.extra = {k: v for k, v in summary.items() if k not in known}
        return result


def _clean(values: list[float]) -> list[float | None]:
    return [None if isinstance(v, float) and math.isnan(v) else v for v in values]


def _clean_doc(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in doc.items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
