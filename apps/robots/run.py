"""Run fleets and keep what they produced: measurements, policies, frames of the robots acting.

A results folder holds one sub-folder per run, ``<policy>/seed<k>/``, with the core's
``metrics.jsonl`` / ``events.jsonl`` / ``summary.json`` (:class:`mfd_core.metrics.RunResult`)
plus ``robots.json`` (each robot's arm, cell, env steps at every measurement, steps to
the target, bytes it sent) and ``policies/robot<k>_<arm>.zip`` (SB3 zips, replayable with
``mfd robots play``). The scenario itself is kept as ``scenario.json`` at the top.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from mfd_core.metrics import RunResult

from .config import RobotsScenario, from_dict
from .fleet import Fleet, build_fleet, make_env, run_fleet, steps_to

FRAME_SIZE = (240, 180)  # px per robot in strips and GIFs: four robots side by side fit a page


def robot_record(fleet: Fleet, result: RunResult) -> dict[str, Any]:
    """What ``robots.json`` holds for one run."""
    s = fleet.scenario
    scores = np.asarray(result.scores, dtype=float)
    robots = []
    for k, node_id in enumerate(result.node_ids):
        node = fleet.world.nodes[node_id]
        steps = [row[k] for row in fleet.env_steps]
        series = [None if math.isnan(v) else float(v) for v in scores[:, k]]
        robots.append({
            "node": node_id, "arm": s.robots[node_id].arm, "cell": s.robots[node_id].model_dump(),
            "join_time": fleet.join_times.get(node_id),
            "steps_to_target": steps_to(series, steps, s.target),
            "final_success": series[-1], "env_steps": int(node.learner.env_steps),
            "score_env_steps": int(node.learner.score_env_steps),
            "bytes_sent": int(node.bytes_sent), "counters": vars(node.counters),
        })
    return {"target": s.target, "task": s.task, "policy": s.policy.name, "seed": fleet.seed,
            "times": list(result.times), "env_steps": fleet.env_steps, "robots": robots}


def save_policies(fleet: Fleet, folder: Path) -> list[Path]:
    paths = []
    for node_id, learner in fleet.learners.items():
        arm = fleet.scenario.robots[node_id].arm
        paths.append(learner.save(folder / f"robot{node_id}_{arm}.zip"))
    return paths


def run_policies(scenario: RobotsScenario, policies: Iterable[str], out: Path, *,
                 seeds: Iterable[int] | None = None, quiet: bool = False, keep_fleet: bool = False
                 ) -> list[tuple[RunResult, dict[str, Any], Fleet | None]]:
    """Run each policy on each seed with a live display; save every run under ``out``.

    :param keep_fleet: keep the last fleet (envs open, trained policies) for frames;
        the others are closed as soon as they are saved.
    :return: ``(result, robots record, fleet or None)`` per run.
    """
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scenario.json").write_text(json.dumps(scenario.model_dump(), indent=2))
    policies, seeds = list(policies), list(seeds if seeds is not None else scenario.seeds)
    runs: list[tuple[RunResult, dict[str, Any], Fleet | None]] = []
    total = scenario.duration * len(policies) * len(seeds)
    fmt = "{desc} {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} robot-s [{elapsed}<{remaining}]{postfix}"
    with tqdm(total=round(total, 3), disable=quiet, file=sys.stderr, bar_format=fmt, dynamic_ncols=True) as bar:
        for p_index, policy in enumerate(policies):
            for s_index, seed in enumerate(seeds):
                bar.set_description(f"{policy} seed {seed}")
                fleet = build_fleet(scenario, seed, policy)
                done = [0.0]

                def progress(t: float, fl: Fleet, done=done) -> None:
                    r = fl.world.result
                    cells = []
                    for k, node_id in enumerate(r.node_ids):
                        v = r.scores[-1][k]
                        arm = fl.scenario.robots[node_id].arm
                        cells.append(f"{arm}#{node_id} {'--' if math.isnan(v) else f'{v:.0%}'}")
                    bar.set_postfix_str("success " + " ".join(cells) + f" | sent {r.bytes[-1] / 1e6:.2f} MB",
                                        refresh=False)
                    bar.update(t - done[0])
                    done[0] = t

                result = run_fleet(fleet, progress)
                bar.update(scenario.duration - done[0])
                folder = out / policy / f"seed{seed}"
                result.save(folder)
                record = robot_record(fleet, result)
                (folder / "robots.json").write_text(json.dumps(record, indent=2))
                save_policies(fleet, folder / "policies")
                last = p_index == len(policies) - 1 and s_index == len(seeds) - 1
                if keep_fleet and last:
                    runs.append((result, record, fleet))
                else:
                    fleet.close()
                    runs.append((result, record, None))
    return runs


def load_scenario(folder: Path) -> RobotsScenario:
    """The scenario a results folder was made with (``scenario.json`` at its top)."""
    path = Path(folder) / "scenario.json"
    if not path.exists():
        raise FileNotFoundError(f"{folder}: no scenario.json (not a robots results folder)")
    return from_dict(json.loads(path.read_text()))


# --------------------------------------------------------------------------- frames


def episode_frames(act, task: str, cell, seed: int, *, every: int = 1, size=FRAME_SIZE, candidates: int = 20
                   ) -> tuple[list[np.ndarray], bool, list[int]]:
    """Frames of one episode of ``act(obs) -> action`` in a cell (every ``every`` steps and
    the last), whether it succeeded, and the step of each frame.

    The episode is the one of seeds ``seed .. seed + candidates - 1`` whose goal starts
    farthest from the tool: a goal next to the start is reached in two steps and shows
    nothing.
    """
    env = make_env(task, cell, render_mode="rgb_array", render_width=size[0], render_height=size[1])
    try:
        def distance(s: int) -> float:
            obs, _ = env.reset(seed=s)
            return float(np.linalg.norm(obs["achieved_goal"] - obs["desired_goal"]))

        seed = max(range(seed, seed + candidates), key=distance)
        obs, info = env.reset(seed=seed)
        frames, steps = [env.render()], [0]
        done, t = False, 0
        while not done:
            obs, _, terminated, truncated, info = env.step(act(obs))
            done = terminated or truncated
            t += 1
            if t % every == 0 or done:
                frames.append(env.render())
                steps.append(t)
        return frames, bool(info.get("is_success", False)), steps
    finally:
        env.close()


def fleet_frames(actors: dict[int, Any], scenario: RobotsScenario, seed: int = 7) -> dict[int, tuple]:
    """One episode per robot, each in its own cell, with its own policy."""
    return {node_id: episode_frames(act, scenario.task, scenario.robots[node_id].cell(), seed + node_id)
            for node_id, act in actors.items()}


def write_strip(episodes: dict[int, tuple], scenario: RobotsScenario, path: Path,
                columns: int = 6) -> Path:
    """A PNG: one row per robot, ``columns`` frames spread over its episode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(episodes)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 2.2, rows * 1.85), squeeze=False)
    for r, (node_id, (frames, success, steps)) in enumerate(sorted(episodes.items())):
        picks = sorted(set(np.linspace(0, len(frames) - 1, columns).round().astype(int).tolist()))
        for ax in axes[r][len(picks):]:
            ax.axis("off")  # a short episode has fewer frames than columns
        for c, i in enumerate(picks):
            ax = axes[r][c]
            ax.imshow(frames[i])
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(f"robot {node_id}\n{scenario.robots[node_id].arm}", fontsize=8)
            ax.set_title(f"step {steps[i]}", fontsize=7)
        axes[r][len(picks) - 1].set_xlabel("reached" if success else "not reached", fontsize=7,
                                           color="green" if success else "red")
    fig.suptitle("Trained robots acting in their own cells (green ball: goal)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_gif(episodes: dict[int, tuple], path: Path, fps: int = 12) -> Path:
    """An animated GIF of every robot side by side (an ended episode holds its last frame)."""
    from PIL import Image

    ordered = [episode[0] for _, episode in sorted(episodes.items())]
    length = max(len(f) for f in ordered)
    tiles = []
    for t in range(length):
        row = np.concatenate([f[min(t, len(f) - 1)][..., :3] for f in ordered], axis=1)
        tiles.append(Image.fromarray(row.astype(np.uint8)))
    tiles[0].save(path, save_all=True, append_images=tiles[1:], duration=int(1000 / fps), loop=0, optimize=True)
    return path
