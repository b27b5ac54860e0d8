"""Environment steps per second: our base-station env against mobile-env, same run.

mobile-env (Schneider et al., the open multi-cell environment closest to ours) is not a
dependency of the suite. Install it in a separate virtual environment:

    python3 -m venv --system-site-packages .bench-venv-mobile
    .bench-venv-mobile/bin/pip install mobile-env

This script then measures it in a subprocess with that interpreter (or in-process, if
`mobile_env` imports here), interleaved with our measurements so both see the same
machine load. Both sides step a central controller with the same number of uniformly
random actions (sampled before timing), resetting when an episode ends (100 steps on
both), on the same station/user counts:

    7 stations, 15 users:  mobile-env ``mobile-medium-central-v0``
    13 stations, 30 users: mobile-env ``mobile-large-central-v0``

Ours models what mobile-env leaves out (38.901 path loss with shadowing, inter-cell
interference, power levels, handover offsets, sleep, EARTH energy); for 13 stations we
use 7 macro cells plus 6 small cells, since hexagonal macro layouts come in 7/19/37.

    python benchmarks/basestation_env.py            # table + benchmarks/results/basestation_env.json
    python benchmarks/basestation_env.py --steps 200 --repeats 1   # quick look
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "basestation_env.json"
DEFAULT_MOBILE_PYTHON = ROOT / ".bench-venv-mobile" / "bin" / "python"

# (stations, users) -> mobile-env scenario of that size
SIZES = {(7, 15): "mobile-medium-central-v0", (13, 30): "mobile-large-central-v0"}
INSTALL_HINT = (
    "mobile-env not found; to compare, install it outside the suite's environment:\n"
    "  python3 -m venv --system-site-packages .bench-venv-mobile\n"
    "  .bench-venv-mobile/bin/pip install mobile-env\n"
    "then rerun (or pass --mobile-env-python PATH)."
)


def _time_steps(env, actions) -> float:
    """Steps per second of `env.step` over `actions`, resets included."""
    env.reset(seed=0)
    t0 = time.perf_counter()
    for a in actions:
        _, _, term, trunc, _ = env.step(a)
        if term or trunc:
            env.reset()
    return len(actions) / (time.perf_counter() - t0)


def measure_ours(stations: int, users: int, steps: int) -> dict[str, float]:
    sys.path.insert(0, str(ROOT))
    import numpy as np

    from envs.basestation import BaseStationConfig, BaseStationParallelEnv, CentralControllerEnv

    cfg = BaseStationConfig(
        n_macro_cells=7, n_small_cells=stations - 7, initial_users=users, max_users=users,
        arrival_rate_per_step=0.0, mean_session_steps=math.inf, episode_steps=100,
    )
    central = CentralControllerEnv(cfg)
    central.action_space.seed(0)
    actions = [central.action_space.sample() for _ in range(steps)]
    central_sps = _time_steps(central, actions)

    par = BaseStationParallelEnv(cfg)
    rng = np.random.default_rng(0)
    nvec = par.action_space("bs_0").nvec
    pacts = [{a: rng.integers(0, nvec) for a in par.possible_agents} for _ in range(steps)]
    par.reset(seed=0)
    t0 = time.perf_counter()
    for a in pacts:
        par.step(a)
        if not par.agents:
            par.reset()
    parallel_sps = steps / (time.perf_counter() - t0)
    return {"central": central_sps, "parallel": parallel_sps}


def measure_mobile_env_here(sizes: list[tuple[int, int]], steps: int) -> dict[str, float]:
    import gymnasium
    import mobile_env  # noqa: F401  (registers the mobile-* ids)

    out = {}
    for stations, users in sizes:
        env = gymnasium.make(SIZES[(stations, users)]).unwrapped
        assert (env.NUM_STATIONS, env.NUM_USERS) == (stations, users), SIZES[(stations, users)]
        env.action_space.seed(0)
        actions = [env.action_space.sample() for _ in range(steps)]
        out[f"{stations}x{users}"] = _time_steps(env, actions)
        env.close()
    return out


def _mobile_env_importable() -> bool:
    try:
        import mobile_env  # noqa: F401
    except ImportError:
        return False
    return True


def measure_mobile_env(sizes, steps, python: Path | None) -> dict[str, float] | None:
    if _mobile_env_importable():
        return measure_mobile_env_here(sizes, steps)
    if python is None or not Path(python).exists():
        return None
    cmd = [str(python), str(Path(__file__).resolve()), "--worker-mobile-env",
           "--steps", str(steps), "--sizes", ",".join(f"{s}x{u}" for s, u in sizes)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=str(ROOT))
    if res.returncode != 0:
        raise RuntimeError(f"mobile-env worker failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def mobile_env_version(python: Path | None) -> str | None:
    code = "import importlib.metadata as m; print(m.version('mobile-env'))"
    if _mobile_env_importable():
        import importlib.metadata as m
        return m.version("mobile-env")
    if python is None or not Path(python).exists():
        return None
    res = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return res.stdout.strip() or None


def _parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for part in text.split(","):
        s, u = (int(x) for x in part.lower().split("x"))
        if (s, u) not in SIZES:
            raise argparse.ArgumentTypeError(
                f"size {part}: mobile-env has scenarios for {', '.join(f'{a}x{b}' for a, b in SIZES)}")
        sizes.append((s, u))
    return sizes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Steps/s of the base-station env (central and parallel APIs) against "
                    "mobile-env at the same station/user counts, measured in one run.")
    p.add_argument("--steps", type=int, default=500,
                   help="random-action steps per measurement, the same for both (default 500)")
    p.add_argument("--repeats", type=int, default=3,
                   help="measurements per env; the median is reported (default 3)")
    p.add_argument("--sizes", type=_parse_sizes, default=list(SIZES),
                   help="comma-separated STATIONSxUSERS among 7x15,13x30 (default both)")
    p.add_argument("--mobile-env-python", type=Path,
                   default=DEFAULT_MOBILE_PYTHON if DEFAULT_MOBILE_PYTHON.exists() else None,
                   help="interpreter that has mobile-env (default: .bench-venv-mobile if present)")
    p.add_argument("--no-mobile-env", action="store_true", help="measure ours only")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON,
                   help=f"where to write results (default {DEFAULT_JSON.relative_to(ROOT)})")
    p.add_argument("--worker-mobile-env", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker_mobile_env:  # inside the mobile-env interpreter: measure, print JSON
        print(json.dumps(measure_mobile_env_here(args.sizes, args.steps)))
        return 0

    python = None if args.no_mobile_env else args.mobile_env_python
    ours: dict[str, list[dict[str, float]]] = {f"{s}x{u}": [] for s, u in args.sizes}
    theirs: dict[str, list[float]] = {f"{s}x{u}": [] for s, u in args.sizes}
    have_mobile = not args.no_mobile_env
    for _ in range(args.repeats):  # interleaved, so both see the same machine load
        for s, u in args.sizes:
            ours[f"{s}x{u}"].append(measure_ours(s, u, args.steps))
        if have_mobile:
            got = measure_mobile_env(args.sizes, args.steps, python)
            if got is None:
                have_mobile = False
                print(INSTALL_HINT)
            else:
                for k, v in got.items():
                    theirs[k].append(v)

    rows = []
    for s, u in args.sizes:
        key = f"{s}x{u}"
        central = statistics.median(m["central"] for m in ours[key])
        parallel = statistics.median(m["parallel"] for m in ours[key])
        mob = statistics.median(theirs[key]) if theirs[key] else None
        rows.append({
            "stations": s, "users": u, "mobile_env_id": SIZES[(s, u)],
            "ours_central_steps_per_s": central, "ours_parallel_steps_per_s": parallel,
            "mobile_env_steps_per_s": mob,
            "ratio_central": central / mob if mob else None,
            "ratio_parallel": parallel / mob if mob else None,
            "ours_central_all": [m["central"] for m in ours[key]],
            "mobile_env_all": theirs[key],
        })

    head = f"{'size':>8} {'ours central':>13} {'ours parallel':>14} {'mobile-env':>11} {'ratio':>7}"
    print(f"steps per measurement: {args.steps}, median of {args.repeats}")
    print(head)
    for r in rows:
        mob = f"{r['mobile_env_steps_per_s']:11.0f}" if r["mobile_env_steps_per_s"] else f"{'-':>11}"
        ratio = f"{r['ratio_central']:6.1f}x" if r["ratio_central"] else f"{'-':>7}"
        print(f"{r['stations']:>3}x{r['users']:<4} {r['ours_central_steps_per_s']:13.0f} "
              f"{r['ours_parallel_steps_per_s']:14.0f} {mob} {ratio}")

    # the shared writer: command, commit and the load at start and end (other jobs share
    # the cores: the ratio, measured interleaved, is the figure to quote, not the steps/s)
    sys.path.insert(0, str(ROOT))
    from benchmarks._common import write_results

    figures = {f"ratio_central_{r['stations']}x{r['users']}": r["ratio_central"] for r in rows}
    write_results("basestation_env", figures, path=args.json, steps=args.steps, repeats=args.repeats,
                  mobile_env_version=mobile_env_version(python) if have_mobile else None,
                  note="ratio = our central env's steps/s over mobile-env's central env, same "
                       "station/user counts, measured interleaved in the same run",
                  rows=rows)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
