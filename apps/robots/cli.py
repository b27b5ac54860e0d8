"""`mfd robots demo | compare | play`: the Net4LM robot fleet from the command line.

- ``demo``: the fleet of the scenario (default ``robots``: 2 Panda + 1 KUKA + 1 xArm6,
  a fifth robot joining halfway) learns reach under MFD, with isolated learning beside it
  as the reference (in a second process), then writes a run folder and a report (curves,
  bytes, the robots acting, a summary table that states the speed-up).
- ``compare``: the same fleet and seeds under isolated / FedAvg / gossip / MFD, one report.
- ``play``: replay saved policies (SB3 zips) of a run folder in their cells.

Every run command has the habits of :mod:`apps.common`: bad input is one line before any
work, ``--out`` is checked writable first, measurements stream to ``results.csv`` as they
come, and Ctrl-C keeps what was measured (``"interrupted": true``, exit 130);
``--resume RUNDIR`` finishes a stopped demo or compare: the runs not done are run with the
fleet, policies, seeds and duration its folder recorded, then the summary and report.
A run is simulated robot time with fixed env-step budgets, so a seed determines its
figures: on the same machine a resumed folder holds the figures of a run that was never
stopped (results.csv, events and saved policies byte for byte; wall and CPU seconds apart).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from apps.common import (Interrupted, Progress, UsageError, add_run_arguments, flatten_seeds, interruptible,
                         parse_overrides, positive_seconds, prepare_out, remove_if_empty)

POLICIES = "isolated,fedavg,gossip,mfd"
# --full: twice the robot time (the curves run on well past the target) and 3 seeds
FULL_DURATION_FACTOR = 2.0
# Robot time a run may ask for: 100 s take about a minute on 2 cores, so this is a day's run.
MAX_DURATION = 10_000.0
REFERENCE = "isolated"
# Files a robots run writes at the top of its folder; --force on an old run folder starts them afresh.
RUN_FILES = ("run.json", "scenario.json", "results.csv", "events.jsonl", "runs.json", "summary.csv", "summary.json")
# What sets a run (its fleet, policies, seeds, duration, folder): with --resume these come
# from the folder, so they may not be given too ({dest: option}).
RUN_SHAPING = {"scenario": "--scenario", "duration": "--duration", "task": "--task", "full": "--full",
               "seeds": "--seeds", "overrides": "--set", "out": "--out", "force": "--force", "network": "--network",
               "policy": "--policy", "no_reference": "--no-reference", "policies": "--policies",
               "no_frames": "--no-frames"}


def _display_available() -> bool:
    return not sys.platform.startswith("linux") or bool(os.environ.get("DISPLAY"))


# --------------------------------------------------------------------------- checks before any work


def _scenario(args: argparse.Namespace):
    from .config import RobotsScenarioError, load

    try:
        scenario = load(getattr(args, "scenario", None) or "robots")
        changes = parse_overrides(getattr(args, "overrides", None) or [])
        if getattr(args, "duration", None) is not None:
            changes["duration"] = float(args.duration)
        elif getattr(args, "full", False):
            changes["duration"] = scenario.duration * FULL_DURATION_FACTOR
        if getattr(args, "task", None):
            changes["task"] = args.task
        if changes:
            scenario = scenario.replace(**changes)
    except RobotsScenarioError as err:
        raise UsageError(f"invalid robots scenario: {err}") from None
    if scenario.env_id is not None:
        _check_env(scenario)
    if scenario.duration > MAX_DURATION:
        raise UsageError(f"duration: {scenario.duration:g} s of robot time is more than {MAX_DURATION:g} s "
                         "(a day's run on 2 cores)")
    return scenario


def _check_env(scenario) -> bool:
    """The scenario's own env (``env_id``) can be made, with a Box action space; is it goal-conditioned?"""
    import gymnasium as gym

    from .fleet import is_goal_env, make_env

    try:
        env = make_env(scenario.task, scenario.robots[0].cell(), scenario.env_id)
    except Exception as err:  # noqa: BLE001 - gymnasium raises many kinds; one line for all
        raise UsageError(f"env_id {scenario.env_id!r}: cannot make it ({type(err).__name__}: {err})") from None
    try:
        if not isinstance(env.action_space, gym.spaces.Box):
            raise UsageError(f"env_id {scenario.env_id!r}: its actions are {env.action_space}; the fleet's learners "
                             "(TD3, SAC) need continuous (Box) actions")
        goal = is_goal_env(env)
    finally:
        env.close()
    if not goal and scenario.learner.score_metric == "progress":
        raise UsageError(f"env_id {scenario.env_id!r} is not goal-conditioned: set learner.score_metric to "
                         "\"critic\" (or \"success\" if its info says is_success)")
    return goal


def _seeds(args: argparse.Namespace, scenario, default_count: int = 1) -> list[int]:
    seeds = flatten_seeds(getattr(args, "seeds", None))
    if seeds:
        return seeds
    count = 3 if getattr(args, "full", False) else default_count
    known = list(scenario.seeds)
    return (known + [max(known) + 1 + i for i in range(count)])[:count]


def _check_policies(names: list[str]) -> list[str]:
    from mfd_core import policy_class

    if not names:
        raise UsageError("--policies names no policy")
    for name in names:
        try:
            policy_class(name)
        except ValueError as err:
            raise UsageError(f"--policy: {err}") from None
    if len(set(names)) != len(names):
        raise UsageError(f"--policies: a policy is named twice ({', '.join(names)})")
    return names


def _check_network(args: argparse.Namespace) -> None:
    network = getattr(args, "network", "sim") or "sim"
    if network != "sim":
        raise UsageError(
            f"--network {network}: a robot fleet runs on the simulated network only. Each {network} node would "
            "host its own PyBullet cell and SB3 learner (a ~1.6 GB fleet split over node processes, running "
            "in real time on udp) and the drivers build nodes from core scenarios; "
            "the core's scenarios run there: mfd run digits --network " + network)


def _prepare(args: argparse.Namespace, default: str) -> Path:
    out = Path(getattr(args, "out", None) or f"runs/{default}-{time.strftime('%Y%m%d-%H%M%S')}")
    force = getattr(args, "force", False)
    path = prepare_out(out, force=force)
    if force and (path / "run.json").exists():  # an old run's files: start afresh, never mix two runs
        for name in RUN_FILES:
            (path / name).unlink(missing_ok=True)
        report = path / "report"
        if report.is_dir():
            for item in report.iterdir():
                if item.is_file():
                    item.unlink()
    return path


def _measure(args: argparse.Namespace) -> str:
    return getattr(args, "measure", None) or ("apart" if (os.cpu_count() or 1) > 1 else "inline")


# --------------------------------------------------------------------------- running


def _folder(path: Path, scenario, plan, *, command: str, policies, seeds, measure: str, reference: str | None,
            title: str, acting: str | None):
    from mfd_core.runfolder import RunFolder

    processes = 1 + (measure == "apart") + (reference is not None)
    return RunFolder(path, "robots", command=["mfd", *sys.argv[1:]], scenario=scenario.model_dump(),
                     plan=plan, info={
                         "name": scenario.name, "score_name": _score_name(scenario), "env_id": scenario.env_id,
                         # which command to finish it with (mfd demo lands in robots demo too)
                         "robots_command": command, "policies": policies, "seeds": seeds,
                         "reference": reference, "network": "sim", "driver": "sim",
                         "processes": processes, "measure": measure, "title": title, "acting": acting,
                         "where": {"training": "this process (the simulated network and every robot)",
                                   "measurements": "a second process" if measure == "apart" else "this process",
                                   "reference": f"{reference}: a second process" if reference else None}})


def _score_name(scenario) -> str:
    return "episode return" if scenario.env_id is not None and not _check_env(scenario) else "success rate"


def _todo(work: list[tuple[str, int, str | None]], done: set[str]) -> list[tuple[str, int, str | None]]:
    """The part of ``work`` whose runs are not in ``done`` (a resumed folder's finished runs
    are kept, never run again). A demo seed whose MFD run is done but whose reference is
    not runs the reference alone, here: it is the same fleet and seed, so the same figures
    as in the second process."""
    from mfd_core.runfolder import run_id

    todo = []
    for policy, seed, reference in work:
        main = run_id(policy, seed) not in done
        ref = reference if reference is not None and run_id(reference, seed) not in done else None
        if main:
            todo.append((policy, seed, ref))
        elif ref is not None:
            todo.append((ref, seed, None))
    return todo


def _run(args: argparse.Namespace, folder, scenario, work: list[tuple[str, int, str | None]], *,
         acting: str | None, command: str) -> int:
    """Run ``work`` ([(policy, seed, reference or None)]) into ``folder``, less the runs it
    has done already (a resumed folder); the robots of ``acting``'s last seed act for the
    strip and GIF; the report; the summary printed."""
    from .report import write_report, write_summary
    from .run import FleetRunner

    # the robots that act in the report: the acting policy's fleet of the last seed (the
    # last run of the plan)
    actors = (acting, work[-1][1]) if acting is not None and work else None
    todo = _todo(work, set(folder.done))
    runs = sum(1 + (ref is not None) for _, _, ref in todo)
    # the isolated reference beside a run counts its robot seconds too: say so, or "100 s of
    # robot time" in the header reads against "of 200 robot s" in the bar
    unit = "robot s (both fleets)" if runs > len(todo) else "robot s"
    progress = Progress(scenario.duration * max(runs, 1), unit=unit, quiet=getattr(args, "quiet", False))
    runner = FleetRunner(scenario, folder, progress, measure=_measure(args))
    fleet = None
    try:
        with interruptible():
            for policy, seed, reference in todo:
                fleet = runner.run(policy, seed, reference=reference, keep_fleet=(policy, seed) == actors) or fleet
    except Interrupted as why:
        progress.close()
        folder.finish(interrupted=True)
        page = None
        if folder.done or (folder.path / "runs.json").exists():
            try:
                write_summary(folder.path, interrupted=True)
                page = write_report(folder.path)
            except (FileNotFoundError, ValueError):
                page = None
        print(f"mfd: interrupted ({why}); what was measured is in {folder.path}"
              + (f" (report: {page})" if page else "")
              + f" (finish it: mfd robots {command} --resume {folder.path})", file=sys.stderr)
        return 130
    except BaseException:
        progress.close()
        if fleet is not None:
            fleet.close()
        if not folder.done:
            folder.finish(interrupted=True)
        raise
    progress.close()
    report = folder.path / "report"
    report.mkdir(exist_ok=True)
    if fleet is not None:
        try:
            _media(fleet.learners, fleet.scenario, report, acting, getattr(args, "gui", False))
        finally:
            fleet.close()
    elif actors is not None and not (report / "robots_acting.png").exists():
        # resumed after the acting fleet's run was done: its saved policies act instead
        saved = folder.path / actors[0] / f"seed{actors[1]}" / "policies"
        if any(saved.glob("robot*.zip")):
            learners = _saved_learners(saved, scenario)
            try:
                _media(learners, scenario, report, acting, getattr(args, "gui", False))
            finally:
                for learner in learners.values():
                    learner.env.close()
    folder.finish()
    summary = write_summary(folder.path, interrupted=False)
    page = write_report(folder.path)
    _print_summary(summary)
    print(f"report: {page}")
    return 0


def _media(learners, scenario, report: Path, policy: str, gui: bool) -> list[Path]:
    """The strip and GIF of the trained robots acting (rendered headless), saying whose policies act.

    :param learners: {robot: anything with ``act(obs) -> action``}.
    """
    from .run import fleet_frames, write_gif, write_strip

    actors = {n: learners[n].act for n in learners}
    try:
        episodes = fleet_frames(actors, scenario)
    except Exception as err:  # noqa: BLE001 - a user's own env may not render; the run stands without pictures
        if scenario.env_id is None:
            raise
        print(f"mfd robots: no pictures of the robots acting: {scenario.env_id} does not render "
              f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})", file=sys.stderr)
        return []
    media = [write_strip(episodes, scenario, report / "robots_acting.png", policy=policy),
             write_gif(episodes, report / "robots_acting.gif", policy=policy)]
    if gui:
        _gui_replay(actors, scenario)
    return media


def _robot_number(path: Path) -> int:
    return int(path.stem.split("_")[0][5:])  # robot<k>_<arm>.zip


class _SavedPolicy:
    """A policy a run saved (an SB3 zip), acting deterministically like the learner did."""

    def __init__(self, path: Path, scenario) -> None:
        from stable_baselines3 import SAC, TD3

        from .fleet import make_env

        algo = {"td3": TD3, "sac": SAC}[scenario.learner.algo]
        self.env = make_env(scenario.task, scenario.robots[_robot_number(path)].cell(), scenario.env_id)
        self.model = algo.load(path, env=self.env, device="cpu")  # our own file on disk (HER loads with an env)

    def act(self, obs):
        return self.model.predict(obs, deterministic=True)[0]


def _saved_learners(policies: Path, scenario) -> dict[int, _SavedPolicy]:
    """{robot: its saved policy} of a ``<policy>/seed<k>/policies`` folder."""
    return {_robot_number(z): _SavedPolicy(z, scenario) for z in sorted(policies.glob("robot*.zip"), key=_robot_number)}


def _gui_replay(actors, scenario, episodes: int = 1) -> None:
    if not _display_available():
        print("mfd robots: --gui needs a display (DISPLAY is not set); skipped", file=sys.stderr)
        return
    from .fleet import make_env

    for node_id, act in actors.items():
        env = make_env(scenario.task, scenario.robots[node_id].cell(), scenario.env_id, render_mode="human")
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


def _print_summary(summary: dict) -> None:
    from .report import policy_rows

    rows = policy_rows(summary)
    if not rows:
        return
    keys = [k for k in rows[0] if k not in ("Robots that missed it",)]
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(r[k].ljust(widths[k]) for k in keys))


# --------------------------------------------------------------------------- commands


def _reopen(args: argparse.Namespace, command: str):
    """A stopped ``mfd robots COMMAND`` run's folder, scenario, policies, seeds and run.json,
    all checked before anything in the folder changes (reopening it drops rows)."""
    from mfd_core.runfolder import read_meta

    from .config import RobotsScenarioError
    from .run import load_scenario

    given = [flag for dest, flag in RUN_SHAPING.items() if getattr(args, dest, None) not in (None, False, [])]
    if given:
        raise UsageError(f"--resume RUNDIR takes the fleet, policies, seeds, duration and folder from RUNDIR: "
                         f"give nothing else (got {given[0]})")
    path = Path(args.resume)
    if not path.is_dir():
        raise UsageError(f"--resume {path}: no such folder")
    try:
        meta = read_meta(path)
    except (FileNotFoundError, json.JSONDecodeError) as err:
        raise UsageError(f"--resume: {err}") from None
    if meta.get("kind") != "robots":
        raise UsageError(f"--resume {path}: a {meta.get('kind')} run folder, not a robots one; resume it with "
                         "the command that wrote it")
    made_by = meta.get("robots_command") or _command_of(meta.get("command") or [])
    if made_by != command:
        raise UsageError(f"--resume {path}: " + (f"a `mfd robots {made_by}` run; finish it with mfd robots {made_by} "
                                                 f"--resume {path}" if made_by else "run.json does not say which "
                                                 "robots command wrote it"))
    try:
        scenario = load_scenario(path)
        policies, seeds = list(meta["policies"]), [int(s) for s in meta["seeds"]]
    except (FileNotFoundError, json.JSONDecodeError, RobotsScenarioError, KeyError, TypeError, ValueError) as err:
        raise UsageError(f"--resume {path}: cannot rebuild the run from its folder ({err})") from None
    if scenario.env_id is not None:
        _check_env(scenario)  # the user's env may not be importable here
    return path, scenario, policies, seeds, meta


def _command_of(argv: list[str]) -> str | None:
    """demo or compare, from a run.json's command line (folders written before run.json said
    robots_command): ``mfd robots demo ...``, ``mfd demo ...``, ``mfd robots compare ...``."""
    words = argv[1:3]
    return "compare" if "compare" in words else "demo" if "demo" in words else None


def _resume(args: argparse.Namespace, command: str, work_of) -> int:
    """Finish a stopped run: ``work_of(meta, policies, seeds)`` rebuilds its planned work."""
    from mfd_core.runfolder import RunFolder, run_id

    path, scenario, policies, seeds, meta = _reopen(args, command)
    work = work_of(meta, policies, seeds)
    planned = [run_id(name, seed) for policy, seed, ref in work for name in (policy, ref) if name]
    if sorted(planned) != sorted(meta.get("planned", [])):
        raise UsageError(f"--resume {path}: its planned runs ({', '.join(meta.get('planned', []))}) are not what "
                         f"its policies and seeds make; was run.json edited?")
    args.measure = getattr(args, "measure", None) or meta.get("measure")
    folder = RunFolder.reopen(path)
    left = [r for r in meta["planned"] if r not in folder.done]
    if not getattr(args, "quiet", False):
        print(f"resuming {path}: {len(folder.done)} run(s) done, {len(left)} to go (a stopped run starts again "
              "from its beginning: same seed, same figures)", file=sys.stderr)
    return _run(args, folder, scenario, work, acting=meta.get("acting"), command=command)


def _demo_work(meta: dict, policies: list[str], seeds: list[int]) -> list[tuple[str, int, str | None]]:
    return [(policies[0], s, meta.get("reference")) for s in seeds]


def _compare_work(_meta: dict, policies: list[str], seeds: list[int]) -> list[tuple[str, int, str | None]]:
    return [(p, s, None) for p in policies for s in seeds]


def cmd_demo(args: argparse.Namespace) -> int:
    if getattr(args, "resume", None):
        from mfd_core.runfolder import read_meta

        code = _resume(args, "demo", _demo_work)
        if code == 0:
            meta = read_meta(args.resume)
            _print_policies(args.resume, meta["policies"][0], meta["seeds"][-1])
        return code
    scenario = _scenario(args)
    policy = _check_policies([getattr(args, "policy", None) or scenario.policy.name])[0]
    seeds = _seeds(args, scenario)
    _check_network(args)
    reference = None if getattr(args, "no_reference", False) or policy == REFERENCE else REFERENCE
    out = _prepare(args, "robots-demo")
    try:
        measure = _measure(args)
        work = _demo_work({"reference": reference}, [policy], seeds)
        plan = [(p, s) for s in seeds for p in ([policy] + ([reference] if reference else []))]
        from .run import policy_words

        title = (f"Net4LM robots: {scenario.name} under {policy_words(policy)}"
                 + (f", {policy_words(reference).lower()} beside it" if reference else ""))
        folder = _folder(out, scenario, plan, command="demo", policies=[policy] + ([reference] if reference else []),
                         seeds=seeds, measure=measure, reference=reference, title=title, acting=policy)
    except BaseException:
        remove_if_empty(out)
        raise
    if not getattr(args, "quiet", False):
        print(f"{len(scenario.robots)} robots ({', '.join(r.arm for r in scenario.robots)}) learn {scenario.task} "
              f"under {policy}" + (f", {reference} beside it in a second process" if reference else "")
              + f"; {scenario.duration:g} s of robot time, seed(s) {', '.join(map(str, seeds))}; into {out}",
              file=sys.stderr)
    code = _run(args, folder, scenario, work, acting=policy, command="demo")
    if code == 0:
        _print_policies(out, policy, seeds[-1])
    return code


def _print_policies(out, policy: str, seed: int) -> None:
    """Where a demo's acting policies are, and how to replay them."""
    print(f"policies: {out}/{policy}/seed{seed}/policies  (replay: mfd robots play {out})")


def demo_main(args: argparse.Namespace) -> int:
    """`mfd demo` (the core's command) lands here with the run options only."""
    return cmd_demo(args)


def cmd_compare(args: argparse.Namespace) -> int:
    if args.resume:
        return _resume(args, "compare", _compare_work)
    scenario = _scenario(args)
    policies = _check_policies([p.strip() for p in (args.policies or POLICIES).split(",") if p.strip()])
    seeds = _seeds(args, scenario)
    _check_network(args)
    out = _prepare(args, "robots-compare")
    try:
        acting = None if args.no_frames else policies[-1]
        from .run import policy_words

        title = f"Net4LM robots: {scenario.name}, {', '.join(policy_words(p) for p in policies)}"
        folder = _folder(out, scenario, [(p, s) for p in policies for s in seeds], command="compare",
                         policies=policies, seeds=seeds, measure=_measure(args), reference=None, title=title,
                         acting=acting)
    except BaseException:
        remove_if_empty(out)
        raise
    return _run(args, folder, scenario, _compare_work({}, policies, seeds), acting=acting, command="compare")


def rebuild_report(folder: str | Path, out: str | Path | None = None) -> Path:
    """`mfd report RUNDIR` for a robots run folder: the summary and the robots page."""
    from mfd_core.runfolder import read_meta

    from .report import rebuild_report as rebuild

    try:
        read_meta(folder)
        return rebuild(folder, out)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from None


def cmd_play(args: argparse.Namespace) -> int:
    """Replay saved policies: success on fresh episodes, frames, optionally the GUI."""
    if args.episodes < 1:
        raise UsageError(f"--episodes must be at least 1, got {args.episodes}")
    folder = Path(args.results)
    from .config import RobotsScenarioError
    from .run import load_scenario

    try:
        scenario = load_scenario(folder)
    except (FileNotFoundError, RobotsScenarioError, ValueError) as err:
        raise UsageError(str(err)) from None
    policy_dirs = sorted(folder.glob(f"{args.policy or '*'}/seed{'*' if args.seed is None else args.seed}/policies"))
    policy_dirs = [d for d in policy_dirs if any(d.glob("robot*.zip"))]
    if not policy_dirs:
        raise UsageError(f"no saved policies under {folder} (expected <policy>/seed<k>/policies/robot<k>_<arm>.zip)")
    pdir = policy_dirs[-1]
    zips = sorted(pdir.glob("robot*.zip"), key=_robot_number)
    if args.robot is not None:
        zips = [z for z in zips if _robot_number(z) == args.robot]
        if not zips:
            raise UsageError(f"--robot {args.robot}: no such robot in {pdir}")
    frames_out = Path(args.frames) if args.frames else None
    if frames_out is not None:
        prepare_out(frames_out, force=True)

    from .run import fleet_frames, write_gif, write_strip

    actors = {}
    policy = pdir.parent.parent.name
    print(f"replaying {pdir}")
    for path in zips:
        node_id = _robot_number(path)
        cell = scenario.robots[node_id].cell()
        saved = _SavedPolicy(path, scenario)
        env, act = saved.env, saved.act
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
    if frames_out is not None:
        episodes = fleet_frames(actors, scenario)
        print(f"frames: {write_strip(episodes, scenario, frames_out / 'play.png', policy=policy)}, "
              f"{write_gif(episodes, frames_out / 'play.gif', policy=policy)}")
    if args.gui:
        _gui_replay(actors, scenario, episodes=args.episodes)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    robots = sub.add_parser("robots", help="Net4LM: a robot fleet that learns faster by sharing policies",
                            description="Robot arms in PyBullet, each learning from its own experience, "
                                        "sharing policies as MFD model packets over a lossy radio network.")
    rsub = robots.add_subparsers(dest="robots_command", metavar="SUBCOMMAND", parser_class=type(robots))
    robots.set_defaults(func=lambda _args: (robots.print_help(), 2)[1])

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--scenario", help="robots scenario file or shipped name (default robots)")
        p.add_argument("--duration", type=positive_seconds("--duration", MAX_DURATION),
                       help="seconds of robot time (25 env steps each; default: the scenario's)")
        p.add_argument("--task", choices=["reach", "push"], help="instead of the scenario's task")
        p.add_argument("--full", action="store_true", help="the long run: twice the duration, 3 seeds")
        add_run_arguments(p, seeds_help="the scenario's first; --full: 3", network=False)
        p.add_argument("--network", choices=("sim", "udp", "ray"),
                       help="where the robots run: sim = one simulated radio network in this process (the only "
                            "one for robot fleets; udp and ray are refused with the reason)")
        p.add_argument("--measure", choices=("apart", "inline"),
                       help="where the held-out episodes run: apart = in a second process, off the training's "
                            "critical path (the same figures; default on 2 or more cores); inline = here")
        p.add_argument("--resume", metavar="RUNDIR",
                       help="finish a stopped run of this command: the runs not done are run (a stopped run "
                            "from its beginning) with the fleet, policies, seeds and duration RUNDIR recorded, "
                            "then its summary and report (--quiet and --measure may go with it); a seed "
                            "determines a run's figures (simulated robot time, fixed env-step budgets), so on "
                            "the same machine they are those of a run never stopped, wall and CPU seconds apart")

    p = rsub.add_parser("demo", help="the fleet learns under MFD, isolated learning beside it; report folder",
                        description="A fleet learns reach under MFD (a robot joins halfway and bootstraps from its "
                                    "neighbours) while the same fleet learns alone in a second process, as the "
                                    "reference; writes a run folder with curves, bytes, the robots acting and a "
                                    "summary that states the speed-up. About two minutes on 2 cores.")
    common(p)
    p.add_argument("--policy", help="sharing policy (default: the scenario's, mfd)")
    p.add_argument("--no-reference", action="store_true", help="do not run isolated learning beside it")
    p.add_argument("--gui", action="store_true", help="replay the trained robots in PyBullet's window (needs a display)")
    p.set_defaults(func=cmd_demo)

    p = rsub.add_parser("compare", help="the same fleet and seeds under isolated / fedavg / gossip / mfd",
                        description="One report with every policy's curves on the same fleet and seeds: the "
                                    "speed-up against isolated learning and the bytes against FedAvg.")
    common(p)
    p.add_argument("--policies", help=f"comma-separated (default {POLICIES})")
    p.add_argument("--no-frames", action="store_true", help="skip rendering the robots acting")
    p.set_defaults(func=cmd_compare)

    p = rsub.add_parser("play", help="replay saved policies of a run folder",
                        description="Load the SB3 zips a demo or compare saved and run them in their cells.")
    p.add_argument("results", help="a run folder of `mfd robots demo` or `compare`")
    p.add_argument("--policy", help="which policy's run (default: the last found)")
    p.add_argument("--seed", type=int, help="which seed's run")
    p.add_argument("--robot", type=int, help="only this robot")
    p.add_argument("--episodes", type=int, default=5, help="episodes per robot, at least 1 (default 5)")
    p.add_argument("--frames", help="write a PNG strip and a GIF of one episode per robot into this folder")
    p.add_argument("--gui", action="store_true", help="show PyBullet's window (needs a display)")
    p.set_defaults(func=cmd_play)
