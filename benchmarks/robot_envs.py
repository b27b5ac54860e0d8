"""Environment steps per second: our PyBullet arm cells against panda-gym, same run.

panda-gym (Gallouedec et al., the PyBullet Panda tasks our reach/push follow) is not a
dependency of the suite. Install it in a separate virtual environment that sees the
suite's packages (panda-gym's own dependencies - gymnasium, pybullet, numpy, scipy - are
there already, so ``--no-deps`` keeps pip from touching them):

    python3 -m venv --system-site-packages .bench-venv-panda
    .bench-venv-panda/bin/pip install --no-deps panda-gym
    # if the suite's venv is not the system Python: make it visible to the bench venv
    echo "$PWD/.venv/lib/python3.11/site-packages" > .bench-venv-panda/lib/python3.11/site-packages/_suite.pth

Every figure is measured in a fresh worker process (ours with this interpreter, panda-gym
with the bench venv's unless ``panda_gym`` imports here), one env at a time, interleaved
ours/theirs in each repeat so both see the same machine load: ``gymnasium.make(id)``
(TimeLimit 50, terminate on success on both sides), ``reset(seed=0)``, 50 warm-up steps,
then the same pre-drawn uniform random actions, resetting when an episode ends. Same
control period on both sides: 0.04 s (panda-gym 20 x 0.002 s, ours 4 x 0.01 s).

A second, smaller measurement compares two ways to hold several cells: one PyBullet client
per cell (what the envs do) against one shared world holding all the arms and stepped once
for all of them (what a vectorised env could do), in arm-steps per second.

    python benchmarks/robot_envs.py                       # table + benchmarks/results/robot_envs.json
    python benchmarks/robot_envs.py --steps 500 --repeats 1 --no-world   # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_PANDA_PYTHON = ROOT / ".bench-venv-panda" / "bin" / "python"
# (task, our id, panda-gym id)
PAIRS = [("reach", "mfd/PandaReach-v0", "PandaReach-v3"), ("push", "mfd/PandaPush-v0", "PandaPush-v3")]
OTHER_ARMS = [("reach", "mfd/KukaReach-v0"), ("push", "mfd/KukaPush-v0"),
              ("reach", "mfd/XArm6Reach-v0"), ("push", "mfd/XArm6Push-v0")]
INSTALL_HINT = (
    "panda-gym not found; to compare, install it outside the suite's environment:\n"
    "  python3 -m venv --system-site-packages .bench-venv-panda\n"
    "  .bench-venv-panda/bin/pip install --no-deps panda-gym\n"
    "(if the suite itself lives in a venv, make its site-packages visible there: see --help)\n"
    "then rerun (or pass --panda-gym-python PATH). Measuring ours only."
)


# ----------------------------------------------------------------- worker side
def _silenced():
    sys.path.insert(0, str(ROOT))
    from envs.robots.quiet import silenced_output

    return silenced_output()


def _env_steps_per_s(env_id: str, steps: int) -> float:
    import gymnasium as gym
    import numpy as np

    with _silenced():  # panda-gym's connect prints its GUI options from C
        if env_id.startswith("mfd/"):
            import envs.robots  # noqa: F401
        else:
            import panda_gym  # noqa: F401
        env = gym.make(env_id)
    actions = np.random.default_rng(0).uniform(-1, 1, size=(steps, 3)).astype(np.float32)
    env.reset(seed=0)
    for a in actions[:50]:  # warm-up: the passive checker's first step, caches
        env.step(a)
    env.reset(seed=0)
    t0 = time.perf_counter()
    for a in actions:
        _, _, terminated, truncated, _ = env.step(a)
        if terminated or truncated:
            env.reset()
    elapsed = time.perf_counter() - t0
    env.close()
    return steps / elapsed


def _world_arm_steps_per_s(layout: str, cells: int, steps: int) -> float:
    """Arm-steps/s for ``cells`` Panda arms: one client each, or one shared world."""
    import numpy as np

    with _silenced():
        import pybullet_data

        from envs.robots.cell import N_SUBSTEPS, POSITION_GAIN, TIMESTEP
        from envs.robots.quiet import BulletClient, pybullet

        n_clients = cells if layout == "separate" else 1
        clients = [BulletClient(pybullet.DIRECT) for _ in range(n_clients)]
        arms = []
        for i in range(cells):
            c = clients[i if layout == "separate" else 0]
            c.setTimeStep(TIMESTEP)
            c.setGravity(0, 0, -9.81)
            offset = 0.0 if layout == "separate" else 2.0 * i  # cells 2 m apart: no contacts
            robot = c.loadURDF(os.path.join(pybullet_data.getDataPath(), "franka_panda/panda.urdf"),
                               basePosition=[offset - 0.5, 0, 0], useFixedBase=True)
            for j, v in enumerate((0.0, 0.41, 0.0, -1.85, 0.0, 2.26, 0.79)):
                c.resetJointState(robot, j, v)
            arms.append((c, robot, offset))
    joints = [0, 1, 2, 3, 4, 5, 6, 9, 10]
    rng = np.random.default_rng(0)
    moves = rng.uniform(-0.05, 0.05, size=(steps, cells, 3))
    t0 = time.perf_counter()
    for k in range(steps):
        for i, (c, robot, offset) in enumerate(arms):
            pos = np.array(c.getLinkState(robot, 11)[4])
            target = np.clip(pos + moves[k, i], [offset - 0.25, -0.25, 0.0], [offset + 0.25, 0.25, 0.3])
            q = c.calculateInverseKinematics(robot, 11, target.tolist(), [1, 0, 0, 0])
            c.setJointMotorControlArray(robot, joints, pybullet.POSITION_CONTROL, targetPositions=q,
                                        positionGains=[POSITION_GAIN] * len(joints))
        for c in clients:
            for _ in range(N_SUBSTEPS):
                c.stepSimulation()
    elapsed = time.perf_counter() - t0
    return steps * cells / elapsed


def _worker(argv: list[str]) -> int:
    kind, *rest = argv
    if kind == "env":
        value = _env_steps_per_s(rest[0], int(rest[1]))
    else:
        value = _world_arm_steps_per_s(rest[0], int(rest[1]), int(rest[2]))
    print(json.dumps({"steps_per_s": value}))
    return 0


# ----------------------------------------------------------------- driver side


def _run_worker(python: Path | str, *args: str) -> float:
    cmd = [str(python), str(Path(__file__).resolve()), "--worker", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=str(ROOT))
    if res.returncode != 0:
        raise RuntimeError(f"worker {' '.join(args)} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])["steps_per_s"]


def _panda_gym_python(given: Path | None) -> Path | str | None:
    try:
        import panda_gym  # noqa: F401

        return sys.executable
    except ImportError:
        pass
    python = given or DEFAULT_PANDA_PYTHON
    if Path(python).exists():
        res = subprocess.run([str(python), "-c", "import panda_gym"], capture_output=True)
        if res.returncode == 0:
            return python
    return None


def _panda_gym_version(python: Path | str) -> str:
    code = "import importlib.metadata as m; print(m.version('panda-gym'))"
    res = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return res.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return _worker(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--steps", type=int, default=2000, help="env steps per measurement (default 2000)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="measurements per env; the median is reported (default 3)")
    parser.add_argument("--panda-gym-python", type=Path, default=None,
                        help=f"interpreter with panda-gym installed (default {DEFAULT_PANDA_PYTHON.relative_to(ROOT)})")
    parser.add_argument("--no-other-arms", action="store_true", help="skip our KUKA and xArm6 envs")
    parser.add_argument("--no-world", action="store_true", help="skip the shared-world vs client-per-cell comparison")
    parser.add_argument("--cells", type=int, default=4, help="cells in the world comparison (default 4)")
    parser.add_argument("--json", type=Path, default=RESULTS / "robot_envs.json", help="where to write the results")
    args = parser.parse_args(argv)

    panda_python = _panda_gym_python(args.panda_gym_python)
    if panda_python is None:
        print(INSTALL_HINT)
    samples: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for _task, ours, theirs in PAIRS:
            samples.setdefault(ours, []).append(_run_worker(sys.executable, "env", ours, str(args.steps)))
            if panda_python is not None:
                samples.setdefault(theirs, []).append(
                    _run_worker(panda_python, "env", theirs, str(args.steps)))
        if not args.no_other_arms:
            for _task, ours in OTHER_ARMS:
                samples.setdefault(ours, []).append(_run_worker(sys.executable, "env", ours, str(args.steps)))
    median = {k: statistics.median(v) for k, v in samples.items()}

    rows = []
    print(f"\nenv steps/s, random actions, {args.steps} steps, median of {args.repeats} "
          f"(control period 0.04 s on both sides); paired = median of per-repeat ratios\n")
    print(f"{'task':6} {'ours':20} {'steps/s':>9} {'panda-gym':15} {'steps/s':>9} {'ratio':>6} {'paired':>7}")
    baseline = {task: theirs for task, _, theirs in PAIRS}
    for task, ours in [(t, o) for t, o, _ in PAIRS] + ([] if args.no_other_arms else OTHER_ARMS):
        theirs = baseline[task]
        row = {"task": task, "ours_id": ours, "ours_steps_per_s": median[ours], "ours_all": samples[ours]}
        line = f"{task:6} {ours:20} {median[ours]:9.0f}"
        if theirs in median:
            ratio = median[ours] / median[theirs]
            # each repeat measured ours and theirs back to back: their ratio sees one load
            paired = statistics.median(o / t for o, t in zip(samples[ours], samples[theirs]))
            row.update(panda_gym_id=theirs, panda_gym_steps_per_s=median[theirs],
                       panda_gym_all=samples[theirs], ratio=ratio, ratio_paired_median=paired)
            line += f" {theirs:15} {median[theirs]:9.0f} {ratio:6.2f} {paired:7.2f}"
        rows.append(row)
        print(line)

    world = None
    if not args.no_world:
        world_steps = max(args.steps // 4, 100)
        world_samples: dict[str, list[float]] = {"separate": [], "shared": []}
        for _ in range(args.repeats):
            for layout in ("separate", "shared"):
                world_samples[layout].append(
                    _run_worker(sys.executable, "world", layout, str(args.cells), str(world_steps)))
        world = {layout: {"arm_steps_per_s": statistics.median(v), "all": v}
                 for layout, v in world_samples.items()}
        world.update(cells=args.cells, steps=world_steps,
                     ratio_shared_over_separate=world["shared"]["arm_steps_per_s"]
                     / world["separate"]["arm_steps_per_s"])
        print(f"\n{args.cells} Panda cells, IK + {world_steps} control steps, arm-steps/s (median of {args.repeats}):")
        print(f"  one client per cell  {world['separate']['arm_steps_per_s']:8.0f}")
        print(f"  one shared world     {world['shared']['arm_steps_per_s']:8.0f}"
              f"   ratio {world['ratio_shared_over_separate']:.2f}")

    # the shared writer: command, commit and the load at start and end
    sys.path.insert(0, str(ROOT))
    from benchmarks._common import write_results

    path = write_results(
        "robot_envs",
        {"envs": rows, "world": world},
        steps=args.steps,
        repeats=args.repeats,
        panda_gym_version=_panda_gym_version(panda_python) if panda_python else None,
        note=("ratio = median of our env's steps/s over median of panda-gym's, same task, runs "
              "interleaved in one invocation; ratio_paired_median = median over repeats of "
              "ours/theirs measured back to back (least sensitive to the machine's changing "
              "load). Timings on a shared machine are noisy: quote ratios, not steps/s."),
        path=args.json,
    )
    print(f"\nwritten {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
