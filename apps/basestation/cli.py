"""mfd basestation train | evaluate | list: LM4Net from the command line.

    mfd basestation list
    mfd basestation train uniform                   # isolated, FedAvg, MFD and central RL
    mfd basestation train hotspot --policies mfd --rounds 20 --seeds 0-2
    mfd basestation evaluate --models RUNDIR        # RUNDIR: what train wrote
    mfd basestation evaluate --scenarios uniform,hotspot --train --rounds 10
    mfd basestation evaluate --models RUNDIR --trained-on hotspot --scenarios rush_hour   # transfer

A scenario is a shipped app scenario (mfd basestation list), an env preset name or a
TOML path. Both commands write a run folder (default: a new folder under runs/):
results.csv (one row per measurement: run, policy, seed, node, time, metric, value),
summary.csv and summary.json (median and range over seeds), run.json, scenario.json and
report/index.html; train adds the stations' models under models/seed<k>/. In train's
results.csv a run is POLICY/seedS (the scenario is the folder's); in evaluate's it is
SCENARIO/POLICY/seedS, or SCENARIO/POLICY/trainT/seedS for the models of training seed T.
Ctrl-C keeps what was measured (train --resume RUNDIR finishes a stopped training);
mfd report RUNDIR redraws the report.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from apps.common import (Interrupted, Progress, UsageError, add_run_arguments, flatten_seeds, interruptible,
                         parse_overrides, prepare_out, seeds_type)

DEFAULT_SCENARIOS = "uniform,hotspot,rush_hour,outage,night"
# Controllers that need nothing trained: every other one is played from what train saved.
FIXED = ("full_power", "heuristic")
# One radio simulation is the stations' shared world (every station's actions move the
# same users), so the stations cannot be spread over OS processes or Ray actors.
NETWORK_WHY = ("--network {}: the stations of a base-station scenario share one simulated radio network in one "
               "process (each station's power, offsets and sleep act on the same users), so they cannot run as "
               "separate {}; use --network sim (the default)")
MAX_ROUNDS = 100_000


def rounds_type(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of rounds") from None
    if not 1 <= value <= MAX_ROUNDS:
        raise argparse.ArgumentTypeError(f"--rounds must be from 1 to {MAX_ROUNDS:,}, got {text}")
    return value


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


# -- scenarios ---------------------------------------------------------------------------


def scenario_doc(scenario) -> dict[str, Any]:
    """The resolved scenario as plain data: a scenario file that loads back to it."""
    return json.loads(json.dumps({
        "name": scenario.name, "description": scenario.env.description, "basestation": scenario.env.to_dict(),
        "training": scenario.training.model_dump(mode="json"), "x2": scenario.x2.model_dump(mode="json"),
        "sharing": scenario.sharing.model_dump(mode="json", by_alias=True)}, default=str))


def apply_overrides(scenario, changes: dict[str, Any]):
    """``--set`` changes on an app scenario: ``training.rounds=4``, ``basestation.episode_steps=50``,
    ``sharing.fanout=3``, ``x2.loss=0.01`` or ``name=...``."""
    from pydantic import ValidationError

    from mfd_core.scenario import format_validation_error

    from .config import X2Link

    for table, value in changes.items():
        if table == "name":
            if not isinstance(value, str) or not value or "/" in value:
                raise UsageError(f"--set name={value!r}: a non-empty name without '/'")
            scenario = dataclasses.replace(scenario, name=value)
            continue
        if not isinstance(value, dict) or table not in ("training", "basestation", "sharing", "x2"):
            raise UsageError(f"--set {table}: unknown field; set training.X, basestation.X, sharing.X, x2.X or name")
        if table == "training":
            scenario = scenario.with_training(**value)
        elif table == "basestation":
            scenario = scenario.with_env(**value)
        elif table == "sharing":
            scenario = scenario.with_sharing(**value)
        else:
            try:
                x2 = X2Link.model_validate({**scenario.x2.model_dump(), **value})
            except ValidationError as err:
                raise UsageError(f"invalid scenario: {format_validation_error(err, prefix='x2')}") from None
            scenario = dataclasses.replace(scenario, x2=x2)
    return scenario


def load(name: str | dict, rounds: int | None = None, overrides: list[str] = ()):
    """An app scenario by name, path or resolved doc, with ``--rounds`` and ``--set`` applied."""
    from .config import AppScenarioError, from_dict, load_app_scenario

    changes = parse_overrides(overrides)
    try:
        sc = from_dict(name) if isinstance(name, dict) else load_app_scenario(name)
        sc = apply_overrides(sc, changes)
        return sc.with_training(rounds=rounds) if rounds is not None else sc
    except AppScenarioError as err:
        raise UsageError(f"invalid scenario: {err}") from None
    except TypeError as err:  # a --set field the settings do not have
        raise UsageError(f"--set: {err}") from None


def default_out(stem: str) -> Path:
    """A new folder under runs/: never one that exists already."""
    base = Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, k = base, 2
    while path.exists():
        path, k = Path(f"{base}-{k}"), k + 1
    return path


# -- list ----------------------------------------------------------------------------------


def rebuild_report(folder: str | Path, out: str | Path | None = None) -> Path:
    """What mfd report RUNDIR calls for a base-station run folder."""
    from .report import rebuild_report as rebuild

    return rebuild(folder, out)


def cmd_list(args: argparse.Namespace) -> int:
    from .config import load_app_scenario, shipped_scenarios

    for name in shipped_scenarios():
        sc = load_app_scenario(name)
        print(f"{name:<11} {sc.env.n_stations:>3} stations  {sc.training.rounds:>4} rounds  {sc.env.description}")
    return 0


# -- train -----------------------------------------------------------------------------------


def _train_policies(text: str) -> list[str]:
    from .training import RL_POLICIES

    policies = _csv(text) if text is not None else list(RL_POLICIES)
    unknown = [p for p in policies if p not in RL_POLICIES]
    if unknown or not policies:
        raise UsageError(f"--policies: unknown policy {unknown[0] if unknown else '(none given)'}; "
                         f"choose from {', '.join(RL_POLICIES)}")
    if len(set(policies)) != len(policies):
        raise UsageError("--policies: a policy is named twice")
    return policies


def _central_rounds(scenario) -> float:
    t = scenario.training
    return (t.central_steps or t.rounds * t.chunk_steps) / t.chunk_steps


def start_training(scenario, policies: list[str], seeds: list[int], out: Path, command: list[str]):
    """The run folder of a training (checked and created by the caller)."""
    from mfd_core.runfolder import RunFolder

    return RunFolder(out, "basestation", command=command, scenario=scenario_doc(scenario),
                     plan=[(p, s) for p in policies for s in seeds],
                     info={"stage": "train", "name": scenario.name, "policies": policies, "seeds": seeds,
                           "score_name": "station score (1 = static configuration; residual agents: the tuned rule)",
                           "network": "sim",
                           "driver": "sim: one process, the stations' MFD nodes on the simulated X2 network and "
                                     "one shared radio simulation", "processes": 1,
                           "models": "models/seed<k>/<scenario>/<policy>"})


def run_training(folder, scenario, policies: list[str], seeds: list[int], *, quiet: bool) -> None:
    """Each (policy, seed) not done yet, one progress bar; each fleet's measurements stream
    into ``folder`` as they come; models go to ``folder/models/seed<k>``.

    :raises Interrupted: after the interrupted run's rows are written.
    """
    from mfd_core.runfolder import run_id

    from .training import SHARING_POLICIES, train_central, train_fleet, train_scenario

    todo = [(p, s) for p in policies for s in seeds if run_id(p, s) not in folder.done]
    rounds = float(scenario.training.rounds)
    progress = Progress(sum(_central_rounds(scenario) if p == "central" else rounds for p, _ in todo),
                        unit="round", quiet=quiet)
    try:
        for policy, seed in todo:
            progress.describe(f"{scenario.name} {policy} seed {seed}")
            models = folder.path / "models" / f"seed{seed}"
            done, live = [0.0], {}

            def advance(x: float, done=done, live=live) -> None:
                if "result" in live:
                    folder.stream(live["result"])
                progress.advance(x - done[0])
                done[0] = x

            if policy not in SHARING_POLICIES:
                # the central controller (and any other controller train_scenario knows): run-level rows
                if policy == "central":
                    summary = train_central(scenario, seed, models, advance)
                else:
                    summary = train_scenario(scenario, [policy], seed, models, quiet=True)[0]
                t = _central_rounds(scenario) if policy == "central" else rounds
                progress.advance(t - done[0])
                rid = run_id(policy, seed)
                folder.add_rows(([rid, policy, seed, "", t, k, v] for k, v in summary.items()
                                 if k not in ("seed", "stations") and isinstance(v, (int, float))
                                 and not isinstance(v, bool)), done=rid)
                continue
            try:
                summary = train_fleet(scenario, policy, seed, models, advance,
                                      observe=lambda result, live=live: live.__setitem__("result", result),
                                      checkpoint=lambda t, served, final, policy=policy, seed=seed:
                                      folder.checkpoint(policy, seed, t, served, final=final))
            except Interrupted:
                if "result" in live:
                    folder.finish_run(live["result"], interrupted=True)
                raise
            progress.advance(rounds - done[0])
            result = live["result"]
            result.extra.update(env_steps=summary["env_steps"], stations=summary["stations"],
                                final_test_score=summary["final_test_score"])
            folder.finish_run(result)
    finally:
        progress.close()


def finish_training(folder, *, interrupted: bool = False) -> dict[str, Any]:
    """``summary.json`` / ``summary.csv`` of a training folder, over the runs so far.

    The fleets (a score per station) get the core's summary: each figure's median and
    range over seeds and bytes against FedAvg; the other controllers (the central one,
    ...) their run-level figures (env steps, measurement bytes, ...) under "controllers".
    """
    import csv

    from mfd_core.runfolder import read_results, spread, summarise

    folder.close(interrupted=interrupted)
    results = read_results(folder.path)
    fleets = [r for r in results if r.node_ids]
    summary = summarise(fleets) if fleets else {"policies": {}, "comparisons": {}, "runs": []}
    for policy, figures in summary["policies"].items():
        figures["env_steps"] = spread(r.extra.get("env_steps") for r in fleets if r.policy == policy)
    fleet_runs = {f"{r.policy}/seed{r.seed}" for r in fleets}
    others: dict[str, dict[str, Any]] = {}
    with open(folder.path / "results.csv", newline="") as fh:
        for rec in csv.DictReader(fh):
            if rec["run"] not in fleet_runs:
                run = others.setdefault(rec["run"], {"run": rec["run"], "policy": rec["policy"],
                                                     "seed": int(rec["seed"])})
                run[rec["metric"]] = float(rec["value"]) if rec["value"] != "" else None
    controllers: dict[str, Any] = {}
    for policy in dict.fromkeys(r["policy"] for r in others.values()):
        runs = [r for r in others.values() if r["policy"] == policy]
        metrics = dict.fromkeys(k for r in runs for k in r if k not in ("run", "policy", "seed"))
        controllers[policy] = {"seeds": len(runs), **{k: spread(r.get(k) for r in runs) for k in metrics}}
    summary["controllers"] = controllers
    summary.update(kind="basestation", stage="train", interrupted=interrupted,
                   score_name=folder.meta.get("score_name"))
    (folder.path / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    columns = ["run", "policy", "seed", "final_mean_score", "final_min_score", "total_bytes", "model_bytes",
               "data_bytes", "env_steps", "measurement_bytes", "wall_seconds"]
    with open(folder.path / "summary.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for run in [*summary["runs"], *others.values()]:
            writer.writerow(["" if run.get(c) is None else run.get(c, "") for c in columns])
    return summary


def _print_training(summary: dict[str, Any]) -> None:
    def med(s, scale=1.0, fmt="{:.3f}"):
        return "n/a" if not s else fmt.format(s["median"] * scale)

    print(f"{'policy':<14}{'seeds':>6}{'score':>8}{'model MB':>10}{'vs FedAvg':>11}{'env steps':>11}{'wall s':>8}")
    for policy, f in summary["policies"].items():
        comp = summary["comparisons"].get(policy, {})
        print(f"{policy:<14}{f['seeds']:>6}{med(f['final_mean_score']):>8}{med(f['model_bytes'], 1e-6):>10}"
              f"{med(comp.get('bytes_over_fedavg'), fmt='{:.2f}x'):>11}{med(f.get('env_steps'), fmt='{:.0f}'):>11}"
              f"{med(f['wall_seconds'], fmt='{:.1f}'):>8}")
    for policy, f in summary.get("controllers", {}).items():
        print(f"{policy:<14}{f['seeds']:>6}{'n/a':>8}{'0':>10}{'n/a':>11}"
              f"{med(f.get('env_steps'), fmt='{:.0f}'):>11}{med(f.get('wall_seconds'), fmt='{:.1f}'):>8}")


def _interrupted(folder, why: Interrupted, resume: str = "") -> int:
    print(f"mfd: interrupted ({why}); what was measured is in {folder.path}{resume}", file=sys.stderr)
    return 130


def _reopen_training(path: str):
    """A stopped training's folder, scenario, policies and seeds, to finish it."""
    from mfd_core.runfolder import RunFolder

    try:
        folder = RunFolder.reopen(path)
    except (FileNotFoundError, json.JSONDecodeError) as err:
        raise UsageError(f"--resume: {err}") from None
    if folder.meta.get("kind") != "basestation" or folder.meta.get("stage") != "train":
        raise UsageError(f"--resume {path}: not a base-station training run folder")
    scenario = load(json.loads((folder.path / "scenario.json").read_text()))
    return folder, scenario, list(folder.meta["policies"]), list(folder.meta["seeds"])


def cmd_train(args: argparse.Namespace) -> int:
    from .report import rebuild_report

    if args.network != "sim":
        raise UsageError(NETWORK_WHY.format(args.network, "OS processes" if args.network == "udp" else "Ray actors"))
    if args.resume:
        if args.scenario or args.seeds or args.overrides or args.rounds or args.out:
            raise UsageError("--resume RUNDIR takes the scenario, policies, seeds and folder from RUNDIR: "
                             "give nothing else")
        folder, scenario, policies, seeds = _reopen_training(args.resume)
        left = [r for r in folder.meta["planned"] if r not in folder.done]
        print(f"resuming {folder.path}: {len(folder.done)} run(s) done, {len(left)} to go (a stopped run starts "
              "again from its beginning: same seed, same figures)", file=sys.stderr)
    else:
        if not args.scenario:
            raise UsageError("give a scenario (mfd basestation list shows the shipped ones) or --resume RUNDIR")
        scenario = load(args.scenario, args.rounds, args.overrides)
        policies = _train_policies(args.policies)
        seeds = flatten_seeds(args.seeds) or [0]
        out = prepare_out(args.out or default_out(f"basestation-{scenario.name}-train"), force=args.force)
        folder = start_training(scenario, policies, seeds, out, sys.argv)
    try:
        with interruptible():
            run_training(folder, scenario, policies, seeds, quiet=args.quiet)
    except Interrupted as why:
        finish_training(folder, interrupted=True)
        rebuild_report(folder.path)
        return _interrupted(folder, why, f" (finish it: mfd basestation train --resume {folder.path})")
    summary = finish_training(folder)
    _print_training(summary)
    print(f"report: {rebuild_report(folder.path)}")
    print(f"models in {folder.path / 'models'}  (evaluate: mfd basestation evaluate --models {folder.path})")
    return 0


# -- evaluate --------------------------------------------------------------------------------


def _model_sets(models: Path) -> tuple[dict[int | None, Path], dict[str, Any] | None]:
    """The models a --models folder holds: {training seed: folder of <scenario>/<policy>},
    and the training's resolved scenario when it is a training run folder."""
    from mfd_core.runfolder import read_meta

    if not models.is_dir():
        raise UsageError(f"--models {models}: no such folder (train first: mfd basestation train SCENARIO)")
    if (models / "run.json").is_file():
        meta = read_meta(models)
        if meta.get("kind") != "basestation" or meta.get("stage") != "train":
            raise UsageError(f"--models {models}: a {meta.get('kind')} {meta.get('stage', '')} run folder, "
                             "not a base-station training (mfd basestation train writes those)".replace("  ", " "))
        sets = {int(s): models / "models" / f"seed{s}" for s in meta.get("seeds", [])
                if (models / "models" / f"seed{s}").is_dir()}
        if not sets:
            raise UsageError(f"--models {models}: the training saved no models (interrupted before any finished?)")
        doc = json.loads((models / "scenario.json").read_text())
        return sets, doc
    return {None: models}, None


def _has_models(folder: Path) -> bool:
    """What train saved for one controller: SB3 zips, tuned parameters, its summary."""
    return folder.is_dir() and any(folder.iterdir())


def run_name(scenario: str, policy: str, seed: int, train_seed: int | None) -> str:
    return f"{scenario}/{policy}/" + (f"train{train_seed}/" if train_seed is not None else "") + f"seed{seed}"


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mfd_core.runfolder import RunFolder

    from .evaluation import POLICIES, evaluate
    from .report import rebuild_report

    if args.train and args.models:
        raise UsageError("--train trains into this run's own folder: give --models or --train, not both")
    if args.rounds is not None and not args.train:
        raise UsageError("--rounds sets the training rounds: it goes with --train")
    if args.train_seeds and not args.train:
        raise UsageError("--train-seeds goes with --train")
    if args.trained_on and not args.models:
        raise UsageError("--trained-on names a scenario of --models RUNDIR: give --models")
    explicit = args.policies is not None
    policies = tuple(_csv(args.policies)) if explicit else POLICIES
    unknown = [p for p in policies if p not in POLICIES]
    if unknown or not policies:
        raise UsageError(f"--policies: unknown policy {unknown[0] if unknown else '(none given)'}; "
                         f"choose from {', '.join(POLICIES)}")
    sets: dict[int | None, Path] = {}
    trained_doc = None
    notes: list[str] = []
    if args.models:
        sets, trained_doc = _model_sets(Path(args.models))
    if args.scenarios:
        names: list[str | dict] = _csv(args.scenarios)
        if not names:
            raise UsageError("--scenarios names no scenario")
    else:
        names = [trained_doc] if trained_doc is not None else _csv(DEFAULT_SCENARIOS)
    scenarios = [load(n, args.rounds, args.overrides) for n in names]
    if len({sc.name for sc in scenarios}) != len(scenarios):
        raise UsageError("--scenarios: a scenario is named twice")
    learned = [p for p in policies if p not in FIXED]
    if learned and not args.models and not args.train:
        if explicit:
            raise UsageError(f"--policies {','.join(learned)}: trained policies need --models RUNDIR "
                             "(what mfd basestation train wrote) or --train")
        policies = tuple(p for p in policies if p not in learned)
        learned = []
        notes.append("no --models: the heuristics only (add --models RUNDIR or --train for the trained "
                     "controllers)")
    if args.models:
        for sc in scenarios:
            for p in learned:
                missing = [t for t, m in sets.items() if not _has_models(m / (args.trained_on or sc.name) / p)]
                if missing and explicit:
                    raise UsageError(f"--models {args.models}: no {p} models for scenario "
                                     f"{args.trained_on or sc.name}"
                                     + (f" (training seed {missing[0]})" if missing[0] is not None else ""))
        if not any(_has_models(m / (args.trained_on or sc.name) / p)
                   for sc in scenarios for p in learned for m in sets.values()):
            raise UsageError(f"--models {args.models}: no trained models for scenario(s) "
                             f"{args.trained_on or ', '.join(sc.name for sc in scenarios)}")
        if args.trained_on:
            notes.append(f"trained on {args.trained_on}, played by kind (macro / small cell) on "
                         f"{', '.join(sc.name for sc in scenarios)}")
    eval_seeds = flatten_seeds(args.seeds)
    train_seeds = flatten_seeds(args.train_seeds) or [0]
    out = prepare_out(args.out or default_out("basestation-evaluate"), force=args.force)
    training_folders: list[Path] = []
    if args.train:
        training_folders = [out / f"train-{sc.name}" for sc in scenarios]
        sets = {t: None for t in train_seeds}  # filled per scenario below
    elif args.models and trained_doc is not None:
        training_folders = [Path(args.models).resolve()]
    elif args.models:
        notes.append(f"models from {args.models}")

    plan = [run_name(sc.name, p, s, t) for sc in scenarios for p in policies
            for t in ([None] if p in FIXED else list(sets))
            for s in (eval_seeds or list(sc.training.eval_seeds))]
    folder = RunFolder(out, "basestation", command=sys.argv,
                       scenario={sc.name: scenario_doc(sc) for sc in scenarios}, plan=(),
                       info={"stage": "evaluate", "name": ",".join(sc.name for sc in scenarios),
                             "planned": plan, "policies": list(policies), "seeds": eval_seeds,
                             "network": "sim", "processes": 1, "notes": notes,
                             "driver": "sim: one process plays each controller on the radio simulation",
                             "models": str(Path(args.models).resolve()) if args.models else None,
                             # inside this folder: relative, so the folder can move
                             "training_folders": [f.name if args.train else str(f) for f in training_folders]})
    rows: list[dict[str, Any]] = []
    progress = Progress(len(plan), unit="episode", quiet=args.quiet)
    try:
        with interruptible():
            if args.train:
                from .training import RL_POLICIES

                learned_train = [p for p in learned if p in RL_POLICIES]
                for sc, tf in zip(scenarios, training_folders if learned_train else []):
                    tfolder = start_training(sc, learned_train, train_seeds, prepare_out(tf, force=args.force),
                                             sys.argv)
                    try:
                        run_training(tfolder, sc, learned_train, train_seeds, quiet=args.quiet)
                    except Interrupted:
                        finish_training(tfolder, interrupted=True)
                        raise
                    finish_training(tfolder)
                    rebuild_report(tfolder.path)
            for sc, tf in zip(scenarios, training_folders or [None] * len(scenarios)):
                model_sets = {t: tf / "models" / f"seed{t}" for t in train_seeds} if args.train else sets
                for policy in policies:
                    heuristic = policy in FIXED
                    for t, models in ([(None, None)] if heuristic else model_sets.items()):
                        for seed in (eval_seeds or list(sc.training.eval_seeds)):
                            name = run_name(sc.name, policy, seed, t)
                            progress.describe(name)
                            got, why = evaluate([sc], models, (policy,), [seed], trained_on=args.trained_on)
                            progress.advance(1)
                            if not got:
                                notes.extend(n for n in why if n not in notes)
                                break
                            row = dict(got[0], **({"train_seed": t} if t is not None else {}))
                            rows.append(row)
                            end = row.get("steps", 0) * sc.env.step_duration_s
                            folder.add_rows(([name, policy, seed, "", end, k, v] for k, v in row.items()
                                             if k not in ("scenario", "policy", "seed", "train_seed")
                                             and isinstance(v, (int, float))), done=name)
    except Interrupted as why:
        progress.close()
        _finish_evaluation(folder, rows, notes, interrupted=True)
        return _interrupted(folder, why)
    progress.close()
    if not rows:
        raise UsageError("nothing was evaluated: " + ("; ".join(notes) or "no controller"))
    summary = _finish_evaluation(folder, rows, notes)
    _print_evaluation(summary)
    for note in notes:
        print(f"note: {note}")
    print(f"report: {folder.path / 'report' / 'index.html'}")
    return 0


def _finish_evaluation(folder, rows: list[dict[str, Any]], notes: list[str], *, interrupted: bool = False):
    from .report import evaluation_summary, rebuild_report, write_summary

    folder.meta["notes"] = list(notes)
    folder.close(interrupted=interrupted)
    summary = evaluation_summary(rows)
    write_summary(summary, folder.path, kind="basestation", stage="evaluate", interrupted=interrupted,
                  notes=list(notes))
    if rows:
        rebuild_report(folder.path)
    return summary


def _print_evaluation(summary: dict[str, Any]) -> None:
    from .evaluation import KPIS

    keys = [k for k, _ in KPIS]
    heads = {"mean_user_rate_mbps": "rate Mb/s", "p5_user_rate_mbps": "p5 Mb/s", "pf_utility": "PF util",
             "energy_kj": "energy kJ", "energy_efficiency_kbit_per_j": "kbit/J", "handovers": "HO",
             "model_mb": "model MB", "pingpong_handovers": "ping-pongs"}
    print(f"{'scenario':<11}{'policy':<16}{'seeds':>6}"
          + "".join(f"{heads.get(k, k.replace('_', ' '))[:10]:>11}" for k in keys))
    for scen, doc in summary["scenarios"].items():
        for policy, f in doc["policies"].items():
            cells = "".join(f"{'n/a' if not f.get(k) else format(f[k]['median'], '.4g'):>11}" for k in keys)
            print(f"{scen:<11}{policy:<16}{f['seeds']:>6}{cells}")


def register(subparsers: argparse._SubParsersAction) -> None:
    bs = subparsers.add_parser("basestation", help="LM4Net: base stations that coordinate by sharing models",
                               description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = bs.add_subparsers(dest="basestation_command", metavar="SUBCOMMAND", parser_class=type(bs))
    bs.set_defaults(func=lambda args: (bs.print_help(), 2)[1])

    p = sub.add_parser("list", help="the shipped scenarios")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("train", help="train the stations' agents (and the central controller) into a run folder",
                       description="Train the stations' agents under each sharing policy (and the central "
                                   "controller) on one scenario, for each seed; the measurements stream into a "
                                   "run folder, the models go to its models/ folder.")
    p.add_argument("scenario", nargs="?", help="shipped scenario name, env preset or TOML path")
    p.add_argument("--resume", metavar="RUNDIR", help="finish a stopped training: the runs not done are run")
    p.add_argument("--policies", help="comma-separated trained controllers, e.g. isolated,fedavg,mfd,central "
                                      "(default: every one train knows)")
    p.add_argument("--rounds", type=rounds_type, help="training rounds (default: the scenario's)")
    add_run_arguments(p, seeds_help="0", network=False,
                      set_example="--set training.rounds=20 --set basestation.episode_steps=50 --set sharing.fanout=3")
    p.add_argument("--network", choices=("sim", "udp", "ray"), default="sim",
                   help="sim (the default and the only one that applies: the stations share one simulated "
                        "radio network in one process); udp and ray are refused")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="every controller on every scenario and seed, with a report",
                       description="Play the heuristics and the trained controllers greedily on each scenario "
                                   "and evaluation seed; write a run folder with the results, their median and "
                                   "range over seeds, and a report against the best heuristic.")
    p.add_argument("--scenarios", help=f"comma-separated (default: the training's scenario with --models RUNDIR, "
                                       f"else {DEFAULT_SCENARIOS})")
    p.add_argument("--policies", help="comma-separated: full_power, heuristic, isolated, fedavg, mfd, central "
                                      "(default: all six; only the heuristics without --models or --train)")
    p.add_argument("--models", help="a run folder that mfd basestation train wrote")
    p.add_argument("--train", action="store_true", help="train the policies first, into this run's folder")
    p.add_argument("--trained-on", metavar="SCENARIO",
                   help="with --models: play the models trained on SCENARIO on every --scenarios (another "
                        "layout or traffic); each station runs the best-scored trained model of its kind "
                        "(macro / small cell)")
    p.add_argument("--rounds", type=rounds_type, help="with --train: training rounds")
    p.add_argument("--train-seeds", type=seeds_type, nargs="+", metavar="SEEDS",
                   help="with --train: training seeds, in the --seeds syntax (default 0)")
    add_run_arguments(p, seeds_help="the scenario's evaluation seeds", network=False,
                      set_example="--set training.rounds=20 --set basestation.episode_steps=50 --set sharing.fanout=3")
    p.set_defaults(func=cmd_evaluate)
