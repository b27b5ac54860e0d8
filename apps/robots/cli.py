"""`mfd robots demo | compare | play`: the Net4LM robot fleet from the command line.

- ``demo``: the fleet of the scenario (default ``robots``: 2 Panda + 1 KUKA + 1 xArm6,
  a fifth robot joining halfway) learns reach under MFD with a live display, then
  writes a report folder (curves, bytes, the robots acting, a summary table).
- ``compare``: the same fleet and seeds under isolated / FedAvg / gossip / MFD, one report.
- ``play``: replay saved policies (SB3 zips) of a results folder in their cells.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

POLICIES = "isolated,fedavg,gossip,mfd"
# --full: twice the robot time (the curves run on well past the target) and 3 seeds
FULL_DURATION_FACTOR = 2.0


def _display_available() -> bool:
    return not sys.platform.startswith("linux") or bool(os.environ.get("DISPLAY"))


def _scenario(args: argparse.Namespace):
    from .config import RobotsScenarioError, load

    try:
        scenario = load(getattr(args, "scenario", None) or "robots")
    except RobotsScenarioError as err:
        raise SystemExit(f"mfd robots: invalid scenario: {err}") from None
    changes = {}
    if getattr(args, "duration", None):
        changes["duration"] = float(args.duration)
    elif getattr(args, "full", False):
        changes["duration"] = scenario.duration * FULL_DURATION_FACTOR
    if getattr(args, "task", None):
        changes["task"] = args.task
    if changes:
        try:
            scenario = scenario.replace(**changes)
        except RobotsScenarioError as err:
            raise SystemExit(f"mfd robots: {err}") from None
    return scenario


def _seeds(args: argparse.Namespace, scenario, default_count: int) -> list[int]:
    if getattr(args, "seeds", None):
        return list(args.seeds)
    if getattr(args, "seed", None) is not None and not getattr(args, "full", False):
        return [int(args.seed)]
    count = 3 if getattr(args, "full", False) else default_count
    seeds = list(scenario.seeds)
    return (seeds + [max(seeds) + 1 + i for i in range(count)])[:count]


def _media(fleet, out: Path, gui: bool) -> list[Path]:
    """The strip and GIF of the trained robots acting (rendered headless)."""
    from .run import fleet_frames, write_gif, write_strip

    actors = {n: fleet.learners[n].act for n in fleet.learners}
    episodes = fleet_frames(actors, fleet.scenario)
    media = [write_strip(episodes, fleet.scenario, out / "robots_acting.png"),
             write_gif(episodes, out / "robots_acting.gif")]
    if gui:
        _gui_replay(actors, fleet.scenario)
    return media


def _gui_replay(actors, scenario, episodes: int = 1) -> None:
    if not _display_available():
        print("mfd robots: --gui needs a display (DISPLAY is not set); skipped", file=sys.stderr)
        return
    from .fleet import make_env

    for node_id, act in actors.items():
        env = make_env(scenario.task, scenario.robots[node_id].cell(), render_mode="human")
        try:
            for e in range(episodes):
                obs, _ = env.reset(seed=100 + e)
                done = False
                while not done:
                    obs, _, term, trunc, _ = env.step(act(obs))
                    done = term or trunc
                    time.sleep(1 / 25)
        finally:
            env.close()


def _print_summary(page: Path) -> None:
    import json

    rows = json.loads((page.parent / "summary.json").read_text())["policies"]
    print(f"{'policy':<10}{'seeds':>6}{'steps to target':>17}{'joiner':>9}{'final':>8}{'MB':>8}")
    for r in rows:
        f = r["mean steps to target (founders)"]
        j = r["steps to target (joiner)"]
        print(f"{r['policy']:<10}{r['seeds']:>6}{'-' if f is None else f'{f:.0f}':>17}"
              f"{'-' if j is None else f'{j:.0f}':>9}{r['final mean success']:>8.2f}{r['MB sent']:>8.2f}")


def cmd_demo(args: argparse.Namespace) -> int:
    from .report import write_report
    from .run import run_policies

    scenario = _scenario(args)
    seeds = _seeds(args, scenario, 1)
    out = Path(getattr(args, "out", None) or f"runs/robots-demo-{time.strftime('%Y%m%d-%H%M%S')}")
    policy = getattr(args, "policy", None) or scenario.policy.name
    print(f"{len(scenario.robots)} robots ({', '.join(r.arm for r in scenario.robots)}) learn {scenario.task} "
          f"under {policy}, {scenario.duration:.0f} s of robot time, seed(s) {seeds}", file=sys.stderr)
    runs = run_policies(scenario, [policy], out, seeds=seeds, quiet=getattr(args, "quiet", False), keep_fleet=True)
    fleet = runs[-1][2]
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    try:
        media = _media(fleet, report, getattr(args, "gui", False))
    finally:
        fleet.close()
    page = write_report(out, report, media=media)
    _print_summary(page)
    print(f"report: {page}\npolicies: {out}/{policy}/seed{seeds[-1]}/policies  (replay: mfd robots play {out})")
    return 0


def demo_main(args: argparse.Namespace) -> int:
    """`mfd demo` (the core's command) lands here with only ``--seed``."""
    return cmd_demo(args)


def cmd_compare(args: argparse.Namespace) -> int:
    from .report import write_report
    from .run import run_policies

    scenario = _scenario(args)
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if not policies:
        raise SystemExit("mfd robots compare: --policies names no policy")
    from mfd_core import policy_by_name

    for name in policies:
        try:
            policy_by_name(name)
        except ValueError as err:
            raise SystemExit(f"mfd robots compare: {err}") from None
    seeds = _seeds(args, scenario, 1)
    out = Path(args.out or f"runs/robots-compare-{time.strftime('%Y%m%d-%H%M%S')}")
    runs = run_policies(scenario, policies, out, seeds=seeds, quiet=args.quiet, keep_fleet=True)
    fleet = runs[-1][2]
    report = out / "report"
    report.mkdir(parents=True, exist_ok=True)
    try:
        media = _media(fleet, report, False) if not args.no_frames else []
    finally:
        fleet.close()
    page = write_report(out, report, media=media, title=f"Net4LM robots: {', '.join(policies)}")
    _print_summary(page)
    print(f"report: {page}")
    return 0


def cmd_play(args: argparse.Namespace) -> int:
    """Replay saved policies: success on fresh episodes, frames, optionally the GUI."""
    from stable_baselines3 import SAC, TD3

    from .fleet import make_env
    from .run import fleet_frames, load_scenario, write_gif, write_strip

    folder = Path(args.results)
    try:
        scenario = load_scenario(folder)
    except FileNotFoundError as err:
        raise SystemExit(f"mfd robots play: {err}") from None
    policy_dirs = sorted(folder.glob(f"{args.policy or '*'}/seed{'*' if args.seed is None else args.seed}/policies"))
    if not policy_dirs:
        raise SystemExit(f"mfd robots play: no saved policies under {folder} "
                         f"(expected <policy>/seed<k>/policies/robot<k>_<arm>.zip)")
    pdir = policy_dirs[-1]
    algo = {"td3": TD3, "sac": SAC}[scenario.learner.algo]
    zips = sorted(pdir.glob("robot*.zip"), key=lambda p: int(p.stem.split("_")[0][5:]))
    if args.robot is not None:
        zips = [z for z in zips if int(z.stem.split("_")[0][5:]) == args.robot]
        if not zips:
            raise SystemExit(f"mfd robots play: no robot {args.robot} in {pdir}")
    actors = {}
    print(f"replaying {pdir}")
    for path in zips:
        node_id = int(path.stem.split("_")[0][5:])
        cell = scenario.robots[node_id].cell()
        env = make_env(scenario.task, cell)
        model = algo.load(path, env=env, device="cpu")  # our own file on disk (HER loads with an env)

        def act(obs, model=model):
            return model.predict(obs, deterministic=True)[0]

        successes = 0
        for e in range(args.episodes):
            obs, info = env.reset(seed=3_000_000 + e)
            done = False
            while not done:
                obs, _, term, trunc, info = env.step(act(obs))
                done = term or trunc
            successes += bool(info.get("is_success", False))
        env.close()
        actors[node_id] = act
        print(f"robot {node_id} ({cell.arm}): {successes}/{args.episodes} episodes reached the goal")
    if args.frames:
        out = Path(args.frames)
        out.mkdir(parents=True, exist_ok=True)
        episodes = fleet_frames(actors, scenario)
        print(f"frames: {write_strip(episodes, scenario, out / 'play.png')}, {write_gif(episodes, out / 'play.gif')}")
    if args.gui:
        _gui_replay(actors, scenario, episodes=args.episodes)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    robots = sub.add_parser("robots", help="Net4LM: a robot fleet that learns faster by sharing policies",
                            description="Robot arms in PyBullet, each learning from its own experience, "
                                        "sharing policies as MFD model packets over a lossy radio network.")
    rsub = robots.add_subparsers(dest="robots_command", metavar="SUBCOMMAND")
    robots.set_defaults(func=lambda _args: (robots.print_help(), 2)[1])

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--scenario", default="robots", help="robots scenario file or shipped name (default robots)")
        p.add_argument("--duration", type=float, help="simulated seconds of robot time (25 env steps each)")
        p.add_argument("--task", choices=["reach", "push"], help="override the scenario's task")
        p.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the scenario's first; --full: 3)")
        p.add_argument("--full", action="store_true", help="the long run: twice the duration, 3 seeds")
        p.add_argument("--out", help="results folder (default runs/robots-...-TIME)")
        p.add_argument("--quiet", action="store_true", help="no live display")

    p = rsub.add_parser("demo", help="the fleet learns under MFD; live display; report folder",
                        description="A fleet learns reach under MFD (a robot joins halfway and bootstraps "
                                    "from its neighbours); writes curves, bytes, the robots acting and an "
                                    "HTML summary. The default run takes a few minutes on 2 cores.")
    common(p)
    p.add_argument("--policy", help="sharing policy (default: the scenario's, mfd)")
    p.add_argument("--seed", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--gui", action="store_true", help="replay the trained robots in PyBullet's window (needs a display)")
    p.set_defaults(func=cmd_demo)

    p = rsub.add_parser("compare", help="the same fleet and seeds under isolated / fedavg / gossip / mfd",
                        description="One report with every policy's curves on the same fleet and seeds.")
    common(p)
    p.add_argument("--policies", default=POLICIES, help=f"comma-separated (default {POLICIES})")
    p.add_argument("--no-frames", action="store_true", help="skip rendering the robots acting")
    p.set_defaults(func=cmd_compare)

    p = rsub.add_parser("play", help="replay saved policies of a results folder",
                        description="Load the SB3 zips a demo or compare saved and run them in their cells.")
    p.add_argument("results", help="a results folder of `mfd robots demo` or `compare`")
    p.add_argument("--policy", help="which policy's run (default: the last found)")
    p.add_argument("--seed", type=int, help="which seed's run")
    p.add_argument("--robot", type=int, help="only this robot")
    p.add_argument("--episodes", type=int, default=5, help="episodes per robot (default 5)")
    p.add_argument("--frames", help="write a PNG strip and a GIF of one episode per robot into this folder")
    p.add_argument("--gui", action="store_true", help="show PyBullet's window (needs a display)")
    p.set_defaults(func=cmd_play)
