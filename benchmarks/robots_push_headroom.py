"""How many env steps push needs in our env (issue 16): one Panda alone, a plain SB3 TD3+HER loop.

The push fleet benchmark (``benchmarks/robots.py --task push``) read 0 % success for isolated
and MFD robots at ~2,500 env steps per founder, so its targets (steps to 50 % / 90 %) cannot
be measured until we know what budget push needs here. This trains ONE robot alone (the
first founder of ``robots_push_fleet``: a Panda, its own cell) with the app's own builder
(``apps.robots.fleet.make_env`` / ``make_model``: the learner settings
``apps/robots/config.py`` resolves for push, i.e. :data:`TASK_LEARNER_DEFAULTS` over
:class:`LearnerSettings`), ``model.learn`` in chunks, and every ``--eval-every`` env steps
measures the deterministic policy on the same ``--eval-episodes`` held-out episodes (fixed
seeds, the fleet's test seeds of that robot): success rate and progress (1 per success,
else half the share of the block's start distance to the goal closed:
``mfd_core.learners.sb3``'s progress metric) and the share of episodes that touched the
block (moved it more than 1 cm); beside them, the share of the chunk's training
transitions in which the block moved at all (> 1 mm): whether the learner is starved of
block contacts (exploration) or has them and does not learn from them.

Variants (each reported with its own curve, never tuned on the eval seeds beyond that):
``--learner key=value`` overrides a learner setting (e.g. ``learning_rate=1e-3``),
``--cell key=value`` a cell field (e.g. ``object_xy_range=0.1``).

    python benchmarks/robots_push_headroom.py --seed 0 --steps 100000 --minutes 20
    python benchmarks/robots_push_headroom.py --learner learning_rate=1e-3 \\
        --out benchmarks/results/robots_push_headroom_lr1e-3.json

Figures: ``steps_to_50`` / ``steps_to_90`` (env steps at the first measurement at or above
the rate; null if not reached within ``budget``, the env steps actually trained), the curve,
env steps per wall second and per CPU second of training (measurements excluded). Ctrl-C
(or ``--minutes``) stops early and still writes what was measured. Writes
``benchmarks/results/robots_push_headroom.json`` unless ``--out``.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import write_results  # noqa: E402

from mfd_core import episode_progress  # noqa: E402  (the progress the robots' gate scores by)

SCENARIO = "robots_push_fleet"
ROBOT = 0  # the fleet's first founder: a Panda


def steps_to(curve: list[dict], threshold: float, key: str = "success") -> int | None:
    """Env steps at the first measurement whose ``key`` is at least ``threshold`` (None: never)."""
    for row in curve:
        if row[key] >= threshold:
            return int(row["env_steps"])
    return None


def _late_mean(curve: list[dict], key: str) -> float | None:
    """Mean of ``key`` over the last quarter of the measurements after the start (None: none)."""
    rows = [r[key] for r in curve[1:] if r.get(key) is not None]
    rows = rows[-max(1, len(rows) // 4):]
    return sum(rows) / len(rows) if rows else None


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["learning_rate=1e-3", "net_arch=(256, 256)"]`` -> ``{"learning_rate": 0.001, ...}``."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value, got {pair!r}")
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = value.strip()
    return out


# A block that moved more than this in an episode was touched (it starts at rest on the table).
TOUCH = 0.01
# A transition in which the block moved more than this (metres) is one the arm pushed it in.
MOVE = 0.001


def evaluate(model, env, episodes: int, seed: int) -> dict[str, float]:
    """Success rate, mean progress and the share of episodes that touched the block (moved it
    more than :data:`TOUCH`), for the deterministic policy on ``episodes`` seeded episodes."""
    import numpy as np

    success = progress = touched = 0.0
    for i in range(episodes):
        obs, info = env.reset(seed=seed + i)
        start, done = obs, False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, _, terminated, truncated, info = env.step(action)
            done = terminated or truncated
        won = bool(info.get("is_success", False))
        success += won
        progress += episode_progress(start, obs, won)
        touched += float(np.linalg.norm(obs["achieved_goal"] - start["achieved_goal"]) > TOUCH)
    return {"success": success / episodes, "progress": progress / episodes, "touched": touched / episodes}


def moved_share(buffer, start: int, end: int) -> float | None:
    """Share of the replay buffer's transitions ``start``..``end`` (positions, modulo its size)
    in which the block moved more than :data:`MOVE`: how much of what the learner saw (and
    what HER can relabel into a non-trivial goal) involved the block at all."""
    import numpy as np

    n = (end - start) % buffer.buffer_size
    if n == 0:
        return None
    idx = (start + np.arange(n)) % buffer.buffer_size
    before, after = buffer.observations["achieved_goal"][idx], buffer.next_observations["achieved_goal"][idx]
    return float((np.linalg.norm(after - before, axis=-1) > MOVE).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=80_000, help="env steps at most (~15 min at ~90/s)")
    parser.add_argument("--minutes", type=float, default=None, help="stop after this many wall minutes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=2000, help="env steps between measurements")
    parser.add_argument("--eval-episodes", type=int, default=30)
    parser.add_argument("--learner", nargs="*", default=[], metavar="KEY=VALUE", help="learner setting overrides")
    parser.add_argument("--cell", nargs="*", default=[], metavar="KEY=VALUE", help="cell field overrides")
    parser.add_argument("--stop-at", type=float, default=None, help="stop once success reaches this rate")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "robots_push_headroom.json")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.eval_every < 1 or args.eval_episodes < 1:
        parser.error("--steps, --eval-every and --eval-episodes must be positive")
    try:
        learner_changes, cell_changes = parse_overrides(args.learner), parse_overrides(args.cell)
    except ValueError as err:
        parser.error(str(err))

    # a job started with & from a script inherits SIGINT ignored: make kill -INT stop it too
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    from apps.robots import config
    from apps.robots.fleet import TEST_SEED, make_env, make_model

    torch.set_num_threads(1)
    scenario = config.load(SCENARIO)
    if learner_changes:
        scenario = scenario.replace(learner=learner_changes)
    cell = scenario.robots[ROBOT].cell()
    if cell_changes:
        cell = cell.replace(**cell_changes)
    model = make_model(scenario, make_env(scenario.task, cell), width=1.0, seed=args.seed * 1000 + ROBOT)
    test_env = make_env(scenario.task, cell)
    eval_seed = TEST_SEED + 1000 * ROBOT

    started = time.time()
    deadline = started + 60 * args.minutes if args.minutes else None
    train_wall = train_cpu = eval_wall = 0.0
    curve = [{"env_steps": 0, **evaluate(model, test_env, args.eval_episodes, eval_seed), "train_block_moved": None,
              "wall_s": 0.0}]
    stopped = "budget"
    try:
        while model.num_timesteps < args.steps:
            chunk = min(args.eval_every, args.steps - model.num_timesteps)
            t, c = time.perf_counter(), time.process_time()
            pos = model.replay_buffer.pos if model.replay_buffer is not None else 0
            model.learn(total_timesteps=chunk, reset_num_timesteps=False)
            train_wall += time.perf_counter() - t
            train_cpu += time.process_time() - c
            t = time.perf_counter()
            row = {"env_steps": int(model.num_timesteps), **evaluate(model, test_env, args.eval_episodes, eval_seed),
                   "train_block_moved": moved_share(model.replay_buffer, pos, model.replay_buffer.pos),
                   "wall_s": round(time.time() - started, 1)}
            eval_wall += time.perf_counter() - t
            curve.append(row)
            print(f"\r{row['env_steps']:>7}/{args.steps} env steps  success {row['success']:.2f}  progress "
                  f"{row['progress']:.2f}  touched {row['touched']:.2f}  moved {row['train_block_moved']:.3f}  "
                  f"{model.num_timesteps / train_wall:.0f} steps/s  {row['wall_s'] / 60:.1f} min  "
                  f"load {os.getloadavg()[0]:.1f}", end="", file=sys.stderr, flush=True)
            if args.stop_at is not None and row["success"] >= args.stop_at:
                stopped = f"success {row['success']:.2f} >= --stop-at {args.stop_at}"
                break
            if deadline is not None and time.time() >= deadline:
                stopped = f"--minutes {args.minutes}"
                break
    except KeyboardInterrupt:
        stopped = "interrupted"
    print(file=sys.stderr)
    budget = int(model.num_timesteps)
    s = scenario.learner
    figures = {
        "issue": 16,
        "task": scenario.task, "scenario": SCENARIO, "robot": ROBOT, "arm": cell.arm, "cell": cell.__dict__,
        "seed": args.seed,
        "learner": s.model_dump(mode="json"),
        "learner_overrides": learner_changes, "cell_overrides": cell_changes,
        "budget": budget, "requested_steps": args.steps, "stopped": stopped,
        "steps_to_50": steps_to(curve, 0.5), "steps_to_90": steps_to(curve, 0.9),
        "best_success": max(r["success"] for r in curve), "best_progress": max(r["progress"] for r in curve),
        # the last quarter's means: one measurement on 30 episodes moves by 0.03 per episode
        "late_success": _late_mean(curve, "success"), "late_touched": _late_mean(curve, "touched"),
        "late_train_block_moved": _late_mean(curve, "train_block_moved"),
        "env_steps_per_s": budget / train_wall if train_wall else None,
        "env_steps_per_cpu_s": budget / train_cpu if train_cpu else None,
        "gradient_updates": int(model._n_updates),
        "train_wall_s": round(train_wall, 1), "eval_wall_s": round(eval_wall, 1),
        "eval_episodes": args.eval_episodes, "eval_every": args.eval_every, "eval_seed": eval_seed,
        "curve": curve,
    }
    model.get_env().close()
    test_env.close()
    print(json.dumps({k: v for k, v in figures.items() if k not in ("curve", "learner", "cell")}, indent=1))
    path = write_results("robots_push_headroom", figures, path=args.out, wall_seconds=round(time.time() - started),
                         note="one Panda alone on push (robots_push_fleet's robot 0), plain SB3 TD3+HER with the "
                              "app's push learner settings (+ learner_overrides); success/progress on fixed "
                              "held-out episodes; steps_to_X null: not reached within budget")
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
