"""One run on the network a user picks: ``sim`` (default), ``udp`` or ``ray``.

- ``sim``: every node in this process on the deterministic simulator.
- ``udp``: every node its own OS process with its own UDP socket (loopback by default),
  sending the real MFD datagrams; the scenario's links (loss, latency, rate) are imposed
  at the sockets and training is paced at the simulated compute, so a radio scenario
  replays in real time. A node process that dies is reported, the others finish.
- ``ray``: the simulator cut into partitions, one per Ray actor, spread over the
  cluster's CPUs (:mod:`mfd_core.network.ray`).

Whatever the driver, the run's record is one :class:`~mfd_core.metrics.RunResult`, and
``result.extra["network"]`` says which driver ran it, how many OS processes, and where
each node lived (an address, an actor).
"""
from __future__ import annotations

import json
import math
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ..metrics import RunResult
from ..network import ray as ray_driver
from ..network.sim import SimNetwork
from .recipe import Recipe
from .world import Checkpoint

NETWORKS = ("sim", "udp", "ray")
# A node process must say it is ready (imports, data, model, socket) within this long;
# twenty of them importing torch at once on two cores take about 15 s.
READY_TIMEOUT_S = 300.0
# Every node process starts its clock at the same wall time, this far after the last is ready.
START_MARGIN_S = 0.5

Progress = Callable[[float], None]


def run_on(recipe: Recipe, network: str = "sim", *, progress: Progress | None = None, workers: int = 2,
           ray_address: str | None = None, workdir: str | Path | None = None, speed: float = 1.0,
           emulate: bool = True, on_start: Callable[[dict[int, int]], None] | None = None,
           observe: Callable[[RunResult], None] | None = None,
           checkpoint: Checkpoint | None = None) -> RunResult:
    """Run ``recipe``'s world on ``network``.

    :param workers: Ray actors (``ray``).
    :param ray_address: an existing Ray cluster (default: start Ray on this machine).
    :param workdir: where the node processes keep their files (``udp``; default a temp dir).
    :param speed: simulated seconds per wall second (``udp``).
    :param emulate: impose the scenario's link loss, latency and rate at the sockets (``udp``).
    :param on_start: called with {node: pid} once the node processes run (``udp``).
    :param observe: called with the run's record as it grows: after every measurement on
        the simulator (the same object each time, so a caller that is interrupted holds
        what was measured), once at the end elsewhere.
    :param checkpoint: on the simulator, called after every measurement and once at the
        end (``final=True``) with the simulated time and a function that returns every
        present node's served model (``{node: state_dict}``), so that the caller saves
        them as often as it finds worth it (:meth:`~mfd_core.runfolder.RunFolder.checkpoint`).
        Elsewhere the node processes hold the models, and it is not called.
    """
    if network not in NETWORKS:
        raise ValueError(f"unknown network {network!r}; choose from {', '.join(NETWORKS)}")
    if network == "sim":
        return _run_sim(recipe, progress, observe, checkpoint)
    if network == "ray":
        result = _run_ray(recipe, workers, ray_address, progress)
    else:
        result = _run_udp(recipe, progress, workdir, speed, emulate, on_start)
    if observe is not None:
        observe(result)
    return result


def _run_sim(recipe: Recipe, progress: Progress | None, observe: Callable[[RunResult], None] | None,
             checkpoint: Checkpoint | None = None) -> RunResult:
    builder = recipe.build()
    network = SimNetwork(builder.graph(), seed=builder.seed)
    world = builder.world(network)
    world.result.extra["network"] = network.describe()

    def measured(t: float) -> None:
        if observe is not None:
            observe(world.result)
        if progress is not None:
            progress(t)

    result = world.run(measured, checkpoint)
    if observe is not None:
        observe(result)
    return result


# -- Ray ------------------------------------------------------------------------------------


class PartitionHost:
    """A Ray actor's share of the run: the recipe's world on a partition of the simulator."""

    def __init__(self, recipe_json: str, hosted: list[int], index: int) -> None:
        torch.set_num_threads(1)  # many small models: threads cost more than they give
        builder = Recipe.from_json(recipe_json).build()
        self.network = SimNetwork(builder.graph(), seed=builder.seed, hosted=hosted)
        self.world = builder.world(self.network)
        self.where = f"actor {index} (pid {os.getpid()}, {socket.gethostname()})"

    def start(self) -> float:
        self.world.start()
        return self.world.duration

    def advance(self, until: float, arrivals: list) -> tuple[list, float]:
        self.network.deliver_remote(arrivals)
        self.world.advance(until)
        out, self.network.outbox = self.network.outbox, []
        return out, self.network.env.peek()

    def finish(self) -> dict[str, Any]:
        result = self.world.finish()
        result.extra["where"] = {str(n): self.where for n in self.world.nodes}
        return result.to_dict()


def _run_ray(recipe: Recipe, workers: int, address: str | None, progress: Progress | None) -> RunResult:
    started = time.perf_counter()
    ray = ray_driver.start_ray(address, workers)
    builder = recipe.build()
    graph = builder.graph()
    groups = ray_driver.partition(graph, workers)
    owner = {n: i for i, group in enumerate(groups) for n in group}
    window = ray_driver.lookahead(graph, groups)
    remote = ray.remote(num_cpus=1)(PartitionHost)
    text = recipe.to_json()
    actors = [remote.remote(text, group, i) for i, group in enumerate(groups)]
    try:
        duration = ray.get([actor.start.remote() for actor in actors])[0]
        windows = ray_driver.run_windows(actors, owner, duration + 1e-9, window, ray, progress)
        parts = [RunResult.from_dict(doc) for doc in ray.get([actor.finish.remote() for actor in actors])]
    finally:
        for actor in actors:
            ray.kill(actor)
    result = RunResult.merge(parts)
    where = {k: v for part in parts for k, v in part.extra.pop("where", {}).items()}
    result.extra.pop("where", None)
    result.extra["network"] = {"driver": "ray", "processes": len(actors), "actors": len(actors),
                               "windows": windows, "window_s": window, "address": address or "local",
                               "nodes": dict(sorted(where.items(), key=lambda kv: int(kv[0])))}
    result.wall_seconds = time.perf_counter() - started
    return result


# -- UDP: one OS process per node -----------------------------------------------------------


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports the OS gives free now (bound at once, then released for the node processes)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _run_udp(recipe: Recipe, progress: Progress | None, workdir: str | Path | None, speed: float,
             emulate: bool, on_start: Callable[[dict[int, int]], None] | None) -> RunResult:
    started = time.perf_counter()
    builder = recipe.build()
    graph = builder.graph()
    nodes = sorted(graph.nodes)
    folder = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="mfd-udp-"))
    folder.mkdir(parents=True, exist_ok=True)
    peers = {str(n): f"127.0.0.1:{port}" for n, port in zip(nodes, free_ports(len(nodes)))}
    (folder / "peers.json").write_text(json.dumps({"nodes": peers}, indent=1))
    (folder / "recipe.json").write_text(recipe.to_json())
    command = [sys.executable, "-m", "mfd_core.runtime.node_process", "--recipe", str(folder / "recipe.json"),
               "--peers", str(folder / "peers.json"), "--out", str(folder), "--speed", str(speed),
               "--launched"] + (["--emulate"] if emulate else [])
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    procs: dict[int, subprocess.Popen] = {}
    try:
        for n in nodes:
            procs[n] = subprocess.Popen(command + ["--node", str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=open(folder / f"node-{n}.log", "wb"), env=env, text=True)
        _await_ready(procs, folder)
        go = time.time() + START_MARGIN_S
        for proc in procs.values():
            proc.stdin.write(f"go {go!r}\n")
            proc.stdin.flush()
        if on_start is not None:
            on_start({n: proc.pid for n, proc in procs.items()})
        dead = _supervise(procs, builder, speed, go, progress)
    except BaseException:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        raise
    parts = []
    for n in nodes:
        part = _read_node_result(folder / f"node-{n}.jsonl")
        if part is not None:
            parts.append(part)
    if not parts:
        raise RuntimeError(f"no node process left a result (logs in {folder})")
    result = RunResult.merge(parts)
    if dead:
        result.extra["dead_nodes"] = sorted(dead)
    result.extra["network"] = {"driver": "udp", "processes": len(procs), "emulated_links": emulate,
                               "speed": speed, "workdir": str(folder),
                               "nodes": {str(n): f"{peers[str(n)]} (pid {procs[n].pid})" for n in nodes}}
    result.wall_seconds = time.perf_counter() - started
    return result


def _await_ready(procs: dict[int, subprocess.Popen], folder: Path) -> None:
    selector = selectors.DefaultSelector()
    for n, proc in procs.items():
        selector.register(proc.stdout, selectors.EVENT_READ, n)
    waiting = set(procs)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while waiting:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"node processes {sorted(waiting)} did not start in {READY_TIMEOUT_S:.0f} s "
                               f"(logs in {folder})")
        for key, _ in selector.select(timeout=min(left, 1.0)):
            n = key.data
            line = procs[n].stdout.readline()
            if line.strip() == "ready":
                waiting.discard(n)
                selector.unregister(procs[n].stdout)
            elif not line:
                raise RuntimeError(f"node process {n} exited before it was ready: "
                                   f"{_last_line(folder / f'node-{n}.log')}")
    selector.close()


def _supervise(procs: dict[int, subprocess.Popen], builder, speed: float, go: float,
               progress: Progress | None) -> set[int]:
    """Wait for the node processes; tell the others when one dies. Returns the dead."""
    duration = float(getattr(builder, "duration", math.inf))
    dead: set[int] = set()
    running = set(procs)
    while running:
        time.sleep(0.2)
        for n in sorted(running):
            code = procs[n].poll()
            if code is None:
                continue
            running.discard(n)
            if code != 0:
                dead.add(n)
                for other in running:
                    try:
                        procs[other].stdin.write(f"dead {n}\n")
                        procs[other].stdin.flush()
                    except (BrokenPipeError, OSError):
                        pass
        if progress is not None and math.isfinite(duration):
            progress(min(duration, max(0.0, (time.time() - go) * speed)))
    return dead


def _read_node_result(path: Path) -> RunResult | None:
    """A node process's record: its final result, or the rows it wrote before it died."""
    if not path.exists():
        return None
    head, rows, final = None, [], None
    for line in path.read_text().splitlines():
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            break  # a process killed mid-line
        if doc.get("type") == "start":
            head = doc
        elif doc.get("type") == "row":
            rows.append(doc)
        elif doc.get("type") == "result":
            final = doc["result"]
    if final is not None:
        return RunResult.from_dict(final)
    if head is None:
        return None
    result = RunResult(head["scenario"], head["policy"], head["seed"], head["node_ids"])
    for row in rows:
        result.times.append(row["t"])
        result.scores.append([math.nan if v is None else v for v in row["scores"]])
        for series in ("bytes", "model_bytes", "data_bytes", "packets"):
            getattr(result, series).append(row[series])
    result.extra["died_at"] = rows[-1]["t"] if rows else 0.0
    return result


def _last_line(path: Path) -> str:
    lines = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return lines[-1] if lines else "no output"
