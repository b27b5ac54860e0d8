"""One OS process hosting some nodes of a run on real UDP sockets.

Started by the ``udp`` launcher (one process per node) or by hand with ``mfd node`` on
each machine of a real deployment. The process builds the run's world from its recipe
for the nodes it hosts, binds each node's socket at the address the peers file gives,
and runs in real time; it writes its record as JSON lines as it goes (``start``, one
``row`` per measurement, the final ``result``), so a process that dies leaves everything
it measured. SIGINT or SIGTERM ends it early, with what it has.

Launched (``--launched``), it prints ``ready`` once built and starts its clock at the
wall time the launcher sends (``go T``); ``dead N`` lines on stdin tell it that the
process of node N died, so it routes around it.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import Any, Iterable

import simpy.rt
import torch

from ..network.udp import UdpNetwork
from .recipe import Recipe

# How often the clock looks for word of dead peers from the launcher (seconds).
DEAD_POLL_S = 0.1


def read_peers(path: str | Path) -> dict[int, tuple[str, int]]:
    """A peers file: ``[nodes]`` (TOML) or ``{"nodes": {...}}`` (JSON), node id -> "host:port"."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        doc = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a valid peers file: {err}") from None
    nodes = doc.get("nodes") if isinstance(doc, dict) else None
    if not isinstance(nodes, dict) or not nodes:
        raise ValueError(f"{path}: expected a 'nodes' table of node id = \"host:port\"")
    peers = {}
    for key, value in nodes.items():
        host, _, port = str(value).rpartition(":")
        if not key.isdigit() or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{path}: nodes.{key} = {value!r}: expected a node id = \"host:port\"")
        peers[int(key)] = (host, int(port))
    return peers


def parse_nodes(text: str) -> list[int]:
    """"3", "0-9", "0,2,5-7" -> node ids."""
    nodes: list[int] = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            raise ValueError(f"--node {text!r}: expected ids like 3, 0-9 or 0,2,5-7")
        nodes.extend(range(int(first), int(last or first) + 1))
    return sorted(set(nodes))


class _Record:
    """The process's record file: one JSON object a line, flushed as it goes."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "w", encoding="utf-8")

    def write(self, doc: dict[str, Any]) -> None:
        self.file.write(json.dumps(doc, default=float) + "\n")
        self.file.flush()


def serve(recipe: Recipe, hosted: Iterable[int], peers: dict[int, tuple[str, int]], out: Path, *,
          speed: float = 1.0, emulate: bool = True, launched: bool = False, quiet: bool = True) -> dict[str, Any]:
    """Host ``hosted`` until the run's duration has passed (or a signal); returns the result."""
    torch.set_num_threads(1)
    hosted = sorted(hosted)
    builder = recipe.build()
    graph = builder.graph()
    missing = [n for n in graph.nodes if n not in peers]
    if missing:
        raise ValueError(f"the peers file has no address for node(s) {missing}")
    env = simpy.rt.RealtimeEnvironment(factor=1.0 / speed, strict=False)
    network = UdpNetwork(graph, nodes=hosted, env=env, bind={n: peers[n] for n in hosted},
                         peers={n: a for n, a in peers.items() if n not in hosted}, emulate=emulate, pace=True,
                         seed=builder.seed)
    world = builder.world(network)
    label = "-".join(map(str, hosted)) if len(hosted) <= 4 else f"{hosted[0]}-{hosted[-1]}"
    record = _Record(out / f"node-{label}.jsonl")
    record.write({"type": "start", "scenario": world.result.scenario, "policy": world.result.policy,
                  "seed": world.seed, "node_ids": world.result.node_ids, "where": network.describe()})
    news: queue.Queue[str] = queue.Queue()
    if launched:
        print("ready", flush=True)
        line = sys.stdin.readline().split()
        if len(line) != 2 or line[0] != "go":
            raise RuntimeError(f"expected 'go TIME' from the launcher, got {' '.join(line)!r}")
        threading.Thread(target=_listen, args=(news,), daemon=True).start()
        time.sleep(max(0.0, float(line[1]) - time.time()))
    env.sync()  # the clock starts now

    def on_dead(_event=None) -> None:
        while not news.empty():
            word, _, node = news.get().partition(" ")
            if word == "dead" and node.strip().isdigit():
                network.leave(int(node))
        env.timeout(DEAD_POLL_S).callbacks.append(on_dead)

    def measured(t: float) -> None:
        r = world.result
        record.write({"type": "row", "t": t, "scores": [None if s != s else s for s in r.scores[-1]],
                      "bytes": r.bytes[-1], "model_bytes": r.model_bytes[-1], "data_bytes": r.data_bytes[-1],
                      "packets": r.packets[-1]})
        if not quiet:
            print(f"t={t:.1f}s  score {', '.join(f'{s:.3f}' for s in r.scores[-1])}", flush=True)

    stopped = {"signal": None}

    def stop(signum, _frame):
        stopped["signal"] = signum
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    on_dead()
    try:
        world.start(measured)
        world.advance(world.duration + 1e-9)
    except KeyboardInterrupt:
        pass
    finally:
        result = world.finish()
        network.close()
    if stopped["signal"] is not None or env.now < world.duration:
        result.extra["interrupted"] = True
    result.extra["where"] = {str(n): f"{h}:{p}" for n, (h, p) in peers.items() if n in hosted}
    doc = result.to_dict()
    record.write({"type": "result", "result": doc})
    return doc


def _listen(news: queue.Queue) -> None:
    for line in sys.stdin:
        news.put(line.strip())
    # stdin closed: the launcher is gone, and nobody will collect this run; stop with what we have
    os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mfd_core.runtime.node_process", description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", required=True, help="the run's recipe (JSON)")
    parser.add_argument("--peers", required=True, help="node id -> host:port of every node (TOML or JSON)")
    parser.add_argument("--node", required=True, help="the node(s) this process hosts: 3, 0-9 or 0,2,5-7")
    parser.add_argument("--out", required=True, help="folder for this process's record")
    parser.add_argument("--speed", type=float, default=1.0, help="simulated seconds per wall second")
    parser.add_argument("--emulate", action="store_true", help="impose the links' loss, latency and rate")
    parser.add_argument("--launched", action="store_true", help="wait for the launcher's go")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    serve(Recipe.from_json(Path(args.recipe).read_text()), parse_nodes(args.node), read_peers(args.peers),
          Path(args.out), speed=args.speed, emulate=args.emulate, launched=args.launched)
    return 0


if __name__ == "__main__":
    sys.exit(main())
