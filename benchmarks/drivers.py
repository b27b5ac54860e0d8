"""One core, three networks: do the simulator, real UDP processes and Ray agree, and does
Ray pay off on a compute-bound fleet? (issue 12)

    python benchmarks/drivers.py                 # everything (~1 h on 2 cores)
    python benchmarks/drivers.py --only agree    # sim / ray / udp agreement, loss, a killed node
    python benchmarks/drivers.py --only speed    # Ray, 2 workers against 1; overhead per datagram

Agreement: digits (20 nodes, 60 simulated s) under MFD on seeds 0-2, each on the
simulator, on Ray (2 actors) and on UDP (20 OS processes on loopback, the scenario's
links imposed at the sockets, real time at ``--speed``); then UDP with 20 % loss imposed
against UDP without loss (the radio's distance-dependent loss off in both), and a UDP
run in which one node process is SIGKILLed halfway against the same run without the kill
(survivors' accuracy). Speed: 64 nodes with the CNN learner on Ray with 2 worker actors
against 1, interleaved; Ray's overhead per datagram against the simulator on digits.
Writes benchmarks/results/drivers.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS, command, commit, load_average, write_results  # noqa: E402
from mfd_core import load_scenario  # noqa: E402
from mfd_core.runtime.launch import run_on  # noqa: E402
from mfd_core.runtime.recipe import scenario_recipe  # noqa: E402

DIGITS = Path(__file__).resolve().parents[1] / "apps" / "scenarios" / "digits.toml"


def log(*parts) -> None:
    print(*parts, flush=True)


def survivors_mean(result, victim: int) -> float:
    final = [s for n, s in zip(result.node_ids, result.scores[-1]) if n != victim]
    return statistics.fmean(final)


def agreement(seeds: list[int], speed: float, duration: float) -> dict:
    base = load_scenario(DIGITS).replace(duration=duration)
    clear = base.replace(topology={"loss": 0.0, "degrade": False})
    lossy = base.replace(topology={"loss": 0.2, "degrade": False})
    runs: dict[str, list] = {key: [] for key in ("sim", "ray", "udp", "udp_lossless", "udp_loss20",
                                                 "udp_killed", "udp_unkilled_survivors")}
    victim = 7
    for seed in seeds:
        work = Path(tempfile.mkdtemp(prefix=f"mfd-drivers-{seed}-"))
        for key, scenario, network in (("sim", base, "sim"), ("ray", base, "ray"), ("udp", base, "udp"),
                                       ("udp_lossless", clear, "udp"), ("udp_loss20", lossy, "udp")):
            t0 = time.perf_counter()
            r = run_on(scenario_recipe(scenario, seed), network, workers=2, speed=speed, workdir=work / key)
            runs[key].append({"seed": seed, "accuracy": r.final_mean_score, "bytes": r.bytes[-1],
                              "wall_s": round(time.perf_counter() - t0, 1)})
            if key == "udp":
                runs["udp_unkilled_survivors"].append({"seed": seed, "accuracy": survivors_mean(r, victim)})
            log(f"  seed {seed} {key:>13}: accuracy {r.final_mean_score:.4f}, {r.bytes[-1] / 1e6:.2f} MB, "
                f"{time.perf_counter() - t0:.0f} s wall")

        def kill_halfway(pids: dict[int, int]) -> None:
            threading.Timer(duration / 2 / speed, os.kill, (pids[victim], signal.SIGKILL)).start()

        t0 = time.perf_counter()
        r = run_on(scenario_recipe(base, seed), "udp", speed=speed, workdir=work / "killed", on_start=kill_halfway)
        runs["udp_killed"].append({"seed": seed, "accuracy": survivors_mean(r, victim),
                                   "dead_nodes": r.extra.get("dead_nodes", []),
                                   "finished": all(math.isfinite(s) for n, s in zip(r.node_ids, r.scores[-1])
                                                   if n != victim)})
        log(f"  seed {seed}   udp, node {victim} killed at {duration / 2:.0f} s: survivors {survivors_mean(r, victim):.4f}, "
            f"reported dead {r.extra.get('dead_nodes')}, {time.perf_counter() - t0:.0f} s wall")

    def diffs(a: str, b: str) -> list[float]:
        return [(x["accuracy"] - y["accuracy"]) * 100 for x, y in zip(runs[a], runs[b])]

    def ratios(a: str, b: str) -> list[float]:
        return [x["bytes"] / y["bytes"] for x, y in zip(runs[a], runs[b])]

    figures = {
        "udp_minus_sim_points": statistics.median(diffs("udp", "sim")),
        "ray_minus_sim_points": statistics.median(diffs("ray", "sim")),
        "udp_bytes_ratio": statistics.median(ratios("udp", "sim")),
        "ray_bytes_ratio": statistics.median(ratios("ray", "sim")),
        "udp_loss20_minus_lossless_points": statistics.median(diffs("udp_loss20", "udp_lossless")),
        "killed_node_survivors_minus_points": statistics.median(diffs("udp_killed", "udp_unkilled_survivors")),
    }
    return {"figures": figures, "runs": runs, "victim": victim, "speed": speed, "duration": duration}


def speedup(repeats: int, duration: float, nodes: int) -> dict:
    cnn = load_scenario(DIGITS).replace(duration=duration, eval_interval=duration / 4,
                                        topology={"nodes": nodes, "radius": 0.25},
                                        learner={"kind": "cnn", "local_steps": 10})
    walls: dict[int, list[float]] = {1: [], 2: []}
    for i in range(repeats):
        for workers in (1, 2):  # interleaved: 1, 2, 1, 2, ...
            t0 = time.perf_counter()
            r = run_on(scenario_recipe(cnn, 0), "ray", workers=workers)
            walls[workers].append(time.perf_counter() - t0)
            log(f"  CNN x{nodes}, {duration:.0f} s, ray {workers} worker(s): {walls[workers][-1]:.1f} s wall, "
                f"accuracy {r.final_mean_score:.3f}")
    ratio = [one / two for one, two in zip(walls[1], walls[2])]
    # overhead per datagram: digits under gossip (many datagrams, little compute), ray 1 actor vs sim
    chatty = load_scenario(DIGITS).replace(duration=20.0).with_policy("gossip")
    over = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sim = run_on(scenario_recipe(chatty, 0), "sim")
        t_sim = time.perf_counter() - t0
        t0 = time.perf_counter()
        ray = run_on(scenario_recipe(chatty, 0), "ray", workers=1)
        t_ray = time.perf_counter() - t0
        over.append((t_ray - t_sim) / max(ray.packets[-1], 1) * 1e6)
        log(f"  gossip digits 20 s: sim {t_sim:.1f} s, ray 1 actor {t_ray:.1f} s, {ray.packets[-1]} datagrams "
            f"-> {over[-1]:.1f} us each")
    return {"figures": {"ray_speedup_2_over_1": statistics.median(ratio),
                        "ray_overhead_us_per_datagram": statistics.median(over)},
            "walls_1_worker": walls[1], "walls_2_workers": walls[2], "nodes": nodes, "duration": duration,
            "ratios": ratio, "overhead_us_per_datagram": over}


def _previous() -> dict:
    try:
        return json.loads((RESULTS / "drivers.json").read_text())
    except (OSError, ValueError):
        return {}


def _provenance() -> dict:
    """What a part of the benchmark ran on: its command, commit and the load at its start."""
    return {"command": command(), "commit": commit(), "load_average_1m_at_start": load_average()}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("agree", "speed"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--speed", type=float, default=1.0, help="UDP: simulated seconds per wall second")
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cnn-nodes", type=int, default=64)
    parser.add_argument("--cnn-duration", type=float, default=20.0)
    args = parser.parse_args(argv)
    figures, detail = {}, {}
    if args.only:
        # one part at a time (the speed part wants an idle machine): keep the other part's
        # figures and details from the last run, each part recording its own command and commit
        previous = _previous()
        other = {"agree": "agreement", "speed": "speed"}["speed" if args.only == "agree" else "agree"]
        if other in previous:
            detail[other] = previous[other]
            figures.update(previous[other].get("figures", {}))
    if args.only in (None, "agree"):
        log(f"agreement: digits, MFD, seeds {args.seeds}, {args.duration:.0f} simulated s")
        detail["agreement"] = {**_provenance(), **agreement(args.seeds, args.speed, args.duration)}
        figures.update(detail["agreement"]["figures"])
    if args.only in (None, "speed"):
        log(f"speed: {args.cnn_nodes} CNN nodes on Ray, 2 workers against 1, {args.repeats} interleaved repeats")
        detail["speed"] = {**_provenance(), **speedup(args.repeats, args.cnn_duration, args.cnn_nodes)}
        figures.update(detail["speed"]["figures"])
    for key, value in figures.items():
        log(f"{key}: {value:.4g}")
    path = write_results("drivers", figures, **detail)
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
