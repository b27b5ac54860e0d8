"""The core at scale: one simulated hour of 1,000 / 3,000 / 10,000 nodes (issue 13).

    python benchmarks/scale.py                      # the sweep and MFD vs gossip (~25 min on 2 cores)
    python benchmarks/scale.py --only mfd --repeats 7
    python benchmarks/scale.py --one gossip 1000 3600   # one run, printed as JSON (what the sweep calls)

Every node holds a tiny model and 16 synthetic samples of a 2-class problem, trains one
8-sample step and shares every 30 simulated seconds on a small-world graph (6
neighbours): what is measured is the simulator and the protocol, not the learning.
Each run is a fresh process, so its peak RSS is its own. Reported: wall and CPU time,
peak RSS, datagrams; the growth exponents of time and memory from 1k to 10k nodes
(log-log slope); MFD's CPU over gossip's at 1,000 nodes, medians of interleaved repeats
(mfd, gossip, mfd, ...). Writes benchmarks/results/scale.json.
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import write_results  # noqa: E402

PERIOD_S = 30.0  # one 8-sample step and one share per node every 30 simulated s
# like for like with gossip, which pushes one model a period: MFD sends one too
FANOUT = 1


def node_world(n: int, policy: str, duration: float):
    import numpy as np
    import torch

    from mfd_core import MLPFamily, SimNetwork, TorchSupervisedLearner, World
    from mfd_core.network.topology import small_world
    from mfd_core.scenario import Policy

    graph = small_world(n, k=6, p=0.1, seed=0, compute=8 / PERIOD_S)  # a step takes the period
    family = MLPFamily(8, (8,), 2)
    rng = np.random.default_rng(0)
    learners = {}
    for node in range(n):
        x = rng.normal(size=(16, 8)).astype(np.float32)
        y = (x[:, 0] > 0).astype(np.int64)
        learners[node] = TorchSupervisedLearner(family.build(1.0, seed=0), (x[:12], y[:12]), (x[12:], y[12:]),
                                                batch_size=8, seed=node, family="mlp")
    test_x = torch.from_numpy(rng.normal(size=(64, 8)).astype(np.float32))
    test_y = (test_x[:, 0] > 0).long()
    settings = Policy(name=policy, gossip_interval=PERIOD_S, max_silence=PERIOD_S, fanout=FANOUT)
    return World(SimNetwork(graph, seed=0), learners, policy=settings.make(), transport=settings.transport,
                 seed=0, duration=duration, eval_interval=duration, local_steps=1,
                 evaluate=lambda _n, learner: learner.evaluate(test_x, test_y), name=f"scale-{n}-{policy}")


def one(policy: str, n: int, duration: float) -> dict:
    t0, cpu0 = time.perf_counter(), time.process_time()
    world = node_world(n, policy, duration)
    built = time.perf_counter() - t0
    result = world.run()
    stats = world.network.stats()
    return {"policy": policy, "nodes": n, "simulated_s": duration, "build_s": round(built, 2),
            "wall_s": round(time.perf_counter() - t0, 2), "cpu_s": round(time.process_time() - cpu0, 2),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
            "datagrams": int(stats["air_packets"]), "bytes": int(stats["air_bytes"]),
            "control_datagrams": int(stats["kinds"].get("control", {}).get("air_packets", 0)),
            "final_accuracy": round(result.final_mean_score, 4)}


def run_one(policy: str, n: int, duration: float) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", policy, str(n), str(duration)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def slope(xs: list[float], ys: list[float]) -> float:
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("sweep", "mfd"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000, 10000])
    parser.add_argument("--duration", type=float, default=3600.0)
    parser.add_argument("--repeats", type=int, default=7, help="interleaved MFD / gossip repeats at 1,000 nodes")
    parser.add_argument("--one", nargs=3, metavar=("POLICY", "NODES", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), float(args.one[2]))))
        return 0
    figures, detail = {}, {}
    if args.only in (None, "mfd"):
        pairs = []
        for i in range(args.repeats):
            mfd = run_one("mfd", 1000, args.duration)
            gossip = run_one("gossip", 1000, args.duration)
            pairs.append((mfd, gossip))
            print(f"  1,000 nodes, one hour, repeat {i + 1}: mfd {mfd['wall_s']:.1f} s wall / {mfd['cpu_s']:.1f} s CPU "
                  f"({mfd['datagrams']:,} datagrams, {mfd['control_datagrams']:,} control), gossip "
                  f"{gossip['wall_s']:.1f} s / {gossip['cpu_s']:.1f} s ({gossip['datagrams']:,})", flush=True)
        figures["mfd_over_gossip_cpu_1000"] = statistics.median(m["cpu_s"] / g["cpu_s"] for m, g in pairs)
        figures["mfd_hour_1000_wall_s"] = statistics.median(m["wall_s"] for m, _ in pairs)
        detail["mfd_vs_gossip_1000"] = [{"mfd": m, "gossip": g} for m, g in pairs]
    if args.only in (None, "sweep"):
        sweep = []
        for n in args.sizes:
            run = run_one("gossip", n, args.duration)
            sweep.append(run)
            print(f"  gossip, {n:,} nodes, one hour: {run['wall_s']:.1f} s wall, {run['cpu_s']:.1f} s CPU, "
                  f"peak {run['peak_rss_gb']:.2f} GB, {run['datagrams']:,} datagrams", flush=True)
        detail["gossip_sweep"] = sweep
        sizes = [r["nodes"] for r in sweep]
        if len(sizes) > 1:
            figures["rss_exponent"] = slope(sizes, [r["peak_rss_gb"] for r in sweep])
            figures["time_exponent"] = slope(sizes, [r["wall_s"] for r in sweep])
        largest = sweep[-1]
        figures[f"gossip_hour_{largest['nodes']}_wall_s"] = largest["wall_s"]
        figures[f"gossip_hour_{largest['nodes']}_peak_rss_gb"] = largest["peak_rss_gb"]
    for key, value in figures.items():
        print(f"{key}: {value:.4g}")
    path = write_results("scale", figures, **detail,
                         targets={"mfd_over_gossip_cpu_1000": 1.5, "mfd_hour_1000_wall_s": 60,
                                  "gossip_hour_10000_wall_s": 600, "gossip_hour_10000_peak_rss_gb": 6,
                                  "rss_exponent": 1.1})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
