"""Net4LM robots: how much faster a fleet learns by sharing policies as MFD packets.

Figures (issue 5), written to ``benchmarks/results/robots.json``:

- **Environment speed**: read from ``results/robot_envs.json`` (``benchmarks/robot_envs.py``
  measures our reach/push against panda-gym side by side; rerun it to refresh).
- **Learning, reach** (the shipped ``robots`` scenario: 2 Panda + 1 KUKA + 1 xArm6 from
  the start, a Panda joining at 50 %, TD3+HER, lossy radio links): the same fleet and
  seeds run under ``isolated`` and under ``mfd``; for every robot, its own env steps to
  its first measurement at >= 90 % success on held-out episodes of its own cell.

  * isolated Panda: steps of the two founding Pandas learning alone;
  * fleet: mean steps over the four founders, MFD / isolated (target <= 0.6);
  * joiner: the robot that joins mid-run, its steps after joining, MFD / isolated
    (target <= 0.25);
  * KUKA: the KUKA founder among Panda neighbours, MFD / isolated (target <= 0.5);
    and (``robots_kuka``) a KUKA that joins three trained Pandas, its steps after
    joining, MFD / isolated: knowledge across arm types, by distillation.

  Medians over seeds. A robot that does not reach 90 % within the run is censored at
  the steps it took (a lower bound): an isolated robot censored makes the ratio an
  upper bound, an MFD robot censored makes it a lower bound; both are marked.
- **Push** (``--push``): success after a fixed budget, isolated vs MFD, and each final
  policy's progress on held-out episodes (1 for a success, else half the share of the
  block's distance to its goal that the episode closed): TD3+HER needs 10^5+ steps for
  push, so success alone reads 0 for every policy at budgets that fit here.

- **Push with a fleet** (``--task push``, issue 16; ``results/robots_push.json``): the
  ``robots_push_fleet`` scenario (four founders of three arm types on the default settings,
  10 % packet loss, a fifth robot joining halfway) under isolated and each policy of
  ``--policies``; per robot and fleet-total env steps to 50 % and 90 % success (censored at
  the steps taken when never reached), ``founders_ratio_50``, ``fleet_total_over_single_50``,
  ``joiner_ratio_50``, and ``training_speedup`` quoted from ``results/robots_speed.json``.
- **A joiner unlike the founders** (``robots_unlike``: an xArm6 joining two Pandas and two
  KUKAs, on a table 10 cm higher, goals outside every founder's region): the reach figures
  of that fleet, with ``unlike_joiner_ratio`` and ``unlike_founders_ratio`` at the top of
  ``figures`` (``--unlike-duration`` shortens it; ``--no-unlike`` skips it).

Each (policy, seed) run is a separate process (``--jobs`` at a time, reach and KUKA runs in
one pool): PyBullet clients and global RNGs stay apart, and N cores run N fleets.

Why the founders' figure needs the ``robots`` scenario's settings (measured on seed 0 with
an exploration harness that averages four founders' actor, critic and targets directly):
at one gradient step per env step a robot alone took ~2,500 env steps to 90 %, of which
the random warm-up (``learning_starts``) is 100; averaging every 50 or 200 steps gave
0.75-0.8x, and applying the sum of the four updates instead of their mean diverged. At
four gradient steps per env step (every policy alike) a robot alone took ~950 steps and
the average every 25-50 steps 0.63-0.85x (every 200 steps: none): four robots' models
averaged are four times the experience per update, not four times the updates. MFD gets
there in rounds (``merge_window``: each round's models merged together, not one at a time
a chunk late) that reach the whole fleet (``share_hops``: the founders' radio links can
form a chain). At four gradient steps a robot alone was no longer bound by updates (eight
gave 850 steps against 875, seed 0) but by the noise of its own small experience: the
learning rate (every policy alike) then mattered more. Seeds 0 and 1, founders' mean
steps to 90 %, alone / MFD: 1e-3 875+1225 / 725+1200, 2e-3 925+1025 / 612+762, 4e-3
675+1138 / 500+662 (one robot alone not at 90 % in 2,000 steps). 4e-3 is the best of
the three for both, and the shipped one; a round's average of four robots' updates is
less noisy than one robot's and takes the larger step better.

Scoring costs no robot time: the shipped fleet gates and decides with each robot's own
critic on its own replay states (``score_metric = "critic"``). Scored on 10 episodes of
the robot's cell instead, an MFD founder ran ~10x its training steps in scoring, uncounted;
with rounds every 50 env steps the founders' ratio was 0.74 on episodes and 0.81 on the
critic (seeds 0-2). Rounds every 10 env steps, with the target networks merged too
(``share_targets``) and int8 packets, brought the founders' mean steps down by ~15 % and
the joiner's to its first measurement (seeds 0-4: 0.76x isolated, joiner 0.04x).
A robot's isolated steps move with the chunk size too (robots of one process share the
global RNGs, so chunking reorders their draws): 675 / 1,262 / 600 at chunks of 50 and
710 / 785 / 710 at chunks of 10 on seeds 0-2. The ratio is taken within one run.

What sharing could give at all: ``benchmarks/robots_pooled.py`` trains one learner on the
four founders' raw experience together (seeds 0-4, over this benchmark's isolated runs).
With one robot's updates it reaches 0.78x the isolated steps (MFD: 0.76x); as data-parallel
SGD at one robot's compute 0.63x (0.56x at twice the learning rate), the KUKA founder
0.70x; only with four robots' updates in sequence (4x the compute) 0.38x, KUKA 0.42x.

    python benchmarks/robots.py --seeds 0 1 2 --jobs 12         # reach + KUKA, 12 processes
    python benchmarks/robots.py --seeds 0 --jobs 1 --no-kuka    # one seed of reach, ~12 min on a busy 2-core box
    python benchmarks/robots.py --seeds 0 --push --no-reach     # the push budget only
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._common import RESULTS, write_results  # noqa: E402

TARGET = 0.9


_PROGRESS_SEED = 77_000  # held-out push episodes for the final progress, apart from the run's own seeds


def _run(job: tuple[str, int, dict]) -> dict:
    """One fleet run in a worker process: the robots record (and the wall time)."""
    policy, seed, changes = job
    policy = policy.split(":", 1)[-1]  # "section:policy"
    import torch

    torch.set_num_threads(1)
    from apps.robots.config import load
    from apps.robots.fleet import build_fleet, run_fleet
    from apps.robots.run import robot_record

    scenario = load(changes.pop("scenario", "robots"))
    if changes:
        scenario = scenario.replace(**changes)
    started = time.perf_counter()
    fleet = build_fleet(scenario, seed, policy)
    result = run_fleet(fleet)
    record = robot_record(fleet, result)
    if scenario.task == "push":
        # success stays at 0 for every policy long before push is learnt: how far each
        # final policy moves the block towards its goal tells the policies apart meanwhile
        for robot in record["robots"]:
            k = robot["node"]
            robot["final_progress"] = fleet.learners[k].evaluate_episodes(
                fleet.test_envs[k], scenario.eval_episodes, _PROGRESS_SEED + 1000 * k, metric="progress")
    fleet.close()
    record["scores"] = [[None if math.isnan(v) else v for v in row] for row in result.scores]
    record["wall_seconds"] = round(time.perf_counter() - started, 1)
    record["total_bytes"] = int(result.bytes[-1]) if result.bytes else 0
    record["data_bytes"] = int(result.data_bytes[-1]) if result.data_bytes else 0
    record["counters"] = {k: v for k, v in result.extra.items() if isinstance(v, (int, float))}
    return record


def _steps(robot: dict) -> tuple[float, bool]:
    """Steps to the target, and whether it is censored (not reached: steps taken so far)."""
    if robot["steps_to_target"] is not None:
        return float(robot["steps_to_target"]), False
    return float(robot["env_steps"]), True


def _ratio(mfd: list[dict], iso: list[dict]) -> dict:
    m = [_steps(r) for r in mfd]
    i = [_steps(r) for r in iso]
    mean_m = statistics.fmean(s for s, _ in m)
    mean_i = statistics.fmean(s for s, _ in i)
    return {"mfd_steps": mean_m, "isolated_steps": mean_i, "ratio": mean_m / mean_i if mean_i else math.nan,
            "mfd_censored": any(c for _, c in m), "isolated_censored": any(c for _, c in i)}


def reach_figures(records: dict[tuple[str, int], dict], seeds: list[int]) -> dict:
    per_seed = []
    for seed in seeds:
        iso, mfd = records[("isolated", seed)], records[("mfd", seed)]
        founders = [k for k, r in enumerate(iso["robots"]) if r["join_time"] is None]
        joiners = [k for k, r in enumerate(iso["robots"]) if r["join_time"] is not None]
        pandas = [k for k in founders if iso["robots"][k]["arm"] == "panda"]
        kukas = [k for k in founders if iso["robots"][k]["arm"] == "kuka"]
        row = {
            "seed": seed,
            "isolated_panda": _ratio([iso["robots"][k] for k in pandas], [iso["robots"][k] for k in pandas]),
            "fleet": _ratio([mfd["robots"][k] for k in founders], [iso["robots"][k] for k in founders]),
            "joiner": _ratio([mfd["robots"][k] for k in joiners], [iso["robots"][k] for k in joiners]) if joiners else None,
            "kuka": _ratio([mfd["robots"][k] for k in kukas], [iso["robots"][k] for k in kukas]) if kukas else None,
            "per_robot": [{"robot": k, "arm": iso["robots"][k]["arm"],
                           "joins": iso["robots"][k]["join_time"],
                           "isolated": iso["robots"][k]["steps_to_target"],
                           "mfd": mfd["robots"][k]["steps_to_target"],
                           "isolated_final": iso["robots"][k]["final_success"],
                           "mfd_final": mfd["robots"][k]["final_success"]} for k in range(len(iso["robots"]))],
            "mfd_MB": mfd["total_bytes"] / 1e6, "mfd_data_bytes": mfd["data_bytes"],
            "mfd_counters": mfd["counters"],
            "wall_seconds": {"isolated": iso["wall_seconds"], "mfd": mfd["wall_seconds"]},
        }
        per_seed.append(row)

    def median(key: str, field: str = "ratio"):
        values = [row[key][field] for row in per_seed if row[key] is not None]
        return statistics.median(values) if values else None

    def any_censored(key: str, field: str) -> bool:
        return any(row[key][field] for row in per_seed if row[key] is not None)

    summary = {
        "isolated_panda_steps_to_90": median("isolated_panda", "isolated_steps"),
        "fleet_mean_steps_mfd": median("fleet", "mfd_steps"),
        "fleet_mean_steps_isolated": median("fleet", "isolated_steps"),
        "fleet_ratio": median("fleet"), "fleet_target": 0.6,
        "joiner_steps_mfd": median("joiner", "mfd_steps"),
        "joiner_steps_isolated": median("joiner", "isolated_steps"),
        "joiner_ratio": median("joiner"), "joiner_target": 0.25,
        "kuka_steps_mfd": median("kuka", "mfd_steps"),
        "kuka_steps_isolated": median("kuka", "isolated_steps"),
        "kuka_ratio": median("kuka"), "kuka_target": 0.5,
        "censored": {key: {"mfd": any_censored(key, "mfd_censored"), "isolated": any_censored(key, "isolated_censored")}
                     for key in ("isolated_panda", "fleet", "joiner", "kuka")},
    }
    return {"summary": summary, "per_seed": per_seed}


def kuka_figures(records: dict[tuple[str, int], dict], seeds: list[int]) -> dict:
    """The KUKA that joins a fleet of Pandas: its steps after joining, MFD / isolated."""
    rows = []
    for seed in seeds:
        iso, mfd = records[("isolated", seed)], records[("mfd", seed)]
        kukas = [k for k, r in enumerate(iso["robots"]) if r["arm"] == "kuka"]
        row = _ratio([mfd["robots"][k] for k in kukas], [iso["robots"][k] for k in kukas])
        row["seed"] = seed
        rows.append(row)
    return {"per_seed": rows,
            "kuka_steps_mfd": statistics.median(r["mfd_steps"] for r in rows),
            "kuka_steps_isolated": statistics.median(r["isolated_steps"] for r in rows),
            "kuka_ratio": statistics.median(r["ratio"] for r in rows), "kuka_target": 0.5,
            "censored": {"mfd": any(r["mfd_censored"] for r in rows),
                         "isolated": any(r["isolated_censored"] for r in rows)}}


def push_figures(records: dict[tuple[str, int], dict], seeds: list[int]) -> dict:
    rows = []
    for seed in seeds:
        iso, mfd = records[("isolated", seed)], records[("mfd", seed)]
        founders = [k for k, r in enumerate(iso["robots"]) if r["join_time"] is None]
        row = {"seed": seed, "budget_env_steps": iso["robots"][founders[0]]["env_steps"]}
        for policy, record in (("isolated", iso), ("mfd", mfd)):
            for what in ("success", "progress"):
                row[f"{policy}_{what}"] = statistics.fmean(record["robots"][k][f"final_{what}"] for k in founders)
        rows.append(row)
    return {"per_seed": rows,
            **{f"{key}_median": statistics.median(r[key] for r in rows)
               for key in ("isolated_success", "mfd_success", "isolated_progress", "mfd_progress")}}


def _first(series: list, steps: list, target: float) -> tuple[int | None, int | None]:
    """(measurement index, env steps) of a robot's first measurement at ``target`` or above."""
    for i, (v, n) in enumerate(zip(series, steps)):
        if v is not None and v >= target:
            return i, int(n)
    return None, None


def push_task_figures(records: dict[tuple[str, int], dict], seeds: list[int], policies: list[str],
                      targets: tuple[float, ...] = (0.5, 0.9)) -> dict:
    """Issue 16's push figures: per robot and fleet-total env steps to 50 % / 90 % success,
    each sharing policy over isolated on the same seed (medians over seeds); a robot that
    never gets there is censored at the steps it took (marked)."""
    rows = []
    for seed in seeds:
        iso = records[("isolated", seed)]
        founders = [k for k, r in enumerate(iso["robots"]) if r["join_time"] is None]
        joiners = [k for k, r in enumerate(iso["robots"]) if r["join_time"] is not None]
        for policy in policies:
            rec = records[(policy, seed)]
            row: dict = {"seed": seed, "policy": policy,
                         "budget_env_steps_per_founder": max(rec["robots"][k]["env_steps"] for k in founders),
                         "final_success_founders": statistics.fmean(rec["robots"][k]["final_success"] or 0.0
                                                                    for k in founders),
                         "final_progress_founders": statistics.fmean(rec["robots"][k].get("final_progress", 0.0)
                                                                     for k in founders)}
            for target in targets:
                tag = f"{round(target * 100)}"
                per_robot = []
                for k in range(len(rec["robots"])):
                    series = [row_[k] for row_ in rec["scores"]]
                    steps = [row_[k] for row_ in rec["env_steps"]]
                    idx, n = _first(series, steps, target)
                    per_robot.append({"node": k, "steps": n if n is not None else rec["robots"][k]["env_steps"],
                                      "censored": n is None, "measurement": idx})
                row[f"steps_{tag}"] = per_robot
                # the fleet's total env steps at the first measurement where the founders'
                # mean success reaches the target
                total = None
                for i, scores in enumerate(rec["scores"]):
                    vals = [scores[k] for k in founders if scores[k] is not None]
                    if vals and statistics.fmean(vals) >= target:
                        total = int(sum(n for n in rec["env_steps"][i] if n is not None))
                        break
                row[f"fleet_total_{tag}"] = total
            rows.append(row)
    out: dict = {"per_seed": rows, "policies": policies}
    iso_rows = {r["seed"]: r for r in rows if r["policy"] == "isolated"}
    for policy in policies:
        if policy == "isolated":
            continue
        mine = [r for r in rows if r["policy"] == policy]
        for target in targets:
            tag = f"{round(target * 100)}"
            founders_ratios, joiner_ratios, fleet_ratios, censored = [], [], [], False
            for r in mine:
                base = iso_rows[r["seed"]]
                founders = [k for k, x in enumerate(records[("isolated", r["seed"])]["robots"])
                            if x["join_time"] is None]
                joiners = [k for k in range(len(r[f"steps_{tag}"])) if k not in founders]
                # a robot at the target under neither policy has no ratio (both counts are
                # only the steps each took); one censored side makes the ratio a bound
                ratios = []
                for k in founders:
                    a, b = r[f"steps_{tag}"][k], base[f"steps_{tag}"][k]
                    if a["censored"] and b["censored"]:
                        continue
                    censored |= a["censored"] or b["censored"]
                    ratios.append(a["steps"] / max(b["steps"], 1))
                if ratios:
                    founders_ratios.append(statistics.fmean(ratios))
                for k in joiners:
                    a, b = r[f"steps_{tag}"][k], base[f"steps_{tag}"][k]
                    if a["censored"] and b["censored"]:
                        continue
                    censored |= a["censored"] or b["censored"]
                    joiner_ratios.append(a["steps"] / max(b["steps"], 1))
                single = [base[f"steps_{tag}"][k] for k in founders]
                if r[f"fleet_total_{tag}"] is not None and not any(x["censored"] for x in single):
                    fleet_ratios.append(r[f"fleet_total_{tag}"] / statistics.median(x["steps"] for x in single))
            prefix = "" if policy == "mfd" else f"{policy}_"
            out[f"{prefix}founders_ratio_{tag}"] = statistics.median(founders_ratios) if founders_ratios else None
            out[f"{prefix}joiner_ratio_{tag}"] = statistics.median(joiner_ratios) if joiner_ratios else None
            out[f"{prefix}fleet_total_over_single_{tag}"] = statistics.median(fleet_ratios) if fleet_ratios else None
            out[f"{prefix}censored_{tag}"] = censored
    for policy in policies:
        mine = [r for r in rows if r["policy"] == policy]
        out[f"{policy}_final_success_median"] = statistics.median(r["final_success_founders"] for r in mine)
        out[f"{policy}_final_progress_median"] = statistics.median(r["final_progress_founders"] for r in mine)
    return out


def training_speed() -> dict:
    """``training_speedup`` as ``benchmarks/robots_speed.py`` last measured it."""
    path = RESULTS / "robots_speed.json"
    if not path.exists():
        return {"training_speedup": None, "note": "run benchmarks/robots_speed.py first"}
    doc = json.loads(path.read_text())
    f = doc["figures"]
    return {"training_speedup": f["training_speedup"], "source": "benchmarks/results/robots_speed.json",
            "command": doc.get("command"), "timestamp": doc.get("timestamp"),
            "basis": f.get("training_speedup_basis"), "settings": f.get("settings"), "policy": f.get("policy"),
            "sb3_steps_per_cpu_s": f.get("sb3_steps_per_cpu_s")}


def _compact(record: dict) -> dict:
    """A run's record without the per-measurement series (kept: per robot figures)."""
    keep = ("node", "arm", "join_time", "steps_to_target", "final_success", "final_progress", "env_steps",
            "score_env_steps",
            "bytes_sent", "counters")
    return {"robots": [{k: r.get(k) for k in keep} for r in record["robots"]],
            "wall_seconds": record["wall_seconds"], "total_bytes": record["total_bytes"],
            "data_bytes": record["data_bytes"], "counters": record["counters"],
            "series": {"times": record["times"], "env_steps": record["env_steps"], "scores": record.get("scores")}}


def env_speed() -> dict:
    path = RESULTS / "robot_envs.json"
    if not path.exists():
        return {"note": "run benchmarks/robot_envs.py first"}
    doc = json.loads(path.read_text())
    envs = doc["figures"]["envs"]
    return {"source": "benchmarks/results/robot_envs.json", "command": doc.get("command"),
            "timestamp": doc.get("timestamp"),
            "rows": [{"task": e["task"], "ours_id": e.get("ours_id"), "panda_gym_id": e.get("panda_gym_id"),
                      "ours_steps_per_s": round(e["ours_steps_per_s"]),
                      "panda_gym_steps_per_s": round(e["panda_gym_steps_per_s"]),
                      "ratio": round(e["ratio"], 2), "ratio_paired_median": round(e.get("ratio_paired_median", math.nan), 2)}
                     for e in envs], "target_ratio": 1.5}


def run_all(jobs: list[tuple[str, int, dict]], workers: int) -> dict[tuple[str, int], dict]:
    records = {}
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(_run, (p, s, dict(c))): (p, s) for p, s, c in jobs}
        for future in futures:
            key = futures[future]
            records[key] = future.result()
            r = records[key]
            steps = [x["steps_to_target"] for x in r["robots"]]
            print(f"  {key[0]:>14} seed {key[1]}: steps to 90% per robot {steps}  ({r['wall_seconds']:.0f} s wall)",
                  flush=True)
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="fleet runs at a time (processes)")
    parser.add_argument("--scenario", default="robots", help="reach: robots scenario file or shipped name")
    parser.add_argument("--duration", type=float, help="reach: simulated seconds (default: the scenario's)")
    parser.add_argument("--push", "--full", action="store_true", help="also the push budget (isolated vs MFD)")
    parser.add_argument("--push-duration", type=float, default=400.0, help="push: simulated seconds (25 env steps each)")
    parser.add_argument("--no-reach", action="store_true", help="skip the reach learning figures")
    parser.add_argument("--kuka-scenario", default="robots_kuka", help="a KUKA joining Pandas (shipped name or file)")
    parser.add_argument("--no-kuka", action="store_true", help="skip the KUKA-joins-Pandas figures")
    parser.add_argument("--unlike-scenario", default="robots_unlike",
                        help="a joiner of another arm type, table height and goal region (shipped name or file)")
    parser.add_argument("--no-unlike", action="store_true", help="skip the unlike-joiner figures")
    parser.add_argument("--unlike-duration", type=float, help="unlike joiner: simulated seconds (default: the scenario's)")
    parser.add_argument("--out", type=Path, default=None, help="default: results/robots.json "
                        "(results/robots_push.json with --task push)")
    parser.add_argument("--task", choices=("reach", "push"), default="reach",
                        help="push: issue 16's push fleet (--push-scenario) -> results/robots_push.json")
    parser.add_argument("--push-scenario", default="robots_push_fleet", help="push fleet (shipped name or file)")
    parser.add_argument("--policies", nargs="+", default=["isolated", "mfd"],
                        help="--task push: policies to run (isolated first), e.g. isolated mfd fedavg gossip")
    args = parser.parse_args(argv)
    if args.task == "push":
        return push_main(args, argv)
    args.out = args.out or RESULTS / "robots.json"
    command = "python benchmarks/robots.py " + " ".join(argv if argv is not None else sys.argv[1:])
    figures: dict = {"env_speed": env_speed()}
    started = time.time()
    load_before = os.getloadavg()[0]
    # every section's runs go into one pool: with as many workers as runs, the whole
    # benchmark takes as long as its slowest run
    sections: dict[str, dict] = {}
    if not args.no_reach:
        changes = {"duration": args.duration} if args.duration else {}
        sections["reach"] = {**changes, "scenario": str(args.scenario)}
    if not args.no_kuka:
        sections["kuka"] = {"scenario": args.kuka_scenario}
    if not args.no_unlike:
        sections["unlike"] = {"scenario": args.unlike_scenario,
                              **({"duration": args.unlike_duration} if args.unlike_duration else {})}
    jobs = [(f"{section}:{p}", s, c) for section, c in sections.items() for s in args.seeds for p in ("isolated", "mfd")]
    print(f"{len(jobs)} fleet runs ({', '.join(sections)}), {args.jobs} at a time", flush=True)
    every = run_all(jobs, args.jobs) if jobs else {}

    def section_records(section: str) -> dict[tuple[str, int], dict]:
        return {(key.split(":", 1)[1], seed): r for (key, seed), r in every.items() if key.startswith(section + ":")}

    if "reach" in sections:
        records = section_records("reach")
        figures["reach"] = reach_figures(records, args.seeds)
        figures["reach"]["runs"] = {f"{p}/seed{s}": _compact(r) for (p, s), r in records.items()}
        print(json.dumps(figures["reach"]["summary"], indent=2))
    if "kuka" in sections:
        records = section_records("kuka")
        figures["kuka_joins_pandas"] = kuka_figures(records, args.seeds)
        figures["kuka_joins_pandas"]["runs"] = {f"{p}/seed{s}": _compact(r) for (p, s), r in records.items()}
        print(json.dumps({k: v for k, v in figures["kuka_joins_pandas"].items() if k not in ("runs", "per_seed")},
                         indent=2))
    if "unlike" in sections:
        records = section_records("unlike")
        unlike = reach_figures(records, args.seeds)
        figures["unlike_joiner"] = {"scenario": args.unlike_scenario, "summary": unlike["summary"],
                                    "per_seed": unlike["per_seed"],
                                    "runs": {f"{p}/seed{s}": _compact(r) for (p, s), r in records.items()}}
        print(json.dumps(unlike["summary"], indent=2))
    if args.push:
        changes = {"scenario": "robots_push", "duration": args.push_duration}
        jobs = [(p, s, changes) for s in args.seeds for p in ("isolated", "mfd")]
        print(f"push: {len(jobs)} fleet runs", flush=True)
        records = run_all(jobs, args.jobs)
        figures["push"] = push_figures(records, args.seeds)
        figures["push"]["runs"] = {f"{p}/seed{s}": _compact(r) for (p, s), r in records.items()}
        print(json.dumps({k: v for k, v in figures["push"].items() if k != "per_seed"}, indent=2))
    # sections not run this time keep their last figures (and say when they were measured)
    if args.out.exists():
        previous = json.loads(args.out.read_text())
        for section in ("reach", "kuka_joins_pandas", "push", "unlike_joiner"):
            if section not in figures and section in previous.get("figures", {}):
                kept = previous["figures"][section]
                kept.setdefault("measured_at", previous.get("timestamp"))
                kept.setdefault("command", previous.get("command"))
                figures[section] = kept
    if "unlike_joiner" in figures:
        # issue 16's keys: the unlike joiner's and the founders' steps to 90 %, MFD / isolated
        figures["unlike_joiner_ratio"] = figures["unlike_joiner"]["summary"]["joiner_ratio"]
        figures["unlike_founders_ratio"] = figures["unlike_joiner"]["summary"]["fleet_ratio"]
        figures["unlike_seeds"] = len(figures["unlike_joiner"]["per_seed"])
    for section in ("reach", "kuka_joins_pandas", "push", "unlike_joiner"):
        if section in figures and "measured_at" not in figures[section]:
            figures[section]["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            figures[section]["command"] = command
    path = write_results("robots", figures, path=args.out, command=command, seeds=args.seeds,
                         wall_seconds=round(time.time() - started), load_average_at_start=round(load_before, 2),
                         note="steps are each robot's own env steps; simulated time is robot time (25 steps/s); "
                              "ratios are medians over seeds of MFD/isolated on the same fleet and seed")
    print(f"written: {path}")
    return 0


def push_main(args: argparse.Namespace, argv: list[str] | None) -> int:
    """``--task push``: the push fleet under each policy on each seed -> results/robots_push.json."""
    command = "python benchmarks/robots.py " + " ".join(argv if argv is not None else sys.argv[1:])
    policies = list(dict.fromkeys(["isolated", *args.policies]))
    started = time.time()
    changes = {"scenario": args.push_scenario, "duration": args.push_duration}
    jobs = [(p, s, changes) for s in args.seeds for p in policies]
    print(f"push: {len(jobs)} fleet runs, {args.jobs} at a time", flush=True)
    records = run_all(jobs, args.jobs)
    figures = push_task_figures(records, args.seeds, policies)
    figures["training_speedup"] = training_speed()["training_speedup"]
    figures["training_speed"] = training_speed()
    figures["scenario"] = args.push_scenario
    figures["duration"] = args.push_duration
    figures["runs"] = {f"{p}/seed{s}": _compact(r) for (p, s), r in records.items()}
    print(json.dumps({k: v for k, v in figures.items() if k not in ("per_seed", "runs")}, indent=2))
    path = write_results("robots_push", figures, path=args.out or RESULTS / "robots_push.json", command=command,
                         seeds=args.seeds, wall_seconds=round(time.time() - started),
                         note="steps are each robot's own env steps (25 per simulated second); ratios are "
                              "medians over seeds of policy/isolated on the same fleet and seed; censored: "
                              "a robot never at the target within the budget counts the steps it took")
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
