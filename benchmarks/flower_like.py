"""Start-up and a small FedAvg run, like for like: ours, a plain PyTorch loop, and Flower.

10 clients x 5 FedAvg rounds of a 116,618-parameter MLP (64-256-256-128-10) on the
bundled digits, one epoch per client per round, the global model measured on a held-out
test set before the first round and after each. Each side is a whole process (interpreter,
imports, data, training, evaluation, exit), timed from spawn to exit; the repeats are
interleaved (ours, plain, Flower, the imports, ours, ...) so that the machine's load falls
on every side alike, and the figures are medians.

- **ours**: :class:`mfd_core.World` on the simulator, the ``fedavg`` policy with its server
  at the hub of a 10-node star (the server holds one client's data and trains on it, as
  every client does), 64 KiB datagrams over lossless 1 Gbit/s links; every model still
  travels as encoded datagrams through reassembly, both ways, every round.
- **plain**: one process, one model, a loop over the clients: load the global weights, one
  epoch through a ``DataLoader``, a new Adam, then a sample-weighted average -- Flower's
  quickstart-pytorch ``train()`` without Flower; one torch thread, as ``World.run`` sets.
- **flower**: Flower's quickstart-pytorch structure (a ``ClientApp`` whose ``train`` loads
  the weights and runs the same epoch, a ``ServerApp`` running ``FedAvg.start`` with a
  central ``evaluate_fn``), run by ``flwr.simulation.run_simulation`` on its Ray backend with
  its default client resources, in its own virtualenv.

Every side reads the same clients' arrays from one ``.npz`` written before the repeats,
builds the same model from the same seed, and takes the same optimiser steps
(``len(train) // 32`` minibatches of 32 per client per round: the tail is dropped, as our
learner does; ``drop_last=True`` on the other two) with Adam at the same step size.

    python benchmarks/flower_like.py                     # 7 repeats, Flower included (its venv below)
    python benchmarks/flower_like.py --repeats 3 --no-flower
    python benchmarks/flower_like.py --flower-python PATH  # Flower's interpreter

Flower's venv (never committed; ``.bench-venv*/`` is ignored)::

    python3 -m venv .bench-venv-flower
    .bench-venv-flower/bin/pip install torch==2.13.0      # first: the CPU build on disk
    .bench-venv-flower/bin/pip install "flwr[simulation]"  # then check torch was kept
"""
from __future__ import annotations

# Only the standard library at the top: this file is also each side's whole process,
# and what a side imports is part of what it is timed for.
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLOWER_PYTHON = ROOT / ".bench-venv-flower" / "bin" / "python"

CLIENTS = 10
ROUNDS = 5
HIDDEN = (256, 256, 128)  # 64-256-256-128-10: 116,618 parameters
BATCH = 32
LR = 1e-3
SEED = 0
TEST_FRACTION = 0.2  # of the digits, held out for the global model's measurement
VAL_FRACTION = 0.2  # of each client's part (Flower's quickstart keeps 20 % per client)


# ------------------------------------------------------------------ shared by every side

def build_model(torch):
    """The MLP every side trains, from the same seed (so the same initial weights)."""
    torch.manual_seed(SEED)
    layers, width = [], 64
    for hidden in HIDDEN:
        layers += [torch.nn.Linear(width, hidden), torch.nn.ReLU()]
        width = hidden
    return torch.nn.Sequential(*layers, torch.nn.Linear(width, 10))


def load_clients(path: str):
    """``([(x_train, y_train, x_val, y_val)] per client, (x_test, y_test))`` as numpy arrays."""
    import numpy as np

    with np.load(path) as d:
        clients = [(d[f"x_train_{k}"], d[f"y_train_{k}"], d[f"x_val_{k}"], d[f"y_val_{k}"]) for k in range(CLIENTS)]
        return clients, (d["x_test"], d["y_test"])


def steps_per_epoch(clients) -> int:
    """One epoch of minibatches, the tail dropped; the same for every client (checked)."""
    steps = {len(c[0]) // BATCH for c in clients}
    if len(steps) != 1:
        raise SystemExit(f"clients differ in steps per epoch: {sorted(steps)}")
    return steps.pop()


def report(accuracies, **extra) -> None:
    """The side's result: one JSON line on stdout, read back by the harness."""
    print("RESULT " + json.dumps({"accuracies": [round(a, 4) for a in accuracies], **extra}), flush=True)


# ------------------------------------------------------------------ the sides

def run_plain(data: str) -> None:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    # one intra-op thread, as World.run sets for its tiny models: two threads spin against
    # each other on a shared 2-core machine (11.2 s of CPU for this loop at load 6, 3.1 s with one)
    torch.set_num_threads(1)
    clients, (x_test, y_test) = load_clients(data)
    model = build_model(torch)
    loss_fn = torch.nn.CrossEntropyLoss()
    test_x, test_y = torch.from_numpy(x_test), torch.from_numpy(y_test)
    loaders = [DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=BATCH, shuffle=True,
                          drop_last=True) for x, y, _, _ in clients]
    sizes = [len(c[0]) for c in clients]

    def accuracy() -> float:
        model.eval()
        with torch.no_grad():
            return (model(test_x).argmax(1) == test_y).float().mean().item()

    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    accuracies = [accuracy()]
    steps = 0
    for _ in range(ROUNDS):
        updates = []
        for loader in loaders:
            model.load_state_dict(global_state)
            optimizer = torch.optim.Adam(model.parameters(), lr=LR)
            model.train()
            for xb, yb in loader:
                optimizer.zero_grad()
                loss_fn(model(xb), yb).backward()
                optimizer.step()
                steps += 1
            updates.append({k: v.clone() for k, v in model.state_dict().items()})
        total = sum(sizes)
        global_state = {k: sum(u[k] * (n / total) for u, n in zip(updates, sizes)) for k in global_state}
        model.load_state_dict(global_state)
        accuracies.append(accuracy())
    report(accuracies, optimizer_steps=steps)


SERVER = 0  # the hub of the star


def star_of_clients(mfd):
    """Ours: a 10-node star, lossless 1 Gbit/s links with 1 ms latency (Flower's simulation
    moves whole models in memory; ours still encodes, times, counts and reassembles every
    datagram). The server's own epoch takes no simulated time, so that the model it holds
    at every measurement after the first is the global one, not its local update."""
    graph = mfd.build_topology("star", n=CLIENTS, bandwidth=1.25e8, latency=0.001, compute=20000.0)
    graph.nodes[SERVER]["compute"] = 1e12
    return graph


def run_ours(data: str, duration: float) -> None:
    import torch

    import mfd_core as mfd

    clients, (x_test, y_test) = load_clients(data)
    test_x, test_y = torch.from_numpy(x_test), torch.from_numpy(y_test)
    # lossless 1 Gbit/s links with 1 ms latency: Flower's simulation moves whole models in
    # memory; ours still encodes, times, counts and reassembles every datagram
    graph = star_of_clients(mfd)
    learners = {k: mfd.TorchSupervisedLearner(build_model(torch), (x, y), (xv, yv), batch_size=BATCH, lr=LR,
                                              seed=SEED * 1000 + k, family="mlp")
                for k, (x, y, xv, yv) in enumerate(clients)}

    def evaluate(node: int, learner) -> float:
        # the global model lives at the server: measure it there, once per tick, as the
        # others measure their one global model (a client's copy is the round before's)
        return learner.evaluate(test_x, test_y) if node == SERVER else math.nan

    world = mfd.World(mfd.SimNetwork(graph, seed=SEED), learners,
                      policy=mfd.policy_by_name("fedavg", {"server": SERVER, "round_timeout": 10.0}),
                      transport=mfd.Transport(mtu=65535), seed=SEED, duration=duration,
                      eval_interval=duration / ROUNDS, local_steps=steps_per_epoch(clients), evaluate=evaluate)
    result = world.run()
    rounds = [e for e in result.events if e["event"] == "fedavg_round"]
    report([s[SERVER] for s in result.scores], rounds=len(rounds), round_times=[e["t"] for e in rounds],
           measured_at=[round(t, 6) for t in result.times],
           optimizer_steps=sum(n.learner.work_done for n in world.nodes.values()) // BATCH)


def run_flower(data: str) -> None:
    import torch
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation
    from torch.utils.data import DataLoader, TensorDataset

    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        model = build_model(torch)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        x, y, _, _ = load_clients(data)[0][context.node_config["partition-id"]]
        loader = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=BATCH,
                            shuffle=True, drop_last=True)
        optimizer = torch.optim.Adam(model.parameters(), lr=LR)
        loss_fn = torch.nn.CrossEntropyLoss()
        model.train()
        for xb, yb in loader:
            optimizer.zero_grad()
            loss_fn(model(xb), yb).backward()
            optimizer.step()
        content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                              "metrics": MetricRecord({"num-examples": len(x), "steps": len(loader)})})
        return Message(content=content, reply_to=msg)

    server_app = ServerApp()
    accuracies: list[float] = []

    def global_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model = build_model(torch)
        model.load_state_dict(arrays.to_torch_state_dict())
        model.eval()
        _, (x_test, y_test) = load_clients(data)
        with torch.no_grad():
            acc = (model(torch.from_numpy(x_test)).argmax(1) == torch.from_numpy(y_test)).float().mean().item()
        accuracies.append(acc)
        return MetricRecord({"accuracy": acc})

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=CLIENTS,
                          min_available_nodes=CLIENTS)
        strategy.start(grid=grid, initial_arrays=ArrayRecord(build_model(torch).state_dict()), num_rounds=ROUNDS,
                       evaluate_fn=global_evaluate)

    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=CLIENTS)
    import flwr

    report(accuracies, flwr=flwr.__version__)


# ------------------------------------------------------------------ the harness

def prepare_data(path: Path) -> dict:
    """Split the bundled digits: a held-out test set, 10 IID clients, 80/20 train/val each."""
    import numpy as np

    from mfd_core.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(SEED)
    order = rng.permutation(len(digits))
    n_test = round(len(order) * TEST_FRACTION)
    test, pool = order[:n_test], order[n_test:]
    arrays = {"x_test": digits.inputs[test], "y_test": digits.labels[test]}
    for k, part in enumerate(np.array_split(pool, CLIENTS)):
        n_val = round(len(part) * VAL_FRACTION)
        val, train = part[:n_val], part[n_val:]
        arrays.update({f"x_train_{k}": digits.inputs[train], f"y_train_{k}": digits.labels[train],
                       f"x_val_{k}": digits.inputs[val], f"y_val_{k}": digits.labels[val]})
    np.savez(path, **arrays)
    return {"test": int(n_test), "train_per_client": sorted({len(arrays[f"y_train_{k}"]) for k in range(CLIENTS)}),
            "val_per_client": sorted({len(arrays[f"y_val_{k}"]) for k in range(CLIENTS)})}


def five_rounds_duration(data: str) -> float:
    """Simulated seconds in which ours completes exactly 5 FedAvg rounds (a calibration run,
    untimed): a tick after each round's aggregation and before the next one's."""
    import torch

    import mfd_core as mfd

    clients, _ = load_clients(data)
    learners = {k: mfd.TorchSupervisedLearner(build_model(torch), (x, y), (xv, yv), batch_size=BATCH, lr=LR,
                                              seed=k) for k, (x, y, xv, yv) in enumerate(clients)}
    world = mfd.World(mfd.SimNetwork(star_of_clients(mfd), seed=SEED), learners,
                      policy=mfd.policy_by_name("fedavg", {"server": SERVER, "round_timeout": 10.0}),
                      transport=mfd.Transport(mtu=65535), seed=SEED, duration=10.0, eval_interval=10.0,
                      local_steps=steps_per_epoch(clients), evaluate=lambda node, learner: 0.0)
    times = [e["t"] for e in world.run().events if e["event"] == "fedavg_round"][:ROUNDS + 1]
    periods = [b - a for a, b in zip([0.0] + times, times)]
    if len(times) <= ROUNDS or max(periods) - min(periods) > 1e-6 * max(periods):
        raise SystemExit(f"rounds of unequal length, cannot place one measurement per round: {periods}")
    return times[ROUNDS - 1] * (1 + 1e-6)


def timed(cmd: list[str], env: dict) -> tuple[float, float, dict]:
    """Wall seconds from spawn to exit, the child's CPU seconds, and its RESULT record."""
    before = os.times()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    after = os.times()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])}... failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    record = json.loads(lines[-1][len("RESULT "):]) if lines else {}
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return wall, cpu, record


IMPORT_PROBE = ("import time; t = time.perf_counter(); import {what}; "
                "print('RESULT {{\"s\": %f}}' % (time.perf_counter() - t))")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", choices=("ours", "plain", "flower"), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=7, help="interleaved repeats of every side (default 7)")
    parser.add_argument("--flower-python", type=Path, default=FLOWER_PYTHON,
                        help=f"the interpreter of Flower's venv (default {FLOWER_PYTHON.relative_to(ROOT)})")
    parser.add_argument("--no-flower", action="store_true", help="leave Flower out")
    args = parser.parse_args(argv)
    if args.side == "plain":
        run_plain(args.data)
        return 0
    if args.side == "ours":
        run_ours(args.data, args.duration)
        return 0
    if args.side == "flower":
        run_flower(args.data)
        return 0
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    flower = not args.no_flower
    if flower and not args.flower_python.exists():
        parser.error(f"no Flower interpreter at {args.flower_python} (see --help), or pass --no-flower")
    return harness(args.repeats, args.flower_python if flower else None)


def harness(repeats: int, flower_python: Path | None) -> int:
    sys.path.insert(0, str(ROOT))
    from benchmarks._common import load_average, write_results

    env = dict(os.environ, PYTHONHASHSEED="0")
    script = str(Path(__file__).resolve())
    with tempfile.TemporaryDirectory() as tmp:
        data = str(Path(tmp) / "clients.npz")
        split = prepare_data(Path(data))
        duration = five_rounds_duration(data)
        print(f"data: {split}; ours runs {duration:.6f} simulated s (5 rounds)", flush=True)
        sides = {"ours": [sys.executable, script, "--side", "ours", "--data", data, "--duration", repr(duration)],
                 "plain": [sys.executable, script, "--side", "plain", "--data", data]}
        if flower_python is not None:
            sides["flower"] = [str(flower_python), script, "--side", "flower", "--data", data]
        probes = {"import_mfd_core": "mfd_core",
                  "import_torch": "torch",
                  # what torch.optim.Adam's construction adds in the plain loop and Flower's clients
                  "import_torch_and_dynamo": "torch, torch._dynamo",
                  # what a run of ours imports: the runtime, the simulator, the learner, the policies
                  "import_run_names": "mfd_core; from mfd_core import World, SimNetwork, TorchSupervisedLearner, "
                                      "policy_by_name, build_topology, Transport"}
        loads: list[float | None] = []
        walls: dict[str, list[float]] = {name: [] for name in sides}
        cpus: dict[str, list[float]] = {name: [] for name in sides}
        imports: dict[str, list[float]] = {name: [] for name in probes}
        records: dict[str, dict] = {}
        for rep in range(repeats):
            for name, cmd in sides.items():
                wall, cpu, record = timed(cmd, env)
                walls[name].append(wall)
                cpus[name].append(cpu)
                records[name] = record
                print(f"repeat {rep + 1}/{repeats} {name}: {wall:.2f} s wall, {cpu:.2f} s CPU "
                      f"(load {load_average()})", flush=True)
            for name, what in probes.items():
                _, _, record = timed([sys.executable, "-c", IMPORT_PROBE.format(what=what)], env)
                imports[name].append(record["s"])
            loads.append(load_average())
    med = {name: statistics.median(v) for name, v in walls.items()}
    ratios_plain = [o / p for o, p in zip(walls["ours"], walls["plain"])]
    figures = {
        "ours_over_plain_loop": round(med["ours"] / med["plain"], 3),
        "ours_over_flower": round(med["ours"] / med["flower"], 3) if "flower" in med else None,
        "import_s": round(statistics.median(imports["import_mfd_core"]), 4),
        "median_wall_s": {name: round(v, 3) for name, v in med.items()},
        "median_cpu_s": {name: round(statistics.median(v), 3) for name, v in cpus.items()},
        "median_of_paired_ratios_ours_over_plain": round(statistics.median(ratios_plain), 3),
        "median_import_s": {name: round(statistics.median(v), 4) for name, v in imports.items()},
        "wall_s": {name: [round(w, 3) for w in v] for name, v in walls.items()},
        "load_after_each_repeat": loads,
        "accuracies": {name: r.get("accuracies") for name, r in records.items()},
        "targets": {"ours_over_plain_loop": 1.0, "ours_over_flower": 0.2, "import_s": 0.5},
    }
    if "flower" in records:
        figures["flower_version"] = records["flower"].get("flwr")
    figures["ours_rounds"] = records["ours"].get("rounds")
    figures["optimizer_steps"] = {name: r.get("optimizer_steps") for name, r in records.items()
                                  if r.get("optimizer_steps") is not None}
    for name in ("ours_over_plain_loop", "ours_over_flower", "import_s"):
        print(f"{name}: {figures[name]} (target {figures['targets'][name]})")
    print(f"median wall s: {figures['median_wall_s']}; imports: {figures['median_import_s']}")
    write_results("flower_like", figures, setup={
        "clients": CLIENTS, "rounds": ROUNDS, "model": f"MLP 64-{'-'.join(map(str, HIDDEN))}-10",
        "batch": BATCH, "lr": LR, "optimizer": "Adam", "data": split, "ours_simulated_seconds": duration,
        "repeats": repeats, "interleaved": list(walls) + list(probes),
        "sides": {
            "ours": "mfd_core.World on SimNetwork (10-node star, 1 Gbit/s lossless links, 1 ms, MTU 65535), "
                    "fedavg policy with its server at the hub (the server's node holds client 0's data and trains "
                    "on it); each client keeps its Adam state across rounds; the server's model is measured "
                    "on the test set at t=0 and after each round; ~one broadcast and one local epoch of the "
                    "sixth round start before the run ends (the policy has no round limit)",
            "plain": "one model, a loop over clients: load global weights, a new torch.optim.Adam, one epoch of a "
                     "DataLoader (shuffle, drop_last), sample-weighted average; test set at start and per round; "
                     "one torch thread, as World.run sets",
            "flower": "Flower's quickstart-pytorch structure: ClientApp.train (new model from the received "
                      "arrays, a new Adam, one epoch of a DataLoader (shuffle, drop_last)), ServerApp with "
                      "FedAvg.start(num_rounds=5, fraction_evaluate=0, evaluate_fn=test set), "
                      "flwr.simulation.run_simulation on Ray with its default client resources",
        }})
    return 0


if __name__ == "__main__":
    sys.exit(main())
