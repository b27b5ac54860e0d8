"""Ray as the scale-out engine: the simulated network cut into partitions, one per actor.

Each actor hosts some of the nodes on a :class:`~mfd_core.network.sim.SimNetwork` that
knows the whole overlay but runs only its own nodes (``hosted``). A datagram whose next
link leads into another partition leaves its sender's simulator with its arrival time and
is handed, as bytes, to the actor that hosts the receiver. The actors advance in lock
step, one window at a time, and a window is never longer than the fastest link between
two partitions takes (its latency): whatever a partition sends in a window arrives in a
later one, so every datagram is delivered at the time the single simulator would have
delivered it (conservative parallel discrete-event simulation, Chandy and Misra 1979).

What differs from one simulator is only which random draws decide the losses (each
partition has its own stream), so results agree statistically, not bit for bit.

Ray itself is imported only when a run asks for it: ``ray.init()`` on this machine by
default, or ``address=`` an existing cluster (``ray start --head`` there, ``ray start
--address=HEAD:6379`` on each worker machine).
"""
from __future__ import annotations

import math
import os
from collections import deque
from typing import Any, Callable, Protocol, Sequence

import networkx as nx

Arrival = tuple[float, int, int, bytes, int, str, float]
# Links with no latency give no lookahead; windows of 1 ms then deliver a datagram at most
# 1 ms late (a thousandth of the digits scenario's measurement interval).
MIN_WINDOW = 1e-3


def partition(graph: nx.Graph, parts: int) -> list[list[int]]:
    """``parts`` balanced groups of nodes, each a run of a breadth-first order (so that
    neighbours tend to share a partition and fewer datagrams cross between actors)."""
    if parts < 1:
        raise ValueError(f"partitions must be >= 1, got {parts}")
    order: list[int] = []
    seen: set[int] = set()
    for start in sorted(graph.nodes):
        if start in seen:
            continue
        queue = deque([start])
        seen.add(start)
        while queue:
            node = queue.popleft()
            order.append(node)
            for peer in sorted(graph.neighbors(node)):
                if peer not in seen:
                    seen.add(peer)
                    queue.append(peer)
    parts = min(parts, len(order)) or 1
    size, extra = divmod(len(order), parts)
    groups, at = [], 0
    for i in range(parts):
        take = size + (1 if i < extra else 0)
        groups.append(sorted(order[at:at + take]))
        at += take
    return groups


def lookahead(graph: nx.Graph, groups: Sequence[Sequence[int]]) -> float:
    """The window: the least latency of any link between two partitions (``MIN_WINDOW`` at least)."""
    where = {n: i for i, group in enumerate(groups) for n in group}
    latencies = [float(attrs.get("latency", 0.0)) for u, v, attrs in graph.edges(data=True) if where[u] != where[v]]
    radio = graph.graph.get("radio")
    if radio is not None and "latency" in radio:  # links that appear when nodes move
        latencies.append(float(radio["latency"]))
    return max(min(latencies, default=math.inf), MIN_WINDOW) if latencies else math.inf


class Partition(Protocol):
    """What an actor hosts: a run of some of the nodes on a partition of the simulator."""

    def start(self) -> None: ...

    def advance(self, until: float, arrivals: list[Arrival]) -> tuple[list[Arrival], float]:
        """Deliver ``arrivals``, run to ``until``; what left for other partitions, and
        the time of the next event here (inf: none)."""

    def finish(self) -> dict[str, Any]: ...


def run_windows(actors: Sequence[Any], owner: dict[int, int], until: float, window: float, ray: Any,
                progress: Callable[[float], None] | None = None, progress_every: float = 1.0) -> int:
    """Advance every actor to ``until`` in windows; returns the number of windows.

    :param owner: node id -> index of the actor that hosts it.
    """
    inboxes: list[list[Arrival]] = [[] for _ in actors]
    t, windows, reported = 0.0, 0, 0.0
    while t < until:
        end = min(t + window, until)
        answers = ray.get([actor.advance.remote(end, inboxes[i]) for i, actor in enumerate(actors)])
        inboxes = [[] for _ in actors]
        next_times = []
        for outbox, next_time in answers:
            next_times.append(next_time)
            for arrival in outbox:
                inboxes[owner[arrival[2]]].append(arrival)
        windows += 1
        # skip quiet stretches: nothing happens anywhere before the earliest next event or arrival
        soonest = min(next_times + [a[0] for inbox in inboxes for a in inbox], default=math.inf)
        t = max(end, min(soonest, until)) if soonest > end else end
        if progress is not None and (t - reported >= progress_every or t >= until):
            reported = t
            progress(min(t, until))
    return windows


def start_ray(address: str | None, workers: int):
    """``ray.init`` once: a local instance with ``workers`` CPUs, or the cluster at ``address``."""
    try:
        import ray
    except ImportError:
        raise RuntimeError("the ray driver needs Ray: pip install 'ray>=2.9'") from None
    global _LOCAL_CPUS
    if ray.is_initialized() and _LOCAL_CPUS is not None and _LOCAL_CPUS < workers:
        # a local instance started for a smaller run: its actors (one CPU each) for this
        # run would wait for CPUs that never come
        ray.shutdown()
        _LOCAL_CPUS = None
    if not ray.is_initialized():
        options: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        if address:
            ray.init(address=address, **options)
        else:
            # the actors' torch threads are set to 1 by the world; the local instance has
            # the machine's CPUs, or more when a run asks for more actors than it has
            os.environ.setdefault("RAY_DEDUP_LOGS", "0")
            _LOCAL_CPUS = max(1, workers, os.cpu_count() or 1)
            ray.init(num_cpus=_LOCAL_CPUS, **options)
    return ray


# CPUs of the local Ray instance this process started (None: none, or a cluster's)
_LOCAL_CPUS: int | None = None
