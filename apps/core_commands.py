"""The core's commands: `mfd run`, `mfd compare`, `mfd report`, `mfd packets`.

Scenario arguments are a path to a TOML file or the name of a shipped scenario
(``apps/scenarios/NAME.toml``; `mfd run --list` shows them).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
DEFAULT_POLICIES = "isolated,fedavg,gossip,mfd"


def shipped_scenarios() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))


def resolve_scenario(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.exists():
        return path
    shipped = SCENARIO_DIR / f"{name_or_path}.toml"
    if shipped.exists():
        return shipped
    raise SystemExit(f"mfd: no scenario file {name_or_path!r} and no shipped scenario of that name "
                     f"(shipped: {', '.join(shipped_scenarios()) or 'none'})")


def _load(name_or_path: str):
    from mfd_core.scenario import ScenarioError, load

    try:
        return load(resolve_scenario(name_or_path))
    except ScenarioError as err:
        raise SystemExit(f"mfd: invalid scenario: {err}") from None


def run_policies(scenario, policies: list[str], out: Path, seeds: list[int] | None = None, quiet: bool = False,
                 network: str = "sim", workers: int = 2, ray_address: str | None = None):
    """Run every policy on every seed with one progress bar; save each run under out/policy/seedK.

    ``network``: ``sim`` (one process, simulated), ``udp`` (a process per node on real
    sockets) or ``ray`` (the simulator over ``workers`` Ray actors).
    """
    from tqdm import tqdm

    from mfd_core.runtime import check_policy
    from mfd_core.runtime.launch import run_on
    from mfd_core.runtime.recipe import scenario_recipe

    for name in policies:
        try:
            problem = check_policy(scenario, name)  # unknown or unfit policies fail before anything runs
        except ValueError as err:
            raise SystemExit(f"mfd: {err}") from None
        if problem:
            raise SystemExit(f"mfd: {problem}")
    seeds = list(seeds or scenario.seeds)
    results = []
    total = scenario.duration * len(seeds) * len(policies)
    with tqdm(total=round(total, 3), unit="sim s", disable=quiet, file=sys.stderr,
              bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} sim s [{elapsed}<{remaining}]") as bar:
        for name in policies:
            for seed in seeds:
                done = [0.0]
                bar.set_description(f"{name} seed {seed}")

                def progress(t: float, done=done) -> None:
                    bar.update(t - done[0])
                    done[0] = t

                recipe = scenario_recipe(scenario.with_policy(name), seed)
                result = run_on(recipe, network, progress=progress, workers=workers, ray_address=ray_address,
                                workdir=out / name / f"seed{seed}" / "nodes" if network == "udp" else None)
                bar.update(scenario.duration - done[0])
                result.save(out / name / f"seed{seed}")
                results.append(result)
    return results


def _print_table(results) -> None:
    from mfd_core.report import summary_rows

    rows = summary_rows(results)
    print(f"{'policy':<12}{'seeds':>6}{'final acc':>11}{'MB sent':>10}{'data bytes':>12}{'wall s':>8}")
    for r in rows:
        print(f"{r['policy']:<12}{r['seeds']:>6}{r['final_mean_score']:>11.4f}{r['total_MB']:>10.2f}"
              f"{r['data_bytes']:>12}{r['wall_s']:>8.1f}")


def cmd_run(args: argparse.Namespace) -> int:
    if args.list:
        print("\n".join(shipped_scenarios()))
        return 0
    if not args.scenario:
        raise SystemExit("mfd run: give a scenario file or name (see --list)")
    scenario = _load(args.scenario)
    policy = args.policy or scenario.policy.name
    out = Path(args.out or f"runs/{scenario.name}-{policy}-{time.strftime('%Y%m%d-%H%M%S')}")
    results = run_policies(scenario, [policy], out, args.seeds, network=args.network, workers=args.workers,
                           ray_address=args.ray_address)
    _print_table(results)
    print(f"results in {out}  (draw them: mfd report {out})")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    scenario = _load(args.scenario)
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if not policies:
        raise SystemExit("mfd compare: --policies names no policy")
    out = Path(args.out or f"runs/{scenario.name}-compare-{time.strftime('%Y%m%d-%H%M%S')}")
    results = run_policies(scenario, policies, out, args.seeds, network=args.network, workers=args.workers,
                           ray_address=args.ray_address)
    _print_table(results)
    from mfd_core.report import write_report

    page = write_report(out)
    print(f"report: {page}")
    return 0


def add_network_arguments(p: argparse.ArgumentParser) -> None:
    """``--network`` and its options, the same on every command that runs nodes."""
    p.add_argument("--network", choices=("sim", "udp", "ray"), default="sim",
                   help="where the nodes run: sim = one process, simulated network (default); udp = one OS "
                        "process per node on real UDP sockets (loopback), in real time; ray = the simulator "
                        "spread over Ray actors")
    p.add_argument("--workers", type=int, default=2, help="Ray actors (--network ray; default 2)")
    p.add_argument("--ray-address", help="an existing Ray cluster to join (--network ray; default: start Ray here)")


def cmd_node(args: argparse.Namespace) -> int:
    from mfd_core.runtime.node_process import parse_nodes, read_peers, serve
    from mfd_core.runtime.recipe import scenario_recipe

    scenario = _load(args.scenario)
    try:
        hosted = parse_nodes(args.node)
        peers = read_peers(args.peers)
    except (OSError, ValueError) as err:
        raise SystemExit(f"mfd node: {err}") from None
    unknown = [n for n in hosted if not 0 <= n < scenario.topology.nodes]
    if unknown:
        raise SystemExit(f"mfd node: node(s) {unknown} not in the scenario (nodes 0..{scenario.topology.nodes - 1})")
    if not args.speed > 0:
        raise SystemExit(f"mfd node: --speed must be > 0, got {args.speed}")
    seed = scenario.seeds[0] if args.seed is None else args.seed
    out = Path(args.out or f"runs/{scenario.name}-node-{args.node}-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    print(f"hosting node(s) {hosted} of {scenario.name} (seed {seed}) for {scenario.duration:g} simulated s "
          f"at {args.speed:g}x; record in {out}", flush=True)
    try:
        doc = serve(scenario_recipe(scenario, seed), hosted, peers, out, speed=args.speed,
                    emulate=not args.no_emulate, quiet=False)
    except (OSError, ValueError) as err:
        raise SystemExit(f"mfd node: {err}") from None
    from mfd_core.metrics import RunResult

    result = RunResult.from_dict(doc)
    result.save(out)
    print(f"final mean score of node(s) {hosted}: {result.final_mean_score:.4f}; results in {out}")
    return 130 if result.extra.get("interrupted") else 0


def cmd_report(args: argparse.Namespace) -> int:
    from mfd_core.report import write_report

    try:
        page = write_report(args.results, args.out)
    except FileNotFoundError as err:
        raise SystemExit(f"mfd report: {err}") from None
    print(f"report: {page}")
    return 0


def cmd_packets(args: argparse.Namespace) -> int:
    """The core demo: a model cut into packets, sent across a lossy link, reassembled."""
    import numpy as np
    import torch

    from mfd_core import codec, reassembly

    if not 0.0 <= args.loss <= 1.0:
        raise SystemExit(f"mfd packets: --loss must be between 0 and 1, got {args.loss}")
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
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
        return cmd_packets(args)
    return demo_main(args)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job: the Net4LM robot fleet demo (see `mfd robots demo`)",
                       description="Run the main demo on the embedded defaults; no servers to start.")
    p.add_argument("--loss", type=float, default=0.2, help=argparse.SUPPRESS)
    p.add_argument("--mtu", type=int, default=1400, help=argparse.SUPPRESS)
    p.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", help="run a scenario (a TOML file or a shipped name) and save its results",
                       description="Run a scenario under its sharing policy with a progress bar; write metrics "
                                   "and events as JSON lines and a summary per seed.")
    p.add_argument("scenario", nargs="?", help="scenario file or shipped name (see --list)")
    p.add_argument("--policy", help="override the scenario's policy: isolated, fedavg, gossip, mfd, mfd-travel")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds to run (default: the scenario's)")
    p.add_argument("--out", help="results folder (default runs/NAME-POLICY-TIME)")
    p.add_argument("--list", action="store_true", help="list the shipped scenarios")
    add_network_arguments(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("compare", help="run one scenario under several policies, same seeds, and report",
                       description="Same scenario, same seeds, one policy swapped at a time; writes a report.")
    p.add_argument("scenario", help="scenario file or shipped name")
    p.add_argument("--policies", default=DEFAULT_POLICIES, help=f"comma-separated (default {DEFAULT_POLICIES})")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds to run (default: the scenario's)")
    p.add_argument("--out", help="results folder (default runs/NAME-compare-TIME)")
    add_network_arguments(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("node", help="run some nodes of a scenario on real UDP sockets (one machine of many)",
                       description="Host the given nodes of a scenario in this process, each on its own UDP "
                                   "socket at the address the peers file gives it, and run in real time. Start "
                                   "one such process per machine (docs/networks.md has a two-terminal recipe).")
    p.add_argument("scenario", help="scenario file or shipped name")
    p.add_argument("--node", required=True, help="the node ids this process hosts: 3, 0-9 or 0,2,5-7")
    p.add_argument("--peers", required=True, help="TOML file: [nodes] id = \"host:port\" for every node")
    p.add_argument("--seed", type=int, default=None, help="the run's seed (default: the scenario's first)")
    p.add_argument("--out", help="folder for this process's record (default runs/NAME-node-IDS-TIME)")
    p.add_argument("--speed", type=float, default=1.0, help="simulated seconds per wall second (default 1)")
    p.add_argument("--no-emulate", action="store_true",
                   help="do not impose the scenario's link loss, latency and rate at the sockets")
    p.set_defaults(func=cmd_node)

    p = sub.add_parser("report", help="draw results (PNG) and write an HTML page with a summary table")
    p.add_argument("results", help="a results folder written by mfd run / compare")
    p.add_argument("--out", help="report folder (default RESULTS/report)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("packets", help="core demo: a model as packets across a lossy link, reassembled",
                       description="Cut a small model into MFD packets, drop and reorder some, reassemble, "
                                   "and print what arrived and what was lost.")
    p.add_argument("--loss", type=float, default=0.2, help="share of datagrams lost (default 0.2)")
    p.add_argument("--mtu", type=int, default=1400, help="datagram size limit in bytes (default 1400)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16", "int8"])
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_packets)
