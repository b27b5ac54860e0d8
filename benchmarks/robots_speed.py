"""Fleet training speed (issue 16): env steps per wall second, today's path vs the batched one.

Three ways to train the same fleet the same number of env steps, interleaved (A B C A B C
...), on one seed, the medians and the paired ratios reported:

- ``today``: the fleet as it ran before (``learner.batched = false``, ``eval_workers = 0``):
  each robot's ``model.learn`` in turn, the measurement episodes in the fleet's process;
- ``new``: the default (``batched = true``, ``eval_workers = 1``): the robots' chunks run side
  by side with their TD3 gradient steps batched into one computation
  (``mfd_core/learners/td3_batch.py``), the measurement episodes in a worker process;
- ``sb3``: a plain SB3 TD3+HER loop, ``model.learn(steps)`` of one model per founder's cell one
  after another, no network, no sharing, no measurements: the reference of what SB3 alone does
  on these envs with these settings.

Both fleet variants run the same scenario under the same policy (isolated by default: the
training path alone; ``--policy mfd`` adds the sharing), under each measurement cadence of
``--eval-intervals`` (0: measurements at the start and the end only, i.e. training alone;
4: the benchmark's every 100 env steps, where today's fleet spends most of its time in
measurement episodes). Three rates per run: fleet env steps per wall second, per CPU
second of the fleet's own process (the critical path: the measurement worker runs beside
it), and per CPU second with the worker's. On this shared 2-core machine the load moves
between runs (10-30), so wall-clock ratios measure the neighbours as much as the code;
``training_speedup`` is the median paired ratio new/today per CPU second of the fleet's
process, training alone; the other ratios are written beside it. ``speedup_wall_bound``
is the most any schedule of the new path could give per wall second on this machine:
its CPU seconds, the fleet's and the measuring worker's, spread over every CPU with no
wait, against today's wall time (CPU work is conserved; threads do not shrink it).

"Same learning per step": the batched path takes the same gradient steps per env step with
the same minibatch size (checked from the models' update counters below: ``updates``), and
for one robot alone it computes what SB3's ``TD3.train`` does to float rounding
(``tests/test_td3_batch.py``).

    python benchmarks/robots_speed.py --duration 20 --repeats 2      # ~15 min on 2 busy cores

Writes ``benchmarks/results/robots_speed.json``; ``benchmarks/robots.py --push`` quotes its
``training_speedup`` in ``robots_push.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import write_results  # noqa: E402

VARIANTS = {
    "today": {"learner": {"batched": False}, "eval_workers": 0},
    "new": {"learner": {"batched": True}, "eval_workers": 1},
}


def run_fleet_variant(scenario_name: str, variant: str, duration: float, eval_interval: float, policy: str,
                      seed: int) -> dict:
    from apps.robots import config
    from apps.robots.fleet import build_fleet, run_fleet

    scenario = config.load(scenario_name)
    scenario = scenario.replace(duration=duration, eval_interval=eval_interval or duration, **VARIANTS[variant])
    fleet = build_fleet(scenario, seed, policy)
    children = os.times()
    try:
        started, cpu = time.perf_counter(), time.process_time()
        # run_fleet returns with every env step it counts trained: the batched path's last
        # chunks too (before 2026-12-06 they ran at the read of env_steps below, untimed)
        result = run_fleet(fleet)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        learners = fleet.learners
        steps = sum(learner.env_steps for learner in learners.values())
        updates = sum(int(learner.model._n_updates) for learner in learners.values())
    finally:
        fleet.close()  # the measurement worker ends here: its CPU time is counted below
    after = os.times()
    workers = (after.children_user - children.children_user) + (after.children_system - children.children_system)
    return {"variant": variant, "wall_s": wall, "cpu_s": cpu, "worker_cpu_s": workers, "env_steps": steps,
            "steps_per_s": steps / wall, "steps_per_cpu_s": steps / cpu, "steps_per_total_cpu_s": steps / (cpu + workers),
            "gradient_updates": updates, "final_success": result.scores[-1], "measurements": len(result.times)}


def run_sb3(scenario_name: str, steps_per_robot: int, seed: int) -> dict:
    """A plain SB3 TD3+HER loop: one model per founder's cell, ``learn`` in turn."""
    import torch

    from apps.robots import config
    from apps.robots.fleet import make_env, make_model

    torch.set_num_threads(1)
    scenario = config.load(scenario_name)
    models = [make_model(scenario, make_env(scenario.task, scenario.robots[i].cell()), width=1.0,
                         seed=seed * 1000 + i) for i in scenario.founders]
    started, cpu = time.perf_counter(), time.process_time()
    for model in models:
        model.learn(steps_per_robot)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    steps = sum(int(m.num_timesteps) for m in models)
    for model in models:
        model.get_env().close()
    return {"variant": "sb3", "wall_s": wall, "cpu_s": cpu, "env_steps": steps, "steps_per_s": steps / wall,
            "steps_per_cpu_s": steps / cpu,
            "gradient_updates": sum(int(m._n_updates) for m in models)}


def _median_ratio(rows: list[dict], key: str) -> float:
    today = [r for r in rows if r["variant"] == "today"]
    new = [r for r in rows if r["variant"] == "new"]
    return statistics.median(n[key] / t[key] for t, n in zip(today, new))


CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _wall_bound(rows: list[dict], cpus: int) -> float:
    """Median over repeats of today's wall seconds per env step over the new path's CPU
    seconds per env step divided among ``cpus``: CPU work is conserved, so no overlap of the
    fleet with its measuring worker, nor threads, makes the new path faster than that."""
    today = [r for r in rows if r["variant"] == "today"]
    new = [r for r in rows if r["variant"] == "new"]
    return statistics.median(
        (t["wall_s"] / t["env_steps"]) / ((n["cpu_s"] + n["worker_cpu_s"]) / cpus / n["env_steps"])
        for t, n in zip(today, new))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="robots", help="robots scenario (shipped name or file)")
    parser.add_argument("--policy", default="isolated", help="sharing policy of both fleet variants")
    parser.add_argument("--duration", type=float, default=20.0, help="simulated seconds (25 env steps each)")
    parser.add_argument("--eval-intervals", type=float, nargs="+", default=[0.0, 4.0],
                        help="measurement cadences to compare under, simulated seconds (0: start and end only)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-sb3", action="store_true", help="skip the plain SB3 loop")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "robots_speed.json")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.repeats < 1:
        parser.error("--duration and --repeats must be positive")
    started = time.time()
    rows: list[dict] = []
    for rep in range(args.repeats):
        for interval in args.eval_intervals:
            for variant in VARIANTS:
                row = run_fleet_variant(args.scenario, variant, args.duration, interval, args.policy, args.seed)
                row.update(repeat=rep, eval_interval=interval)
                rows.append(row)
                print(f"  rep {rep} eval every {interval or args.duration:g} s {variant:>5}: {row['env_steps']} env "
                      f"steps in {row['wall_s']:.1f} s = {row['steps_per_s']:.1f}/s, "
                      f"{row['steps_per_cpu_s']:.1f} per CPU s of the fleet's process, "
                      f"{row['steps_per_total_cpu_s']:.1f} per CPU s with its workers, "
                      f"{row['gradient_updates']} updates, load {os.getloadavg()[0]:.1f}", flush=True)
        if not args.no_sb3:
            per_robot = round(statistics.fmean(r["env_steps"] for r in rows if r["variant"] == "new") / 4)
            row = run_sb3(args.scenario, per_robot, args.seed)
            row.update(repeat=rep, eval_interval=None)
            rows.append(row)
            print(f"  rep {rep} plain SB3 loop: {row['env_steps']} env steps in {row['wall_s']:.1f} s = "
                  f"{row['steps_per_s']:.1f}/s, {row['steps_per_cpu_s']:.1f} per CPU s, "
                  f"{row['gradient_updates']} updates", flush=True)

    settings = {}
    for interval in args.eval_intervals:
        mine = [r for r in rows if r.get("eval_interval") == interval]
        settings[f"eval_every_{interval or args.duration:g}s"] = {
            "speedup_cpu": _median_ratio(mine, "steps_per_cpu_s"),
            "speedup_total_cpu": _median_ratio(mine, "steps_per_total_cpu_s"),
            "speedup_wall": _median_ratio(mine, "steps_per_s"),
            **{f"{v}_steps_per_cpu_s": statistics.median(r["steps_per_cpu_s"] for r in mine if r["variant"] == v)
               for v in VARIANTS},
            **{f"{v}_steps_per_s": statistics.median(r["steps_per_s"] for r in mine if r["variant"] == v)
               for v in VARIANTS},
            "updates_per_env_step": {v: statistics.fmean(r["gradient_updates"] / r["env_steps"] for r in mine
                                                         if r["variant"] == v) for v in VARIANTS},
            # The most any schedule of the new path's work could give per wall second on this
            # machine's CPUs: its CPU seconds (the fleet's and the measuring worker's) spread
            # over every CPU with no wait, against today's wall time; paired per repeat.
            "speedup_wall_bound": _wall_bound(mine, CPUS),
        }
    train_only = settings[f"eval_every_{args.eval_intervals[0] or args.duration:g}s"]
    sb3 = [r for r in rows if r["variant"] == "sb3"]
    figures = {
        # per CPU second of the fleet's process, training only (measurements at the start and
        # the end): on a shared machine whose load moves between runs (here 2 cores, load
        # 10-30) wall-clock ratios measure the neighbours; they are kept beside it
        "training_speedup": train_only["speedup_cpu"],
        "training_speedup_basis": (f"fleet env steps per CPU second of the fleet's process, new over today, "
                                   f"{args.eval_intervals[0] or args.duration:g} s between measurements"),
        "settings": settings,
        "sb3_steps_per_cpu_s": statistics.median(r["steps_per_cpu_s"] for r in sb3) if sb3 else None,
        "sb3_steps_per_s": statistics.median(r["steps_per_s"] for r in sb3) if sb3 else None,
        "scenario": args.scenario, "policy": args.policy, "duration": args.duration, "repeats": args.repeats,
        "seed": args.seed, "runs": rows,
    }
    if sb3:
        figures["new_over_sb3_cpu"] = train_only["new_steps_per_cpu_s"] / figures["sb3_steps_per_cpu_s"]
    print(json.dumps({k: v for k, v in figures.items() if k != "runs"}, indent=1))
    path = write_results("robots_speed", figures, path=args.out, wall_seconds=round(time.time() - started),
                         note="fleet env steps per second; today = learner.batched false + eval_workers 0, "
                              "new = the defaults; runs interleaved; see the module docstring")
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
