"""The MFD process against isolated learning, FedAvg and gossip on the shipped digits scenario.

Prints and records (``benchmarks/results/process.json``, curves as PNG beside it):

1. accuracy and bytes, 4 policies x 3 seeds: MFD's final mean test accuracy against
   FedAvg's, and the bytes MFD needs to reach FedAvg's final accuracy minus 2 points;
2. the FedAvg server (and, for MFD, the same node) failing at 30% of the run;
3. 20% packet loss on every link: what MFD loses;
4. 30% of the nodes leaving and rejoining mid-run: how long a rejoining node takes to
   reach the fleet's median accuracy;
5. the simulator's own speed: 10 nodes with a 100k-parameter MLP through the
   equivalent of 5 FedAvg rounds (FedAvg and MFD side by side), and 1,000 nodes with a
   tiny model through one simulated hour of gossip (wall and CPU time, peak memory),
   then MFD on the same 1,000 nodes (10 simulated minutes unless asked for more).

    python benchmarks/process.py            # everything (~10 min on 2 cores)
    python benchmarks/process.py --quick    # 1 seed, shorter runs
    python benchmarks/process.py --only speed --mfd-1000-seconds 3600   # MFD's whole hour too
"""
from __future__ import annotations

import argparse
import math
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS, write_results  # noqa: E402
from mfd_core.runtime import build_world  # noqa: E402
from mfd_core.metrics import RunResult  # noqa: E402
from mfd_core.report import COLOURS  # noqa: E402
from mfd_core.scenario import load  # noqa: E402

SCENARIO = Path(__file__).resolve().parents[1] / "apps" / "scenarios" / "digits.toml"
# 1,000 nodes each training a real (tiny) torch model and pushing it every 30 s: 120,000
# exchanges in the hour, each a real train step, encode, 1+ datagrams, reassembly, merge.
GOSSIP_INTERVAL_1000 = 30.0


def run(scenario, policy: str, seed: int, **changes) -> RunResult:
    world = build_world(scenario.with_policy(policy, **changes), seed)
    return world.run()


def median(values):
    values = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(values) if values else math.nan


def accuracy_and_bytes(scenario, seeds, log) -> dict:
    runs = {p: [run(scenario, p, s) for s in seeds] for p in ("isolated", "fedavg", "gossip", "mfd")}
    per_seed = []
    for i, seed in enumerate(seeds):
        fed, mfd = runs["fedavg"][i], runs["mfd"][i]
        target = fed.final_mean_score - 0.02
        per_seed.append({
            "seed": seed,
            **{f"{p}_final_acc": round(runs[p][i].final_mean_score, 4) for p in runs},
            **{f"{p}_MB": round(runs[p][i].bytes[-1] / 1e6, 3) for p in runs},
            "target_acc": round(target, 4),
            "mfd_MB_to_target": round(mfd.bytes_to(target) / 1e6, 3),
            "fedavg_MB_to_target": round(fed.bytes_to(target) / 1e6, 3),
            "mfd_time_to_target_s": mfd.time_to(target),
            "fedavg_time_to_target_s": fed.time_to(target),
            "mfd_vs_fedavg_final_points": round(100 * (mfd.final_mean_score - fed.final_mean_score), 2),
            "mfd_MB_to_target_over_fedavg_total_MB": round(mfd.bytes_to(target) / fed.bytes[-1], 3),
            "mfd_MB_to_target_over_fedavg_MB_to_target": round(mfd.bytes_to(target) / fed.bytes_to(target), 3),
            "mfd_data_bytes": mfd.data_bytes[-1],
        })
        log(f"  seed {seed}: " + ", ".join(f"{p} {runs[p][i].final_mean_score:.3f}/{runs[p][i].bytes[-1] / 1e6:.1f}MB"
                                          for p in runs))
    summary = {key: median([row[key] for row in per_seed]) for key in per_seed[0] if key != "seed"}
    summary["targets"] = {
        "mfd_within_2_points_of_fedavg": summary["mfd_vs_fedavg_final_points"] >= -2.0,
        "mfd_bytes_to_target_at_most_half_fedavg_total": summary["mfd_MB_to_target_over_fedavg_total_MB"] <= 0.5,
        "mfd_bytes_to_target_at_most_half_fedavg_bytes_to_target":
            summary["mfd_MB_to_target_over_fedavg_MB_to_target"] <= 0.5,
    }
    return {"per_seed": per_seed, "median": summary, "_runs": runs}


def server_failure(scenario, seeds, log) -> dict:
    faulty = scenario.replace(faults=[{"kind": "server_down", "at": 0.3}])
    out = []
    curves = {}
    for seed in seeds:
        fed = run(faulty, "fedavg", seed)
        server = fed.extra["server"]
        # MFD has no server; the node FedAvg used as one fails at the same time
        mfd_faulty = scenario.replace(faults=[{"kind": "node_leave", "at": 0.3, "nodes": [server]}])
        mfd = run(mfd_faulty, "mfd", seed)
        t_fail = 0.3 * scenario.duration
        i_fail = next(i for i, t in enumerate(fed.times) if t >= t_fail)
        out.append({
            "seed": seed, "server": server,
            "fedavg_acc_at_failure": round(float(fed.mean_scores()[i_fail]), 4),
            "fedavg_final_acc": round(fed.final_mean_score, 4),
            "fedavg_gain_after_failure_points": round(100 * (fed.final_mean_score - fed.mean_scores()[i_fail]), 2),
            "mfd_acc_at_failure": round(float(mfd.mean_scores()[i_fail]), 4),
            "mfd_final_acc": round(mfd.final_mean_score, 4),
            "mfd_gain_after_failure_points": round(100 * (mfd.final_mean_score - mfd.mean_scores()[i_fail]), 2),
        })
        curves[seed] = (fed, mfd)
        log(f"  seed {seed}: FedAvg {out[-1]['fedavg_acc_at_failure']:.3f} -> {fed.final_mean_score:.3f}, "
            f"MFD {out[-1]['mfd_acc_at_failure']:.3f} -> {mfd.final_mean_score:.3f}")
    return {"per_seed": out, "_curves": curves}


def packet_loss(scenario, seeds, baseline_runs, log) -> dict:
    lossy = scenario.replace(topology={"loss": 0.2})
    out = []
    for seed, clean in zip(seeds, baseline_runs):
        r = run(lossy, "mfd", seed)
        out.append({"seed": seed, "clean_final_acc": round(clean.final_mean_score, 4),
                    "loss20_final_acc": round(r.final_mean_score, 4),
                    "points_lost": round(100 * (clean.final_mean_score - r.final_mean_score), 2),
                    "partial_models_merged": r.extra.get("partial_merged", 0)})
        log(f"  seed {seed}: clean {clean.final_mean_score:.3f}, 20% loss {r.final_mean_score:.3f}")
    return {"per_seed": out, "median_points_lost": median([o["points_lost"] for o in out])}


def churn(scenario, seeds, log) -> dict:
    leave, back = 0.4, 0.6
    churned = scenario.replace(faults=[{"kind": "node_leave", "at": leave, "fraction": 0.3, "rejoin_at": back}])
    out = []
    for seed in seeds:
        world = build_world(churned.with_policy("mfd"), seed)
        r = world.run()
        degrees = dict(world.graph.degree)
        fault = r.extra["faults"][0]
        t_back = fault["rejoin_at"]
        arr = np.asarray(r.scores, dtype=float)
        times = np.asarray(r.times)
        others = [j for j, n in enumerate(r.node_ids) if n not in fault["nodes"]]
        before = np.flatnonzero(times < fault["at"])[-1]
        after = np.flatnonzero(times >= t_back)

        def delay(k: int, bar) -> float:
            """Seconds from rejoining until node column k first reaches bar(i)."""
            return next((float(times[i] - t_back) for i in after if arr[i, k] >= bar(i)), math.inf)

        rows = []
        for node in fault["nodes"]:
            k = r.node_ids.index(node)
            rows.append({
                "node": node, "degree": int(degrees[node]),
                "acc_before_leaving": round(float(arr[before, k]), 4),
                "fleet_median_before": round(float(np.median(arr[before, others])), 4),
                # after the bootstrap: where the node settles against the fleet by the end
                "acc_final": round(float(arr[-1, k]), 4),
                "fleet_median_final": round(float(np.median(arr[-1, others])), 4),
                "to_fleet_median_s": delay(k, lambda i: np.median(arr[i, others])),
                "to_98pct_of_fleet_median_s": delay(k, lambda i: 0.98 * np.median(arr[i, others])),
                "to_own_accuracy_before_leaving_s": delay(k, lambda i, b=arr[before, k]: b),
            })
        strict = [row["to_fleet_median_s"] for row in rows]
        out.append({"seed": seed, "rejoin_at_s": t_back, "nodes": rows,
                    "share_reaching_median_within_10pct": sum(d <= 0.1 * scenario.duration for d in strict) / len(rows),
                    "median_delay_s": median(strict), "worst_delay_s": max(strict),
                    "bootstraps": r.extra.get("bootstraps", 0)})
        log(f"  seed {seed}: " + "; ".join(
            f"node {row['node']} (degree {row['degree']}, before {row['acc_before_leaving']:.2f} vs median "
            f"{row['fleet_median_before']:.2f}, final {row['acc_final']:.2f} vs {row['fleet_median_final']:.2f}): "
            f"median in {row['to_fleet_median_s']:.0f} s, own level in {row['to_own_accuracy_before_leaving_s']:.0f} s"
            for row in rows))
    return {"per_seed": out, "target": "each rejoining node reaches the fleet median within 10% of the run"}


def simulator_speed(log, mfd_1000_seconds: float = 600.0) -> dict:
    """The 10-node FedAvg/MFD runs, the 1,000-node gossip hour, then MFD on the same
    1,000 nodes for ``mfd_1000_seconds`` simulated (3600: the whole hour, ~4x gossip's time:
    its hellos every 5 s are 6x as many messages as gossip's pushes)."""
    import torch

    from mfd_core.scenario import from_dict

    # World.run does this itself; the 5-round FedAvg run below drives the clock directly
    torch.set_num_threads(1)

    # Flower's Ray simulation moves whole models in memory, with no loss and no datagrams:
    # the like-for-like setting is lossless links and 64 KiB datagrams (the network is
    # still simulated: every byte is queued, timed and counted on its links).
    base = {"name": "speed-10", "duration": 1.0, "eval_interval": 1.0,
            "topology": {"kind": "random_geometric", "nodes": 10, "radius": 0.5, "compute": 20000.0,
                         "bandwidth": 1.25e8, "latency": 0.001, "degrade": False},
            "learner": {"hidden": [256, 256], "local_steps": 10, "batch_size": 32},
            "policy": {"mtu": 65535}}
    scenario = from_dict(base)
    # 64*256 + 256 + 256*256 + 256 + 256*10 + 10 = 85,002 ... use 3 layers to pass 100k
    scenario = scenario.replace(learner={"hidden": [256, 256, 128]})
    world = build_world(scenario.with_policy("fedavg"), 0)
    params = sum(v.numel() for v in world.nodes[0].learner.get_state().values())
    out = {"params": params, "load_average_at_start": round(os.getloadavg()[0], 2)}
    for policy in ("fedavg", "mfd"):
        t0, cpu0 = time.perf_counter(), time.process_time()
        world = build_world(scenario.with_policy(policy, round_timeout=10.0), 0)
        if policy == "fedavg":
            # run exactly 5 rounds: stop the clock when the server logs its fifth
            world.duration = 1e6
            done = world.env.event()
            original = world.log

            def log_and_stop(kind, _orig=original, **fields):
                _orig(kind, **fields)
                if kind == "fedavg_round" and fields.get("round") == 5 and not done.triggered:
                    done.succeed()
            world.log = log_and_stop
            world.policy.start(world)
            world.network.run(until=done)
            sim_time = world.env.now
        else:
            world.duration = out["fedavg_sim_seconds"]
            world.run()
            sim_time = world.env.now
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        out[f"{policy}_wall_s"] = round(wall, 3)
        out[f"{policy}_cpu_s"] = round(cpu, 3)
        out[f"{policy}_sim_seconds"] = round(sim_time, 3)
        log(f"  10 nodes, {params:,}-parameter MLP, {policy}: {wall:.2f} s wall ({cpu:.2f} s CPU) for "
            f"{sim_time:.2f} simulated s "
            f"({'5 rounds' if policy == 'fedavg' else 'the same simulated time'})")
    out["target_wall_s"] = 3.0
    out.update(thousand_nodes(log, "gossip", 3600.0))
    out.update(thousand_nodes(log, "mfd", mfd_1000_seconds))
    out["load_average_at_end"] = round(os.getloadavg()[0], 2)
    out["targets"] = {"ten_nodes_fedavg_wall_s": 3.0, "thousand_nodes_wall_s": 60.0, "thousand_nodes_GB": 4.0}
    return out


def thousand_node_world(policy: str = "gossip", duration: float = 3600.0):
    """1,000 nodes with a tiny model, each training one minibatch and pushing every 30 s.

    The digits set is too small to give 1,000 nodes data of their own, so each node gets
    16 synthetic samples of a 2-class problem: what is measured is the simulator, not
    the learning.
    """
    import torch

    from mfd_core.learners.torch_supervised import TorchSupervisedLearner
    from mfd_core.network.sim import SimNetwork
    from mfd_core.network.topology import small_world
    from mfd_core.runtime import World
    from mfd_core.scaling import MLPFamily
    from mfd_core.scenario import Policy

    n = 1000
    graph = small_world(n, k=6, p=0.1, seed=0, compute=8 / GOSSIP_INTERVAL_1000)  # one 8-sample step per push
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
    settings = Policy(name=policy, gossip_interval=GOSSIP_INTERVAL_1000)
    return World(SimNetwork(graph, seed=0), learners, policy=settings.make(), transport=settings.transport,
                 seed=0, duration=duration, eval_interval=duration, local_steps=1,
                 evaluate=lambda _n, learner: learner.evaluate(test_x, test_y), name=f"speed-1000-{policy}")


def thousand_nodes(log, policy: str, duration: float) -> dict:
    """Wall time (build included), CPU time and peak memory of 1,000 nodes under ``policy``.

    Peak RSS is the process's so far (it includes the runs before this one).
    """
    t0, cpu0 = time.perf_counter(), time.process_time()
    world = thousand_node_world(policy, duration)
    built = time.perf_counter() - t0
    r = world.run()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    log(f"  1,000 nodes, {duration:.0f} simulated s of {policy} (one 8-sample step per 30 s): {wall:.1f} s wall "
        f"({cpu:.1f} s CPU, build {built:.1f} s), peak RSS {peak_mb:.0f} MB, {r.packets[-1]:,} packets, "
        f"{r.extra.get('shares', 0):,} shares")
    # the gossip hour keeps the key earlier results used
    wall_key = "nodes_1000_gossip_hour_wall_s" if policy == "gossip" else f"nodes_1000_{policy}_wall_s"
    prefix = "nodes_1000" if policy == "gossip" else f"nodes_1000_{policy}"
    return {wall_key: round(wall, 2), f"{prefix}_sim_seconds": duration, f"{prefix}_cpu_s": round(cpu, 2),
            f"{prefix}_build_s": round(built, 2), f"{prefix}_peak_rss_MB": round(peak_mb, 1),
            f"{prefix}_packets": r.packets[-1], f"{prefix}_bytes": r.bytes[-1],
            f"{prefix}_pushes": r.extra.get("shares", 0), f"{prefix}_final_acc": round(r.final_mean_score, 4)}


def plot(results, out_dir: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, ax = plt.subplots(figsize=(7, 4))
    for policy, runs in results["accuracy"]["_runs"].items():
        for j, r in enumerate(runs):
            ax.plot(np.asarray(r.bytes) / 1e6, r.mean_scores(), alpha=0.9 if j == 0 else 0.4,
                    color=COLOURS.get(policy), label=policy if j == 0 else None)
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlabel("MB on all links")
    ax.set_ylabel("mean test accuracy")
    ax.set_title("Digits, 20 nodes: accuracy per byte (3 seeds)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out_dir / "process_accuracy_vs_bytes.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    files.append(path.name)

    fig, ax = plt.subplots(figsize=(7, 4))
    for seed, (fed, mfd) in results["server_failure"]["_curves"].items():
        ax.plot(fed.times, fed.mean_scores(), color=COLOURS["fedavg"], alpha=0.8, label="FedAvg" if seed == 0 else None)
        ax.plot(mfd.times, mfd.mean_scores(), color=COLOURS["mfd"], alpha=0.8, label="MFD" if seed == 0 else None)
    fail = 0.3 * max(fed.times)
    ax.axvline(fail, color="red", linestyle=":", label="server / node fails")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("mean test accuracy")
    ax.set_title("Server failure at 30% of the run")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out_dir / "process_server_failure.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    files.append(path.name)
    return files


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one seed and 20 simulated seconds")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--mfd-1000-seconds", type=float, default=600.0,
                        help="simulated seconds of MFD on the 1,000 nodes (3600: the whole hour, ~4 min)")
    parser.add_argument("--only", nargs="+", choices=["accuracy", "failure", "loss", "churn", "speed"],
                        help="run only these parts")
    args = parser.parse_args(argv)
    scenario = load(SCENARIO)
    seeds = args.seeds
    if args.quick:
        seeds, scenario = seeds[:1], scenario.replace(duration=20.0)
    parts = set(args.only or ["accuracy", "failure", "loss", "churn", "speed"])
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    results: dict = {}
    started = time.perf_counter()
    if parts & {"accuracy", "loss"}:
        log("1. accuracy and bytes (isolated, FedAvg, gossip, MFD)")
        results["accuracy"] = accuracy_and_bytes(scenario, seeds, log)
        log(f"   median: {results['accuracy']['median']}")
    if "failure" in parts:
        log("2. server failure at 30% of the run")
        results["server_failure"] = server_failure(scenario, seeds, log)
    if "loss" in parts:
        log("3. 20% packet loss on every link (MFD)")
        results["packet_loss"] = packet_loss(scenario, seeds, results["accuracy"]["_runs"]["mfd"], log)
    if "churn" in parts:
        log("4. 30% of nodes leave at 40% and rejoin at 60% of the run (MFD)")
        results["churn"] = churn(scenario, seeds, log)
    if "speed" in parts:
        log("5. simulator speed")
        results["speed"] = simulator_speed(log, args.mfd_1000_seconds)
    files = []
    if "accuracy" in results and "server_failure" in results:
        files = plot(results, RESULTS)
    clean = {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, v in results.items()}
    previous = RESULTS / "process.json"
    if args.only and previous.exists():
        # a partial run keeps the other parts' last figures (each part records when it ran)
        import json

        kept = json.loads(previous.read_text()).get("figures", {})
        clean = {**kept, **clean}
    for part in results:
        clean[part]["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path = write_results("process", clean, scenario=scenario.name, seeds=seeds, plots=files,
                         wall_seconds=round(time.perf_counter() - started, 1))
    log(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
