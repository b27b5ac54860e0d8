"""`mfd basestation train | evaluate | list`: LM4Net from the command line.

    mfd basestation list
    mfd basestation train uniform                       # isolated, FedAvg, MFD and central RL
    mfd basestation train hotspot --policies mfd --rounds 20
    mfd basestation evaluate --scenarios uniform,hotspot --models runs/basestation

A scenario is a shipped app scenario (``mfd basestation list``), an env preset name or
a TOML path (see :mod:`apps.basestation.config`).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DEFAULT_MODELS = "runs/basestation"


def _scenario(name: str, rounds: int | None = None):
    from .config import AppScenarioError, load_app_scenario

    try:
        sc = load_app_scenario(name)
        return sc.with_training(rounds=rounds) if rounds is not None else sc
    except AppScenarioError as err:
        raise SystemExit(f"mfd basestation: invalid scenario: {err}") from None


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def cmd_list(args: argparse.Namespace) -> int:
    from .config import load_app_scenario, shipped_scenarios

    for name in shipped_scenarios():
        sc = load_app_scenario(name)
        print(f"{name:<11} {sc.env.n_stations:>3} stations  {sc.training.rounds:>4} rounds  {sc.env.description}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .training import RL_POLICIES, train_scenario

    scenario = _scenario(args.scenario, args.rounds)
    policies = _csv(args.policies)
    unknown = [p for p in policies if p not in RL_POLICIES]
    if unknown or not policies:
        raise SystemExit(f"mfd basestation train: unknown policy {unknown[0] if unknown else '(none)'}; "
                         f"choose from {', '.join(RL_POLICIES)}")
    out = Path(args.out)
    summaries = train_scenario(scenario, policies, args.seed, out, quiet=args.quiet)
    print(f"{'policy':<10}{'stations':>9}{'env steps':>11}{'model MB':>10}{'score':>8}{'wall s':>8}")
    for s in summaries:
        score = s.get("final_test_score")
        print(f"{s['policy']:<10}{s['stations']:>9}{s['env_steps']:>11}{s['model_bytes'] / 1e6:>10.3f}"
              f"{'' if score is None else f'{score:.3f}':>8}{s['wall_seconds']:>8.1f}")
    print(f"models in {out / scenario.name}  (evaluate: mfd basestation evaluate --scenarios "
          f"{args.scenario} --models {out})")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import POLICIES, aggregate, evaluate
    from .report import write_report
    from .training import train_scenario

    names = _csv(args.scenarios)
    scenarios = [_scenario(n, args.rounds) for n in names]
    policies = tuple(_csv(args.policies)) if args.policies else POLICIES
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise SystemExit(f"mfd basestation evaluate: unknown policy {unknown[0]}; choose from {', '.join(POLICIES)}")
    models = Path(args.models)
    if args.train:
        learned = [p for p in policies if p not in ("full_power", "heuristic")]
        for sc in scenarios:
            missing = [p for p in learned if not (models / sc.name / p).is_dir()]
            if missing:
                train_scenario(sc, missing, args.seed, models, quiet=args.quiet)
    seeds = [int(s) for s in _csv(args.seeds)] if args.seeds else None
    out = Path(args.out or f"runs/basestation-report-{time.strftime('%Y%m%d-%H%M%S')}")

    def progress(what: str) -> None:
        if not args.quiet:
            print(f"  playing {what}", file=sys.stderr)

    rows, notes = evaluate(scenarios, models, policies, seeds, progress)
    if not rows:
        raise SystemExit("mfd basestation evaluate: nothing to evaluate")
    page = write_report(rows, out, models=models, notes=notes)
    print(f"{'scenario':<11}{'policy':<12}{'rate Mb/s':>10}{'p5 Mb/s':>9}{'PF util':>9}{'energy kJ':>10}"
          f"{'kbit/J':>8}{'HO':>7}{'model MB':>9}")
    for r in aggregate(rows):
        print(f"{r['scenario']:<11}{r['policy']:<12}{r['mean_user_rate_mbps']:>10.3f}{r['p5_user_rate_mbps']:>9.3f}"
              f"{r['pf_utility']:>9.2f}{r['energy_kj']:>10.1f}{r['energy_efficiency_kbit_per_j']:>8.1f}"
              f"{r['handovers']:>7.0f}{r['model_mb']:>9.3f}")
    for note in notes:
        print(f"note: {note}")
    print(f"report: {page}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    bs = subparsers.add_parser("basestation", help="LM4Net: base stations that coordinate by sharing models",
                               description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = bs.add_subparsers(dest="basestation_command", metavar="SUBCOMMAND")
    bs.set_defaults(func=lambda args: (bs.print_help(), 2)[1])

    p = sub.add_parser("list", help="the shipped scenarios")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("train", help="train the stations' agents (and the central controller)")
    p.add_argument("scenario", help="shipped scenario name, env preset or TOML path")
    p.add_argument("--policies", default="isolated,fedavg,mfd,central",
                   help="comma-separated: isolated, fedavg, mfd, central (default: all)")
    p.add_argument("--rounds", type=int, help="training rounds (default: the scenario's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=DEFAULT_MODELS, help=f"models folder (default {DEFAULT_MODELS})")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="every policy on every scenario and seed, with a report")
    p.add_argument("--scenarios", default="uniform,hotspot,rush_hour,outage,night")
    p.add_argument("--policies", help="comma-separated (default: all six)")
    p.add_argument("--models", default=DEFAULT_MODELS, help="where `train` saved the models")
    p.add_argument("--seeds", help="comma-separated evaluation seeds (default: the scenario's)")
    p.add_argument("--train", action="store_true", help="train the policies that have no models yet")
    p.add_argument("--rounds", type=int, help="with --train: training rounds")
    p.add_argument("--seed", type=int, default=0, help="with --train: training seed")
    p.add_argument("--out", help="report folder (default runs/basestation-report-<time>)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_evaluate)
