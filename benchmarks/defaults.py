"""MFD with its defaults against FedAvg on networks it was not tuned on (issue 14 item 7).

The MFD defaults are what the shipped digits scenarios found best (a 20-node random
geometric network, no loss, Dirichlet 0.3). A new user writes a file that names only a
topology and a data split; this benchmark is that user on a set of such files: several
topologies (grid, ring, random geometric, small world), link loss up to 10 %, Dirichlet
alpha down to 0.2, 12 to 50 nodes. Every case is a scenario with nothing but its
``[topology]`` and ``[data]`` (duration, learner and policy settings all defaults), run
under MFD and under FedAvg on the same seeds.

Per case and seed: the final mean test accuracy of each (what each node serves), the
difference MFD - FedAvg in points, and MFD's bytes on the air over FedAvg's. Targets, on
the mean over seeds of each case: MFD within 2 points of FedAvg (difference >= -2) at
most 60 % of its bytes.

    python benchmarks/defaults.py                        # every case, seeds 0 1
    python benchmarks/defaults.py --cases grid12_l05_a02 --seeds 0 1 2
    python benchmarks/defaults.py --set fanout=3 --out defaults_fanout3   # a setting changed

The runs are simulated and deterministic: the figures depend on the code, not the load.
Results go to ``benchmarks/results/defaults.json`` (``--out`` names another file).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import RESULTS, write_results  # noqa: E402
from mfd_core import run  # noqa: E402
from mfd_core.scenario import Scenario, ScenarioError, from_dict  # noqa: E402

TARGETS = {"points_behind_fedavg": 2.0, "bytes_over_fedavg": 0.60}  # at most, each

# name: (topology table, data table): all a new user's file says
CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "grid12_l05_a02": ({"kind": "grid", "nodes": 12, "loss": 0.05}, {"alpha": 0.2}),
    "grid12_l10_a03": ({"kind": "grid", "nodes": 12, "loss": 0.10}, {"alpha": 0.3}),
    "ring16_l10_a02": ({"kind": "ring", "nodes": 16, "loss": 0.10}, {"alpha": 0.2}),
    "smallworld24_l02_a05": ({"kind": "small_world", "nodes": 24, "loss": 0.02}, {"alpha": 0.5}),
    "geometric30_l05_a03": ({"kind": "random_geometric", "nodes": 30, "radius": 0.3, "loss": 0.05},
                            {"alpha": 0.3}),
    "grid36_l00_a02": ({"kind": "grid", "nodes": 36}, {"alpha": 0.2}),
    "smallworld40_l10_a02": ({"kind": "small_world", "nodes": 40, "loss": 0.10}, {"alpha": 0.2}),
    "geometric50_l10_a02": ({"kind": "random_geometric", "nodes": 50, "loss": 0.10}, {"alpha": 0.2}),
}


def scenario_of(case: str, changes: dict[str, Any], duration: float | None) -> Scenario:
    topology, data = CASES[case]
    doc: dict[str, Any] = {"name": case, "topology": topology, "data": data}
    if duration is not None:
        doc["duration"] = duration
    s = from_dict(doc)
    return s.replace(policy=changes) if changes else s


def one_run(case: str, policy: str, seed: int, changes: dict[str, Any], duration: float | None) -> dict[str, Any]:
    scenario = scenario_of(case, changes, duration)
    start = time.perf_counter()
    result = run(scenario, seed=seed, policy=policy)
    return {"case": case, "policy": policy, "seed": seed, "acc": result.final_mean_score,
            "bytes": int(result.bytes[-1]), "packets": int(result.packets[-1]),
            "wall_s": round(time.perf_counter() - start, 2)}


def figures_from(runs: list[dict[str, Any]], cases: list[str], seeds: list[int]) -> dict[str, Any]:
    by = {(r["case"], r["policy"], r["seed"]): r for r in runs}
    rows = []
    for case in cases:
        per_seed = []
        for seed in seeds:
            mfd, fedavg = by[(case, "mfd", seed)], by[(case, "fedavg", seed)]
            per_seed.append({"seed": seed, "mfd_acc": mfd["acc"], "fedavg_acc": fedavg["acc"],
                             "diff_points": 100 * (mfd["acc"] - fedavg["acc"]),
                             "bytes_ratio": mfd["bytes"] / fedavg["bytes"],
                             "mfd_MB": mfd["bytes"] / 1e6, "fedavg_MB": fedavg["bytes"] / 1e6})
        mean = {k: statistics.fmean(row[k] for row in per_seed) for k in per_seed[0] if k != "seed"}
        met = {"accuracy": mean["diff_points"] >= -TARGETS["points_behind_fedavg"],
               "bytes": mean["bytes_ratio"] <= TARGETS["bytes_over_fedavg"]}
        topology, data = CASES[case]
        rows.append({"case": case, "topology": topology, "data": data, "per_seed": per_seed, "mean": mean,
                     "worst_seed_diff_points": min(row["diff_points"] for row in per_seed),
                     "met": met, "met_all": all(met.values())})
    return {"cases": rows, "all_met": all(row["met_all"] for row in rows),
            "missed": [row["case"] for row in rows if not row["met_all"]]}


def table(fig: dict[str, Any]) -> str:
    head = ("case", "MFD acc", "FedAvg acc", "diff (pts)", "worst seed", "bytes ratio", "MB MFD/FedAvg", "met")
    lines = [head]
    for row in fig["cases"]:
        m = row["mean"]
        lines.append((row["case"], f"{m['mfd_acc']:.3f}", f"{m['fedavg_acc']:.3f}", f"{m['diff_points']:+.1f}",
                      f"{row['worst_seed_diff_points']:+.1f}", f"{m['bytes_ratio']:.2f}",
                      f"{m['mfd_MB']:.1f}/{m['fedavg_MB']:.1f}",
                      "yes" if row["met_all"] else "NO (" + ", ".join(k for k, v in row["met"].items() if not v) + ")"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)) for line in lines]
    out.append(f"targets, on each case's mean over seeds: diff >= -{TARGETS['points_behind_fedavg']:g} points, "
               f"bytes ratio <= {TARGETS['bytes_over_fedavg']:.2f}; all met: {'yes' if fig['all_met'] else 'NO'}")
    return "\n".join(out)


def parse_set(items: list[str]) -> dict[str, Any]:
    """``key=value`` policy settings, the value read as TOML (``fanout=3``, ``precision="fp16"``)."""
    import tomllib

    changes: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"defaults.py: error: --set {item!r}: expected key=value")
        try:
            changes[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            changes[key.strip()] = value
    return changes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--duration", type=float, default=None, help="simulated seconds (default: the scenario default)")
    p.add_argument("--set", dest="changes", action="append", default=[], metavar="KEY=VALUE",
                   help="a policy setting changed from its default, for every policy that has it")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time")
    p.add_argument("--out", default="defaults", help="results/<OUT>.json")
    args = p.parse_args(argv)
    if len(args.seeds) < 2 or len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
        raise SystemExit("defaults.py: error: --seeds: at least two distinct non-negative seeds")
    changes = parse_set(args.changes)
    try:
        for case in args.cases:
            scenario_of(case, changes, args.duration)
    except ScenarioError as err:
        raise SystemExit(f"defaults.py: error: {err}") from None
    settings = scenario_of(args.cases[0], changes, args.duration)
    print(f"MFD settings: {json.dumps(settings.policy.mfd.model_dump())}")
    print(f"duration {settings.duration:g} s, learner {settings.learner.kind} {list(settings.learner.hidden)}, "
          f"compute {settings.topology.compute:g} samples/s; seeds {args.seeds}")

    jobs = [(case, policy, seed) for case in args.cases for seed in args.seeds for policy in ("fedavg", "mfd")]
    runs: list[dict[str, Any]] = []
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(one_run, case, policy, seed, changes, args.duration) for case, policy, seed in jobs]
        for future in as_completed(futures):
            r = future.result()
            runs.append(r)
            print(f"[{len(runs)}/{len(jobs)}] {r['case']} {r['policy']} seed {r['seed']}: acc {r['acc']:.3f}, "
                  f"{r['bytes'] / 1e6:.2f} MB ({r['wall_s']:.1f} s)", flush=True)
    wall = time.perf_counter() - start
    fig = figures_from(runs, args.cases, args.seeds)
    print(table(fig))
    print(f"{len(runs)} runs in {wall:.0f} s")
    fig["runs"] = sorted(runs, key=lambda r: (r["case"], r["policy"], r["seed"]))
    path = write_results(args.out, fig, targets=TARGETS, seeds=args.seeds, policy_changes=changes,
                         mfd_settings=settings.policy.mfd.model_dump(), duration=settings.duration,
                         wall_seconds=round(wall, 1))
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
