"""LM4Net figures (issue 6): env speed against mobile-env, and what the learning reached.

1. Environment speed: the figures of ``benchmarks/basestation_env.py`` (our env against
   mobile-env, interleaved in one run, separate venv). By default the stored
   ``results/basestation_env.json`` is reused; ``--rerun-env-speed`` measures again
   through that script.
2. Learning, on the five shipped scenarios: train isolated, FedAvg and MFD station
   agents and the central PPO controller (``mfd basestation train``), play every policy
   on every evaluation seed (``mfd basestation evaluate``), and compare:

   - MFD vs the best heuristic, PF utility averaged over the scenarios, at no more
     energy (target: +10 %). "Best heuristic" is, per scenario, whichever of full
     power + strongest cell and the load-balancing heuristic has the higher PF
     utility there (the stricter reading); the energy check is against that one;
   - MFD vs the central controller (target: within 5 % of its PF utility);
   - MFD's model bytes vs FedAvg's, all scenarios together (target: <= 25 %).

   Relative PF figures are ``(U_a - U_b) / |U_b|`` per scenario, then averaged.

    python benchmarks/basestation.py                         # all five, the scenarios' rounds
    python benchmarks/basestation.py --rounds 20 --scenarios outage,hotspot   # a quick look
    python benchmarks/basestation.py --reuse-models          # evaluate what is already trained

Writes ``benchmarks/results/basestation.json`` (the exact command included) and the
report under ``runs/basestation-bench/report``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import multiprocessing
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
ENV_SPEED_JSON = RESULTS / "basestation_env.json"
SCENARIOS = ("uniform", "hotspot", "rush_hour", "outage", "night")
TARGETS = {"pf_gain_vs_best_heuristic": 0.10, "pf_gap_to_central": -0.05, "bytes_vs_fedavg": 0.25}


def env_speed(rerun: bool) -> dict:
    """Our env's steps/s against mobile-env, from basestation_env.py (rerun or stored)."""
    if rerun:
        import basestation_env  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

        basestation_env.main(["--json", str(ENV_SPEED_JSON)])
    if not ENV_SPEED_JSON.is_file():
        return {"note": f"{ENV_SPEED_JSON.name} missing: run benchmarks/basestation_env.py"}
    doc = json.loads(ENV_SPEED_JSON.read_text())
    rows = [{"stations": r["stations"], "users": r["users"],
             "ours_central_steps_per_s": round(r["ours_central_steps_per_s"]),
             "ours_parallel_steps_per_s": round(r["ours_parallel_steps_per_s"]),
             "mobile_env_steps_per_s": None if r["mobile_env_steps_per_s"] is None else round(r["mobile_env_steps_per_s"]),
             "ratio_central": r.get("ratio_central"), "ratio_parallel": r.get("ratio_parallel"),
             "target_ratio": 20.0,
             "met": (r.get("ratio_central") or 0) >= 20.0}
            for r in doc["rows"]]
    return {"source": f"benchmarks/results/{ENV_SPEED_JSON.name}", "measured": doc.get("date"),
            "command": doc.get("command"), "mobile_env_version": doc.get("mobile_env_version"),
            "load_average_1m": doc.get("machine", {}).get("load_average_1m"), "rows": rows}


def _rel(a: float, b: float) -> float:
    return (a - b) / abs(b) if b else math.nan


def learning_figures(summary: list[dict], scenarios: list[str]) -> dict:
    """The three comparisons of the issue from the evaluation's per-scenario means."""
    by = {(r["scenario"], r["policy"]): r for r in summary}
    per, mfd_bytes, fed_bytes = [], 0.0, 0.0
    for s in scenarios:
        heur = [p for p in ("full_power", "heuristic") if (s, p) in by]
        if not heur or (s, "mfd") not in by:
            continue
        best = max(heur, key=lambda p: by[(s, p)]["pf_utility"])
        m = by[(s, "mfd")]
        row = {"scenario": s, "best_heuristic": best,
               "pf": {p: round(by[(s, p)]["pf_utility"], 3) for p in
                      ("full_power", "heuristic", "isolated", "fedavg", "mfd", "central") if (s, p) in by},
               "energy_kj": {p: round(by[(s, p)]["energy_kj"], 2) for p in
                             ("full_power", "heuristic", "isolated", "fedavg", "mfd", "central") if (s, p) in by},
               "mfd_pf_gain_vs_best_heuristic": _rel(m["pf_utility"], by[(s, best)]["pf_utility"]),
               "mfd_energy_vs_best_heuristic": _rel(m["energy_kj"], by[(s, best)]["energy_kj"]),
               "mfd_no_more_energy": m["energy_kj"] <= by[(s, best)]["energy_kj"] * (1 + 1e-9)}
        if (s, "central") in by:
            row["mfd_pf_gap_to_central"] = _rel(m["pf_utility"], by[(s, "central")]["pf_utility"])
        for p in ("isolated", "fedavg"):
            if (s, p) in by:
                row[f"{p}_pf_gain_vs_best_heuristic"] = _rel(by[(s, p)]["pf_utility"], by[(s, best)]["pf_utility"])
        if (s, "fedavg") in by:
            mfd_bytes += m["model_mb"]
            fed_bytes += by[(s, "fedavg")]["model_mb"]
            row["model_mb"] = {"mfd": round(m["model_mb"], 3), "fedavg": round(by[(s, "fedavg")]["model_mb"], 3)}
        per.append(row)

    def mean(key: str) -> float:
        vals = [r[key] for r in per if key in r and math.isfinite(r[key])]
        return sum(vals) / len(vals) if vals else math.nan

    gain, gap = mean("mfd_pf_gain_vs_best_heuristic"), mean("mfd_pf_gap_to_central")
    ratio = mfd_bytes / fed_bytes if fed_bytes else math.nan
    return {
        "per_scenario": per,
        "mfd_pf_gain_vs_best_heuristic": gain,
        "isolated_pf_gain_vs_best_heuristic": mean("isolated_pf_gain_vs_best_heuristic"),
        "fedavg_pf_gain_vs_best_heuristic": mean("fedavg_pf_gain_vs_best_heuristic"),
        "mfd_no_more_energy_in": sum(r["mfd_no_more_energy"] for r in per),
        "mfd_pf_gap_to_central": gap,
        "mfd_bytes_vs_fedavg": ratio,
        "targets": {
            "pf_gain_vs_best_heuristic": {"target": ">= +10% at no more energy", "reached": gain,
                                          "met": bool(gain >= TARGETS["pf_gain_vs_best_heuristic"]
                                                      and all(r["mfd_no_more_energy"] for r in per)),
                                          "missed_by": max(0.0, TARGETS["pf_gain_vs_best_heuristic"] - gain)},
            "within_5pct_of_central": {"target": ">= -5% of the central controller's PF utility",
                                       "reached": gap, "met": bool(gap >= TARGETS["pf_gap_to_central"])},
            "bytes_vs_fedavg": {"target": "<= 25% of FedAvg's model bytes", "reached": ratio,
                                "met": bool(ratio <= TARGETS["bytes_vs_fedavg"])},
        },
    }


def _train_one(name: str, rounds: int | None, policy: str, seed: int, models: Path) -> str:
    """One (scenario, policy) training in a worker process (--jobs): scenarios are
    reloaded there by name, and torch runs on one thread as in the serial run."""
    from apps.basestation.config import load_app_scenario
    from apps.basestation.training import train_scenario

    sc = load_app_scenario(name)
    if rounds:
        sc = sc.with_training(rounds=rounds)
    train_scenario(sc, [policy], seed, models, quiet=True)
    return f"{name}/{policy}"


def _evaluate_one(name: str, rounds: int | None, models: Path) -> tuple[list, list]:
    from apps.basestation.config import load_app_scenario
    from apps.basestation.evaluation import POLICIES, evaluate

    sc = load_app_scenario(name)
    if rounds:
        sc = sc.with_training(rounds=rounds)
    return evaluate([sc], models, POLICIES)


# Costliest trainings first, so that --jobs keeps every worker busy to the end.
_COST = {"uniform": 4, "rush_hour": 4, "night": 3, "hotspot": 2, "outage": 1}
_POLICY_COST = {"mfd": 3, "isolated": 3, "fedavg": 2, "central": 1}


def _clean(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--rounds", type=int, help="training rounds (default: each scenario's file)")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--models", type=Path, default=ROOT / "runs" / "basestation-bench")
    p.add_argument("--reuse-models", action="store_true", help="skip training where models exist")
    p.add_argument("--rerun-env-speed", action="store_true", help="measure env speed again (needs mobile-env venv)")
    p.add_argument("--json", type=Path, default=RESULTS / "basestation.json")
    p.add_argument("--jobs", type=int, default=1,
                   help="train (scenario, policy) pairs and evaluate scenarios in this many processes "
                        "(each single-threaded; same results as --jobs 1, shorter wall time)")
    args = p.parse_args(argv)

    from apps.basestation.config import load_app_scenario
    from apps.basestation.evaluation import POLICIES, aggregate, evaluate
    from apps.basestation.report import write_report
    from apps.basestation.training import RL_POLICIES, train_scenario

    started = time.perf_counter()
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    scenarios = [load_app_scenario(n) for n in names]
    if args.rounds:
        scenarios = [s.with_training(rounds=args.rounds) for s in scenarios]
    training = {}
    todo = {sc.name: [pol for pol in RL_POLICIES
                      if not (args.reuse_models and (args.models / sc.name / pol / "summary.json").is_file())]
            for sc in scenarios}
    walls: dict[str, float] = {}
    if args.jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        tasks = sorted(((sc.name, pol) for sc in scenarios for pol in todo[sc.name]),
                       key=lambda t: -_COST.get(t[0], 2) * _POLICY_COST.get(t[1], 2))
        t0 = time.perf_counter()
        # spawn, not fork: a forked child of a process that already started torch's
        # OpenMP pool can hang
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for done in pool.map(_train_one, *zip(*[(n, args.rounds, pol, args.seed, args.models)
                                                   for n, pol in tasks])):
                print(f"trained {done} ({time.perf_counter() - t0:.0f} s)", flush=True)
        walls = {sc.name: round(time.perf_counter() - t0, 1) for sc in scenarios}
    for sc in scenarios:
        t0 = time.perf_counter()
        if todo[sc.name] and args.jobs <= 1:
            train_scenario(sc, todo[sc.name], args.seed, args.models)
        training[sc.name] = {"rounds": sc.training.rounds, "trained": todo[sc.name],
                             "wall_seconds": walls.get(sc.name, round(time.perf_counter() - t0, 1)),
                             "summaries": {pol: json.loads((args.models / sc.name / pol / "summary.json").read_text())
                                           for pol in RL_POLICIES
                                           if (args.models / sc.name / pol / "summary.json").is_file()}}
        for s in training[sc.name]["summaries"].values():
            s.pop("station_test_scores", None)
    if args.jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(args.jobs, len(names)),
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            parts = list(pool.map(_evaluate_one, names, [args.rounds] * len(names), [args.models] * len(names)))
        rows = [r for part in parts for r in part[0]]
        notes = [n for part in parts for n in part[1]]
    else:
        rows, notes = evaluate(scenarios, args.models, POLICIES)
    summary = aggregate(rows)
    page = write_report(rows, args.models / "report", models=args.models, notes=notes)
    figures = {"env_speed": env_speed(args.rerun_env_speed),
               "learning": learning_figures(summary, names),
               "evaluation_summary": summary,
               "training": training,
               "notes": notes}
    command = "python benchmarks/basestation.py" + ("" if argv is None and len(sys.argv) == 1 else
                                                      " " + " ".join(argv if argv is not None else sys.argv[1:]))
    try:
        load = round(os.getloadavg()[0], 2)
    except OSError:
        load = None
    import numpy
    import stable_baselines3
    import torch

    doc = {"name": "basestation", "issue": 6,
           "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": command, "wall_seconds": round(time.perf_counter() - started, 1),
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
                       "load_average_1m_at_end": load, "torch": torch.__version__, "numpy": numpy.__version__,
                       "stable_baselines3": stable_baselines3.__version__, "torch_threads": 1,
                       "jobs": args.jobs},
           "report": str(page.relative_to(ROOT)) if page.is_relative_to(ROOT) else str(page),
           "figures": _clean(figures)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")

    lf = figures["learning"]
    print(f"\n{'scenario':<11}{'best heur':>11}{'PF heur':>9}{'PF iso':>8}{'PF fed':>8}{'PF mfd':>8}{'PF cen':>8}"
          f"{'E mfd/heur':>11}{'MB mfd':>8}{'MB fed':>8}")
    for r in lf["per_scenario"]:
        pf, b = r["pf"], r["best_heuristic"]
        print(f"{r['scenario']:<11}{b:>11}{pf[b]:>9.2f}{pf.get('isolated', math.nan):>8.2f}"
              f"{pf.get('fedavg', math.nan):>8.2f}{pf['mfd']:>8.2f}{pf.get('central', math.nan):>8.2f}"
              f"{1 + r['mfd_energy_vs_best_heuristic']:>11.3f}{r.get('model_mb', {}).get('mfd', math.nan):>8.2f}"
              f"{r.get('model_mb', {}).get('fedavg', math.nan):>8.2f}")
    for key, t in lf["targets"].items():
        print(f"{key}: reached {t['reached']:.4f} ({t['target']}) -> {'met' if t['met'] else 'NOT met'}")
    for r in figures["env_speed"].get("rows", []):
        print(f"env speed {r['stations']} stations/{r['users']} users: {r['ratio_central']:.0f}x mobile-env "
              f"(target 20x)")
    print(f"results: {args.json}\nreport: {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
