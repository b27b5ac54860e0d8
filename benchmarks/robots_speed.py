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
training path alone; ``--policy mfd`` adds the sharing) with the same measurement cadence
(``--eval-interval``; 0 measures only at the start and the end). ``training_speedup`` is
the median over repetitions of new/today (paired within a repetition).

"Same learning per step": the batched path takes the same gradient steps per env step with
the same minibatch size (checked from the models' update counters below: ``updates``), and
for one robot alone it computes what SB3's ``TD3.train`` does to float rounding
(``tests/test_td3_batch.py``).

    python benchmarks/robots_speed.py --duration 40 --repeats 3      # ~10 min on 2 busy cores

Writes ``benchmarks/results/robots_speed.json``; ``benchmarks/robots.py --push`` quotes its
``training_speedup`` in ``robots_push.json``.
"""
from __future__ import annotations

import argparse
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
    try:
        started = time.perf_counter()
        result = run_fleet(fleet)
        wall = time.perf_counter() - started
        learners = fleet.learners
        steps = sum(learner.env_steps for learner in learners.values())
        updates = sum(int(learner.model._n_updates) for learner in learners.values())
        return {"variant": variant, "wall_s": wall, "env_steps": steps, "steps_per_s": steps / wall,
                "gradient_updates": updates, "final_success": result.scores[-1],
                "measurements": len(result.times)}
    finally:
        fleet.close()


def run_sb3(scenario_name: str, steps_per_robot: int, seed: int) -> dict:
    """A plain SB3 TD3+HER loop: one model per founder's cell, ``learn`` in turn."""
    import torch

    from apps.robots import config
    from apps.robots.fleet import make_env, make_model

    torch.set_num_threads(1)
    scenario = config.load(scenario_name)
    models = [make_model(scenario, make_env(scenario.task, scenario.robots[i].cell()), width=1.0,
                         seed=seed * 1000 + i) for i in scenario.founders]
    started = time.perf_counter()
    for model in models:
        model.learn(steps_per_robot)
    wall = time.perf_counter() - started
    steps = sum(int(m.num_timesteps) for m in models)
    for model in models:
        model.get_env().close()
    return {"variant": "sb3", "wall_s": wall, "env_steps": steps, "steps_per_s": steps / wall,
            "gradient_updates": sum(int(m._n_updates) for m in models)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="robots", help="robots scenario (shipped name or file)")
    parser.add_argument("--policy", default="isolated", help="sharing policy of both fleet variants")
    parser.add_argument("--duration", type=float, default=40.0, help="simulated seconds (25 env steps each)")
    parser.add_argument("--eval-interval", type=float, default=0.0,
                        help="simulated seconds between measurements (0: start and end only)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-sb3", action="store_true", help="skip the plain SB3 loop")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "robots_speed.json")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.repeats < 1:
        parser.error("--duration and --repeats must be positive")
    started = time.time()
    rows: list[dict] = []
    for rep in range(args.repeats):
        for variant in VARIANTS:
            row = run_fleet_variant(args.scenario, variant, args.duration, args.eval_interval, args.policy, args.seed)
            row["repeat"] = rep
            rows.append(row)
            print(f"  rep {rep} {variant:>5}: {row['env_steps']} env steps in {row['wall_s']:.1f} s = "
                  f"{row['steps_per_s']:.1f}/s, {row['gradient_updates']} updates, load {os.getloadavg()[0]:.1f}",
                  flush=True)
        if not args.no_sb3:
            per_robot = round(statistics.fmean(r["env_steps"] for r in rows[-2:]) / 4)
            row = run_sb3(args.scenario, per_robot, args.seed)
            row["repeat"] = rep
            rows.append(row)
            print(f"  rep {rep}   sb3: {row['env_steps']} env steps in {row['wall_s']:.1f} s = "
                  f"{row['steps_per_s']:.1f}/s, {row['gradient_updates']} updates", flush=True)

    def of(variant: str) -> list[dict]:
        return [r for r in rows if r["variant"] == variant]

    paired = [n["steps_per_s"] / t["steps_per_s"] for t, n in zip(of("today"), of("new"))]
    figures = {
        "training_speedup": statistics.median(paired),
        "paired_ratios": paired,
        "steps_per_s_median": {v: statistics.median(r["steps_per_s"] for r in of(v)) for v in ("today", "new", "sb3")
                               if of(v)},
        "updates_per_env_step": {v: statistics.fmean(r["gradient_updates"] / r["env_steps"] for r in of(v))
                                 for v in ("today", "new", "sb3") if of(v)},
        "scenario": args.scenario, "policy": args.policy, "duration": args.duration,
        "eval_interval": args.eval_interval or args.duration, "repeats": args.repeats, "seed": args.seed,
        "runs": rows,
    }
    if of("sb3"):
        figures["new_over_sb3"] = figures["steps_per_s_median"]["new"] / figures["steps_per_s_median"]["sb3"]
    print(f"training_speedup (new/today, median of paired): {figures['training_speedup']:.2f}  "
          f"steps/s medians {figures['steps_per_s_median']}  updates/env step {figures['updates_per_env_step']}")
    path = write_results("robots_speed", figures, path=args.out, wall_seconds=round(time.time() - started),
                         note="fleet env steps per wall second; today = learner.batched false + eval_workers 0, "
                              "new = the defaults; runs interleaved; see the module docstring")
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
