"""Faults a scenario schedules: nodes and servers that go away (and come back), nodes
that join late, links that fail, loss that rises. Times are fractions of the duration.

Every driver instance schedules every fault, also for nodes hosted elsewhere, so that
each keeps the same view of who is up (routes, neighbour lists) as a single simulator
would.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..network.base import Network
from ..scenario import Fault


def initially_absent(faults: Sequence[Fault]) -> list[int]:
    """Nodes whose first appearance is a ``node_join``: they are not there at the start."""
    absent = []
    for fault in faults:
        for n in fault.nodes if fault.kind == "node_join" else ():
            if not any(f.kind == "node_leave" and n in f.nodes and f.at < fault.at for f in faults):
                absent.append(n)
    return absent


def schedule_faults(network: Network, faults: Sequence[Fault], *, duration: float, seed: int,
                    node_ids: Sequence[int], server: int | None,
                    log: Callable[..., None]) -> list[dict[str, Any]]:
    """Put every fault on the network's clock; returns what the run records of them.

    :param server: the policy's server (FedAvg), whose loss is ``server_down`` and which
        ``node_leave`` by fraction passes over.
    """
    # Faults draw from their own generator: policies draw from the run's as they start,
    # and a comparison must lose the same nodes under every policy.
    fault_rng = np.random.default_rng([seed, 1])
    env = network.env
    recorded: list[dict[str, Any]] = []
    for fault in faults:
        at = fault.at * duration
        nodes = list(fault.nodes)
        if fault.kind == "server_down":
            nodes = [server] if server is not None else []
        if fault.kind == "node_leave" and not nodes and fault.fraction:
            # the same count and order under every policy; FedAvg's server (whose loss is
            # server_down) is passed over for the next in line
            order = [int(n) for n in fault_rng.permutation(sorted(node_ids)) if n != server]
            nodes = sorted(order[:max(1, round(fault.fraction * len(node_ids)))])
        if fault.kind in ("server_down", "node_leave"):
            for n in nodes:
                _at(network, at, network.leave, n)
                if fault.rejoin_at is not None:
                    _at(network, fault.rejoin_at * duration, network.join, n)
            recorded.append({"kind": fault.kind, "at": at, "nodes": nodes,
                             "rejoin_at": None if fault.rejoin_at is None else fault.rejoin_at * duration})
        elif fault.kind == "node_join":
            for n in nodes:
                _at(network, at, network.join, n)
        elif fault.kind == "link_down":
            _at(network, at, network.link_down, *fault.link)
        elif fault.kind == "link_up":
            _at(network, at, network.link_up, *fault.link)
        elif fault.kind == "loss":
            env.process(_set_loss(network, at, float(fault.value), log))
    return recorded


def _at(network: Network, at: float, action: Callable[..., None], *args: Any) -> None:
    now = network.env.now
    if not now <= at < float("inf"):
        raise ValueError(f"a fault at {at} is not a time >= now ({now})")
    network.env.timeout(at - now).callbacks.append(lambda _: action(*args))


def _set_loss(network: Network, at: float, value: float, log: Callable[..., None]) -> Iterator:
    yield network.env.timeout(at)
    for u, v in list(network.graph.edges):
        network.set_link(u, v, loss=value)
    log("loss", value=value)
