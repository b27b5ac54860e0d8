"""The network interface: what nodes and policies may ask of the network they run on.

A run is handed a driver that implements :class:`Network` — the simulated network
(:class:`~mfd_core.network.sim.SimNetwork`, the default), real UDP sockets
(:class:`~mfd_core.network.udp.UdpNetwork`) or a partition of the simulated network
hosted by a Ray actor (:mod:`mfd_core.network.ray`) — and never builds one itself, so the
same node and policy code runs on all three. The clock is a SimPy environment
(``env``): simulated time on the simulator and under Ray, wall-clock time on sockets.

A driver may host only some of the nodes of the overlay (``hosts``): one node per OS
process on sockets, a share of the fleet per Ray actor. It still knows the whole overlay
(``graph``), so that routes and neighbour lists are the same everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import networkx as nx
import numpy as np
import simpy

Datagram = bytes | memoryview
Handler = Callable[[Datagram, int], None]

DEFAULT_KIND = "other"
# A broadcast fingerprint is remembered this long (seconds). A flood is over in TTL x the
# slowest hop, far less on any topology we build; a datagram repeated on purpose (a
# manifest copy) within the window is suppressed where the first arrived, which is what
# the copy is for.
DEDUP_WINDOW = 600.0
# bytes 0..35 of a datagram: the covered header; 36, 37: TTL and hop count; 38..41: CRC32C
TTL_OFFSET = 36


@dataclass(frozen=True, slots=True)
class NetworkChange:
    """What changed, as told to :meth:`Network.on_change` listeners.

    ``kind`` is ``"leave"``, ``"join"``, ``"link_down"``, ``"link_up"`` or ``"move"``;
    ``peer`` is the other end of a link; ``pos`` the new position of a moved node.
    """

    kind: str
    time: float
    node: int
    peer: int | None = None
    pos: tuple[float, float] | None = None


def broadcast_fingerprint(datagram: Datagram) -> bytes:
    """What identifies a broadcast datagram however far it has travelled: the covered
    header (origin, message, fragment, ...) and the CRC of the payload, i.e. everything
    but TTL and hop count, which each forwarder rewrites."""
    return bytes(datagram[:TTL_OFFSET]) + bytes(datagram[TTL_OFFSET + 2:TTL_OFFSET + 6])


_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """SplitMix64's finaliser (Steele et al. 2014): a 64-bit bijection that scrambles well."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def seed_key(seed: int | Sequence[int]) -> int:
    """A 64-bit key from a run's seed (an int or numpy-style sequence of ints)."""
    return int(np.random.SeedSequence(seed).generate_state(1, np.uint64)[0])


class LinkDraws:
    """The uniform numbers one direction of one link draws, in order: a counter-based
    stream keyed by the run's seed and the link's two ends, so the n-th datagram on a
    link meets the same luck whichever process or actor simulates it."""

    __slots__ = ("_stream", "count")

    def __init__(self, key: int, src: int, dst: int) -> None:
        self._stream = _mix64(key ^ _mix64(((src & 0xFFFFFFFF) << 32) | (dst & 0xFFFFFFFF)))
        self.count = 0

    def uniform(self) -> float:
        self.count += 1
        return (_mix64((self._stream + self.count) & _MASK64) >> 11) * (1.0 / (1 << 53))


@runtime_checkable
class Network(Protocol):
    """The surface every driver offers; nodes and policies use nothing else of it.

    Sending: :meth:`send` puts one datagram on the network at a hosted node; where it goes
    is read from its header (a node id, ``NEIGHBOURS`` or ``BROADCAST``); a driver routes
    and forwards as IP does. Receiving: the handler given to :meth:`attach` is called with
    ``(datagram, from_node)`` for every datagram delivered to that node.
    """

    graph: nx.Graph
    env: simpy.Environment

    @property
    def now(self) -> float: ...

    def hosts(self, node: int) -> bool:
        """Whether this driver instance runs ``node`` (its handler, its compute)."""

    def attach(self, node: int, handler: Handler) -> None: ...

    def detach(self, node: int) -> None: ...

    def send(self, src: int, datagram: Datagram, *, next_hop: int | None = None,
             kind: str = DEFAULT_KIND) -> None: ...

    def compute(self, node: int, work: float) -> simpy.Event:
        """An event that fires when ``node`` has done ``work`` (samples of training)."""

    def run(self, until: float | simpy.Event | None = None) -> None: ...

    def is_up(self, node: int) -> bool: ...

    def neighbours(self, node: int) -> list[int]: ...

    def link(self, u: int, v: int) -> dict[str, Any]: ...

    def route(self, src: int, dest: int) -> list[int] | None: ...

    def on_change(self, callback: Callable[[NetworkChange], None]) -> None: ...

    def leave(self, node: int) -> None: ...

    def join(self, node: int) -> None: ...

    def set_link(self, u: int, v: int, **attrs: float) -> None: ...

    def link_down(self, u: int, v: int) -> None: ...

    def link_up(self, u: int, v: int) -> None: ...

    def stats(self) -> dict[str, Any]: ...

    def describe(self) -> dict[str, Any]:
        """What a run folder records about the driver: its name, the OS processes, and
        where each hosted node lives (an address, an actor)."""
