"""The core's commands: `mfd run`, `mfd compare`, `mfd report`, `mfd packets`, `mfd node`.

Scenario arguments are a path to a TOML file or the name of a shipped scenario
(``apps/scenarios/NAME.toml``; `mfd run --list` shows them). A run writes a run folder
(``mfd_core/runfolder.py``): measurements stream to ``results.csv`` as they come, so a
run stopped with Ctrl-C keeps what it measured, and ``--resume RUNDIR`` finishes it.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from .common import (Interrupted, Progress, UsageError, add_run_arguments, flatten_seeds, interruptible,
                     parse_overrides, positive_seconds, prepare_out, remove_if_empty, seeds_type)

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
DEFAULT_POLICIES = "isolated,fedavg,gossip,mfd"
# Each node of a supervised scenario needs this many samples of its own (training and
# validation); more nodes than the data allows fail here, not after the run has started.
MIN_SAMPLES_PER_NODE = 8
# --duration's bound: the scenario's own (mfd_core.scenario: a simulated day)
MAX_DURATION_S = 86_400.0


def shipped_scenarios() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))


def resolve_scenario(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.exists():
        return path
    shipped = SCENARIO_DIR / f"{name_or_path}.toml"
    if shipped.exists():
        return shipped
    raise UsageError(f"no scenario file {name_or_path!r} and no shipped scenario of that name "
                     f"(shipped: {', '.join(shipped_scenarios()) or 'none'})")


def load_scenario(name_or_path: str, overrides: list[str] = ()):
    """The scenario, with ``--set`` changes applied and checked against its data."""
    from mfd_core.scenario import ScenarioError, load

    path = resolve_scenario(name_or_path)
    if path.parent == SCENARIO_DIR and path.stem.startswith("robots"):
        raise UsageError(f"{path.stem} is a robot fleet: run it with `mfd robots demo --scenario {path.stem}`")
    try:
        scenario = load(path)
        changes = parse_overrides(overrides)
        if changes:
            scenario = scenario.replace(**changes)
    except ScenarioError as err:
        raise UsageError(f"invalid scenario: {err}") from None
    check_data(scenario)
    return scenario


def check_data(scenario) -> None:
    """Enough samples for every node, before any work (a Dirichlet split leaves some
    nodes with none long before the fleet is as large as the data)."""
    from mfd_core.runtime.supervised import dataset_size

    size = dataset_size(scenario.data.dataset)
    usable = int(size * (1 - scenario.data.test_fraction))
    most = usable // MIN_SAMPLES_PER_NODE
    if scenario.topology.nodes > most:
        raise UsageError(f"topology.nodes: {scenario.topology.nodes} nodes are too many for the "
                         f"{scenario.data.dataset} data ({usable} samples for training: at most {most} nodes "
                         f"of {MIN_SAMPLES_PER_NODE} samples each)")


def _policies(scenario, names: list[str]) -> list[str]:
    from mfd_core.runtime import check_policy

    for name in names:
        try:
            problem = check_policy(scenario, name)
        except ValueError as err:
            raise UsageError(str(err)) from None
        if problem:
            raise UsageError(problem)
    return names


def run_policies(scenario, policies: list[str], folder, seeds: list[int], *, quiet: bool = False,
                 network: str = "sim", workers: int = 2, ray_address: str | None = None):
    """Every policy on every seed not done yet, one progress bar; each run streams into ``folder``.

    :raises Interrupted: after the interrupted run's rows and summary are written.
    """
    from mfd_core.runfolder import run_id
    from mfd_core.runtime.launch import run_on
    from mfd_core.runtime.recipe import scenario_recipe

    todo = [(p, s) for p in policies for s in seeds if run_id(p, s) not in folder.done]
    progress = Progress(scenario.duration * len(todo), quiet=quiet)
    results = []
    try:
        for name, seed in todo:
            done = [0.0]
            live = {}
            progress.describe(f"{name} seed {seed}")

            def on_time(t: float, done=done) -> None:
                progress.advance(t - done[0])
                done[0] = t

            def observe(result, live=live) -> None:
                live["result"] = result
                folder.stream(result)

            def checkpoint(t: float, models, final: bool, name=name, seed=seed) -> None:
                folder.checkpoint(name, seed, t, models, final=final)

            recipe = scenario_recipe(scenario.with_policy(name), seed)
            workdir = folder.path / "nodes" / name / f"seed{seed}" if network == "udp" else None
            try:
                result = run_on(recipe, network, progress=on_time, workers=workers, ray_address=ray_address,
                                workdir=workdir, observe=observe, checkpoint=checkpoint)
            except Interrupted:
                if "result" in live:
                    folder.finish_run(live["result"], interrupted=True)
                raise
            progress.advance(scenario.duration - done[0])
            folder.finish_run(result)
            results.append(result)
    finally:
        progress.close()
    return results


def _print_table(summary: dict) -> None:
    def med(spread, scale=1.0, fmt="{:.4f}"):
        return "n/a" if not spread else fmt.format(spread["median"] * scale)

    print(f"{'policy':<12}{'seeds':>6}{'final score':>13}{'speed-up':>10}{'MB sent':>10}{'vs FedAvg':>11}")
    for policy, figures in summary["policies"].items():
        comp = summary["comparisons"].get(policy, {})
        print(f"{policy:<12}{figures['seeds']:>6}{med(figures['final_mean_score']):>13}"
              f"{med(comp.get('speedup_vs_isolated'), fmt='{:.2f}x'):>10}"
              f"{med(figures['total_bytes'], 1e-6, '{:.2f}'):>10}"
              f"{med(comp.get('bytes_over_fedavg'), fmt='{:.2f}x'):>11}")


def _run_command(args: argparse.Namespace, policies_of) -> int:
    from mfd_core.runfolder import RunFolder

    if args.resume:
        if args.duration is not None or args.overrides:
            raise UsageError("--resume finishes a run as it was planned: --duration and --set do not apply")
        return _resume(args)
    if not args.scenario:
        raise UsageError("give a scenario file or a shipped name (mfd run --list shows them)")
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    duration = [f"duration={args.duration!r}"] if args.duration is not None else []
    scenario = load_scenario(args.scenario, [*args.overrides, *duration])
    policies = _policies(scenario, policies_of(scenario))
    seeds = flatten_seeds(args.seeds) or list(scenario.seeds)
    label = policies[0] if len(policies) == 1 else "compare"
    out = prepare_out(args.out or f"runs/{scenario.name}-{label}-{time.strftime('%Y%m%d-%H%M%S')}", force=args.force)
    folder = RunFolder(out, "core", command=sys.argv, scenario=json.loads(scenario.model_dump_json(by_alias=True)),
                       plan=[(p, s) for p in policies for s in seeds],
                       info={"name": scenario.name, "score_name": "test accuracy", "policies": policies,
                             "seeds": seeds, "network": args.network, "workers": args.workers,
                             "report": len(policies) > 1})
    return _execute(folder, scenario, policies, seeds, args)


def _resume(args: argparse.Namespace) -> int:
    from mfd_core.runfolder import RunFolder
    from mfd_core.scenario import ScenarioError, from_dict

    try:
        folder = RunFolder.reopen(args.resume)
    except (FileNotFoundError, json.JSONDecodeError) as err:
        raise UsageError(f"--resume: {err}") from None
    if folder.meta.get("kind") != "core":
        raise UsageError(f"--resume {args.resume}: a {folder.meta.get('kind')} run; resume it with its own command")
    try:
        scenario = from_dict(json.loads((folder.path / "scenario.json").read_text()))
    except (OSError, ScenarioError) as err:
        raise UsageError(f"--resume {args.resume}: cannot read its scenario: {err}") from None
    left = [r for r in folder.meta["planned"] if r not in folder.done]
    print(f"resuming {folder.path}: {len(folder.done)} run(s) done, {len(left)} to go "
          f"(an interrupted run starts again from its beginning: the simulator replays it exactly)", flush=True)
    args.network = folder.meta.get("network", "sim")
    args.workers = folder.meta.get("workers", 2)
    return _execute(folder, scenario, folder.meta["policies"], folder.meta["seeds"], args)


def _execute(folder, scenario, policies: list[str], seeds: list[int], args: argparse.Namespace) -> int:
    try:
        with interruptible():
            run_policies(scenario, policies, folder, seeds, quiet=args.quiet, network=args.network,
                         workers=args.workers, ray_address=getattr(args, "ray_address", None))
    except Interrupted as why:
        folder.finish(interrupted=True)
        print(f"mfd: interrupted ({why}); what was measured is in {folder.path} "
              f"(finish it: mfd {args.command} --resume {folder.path})", file=sys.stderr)
        return 130
    except BaseException:
        if not folder.done:
            remove_if_empty(folder.path)
        raise
    summary = folder.finish()
    _print_table(summary)
    if folder.meta.get("report"):
        from mfd_core.report import write_report

        print(f"report: {write_report(folder.path)}")
    else:
        print(f"results in {folder.path}  (draw them: mfd report {folder.path})")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    if args.list:
        print("\n".join(s for s in shipped_scenarios() if not s.startswith("robots")))
        return 0

    def policies(scenario) -> list[str]:
        return [args.policy or scenario.policy.name]

    return _run_command(args, policies)


def cmd_compare(args: argparse.Namespace) -> int:
    names = [p.strip() for p in args.policies.split(",") if p.strip()]
    if not names and not args.resume:
        raise UsageError("--policies names no policy")
    return _run_command(args, lambda scenario: names)


def cmd_report(args: argparse.Namespace) -> int:
    from mfd_core.runfolder import read_meta

    results = Path(args.results)
    if not results.exists():
        raise UsageError(f"{results}: no such results folder")
    kind = read_meta(results).get("kind", "core") if (results / "run.json").exists() else "core"
    if kind == "robots":
        from apps.robots.cli import rebuild_report
        page = rebuild_report(results, args.out)
    elif kind == "basestation":
        from apps.basestation.cli import rebuild_report
        page = rebuild_report(results, args.out)
    else:
        from mfd_core.report import write_report
        try:
            page = write_report(results, args.out)
        except FileNotFoundError as err:
            raise UsageError(str(err)) from None
    print(f"report: {page}")
    return 0


def cmd_packets(args: argparse.Namespace) -> int:
    """The core demo: a model cut into packets, sent across a lossy link, reassembled."""
    import numpy as np
    import torch

    from mfd_core import codec, packet, reassembly

    if not 0.0 <= args.loss <= 1.0:
        raise UsageError(f"--loss must be between 0 and 1, got {args.loss}")
    if not packet.MIN_MTU <= args.mtu <= packet.MAX_MTU:
        raise UsageError(f"--mtu must be from {packet.MIN_MTU} to {packet.MAX_MTU} bytes (a UDP datagram), "
                         f"got {args.mtu}")
    seed = args.seed[0]
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    state = model.state_dict()
    datagrams = codec.to_datagrams(state, origin=1, destination=2, model_version=1, message_id=1,
                                   mtu=args.mtu, precision=args.precision)
    model_bytes = sum(t.numel() * t.element_size() for t in state.values())
    wire = sum(len(d) for d in datagrams)
    print(f"model: {sum(t.numel() for t in state.values()):,} parameters, {model_bytes:,} bytes as fp32")
    print(f"sent:  {len(datagrams)} datagrams of at most {args.mtu} bytes, {wire:,} bytes on the wire "
          f"({args.precision}), link loss {args.loss:.0%}")
    kept = [d for d in datagrams if rng.random() >= args.loss]
    rng.shuffle(kept)  # a lossy link also reorders
    receiver = reassembly.Reassembler()
    message = None
    for d in kept:
        message = receiver.receive(d, now=0.0) or message
    if message is None:
        delivered = receiver.expire(now=1e9)
        message = delivered[0] if delivered else None
    if message is None:
        print("arrived: nothing placeable (the manifest was lost and the receiver knows no such layout)")
        return 0
    print(f"arrived: {message.fragments_received}/{message.fragment_count} datagrams "
          f"({'complete' if message.complete else 'partial'})")
    for name, tensor in message.state.items():
        got = 1.0 if message.masks is None else message.masks[name].float().mean().item()
        err = (tensor - state[name]).abs().max().item() if got == 1.0 else float("nan")
        print(f"  {name:<10} {str(tuple(tensor.shape)):<12} {got:6.1%} of elements arrived"
              + (f", max error {err:.2e}" if got == 1.0 else ", lost ranges keep the receiver's values"))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: the robot fleet's demo where it is installed, else the packet demo."""
    try:
        from apps.robots.cli import demo_main
    except ImportError:
        args.loss, args.mtu, args.precision = 0.2, 1400, "fp32"
        args.seed = args.seeds[0] if args.seeds else [0]
        return cmd_packets(args)
    return demo_main(args)


def cmd_node(args: argparse.Namespace) -> int:
    from mfd_core.metrics import RunResult
    from mfd_core.runtime.node_process import parse_nodes, read_peers, serve
    from mfd_core.runtime.recipe import scenario_recipe

    scenario = load_scenario(args.scenario, args.overrides)
    try:
        hosted = parse_nodes(args.node)
        peers = read_peers(args.peers)
    except (OSError, ValueError) as err:
        raise UsageError(str(err)) from None
    unknown = [n for n in hosted if not 0 <= n < scenario.topology.nodes]
    if unknown:
        raise UsageError(f"--node: node(s) {unknown} not in the scenario (nodes 0..{scenario.topology.nodes - 1})")
    if not (math.isfinite(args.speed) and args.speed > 0):
        raise UsageError(f"--speed must be a number > 0, got {args.speed}")
    seeds = flatten_seeds(args.seeds) or [scenario.seeds[0]]
    if len(seeds) != 1:
        raise UsageError("--seeds: a node process runs one seed")
    out = prepare_out(args.out or f"runs/{scenario.name}-node-{args.node}-{time.strftime('%Y%m%d-%H%M%S')}",
                      force=args.force)
    print(f"hosting node(s) {hosted} of {scenario.name} (seed {seeds[0]}) for {scenario.duration:g} simulated s "
          f"at {args.speed:g}x; record in {out}", flush=True)
    try:
        doc = serve(scenario_recipe(scenario, seeds[0]), hosted, peers, out, speed=args.speed,
                    emulate=not args.no_emulate, quiet=args.quiet)
    except (OSError, ValueError) as err:
        raise UsageError(str(err)) from None
    result = RunResult.from_dict(doc)
    result.save(out)
    print(f"final mean score of node(s) {hosted}: {result.final_mean_score:.4f}; results in {out}")
    return 130 if result.extra.get("interrupted") else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job: the Net4LM robot fleet learning to reach (see `mfd robots demo`)",
                       description="Run the main demo on the embedded defaults; no servers to start.")
    p.add_argument("--seed", dest="seeds", type=seeds_type, nargs="+", metavar="SEEDS", help=argparse.SUPPRESS)
    add_run_arguments(p, network=False)
    p.set_defaults(func=cmd_demo)

    for name, helptext, description in (
            ("run", "run a scenario (a TOML file or a shipped name) and save its results",
             "Run a scenario under its sharing policy (or --policy) on each seed, with a progress bar; "
             "measurements stream into a run folder as they come (results.csv, events.jsonl), then a summary."),
            ("compare", "run one scenario under several policies, on the same seeds, and report",
             "The same scenario and seeds, one sharing policy swapped at a time; writes a run folder and a "
             "report that compares them (speed-up against isolated learning, bytes against FedAvg).")):
        p = sub.add_parser(name, help=helptext, description=description)
        p.add_argument("scenario", nargs="?", help="scenario file or shipped name (mfd run --list)")
        if name == "run":
            p.add_argument("--policy", help="instead of the scenario's: isolated, fedavg, gossip, mfd, mfd-travel")
            p.add_argument("--list", action="store_true", help="list the shipped scenarios")
        else:
            p.add_argument("--policies", default=DEFAULT_POLICIES,
                           help=f"comma-separated policies (default {DEFAULT_POLICIES})")
        p.add_argument("--resume", metavar="RUNDIR", help="finish a stopped run: the runs not done are run")
        p.add_argument("--duration", type=positive_seconds("--duration", MAX_DURATION_S),
                       help="simulated seconds, instead of the scenario's (as mfd robots demo --duration)")
        add_run_arguments(p)
        p.set_defaults(func=cmd_run if name == "run" else cmd_compare, command=name)

    p = sub.add_parser("node", help="run some nodes of a scenario on real UDP sockets (one machine of many)",
                       description="Host the given nodes of a scenario in this process, each on its own UDP "
                                   "socket at the address the peers file gives it, and run in real time. Start "
                                   "one such process per machine (docs/networks.md has a two-terminal recipe).")
    p.add_argument("scenario", help="scenario file or shipped name")
    p.add_argument("--node", required=True, help="the node ids this process hosts: 3, 0-9 or 0,2,5-7")
    p.add_argument("--peers", required=True, help='TOML file: [nodes] with id = "host:port" for every node')
    p.add_argument("--speed", type=float, default=1.0, help="simulated seconds per wall second (default 1)")
    p.add_argument("--no-emulate", action="store_true",
                   help="do not impose the scenario's link loss, latency and rate at the sockets")
    add_run_arguments(p, seeds_help="the scenario's first", network=False)
    p.set_defaults(func=cmd_node)

    p = sub.add_parser("report", help="draw a run folder (PNG) and write an HTML page with a summary table",
                       description="Rebuild the report of a run folder: a core run's, a robot fleet's or the "
                                   "base stations', whichever it is.")
    p.add_argument("results", help="a run folder written by mfd run / compare / robots / basestation")
    p.add_argument("--out", help="report folder (default RESULTS/report)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("packets", help="core demo: a model as packets across a lossy link, reassembled",
                       description="Cut a small model into MFD packets, drop and reorder some, reassemble, "
                                   "and print what arrived and what was lost.")
    p.add_argument("--loss", type=float, default=0.2, help="share of datagrams lost (default 0.2)")
    p.add_argument("--mtu", type=int, default=1400, help="datagram size limit in bytes, 256 to 65535 (default 1400)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16", "int8"])
    p.add_argument("--seed", type=seeds_type, default=[0], help="seed (default 0)")
    p.set_defaults(func=cmd_packets)
