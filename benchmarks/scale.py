"""The core at scale: one simulated hour of 1,000 / 3,000 / 10,000 nodes (issue 13).

    python benchmarks/scale.py                      # the sweep and MFD vs gossip (~25 min on 2 cores)
    python benchmarks/scale.py --only mfd --repeats 7   # one part again; the other kept from scale.json
    python benchmarks/scale.py --one gossip 1000 3600   # one run, printed as JSON (what the sweep calls)

Every node holds a tiny model and 16 synthetic samples of a 2-class problem, trains one
8-sample step and shares every 30 simulated seconds on a small-world graph (6
neighbours): what is measured is the simulator and the protocol, not the learning. So
the nodes' learner is a logistic regression in numpy (``--learner numpy``, the default:
one step costs microseconds, where a torch step costs about a millisecond of framework
overhead whatever the model's size); ``--learner torch`` runs the 8-8-2 torch MLP the
figures of earlier sessions used.
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
LEARNER = "numpy"
# like for like with gossip, which pushes one full fp32 model a period: MFD sends one too, at
# fp32 (its default int8 saves nothing on a model of 18 numbers and costs a 1,000-node run
# ~45 % more CPU in quantising: 9.97 against 6.78 s for 600 simulated s)
FANOUT = 1
PRECISION = "fp32"


class LogisticLearner:
    """Softmax regression in numpy, as a :class:`mfd_core.Learner`: the cheapest honest
    learner (real gradient steps, real scores, a state of two tensors) for measuring the
    simulator and the protocol at 10,000 nodes."""

    family, width, output_kind = "logistic", 1.0, "classification"

    def __init__(self, train, val, *, classes: int = 2, lr: float = 0.1, batch: int = 8, seed: int = 0) -> None:
        import numpy as np

        self.x, self.y = train
        self.vx, self.vy = val
        self.num_samples, self.batch, self.lr = len(self.y), batch, lr
        self.w = np.zeros((self.x.shape[1], classes), dtype=np.float32)
        self.b = np.zeros(classes, dtype=np.float32)
        self.rng = np.random.default_rng(seed)
        self.work_done = 0

    def _logits(self, x, w=None, b=None):
        return x @ (self.w if w is None else w) + (self.b if b is None else b)

    def train(self, steps: int, trainable=None) -> int:
        import numpy as np

        for _ in range(steps):
            idx = self.rng.integers(0, self.num_samples, self.batch)
            z = self._logits(self.x[idx])
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(idx)), self.y[idx]] -= 1.0
            self.w -= self.lr * (self.x[idx].T @ p) / len(idx)
            self.b -= self.lr * p.mean(0)
        self.work_done += steps * self.batch
        return steps * self.batch

    def score(self, state=None) -> float:
        import numpy as np

        w, b = (None, None) if state is None else (state["w"].numpy(), state["b"].numpy())
        # a count, not numpy's mean of booleans (the same number at a tenth of the cost):
        # MFD scores every candidate merge in its gate, three times as often as gossip
        return np.count_nonzero(self._logits(self.vx, w, b).argmax(1) == self.vy) / len(self.vy)

    def evaluate(self, inputs, targets) -> float:
        return float((self._logits(inputs.numpy()).argmax(1) == targets.numpy()).mean())

    def get_state(self):
        import torch

        return {"w": torch.from_numpy(self.w.copy()), "b": torch.from_numpy(self.b.copy())}

    def set_state(self, state, masks=None) -> None:
        import numpy as np

        for name in ("w", "b"):
            if name in state:
                value = state[name].numpy()
                mask = None if masks is None or name not in masks else masks[name].numpy()
                target = getattr(self, name)
                target[...] = value if mask is None else np.where(mask, value, target)

    def outputs(self, inputs):
        import torch

        return torch.from_numpy(self._logits(inputs.numpy()))

    def local_inputs(self, n: int):
        import torch

        return torch.from_numpy(self.x[:n])

    def distil_from(self, teacher, steps, kind, *, temperature: float = 2.0) -> float:
        raise NotImplementedError("one family: this fleet merges, it never distils")

    def score_teacher(self, teacher):
        return None

    def clone(self):
        import copy

        return copy.deepcopy(self)


def node_world(n: int, policy: str, duration: float, learner: str = LEARNER):
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
        if learner == "numpy":
            learners[node] = LogisticLearner((x[:12], y[:12]), (x[12:], y[12:]), seed=node)
        else:
            learners[node] = TorchSupervisedLearner(family.build(1.0, seed=0), (x[:12], y[:12]),
                                                    (x[12:], y[12:]), batch_size=8, seed=node, family="mlp")
    test_x = torch.from_numpy(rng.normal(size=(64, 8)).astype(np.float32))
    test_y = (test_x[:, 0] > 0).long()
    # a share every period, as gossip pushes: not stretched for the 6 neighbours a node has
    # against its fanout of 1, nor shortened for its clean links
    settings = Policy(name=policy, gossip_interval=PERIOD_S, max_silence=PERIOD_S, fanout=FANOUT,
                      precision=PRECISION, silence_density=0.0, clean_silence=1.0)
    return World(SimNetwork(graph, seed=0), learners, policy=settings.make(), transport=settings.transport,
                 seed=0, duration=duration, eval_interval=duration, local_steps=1,
                 evaluate=lambda _n, learner: learner.evaluate(test_x, test_y), name=f"scale-{n}-{policy}")


def one(policy: str, n: int, duration: float, learner: str = LEARNER) -> dict:
    t0, cpu0 = time.perf_counter(), time.process_time()
    world = node_world(n, policy, duration, learner)
    built = time.perf_counter() - t0
    result = world.run()
    stats = world.network.stats()
    return {"policy": policy, "nodes": n, "simulated_s": duration, "learner": learner, "build_s": round(built, 2),
            "wall_s": round(time.perf_counter() - t0, 2), "cpu_s": round(time.process_time() - cpu0, 2),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
            "datagrams": int(stats["air_packets"]), "bytes": int(stats["air_bytes"]),
            "control_datagrams": int(stats["kinds"].get("control", {}).get("air_packets", 0)),
            "final_accuracy": round(result.final_mean_score, 4)}


def run_one(policy: str, n: int, duration: float, learner: str = LEARNER) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", policy, str(n), str(duration), "--learner", learner],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def slope(xs: list[float], ys: list[float]) -> float:
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


PART_KEYS = {"mfd": (("mfd_over_gossip_cpu_1000", "mfd_hour_1000_wall_s"), ("mfd_vs_gossip_1000",)),
             "sweep": (("rss_exponent", "time_exponent", "gossip_hour_10000_wall_s", "gossip_hour_10000_peak_rss_gb"),
                       ("gossip_sweep",))}


def _kept_part(part: str) -> tuple[dict, dict]:
    """The figures and detail of ``part`` from the last scale.json, and its provenance."""
    try:
        previous = json.loads((Path(__file__).resolve().parent / "results" / "scale.json").read_text())
    except (OSError, ValueError):
        return {}, {}
    figure_keys, detail_keys = PART_KEYS[part]
    figures = {k: previous["figures"][k] for k in figure_keys if k in previous.get("figures", {})}
    detail = {k: previous[k] for k in detail_keys if k in previous}
    if figures:
        detail[f"{part}_kept_from"] = previous.get(f"{part}_kept_from") or {
            key: previous.get(key) for key in ("command", "commit", "started", "timestamp")}
    return figures, detail


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("sweep", "mfd"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000, 10000])
    parser.add_argument("--duration", type=float, default=3600.0)
    parser.add_argument("--repeats", type=int, default=7, help="interleaved MFD / gossip repeats at 1,000 nodes")
    parser.add_argument("--learner", choices=("numpy", "torch"), default=LEARNER,
                        help="the nodes' learner: numpy logistic regression (default) or the torch MLP")
    parser.add_argument("--one", nargs=3, metavar=("POLICY", "NODES", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), float(args.one[2]), args.learner)))
        return 0
    figures, detail = {}, {}
    if args.only:
        # one part re-measured: the other part's figures stay, with where they came from
        figures, detail = _kept_part("sweep" if args.only == "mfd" else "mfd")
    if args.only in (None, "mfd"):
        pairs = []
        for i in range(args.repeats):
            mfd = run_one("mfd", 1000, args.duration, args.learner)
            gossip = run_one("gossip", 1000, args.duration, args.learner)
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
            run = run_one("gossip", n, args.duration, args.learner)
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
