"""The ceiling of sharing for the reach founders (issue 5): one learner with *all* their raw experience.

MFD never moves experience: robots share models. What the fleet could gain at most by
sharing anything is bounded by pooling it all: one TD3+HER learner fed by the four
founders' cells at once (a vectorised env of their four training cells, one replay
buffer), measured on each founder's held-out episodes exactly as ``benchmarks/robots.py``
measures a robot (20 episodes every 100 env steps per robot, the same test seeds).
Its steps to 90 % per robot, over the isolated robots' steps from
``results/robots.json`` on the same seed, is the founders' figure that a central server
holding every robot's raw experience would get; no model-sharing scheme should expect
to beat it by much.

Warm-up is the same 100 random steps per robot.

Four ceilings, each over the isolated robots on the same seeds (founders' mean and the
KUKA founder's own steps): one learner with one robot's updates (4 per env step, minibatch
256); synchronous data-parallel SGD at one robot's compute (the four robots' minibatches
of 256 in one of 1,024, 4 updates per env step: what training on *all* the experience
reaches at each robot's compute), and the same at twice the learning
rate; and four robots' updates in sequence (16 per env step: 4x one robot's compute).

    python benchmarks/robots_pooled.py --seeds 0 1 2      # ~5 min on 2 busy cores

Writes ``benchmarks/results/robots_pooled.json``.
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


def run_pooled(seed: int, updates_per_robot: float, duration_steps: int, batch_size: int | None = None,
               learning_rate: float | None = None) -> dict:
    import torch
    from stable_baselines3.common.vec_env import DummyVecEnv

    from apps.robots import config
    from apps.robots.fleet import TEST_SEED, make_env, make_model
    from mfd_core.learners.sb3 import SB3Learner

    torch.set_num_threads(1)
    scenario = config.load("robots")
    founders = scenario.founders
    n = len(founders)
    s = scenario.learner
    cells = {i: scenario.robots[i].cell() for i in founders}
    vec = DummyVecEnv([(lambda c=cells[i]: make_env(scenario.task, c)) for i in founders])
    pooled = scenario.model_copy(update={"learner": s.model_copy(update={
        "learning_starts": s.learning_starts * n,  # num_timesteps counts every robot's steps
        "gradient_steps": max(1, round(updates_per_robot * n)),
        "batch_size": batch_size or s.batch_size,
        "learning_rate": learning_rate or s.learning_rate,
    })})
    model = make_model(pooled, vec, width=1.0, seed=seed * 1000)
    test_envs = {i: make_env(scenario.task, cells[i]) for i in founders}
    learner = SB3Learner(model, test_envs[founders[0]], share=("actor", "critic"))
    every = round(scenario.eval_interval * 25)  # env steps per robot between measurements
    curve: list[dict] = []
    steps_to_90: dict[int, int | None] = {i: None for i in founders}
    for done in range(every, duration_steps + 1, every):
        model.learn(total_timesteps=every * n, reset_num_timesteps=False)
        row = {"env_steps_per_robot": done}
        for i in founders:
            success = learner.evaluate_episodes(test_envs[i], scenario.eval_episodes, TEST_SEED + 1000 * i,
                                                metric="success")
            row[str(i)] = success
            if steps_to_90[i] is None and success >= scenario.target:
                steps_to_90[i] = done
        curve.append(row)
        if all(v is not None for v in steps_to_90.values()):
            break
    vec.close()
    for env in test_envs.values():
        env.close()
    return {"seed": seed, "steps_to_90": {str(k): v for k, v in steps_to_90.items()}, "curve": curve}


# (label, gradient steps per robot per env step, minibatch, learning rate; None: the scenario's)
CEILINGS = (
    ("one learner, one robot's updates", 1.0, None, None),
    ("data-parallel SGD at one robot's compute (4 robots' minibatches in one)", 1.0, 1024, None),
    ("the same at twice the learning rate", 1.0, 1024, 8e-3),
    ("four robots' updates in sequence (4x one robot's compute)", 4.0, None, None),
)


def _isolated(path: Path) -> dict[int, dict]:
    """seed -> the isolated founders' mean steps and each robot's steps (robots.json)."""
    rows = json.loads(path.read_text())["figures"]["reach"]["per_seed"]
    return {r["seed"]: {"fleet": r["fleet"]["isolated_steps"],
                        "robots": {str(p["robot"]): (p["isolated"], p["arm"]) for p in r["per_robot"]}} for r in rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-steps", type=int, default=2000, help="env steps per robot at most")
    args = parser.parse_args(argv)
    robots_json = ROOT / "benchmarks" / "results" / "robots.json"
    if not robots_json.exists():
        parser.error(f"{robots_json} not found: run benchmarks/robots.py first (the isolated robots are the baseline)")
    isolated = _isolated(robots_json)
    missing = [s for s in args.seeds if s not in isolated]
    if missing:
        parser.error(f"robots.json has no isolated run for seeds {missing}")
    started = time.time()
    table = []
    for label, updates, batch, lr in CEILINGS:
        runs = []
        for seed in args.seeds:
            r = run_pooled(seed, updates, args.max_steps, batch, lr)
            steps = {k: (v if v is not None else args.max_steps) for k, v in r["steps_to_90"].items()}
            iso = isolated[seed]
            kuka = [k for k, (_, arm) in iso["robots"].items() if arm == "kuka" and k in steps]
            r["fleet_ratio"] = statistics.mean(steps.values()) / iso["fleet"]
            r["kuka_ratio"] = steps[kuka[0]] / iso["robots"][kuka[0]][0] if kuka else None
            r["censored"] = any(v is None for v in r["steps_to_90"].values())
            runs.append(r)
        row = {"ceiling": label, "updates_per_robot_step": updates, "batch_size": batch, "learning_rate": lr,
               "fleet_ratio_median": statistics.median(r["fleet_ratio"] for r in runs),
               "kuka_ratio_median": statistics.median(r["kuka_ratio"] for r in runs if r["kuka_ratio"] is not None),
               "runs": runs}
        table.append(row)
        per_seed = ", ".join(f"{r['fleet_ratio']:.2f}/{r['kuka_ratio']:.2f}" for r in runs)
        print(f"{label:<74} founders {row['fleet_ratio_median']:.2f}x  KUKA {row['kuka_ratio_median']:.2f}x  "
              f"(per seed, founders/KUKA: {per_seed})", flush=True)
    figures = {
        "issue": 5,
        "command": "python benchmarks/robots_pooled.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "baseline": "isolated robots of results/robots.json, same seeds (measured at "
                    + json.loads(robots_json.read_text()).get("timestamp", "?") + ")",
        "ceilings": table,
        "wall_seconds": round(time.time() - started, 1),
        "load_average_1m_at_end": os.getloadavg()[0],
    }
    write_results("robots_pooled", figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
