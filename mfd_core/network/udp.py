"""UDP on real sockets: the same nodes, talking over loopback (or a LAN) in real time.

Each hosted node owns one UDP socket, and what goes on the wire is the MFD datagram as
it is, with no framing of ours: the receiver knows the sending node from the source
address. The graph is the overlay: it says who neighbours whom and routes unicast along
the shortest path by its ``latency`` attributes, forwarding with
:func:`mfd_core.packet.forwarded` exactly as the simulated network does. Bandwidth, delay
and loss are whatever the real network gives.

The clock is SimPy's real-time environment, so node code written for
:class:`~mfd_core.network.sim.SimNetwork` (``env.timeout``, ``compute``, ``attach`` /
``send``) runs unchanged; sockets are polled every ``poll`` seconds from a SimPy
callback, so handlers run in the thread that calls :meth:`run`. Several processes each
host some nodes and exchange :attr:`addresses` (``add_peers``) before running, or bind
the addresses a peers file gives them (``bind``).

Two options replay a simulated scenario on real sockets: ``emulate`` imposes each
overlay link's loss, latency and rate at the sending socket (a datagram is dropped with
the link's loss probability, else sent once the link is free and its latency has
passed, as :class:`~mfd_core.network.sim.SimNetwork` charges it), and ``pace`` makes
training take the simulated time it costs (``work / compute``), so a node on sockets
trains as much per second as it would in the simulator.
"""
from __future__ import annotations

import errno
import math
import selectors
import socket
from collections import deque
from typing import Any, Callable, Iterable, Mapping, Sequence

import networkx as nx
import simpy
import simpy.rt

from .. import packet
from ..packet import BROADCAST, NEIGHBOURS, PacketError
from .base import DEDUP_WINDOW, DEFAULT_KIND, Datagram, Handler, LinkDraws, NetworkChange, broadcast_fingerprint, seed_key

Address = tuple[str, int]
# The largest UDP payload over IPv4, and the packet layer's MTU bound.
_MAX_DATAGRAM = packet.MAX_MTU
_COUNTERS = ("sent_bytes", "sent_packets", "received_bytes", "received_packets", "forwarded_bytes",
             "forwarded_packets", "dropped_bytes", "dropped_packets", "duplicates")


class _Local:
    __slots__ = ("id", "sock", "handler", "up", "busy_until", "draws", *_COUNTERS)

    def __init__(self, node: int, sock: socket.socket) -> None:
        self.id = node
        self.sock = sock
        self.busy_until: dict[int, float] = {}  # emulated links: when each is free again
        self.draws: dict[int, LinkDraws] = {}  # emulated links: their losses
        self.handler: Handler | None = None
        self.up = True
        for name in _COUNTERS:
            setattr(self, name, 0)


class UdpNetwork:
    """Nodes of ``graph`` hosted in this process, each on its own UDP socket.

    :param graph: the overlay (undirected, int node ids); edge ``latency`` weighs routes.
    :param nodes: the nodes this process hosts (default: all of them).
    :param peers: addresses of nodes hosted elsewhere (more with :meth:`add_peers`).
    :param env: a SimPy environment; default a non-strict real-time one (``factor``
        wall seconds per simulated second).
    :param host: where hosted nodes bind (an ephemeral port each). Loopback by default.
    :param bind: fixed addresses for hosted nodes (a peers file's), instead of ``host``.
    :param poll: seconds between socket polls: the added receive delay, at most.
    :param emulate: impose the overlay links' loss, latency and rate at the sockets.
    :param pace: training takes ``work / compute`` seconds, as in the simulator.
    :param seed: seeds the emulated losses.
    """

    def __init__(self, graph: nx.Graph, *, nodes: Iterable[int] | None = None,
                 peers: Mapping[int, Address] | None = None, env: simpy.Environment | None = None,
                 host: str = "127.0.0.1", factor: float = 1.0, poll: float = 0.001,
                 bind: Mapping[int, Address] | None = None, emulate: bool = False, pace: bool = False,
                 seed: int | Sequence[int] = 0) -> None:
        if not isinstance(graph, nx.Graph) or graph.is_directed() or graph.is_multigraph():
            raise ValueError("graph must be an undirected networkx.Graph")
        if not (isinstance(poll, (int, float)) and 0 < poll < math.inf):
            raise ValueError(f"poll must be a positive number of seconds, got {poll!r}")
        self.graph = graph
        self.env = env if env is not None else simpy.rt.RealtimeEnvironment(factor=factor, strict=False)
        self.addresses: dict[int, Address] = {}
        self._by_address: dict[Address, int] = {}
        self._local: dict[int, _Local] = {}
        self._selector = selectors.DefaultSelector()
        self._poll = poll
        self._routes: dict[int, dict[int, int]] = {}
        self._seen: dict[bytes, set[int]] = {}
        self._seen_expiry: deque[tuple[float, bytes]] = deque()
        self._listeners: list[Callable[[NetworkChange], None]] = []
        self._kinds: dict[str, dict[str, int]] = {}
        self._drops = {reason: [0, 0] for reason in ("ttl", "down", "no_route", "foreign", "error", "loss")}
        self._closed = False
        self._emulate, self._pace = emulate, pace
        self._key = seed_key(seed)
        self._down_remote: set[int] = set()  # nodes hosted elsewhere that are away
        self._links_down: set[frozenset[int]] = set()
        try:
            for node in (graph.nodes if nodes is None else nodes):
                if node not in graph:
                    raise ValueError(f"node {node!r} is not in the graph")
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                self._local[node] = _Local(node, sock)
                address = (bind or {}).get(node, (host, 0))
                try:
                    sock.bind((str(address[0]), int(address[1])))
                except OSError as err:
                    raise OSError(f"node {node}: cannot bind {address[0]}:{address[1]}: {err.strerror}") from None
                sock.setblocking(False)
                self._selector.register(sock, selectors.EVENT_READ, node)
                self._register(node, sock.getsockname()[:2])
            self.add_peers(peers or {})
        except BaseException:
            self.close()
            raise
        self.env.timeout(0).callbacks.append(self._receive)

    # ------------------------------------------------------------ the node's surface

    @property
    def now(self) -> float:
        return self.env.now

    def hosts(self, node: int) -> bool:
        return node in self._local

    def describe(self) -> dict[str, Any]:
        return {"driver": "udp", "processes": 1,
                "nodes": {str(n): f"{host}:{port}" for n, (host, port) in self.addresses.items() if n in self._local}}

    def add_peers(self, peers: Mapping[int, Address]) -> None:
        """Where nodes hosted by other processes listen (their :attr:`addresses`)."""
        for node, address in peers.items():
            if node not in self._local:
                self._register(node, (str(address[0]), int(address[1])))
        self._routes.clear()

    def attach(self, node: int, handler: Handler) -> None:
        self._hosted(node).handler = handler

    def detach(self, node: int) -> None:
        self._hosted(node).handler = None

    def send(self, src: int, datagram: Datagram, *, next_hop: int | None = None,
             kind: str = DEFAULT_KIND) -> None:
        """As :meth:`SimNetwork.send`; ``src`` must be hosted here."""
        local = self._hosted(src)
        if type(datagram) is bytearray:
            datagram = bytes(datagram)
        dest = packet.peek_route(datagram)[0]
        size = len(datagram)
        tally = self._kinds.setdefault(kind, {"sent_bytes": 0, "sent_packets": 0})
        if not local.up:
            self._drop(local, "down", size)
            return
        if next_hop is not None:
            hops = [next_hop] if next_hop in self.neighbours(src) else []
        elif dest == NEIGHBOURS or dest == BROADCAST:
            hops = self.neighbours(src)
        elif dest == src:
            self.env.timeout(0).callbacks.append(lambda _: self._deliver(src, src, datagram))
            hops = []
        else:
            hop = self._next_hop(src, dest)
            hops = [] if hop is None else [hop]
        if not hops and dest != src and dest != NEIGHBOURS and dest != BROADCAST:
            self._drop(local, "no_route", size)
            return
        if dest == BROADCAST:
            self._remember(datagram, src)
        for hop in hops:
            if self._sendto(local, datagram, hop):
                local.sent_bytes += size
                local.sent_packets += 1
                tally["sent_bytes"] += size
                tally["sent_packets"] += 1

    def compute(self, node: int, work: float) -> simpy.Event:
        """Fires at once: on real sockets the learner's training takes real time itself;
        with ``pace``, after the ``work / compute`` seconds the simulator would charge."""
        self._hosted(node)
        if not self._pace:
            return self.env.timeout(0, work)
        if isinstance(work, bool) or not isinstance(work, (int, float)) or not 0 <= work < math.inf:
            raise ValueError(f"work must be a finite number >= 0, got {work!r}")
        return self.env.timeout(work / float(self.graph.nodes[node].get("compute", 1.0)), work)

    def run(self, until: float | simpy.Event | None = None) -> None:
        self.env.run(until=until)

    def close(self) -> None:
        """Close every socket (idempotent). Also on ``with UdpNetwork(...) as net:`` exit."""
        if self._closed:
            return
        self._closed = True
        for local in self._local.values():
            try:
                self._selector.unregister(local.sock)
            except (KeyError, ValueError):
                pass
            local.sock.close()
        self._selector.close()

    def __enter__(self) -> "UdpNetwork":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------ topology

    def is_up(self, node: int) -> bool:
        local = self._local.get(node)
        if local is not None:
            return local.up
        return node in self.addresses and node not in self._down_remote

    def neighbours(self, node: int) -> list[int]:
        """Graph neighbours that have an address, over links that are up (and are up,
        where hosted here; not known to be away, where hosted elsewhere)."""
        if not self.is_up(node):
            return []
        return [peer for peer in self.graph.neighbors(node)
                if self.is_up(peer) and frozenset((node, peer)) not in self._links_down]

    def link(self, u: int, v: int) -> dict[str, Any]:
        if not self.graph.has_edge(u, v):
            raise ValueError(f"no link between {u!r} and {v!r}")
        up = self.is_up(u) and self.is_up(v) and frozenset((u, v)) not in self._links_down
        return dict(self.graph.edges[u, v], up=up)

    def route(self, src: int, dest: int) -> list[int] | None:
        """The path unicast from ``src`` to ``dest`` takes now, or None if unreachable."""
        path = [src]
        while path[-1] != dest:
            hop = self._next_hop(path[-1], dest)
            if hop is None or len(path) > self.graph.number_of_nodes():
                return None
            path.append(hop)
        return path

    def set_link(self, u: int, v: int, **attrs: float) -> None:
        """Change what an emulated link imposes (loss, latency, bandwidth)."""
        if not self.graph.has_edge(u, v):
            raise ValueError(f"no link between {u!r} and {v!r}")
        self.graph.edges[u, v].update(attrs)
        self._routes.clear()

    def link_down(self, u: int, v: int) -> None:
        if frozenset((u, v)) not in self._links_down:
            self._links_down.add(frozenset((u, v)))
            self._routes.clear()
            self._tell(NetworkChange("link_down", self.env.now, u, v))

    def link_up(self, u: int, v: int) -> None:
        if frozenset((u, v)) in self._links_down:
            self._links_down.discard(frozenset((u, v)))
            self._routes.clear()
            self._tell(NetworkChange("link_up", self.env.now, u, v))

    def on_change(self, callback: Callable[[NetworkChange], None]) -> None:
        self._listeners.append(callback)

    def leave(self, node: int) -> None:
        """A hosted node stops sending and receiving (its socket stays bound); a node
        hosted elsewhere is taken as away (routed around) until it joins again."""
        local = self._local.get(node)
        if local is None:
            if node not in self.addresses or node in self._down_remote:
                return
            self._down_remote.add(node)
        elif local.up:
            local.up = False
        else:
            return
        self._routes.clear()
        self._tell(NetworkChange("leave", self.env.now, node))

    def join(self, node: int) -> None:
        local = self._local.get(node)
        if local is None:
            if node not in self._down_remote:
                return
            self._down_remote.discard(node)
        elif not local.up:
            local.up = True
        else:
            return
        self._routes.clear()
        self._tell(NetworkChange("join", self.env.now, node))

    def stats(self) -> dict[str, Any]:
        """Totals, drops, per-node counters; per-kind counts of what origins sent (kinds
        do not travel on the wire, so forwarded copies count only in the totals)."""
        nodes = {node: {name: getattr(local, name) for name in _COUNTERS} for node, local in self._local.items()}
        air_bytes = sum(n["sent_bytes"] + n["forwarded_bytes"] for n in nodes.values())
        air_packets = sum(n["sent_packets"] + n["forwarded_packets"] for n in nodes.values())
        return {
            "time": self.env.now, "air_bytes": air_bytes, "air_packets": air_packets,
            "sent_bytes": sum(n["sent_bytes"] for n in nodes.values()),
            "sent_packets": sum(n["sent_packets"] for n in nodes.values()),
            "delivered_bytes": sum(n["received_bytes"] for n in nodes.values()),
            "delivered_packets": sum(n["received_packets"] for n in nodes.values()),
            "dropped_bytes": sum(b for _, b in self._drops.values()),
            "dropped_packets": sum(p for p, _ in self._drops.values()),
            "duplicates": sum(n["duplicates"] for n in nodes.values()),
            "drops": {reason: {"packets": p, "bytes": b} for reason, (p, b) in self._drops.items()},
            "kinds": {kind: dict(tally, air_bytes=tally["sent_bytes"], air_packets=tally["sent_packets"])
                      for kind, tally in self._kinds.items()},
            "nodes": nodes,
        }

    # ------------------------------------------------------------ internals

    def _register(self, node: int, address: Address) -> None:
        if isinstance(node, bool) or not isinstance(node, int) or not 0 <= node <= packet.MAX_NODE_ID:
            raise ValueError(f"node ids must be integers 0..{packet.MAX_NODE_ID}, got {node!r}")
        self.addresses[node] = address
        self._by_address[address] = node

    def _hosted(self, node: int) -> _Local:
        local = self._local.get(node)
        if local is None:
            raise ValueError(f"node {node!r} is not hosted by this UdpNetwork")
        return local

    def _sendto(self, local: _Local, datagram: Datagram, hop: int) -> bool:
        address = self.addresses.get(hop)
        if address is None:
            self._drop(local, "no_route", len(datagram))
            return False
        if self._emulate and self.graph.has_edge(local.id, hop):
            return self._emulated(local, datagram, hop, address)
        return self._transmit(local, datagram, address)

    def _emulated(self, local: _Local, datagram: Datagram, hop: int, address: Address) -> bool:
        """The link's rate, latency and loss, as the simulator charges them: the datagram
        waits for the link, takes ``size / bandwidth`` on it, then ``latency``; lost with
        the link's loss probability (it used the link all the same)."""
        link = self.graph.edges[local.id, hop]
        size = len(datagram)
        now = self.env.now
        free = local.busy_until.get(hop, 0.0)
        wait = free - now if free > now else 0.0
        on_wire = size / float(link.get("bandwidth", math.inf))
        local.busy_until[hop] = now + wait + on_wire
        loss = float(link.get("loss", 0.0))
        draws = local.draws.get(hop)
        if draws is None:
            draws = local.draws[hop] = LinkDraws(self._key, local.id, hop)
        if loss and draws.uniform() < loss:
            self._drop(local, "loss", size)
            return True  # sent: the link carried it and lost it
        delay = wait + on_wire + float(link.get("latency", 0.0))
        if delay <= 0:
            return self._transmit(local, datagram, address)
        data = bytes(datagram)
        self.env.timeout(delay).callbacks.append(lambda _: self._transmit(local, data, address))
        return True

    def _transmit(self, local: _Local, datagram: Datagram, address: Address) -> bool:
        if self._closed:
            return False
        try:
            local.sock.sendto(datagram, address)
        except OSError as exc:  # a full socket buffer is loss, as on a real link
            self._drop(local, "down" if exc.errno == errno.ECONNREFUSED else "error", len(datagram))
            return False
        return True

    def _receive(self, _event: simpy.Event) -> None:
        if self._closed:
            return
        for key, _ in self._selector.select(timeout=0):
            node, sock = key.data, key.fileobj
            while True:
                try:
                    datagram, address = sock.recvfrom(_MAX_DATAGRAM)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:  # ICMP port unreachable from an earlier send (Linux)
                    continue
                self._arrive(node, datagram, address[:2])
        self.env.timeout(self._poll).callbacks.append(self._receive)

    def _arrive(self, node: int, datagram: bytes, address: Address) -> None:
        local = self._local[node]
        size = len(datagram)
        sender = self._by_address.get(address)
        if sender is None:
            self._drop(local, "foreign", size)
            return
        if not local.up:
            self._drop(local, "down", size)
            return
        try:
            dest, ttl, _ = packet.peek_route(datagram)
        except PacketError:
            self._drop(local, "foreign", size)
            return
        if dest == node or dest == NEIGHBOURS:
            self._deliver(node, sender, datagram)
        elif dest == BROADCAST:
            if not self._remember(datagram, node):
                local.duplicates += 1
                return
            if ttl:
                onward = packet.forwarded(datagram)
                for peer in self.neighbours(node):
                    if peer != sender and self._sendto(local, onward, peer):
                        local.forwarded_bytes += size
                        local.forwarded_packets += 1
            self._deliver(node, sender, datagram)
        else:
            hop = self._next_hop(node, dest)
            if hop is None:
                self._drop(local, "no_route", size)
                return
            try:
                onward = packet.forwarded(datagram)
            except PacketError:
                self._drop(local, "ttl", size)
                return
            if self._sendto(local, onward, hop):
                local.forwarded_bytes += size
                local.forwarded_packets += 1

    def _deliver(self, node: int, sender: int, datagram: Datagram) -> None:
        local = self._local[node]
        local.received_bytes += len(datagram)
        local.received_packets += 1
        if local.handler is not None:
            local.handler(datagram, sender)

    def _remember(self, datagram: Datagram, node: int) -> bool:
        """Note that ``node`` has seen this broadcast; False if it had already."""
        now = self.env.now
        while self._seen_expiry and self._seen_expiry[0][0] <= now:
            self._seen.pop(self._seen_expiry.popleft()[1], None)
        fingerprint = broadcast_fingerprint(datagram)
        seen = self._seen.get(fingerprint)
        if seen is None:
            self._seen[fingerprint] = {node}
            self._seen_expiry.append((now + DEDUP_WINDOW, fingerprint))
            return True
        if node in seen:
            return False
        seen.add(node)
        return True

    def _next_hop(self, here: int, dest: int) -> int | None:
        table = self._routes.get(dest)
        if table is None:
            table = self._routes[dest] = {}
            if dest in self.graph and self.is_up(dest):
                usable = nx.subgraph_view(self.graph, filter_node=self.is_up,
                                          filter_edge=lambda u, v: frozenset((u, v)) not in self._links_down)
                preds = nx.dijkstra_predecessor_and_distance(
                    usable, dest, weight=lambda u, v, a: a.get("latency", 1.0) + 1e-9)[0]
                for node, pred in preds.items():
                    if pred:
                        table[node] = pred[0]
        return table.get(here)

    def _drop(self, local: _Local, reason: str, size: int) -> None:
        counts = self._drops[reason]
        counts[0] += 1
        counts[1] += size
        local.dropped_packets += 1
        local.dropped_bytes += size

    def _tell(self, change: NetworkChange) -> None:
        for listener in list(self._listeners):
            listener(change)
