"""Built-in topologies: networkx graphs that carry what the simulated network needs.

Every node has ``compute`` (training speed, samples per simulated second) and ``memory``
(bytes), and ``pos`` (x, y) for drawing and, in radio-range topologies, for links.
Every edge has ``bandwidth`` (bytes/s), ``latency`` (s), ``loss`` (probability that a
packet is lost) and ``corruption`` (probability that a packet gets one bit flipped).
Nodes are the integers ``0 .. n-1``: they are the MFD node ids on the wire.

Each builder takes the default link and node attributes as keyword arguments and
checks its arguments, raising ``ValueError`` that names the bad one;
:func:`build_topology` does the same for a name and parameters read from a scenario file.
"""
from __future__ import annotations

import inspect
import math
from numbers import Real
from typing import Any, Callable

import networkx as nx
import numpy as np

# 10 Mbit/s and 5 ms: a modest wireless or shared wired link. Loss and corruption are
# off by default so that a scenario turns them on knowingly.
DEFAULT_BANDWIDTH = 1.25e6
DEFAULT_LATENCY = 0.005
# Samples per simulated second: a small CPU training a small network.
DEFAULT_COMPUTE = 1000.0
DEFAULT_MEMORY = 1 << 30

LINK_ATTRS = ("bandwidth", "latency", "loss", "corruption")
NODE_ATTRS = ("compute", "memory")

# Radio links: the rate falls off towards the edge of the range (rate adaptation, as
# 802.11 steps down its modulation) and loss rises steeply near it.
DEFAULT_EDGE_RATE = 0.25  # fraction of the bandwidth left at the edge of the range
DEFAULT_EDGE_LOSS = 0.05  # loss added at the edge of the range


# ---------------------------------------------------------------- argument checks

def _int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _number(name: str, value: Any, *, low: float = 0.0, high: float = math.inf,
            low_open: bool = False, infinite_ok: bool = False) -> float:
    ok = isinstance(value, Real) and not isinstance(value, bool) and not math.isnan(value)
    if ok:
        value = float(value)
        ok = ((value > low if low_open else value >= low) and value <= high
              and (infinite_ok or math.isfinite(value)))
    if not ok:
        bound = f"{'>' if low_open else '>='} {low:g}" + (f" and <= {high:g}" if high != math.inf else "")
        raise ValueError(f"{name} must be a number {bound}, got {value!r}")
    return value


def check_link_attrs(bandwidth: Any, latency: Any, loss: Any, corruption: Any, *,
                     where: str = "") -> dict[str, float]:
    """Validated link attributes (``where`` prefixes the parameter name in errors)."""
    return {
        # An infinite bandwidth is an ideal link: no transmission time, latency only.
        "bandwidth": _number(f"{where}bandwidth", bandwidth, low_open=True, infinite_ok=True),
        "latency": _number(f"{where}latency", latency),
        "loss": _number(f"{where}loss", loss, high=1.0),
        "corruption": _number(f"{where}corruption", corruption, high=1.0),
    }


def check_node_attrs(compute: Any, memory: Any, *, where: str = "") -> dict[str, float | int]:
    compute = _number(f"{where}compute", compute, low_open=True)
    if isinstance(memory, bool) or not isinstance(memory, (int, np.integer)) or memory <= 0:
        raise ValueError(f"{where}memory must be a positive integer number of bytes, got {memory!r}")
    return {"compute": compute, "memory": int(memory)}


def _finish(graph: nx.Graph, name: str, link: dict[str, float], node: dict[str, Any]) -> nx.Graph:
    """Fill default attributes where a builder did not set them and record the defaults,
    which the simulator uses for nodes and links that appear later (join, move)."""
    for _, attrs in graph.nodes(data=True):
        for key, value in node.items():
            attrs.setdefault(key, value)
    for _, _, attrs in graph.edges(data=True):
        for key, value in link.items():
            attrs.setdefault(key, value)
    graph.graph["name"] = name
    graph.graph["link_defaults"] = dict(link)
    graph.graph["node_defaults"] = dict(node)
    return graph


def _circle(n: int) -> dict[int, tuple[float, float]]:
    return {i: (0.5 + 0.5 * math.cos(2 * math.pi * i / n), 0.5 + 0.5 * math.sin(2 * math.pi * i / n))
            for i in range(n)}


# ---------------------------------------------------------------- builders

def ring(n: int, *, bandwidth: float = DEFAULT_BANDWIDTH, latency: float = DEFAULT_LATENCY,
         loss: float = 0.0, corruption: float = 0.0, compute: float = DEFAULT_COMPUTE,
         memory: int = DEFAULT_MEMORY) -> nx.Graph:
    """``n`` nodes in a cycle, each linked to the next."""
    n = _int("n", n, 3)
    link = check_link_attrs(bandwidth, latency, loss, corruption)
    node = check_node_attrs(compute, memory)
    graph = nx.cycle_graph(n)
    nx.set_node_attributes(graph, _circle(n), "pos")
    return _finish(graph, "ring", link, node)


def grid(rows: int, cols: int, *, bandwidth: float = DEFAULT_BANDWIDTH,
         latency: float = DEFAULT_LATENCY, loss: float = 0.0, corruption: float = 0.0,
         compute: float = DEFAULT_COMPUTE, memory: int = DEFAULT_MEMORY) -> nx.Graph:
    """A ``rows`` x ``cols`` lattice; node ``r * cols + c`` sits at row r, column c."""
    rows = _int("rows", rows, 1)
    cols = _int("cols", cols, 1)
    if rows * cols < 2:
        raise ValueError(f"rows x cols must give at least 2 nodes, got {rows} x {cols}")
    link = check_link_attrs(bandwidth, latency, loss, corruption)
    node = check_node_attrs(compute, memory)
    graph = nx.Graph()
    for r in range(rows):
        for c in range(cols):
            graph.add_node(r * cols + c, pos=(c / max(cols - 1, 1), r / max(rows - 1, 1)))
    for r in range(rows):
        for c in range(cols):
            if c + 1 < cols:
                graph.add_edge(r * cols + c, r * cols + c + 1)
            if r + 1 < rows:
                graph.add_edge(r * cols + c, (r + 1) * cols + c)
    return _finish(graph, "grid", link, node)


def radio_link(distance: float, radio: dict[str, float]) -> dict[str, float]:
    """Attributes of a radio link ``distance`` long (``radio`` as stored in
    ``graph.graph["radio"]``): full bandwidth and base loss up close, falling to
    ``edge_rate`` x bandwidth and base loss + ``edge_loss`` at the edge of the range."""
    f = min(distance / radio["radius"], 1.0)
    return {
        "bandwidth": radio["bandwidth"] * (1.0 - (1.0 - radio["edge_rate"]) * f * f),
        "latency": radio["latency"],
        "loss": min(1.0, radio["loss"] + radio["edge_loss"] * f ** 4),
        "corruption": radio["corruption"],
        "distance": distance,
    }


def radio_edges(positions: dict[int, tuple[float, float]], radio: dict[str, float]
                ) -> list[tuple[int, int, dict[str, float]]]:
    """Every pair within range, with its link attributes."""
    nodes = list(positions)
    if len(nodes) < 2:
        return []
    xy = np.array([positions[v] for v in nodes], dtype=float)
    d = np.sqrt(((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1))
    iu, ju = np.nonzero(np.triu(d <= radio["radius"], k=1))
    return [(nodes[i], nodes[j], radio_link(float(d[i, j]), radio)) for i, j in zip(iu, ju)]


def random_geometric(n: int, radius: float, seed: int = 0, *, connect: str = "grow",
                     degrade: bool = True, bandwidth: float = DEFAULT_BANDWIDTH,
                     latency: float = DEFAULT_LATENCY, loss: float = 0.0,
                     corruption: float = 0.0, compute: float = DEFAULT_COMPUTE,
                     memory: int = DEFAULT_MEMORY) -> nx.Graph:
    """``n`` radios placed uniformly in the unit square, linked when within ``radius``.

    :param connect: what to do when the draw is not connected: ``"grow"`` raises the
        radius by 10% steps until it is (the radius used is ``graph.graph["radio"]
        ["radius"]``); ``"resample"`` redraws positions up to 100 times and then raises
        ``ValueError``; ``"none"`` keeps a disconnected graph.
    :param degrade: links lose rate and gain loss towards the edge of the range
        (see :func:`radio_link`); with False every link has the given attributes.
    """
    n = _int("n", n, 2)
    radius = _number("radius", radius, low_open=True)
    seed = _int("seed", seed, 0)
    if connect not in ("grow", "resample", "none"):
        raise ValueError(f"connect must be 'grow', 'resample' or 'none', got {connect!r}")
    if not isinstance(degrade, bool):
        raise ValueError(f"degrade must be true or false, got {degrade!r}")
    link = check_link_attrs(bandwidth, latency, loss, corruption)
    node = check_node_attrs(compute, memory)
    rng = np.random.default_rng(seed)
    radio = dict(link, radius=radius, edge_rate=DEFAULT_EDGE_RATE if degrade else 1.0,
                 edge_loss=DEFAULT_EDGE_LOSS if degrade else 0.0)
    for attempt in range(100 if connect == "resample" else 1):
        positions = {i: (float(x), float(y)) for i, (x, y) in enumerate(rng.random((n, 2)))}
        graph = nx.Graph()
        graph.add_nodes_from((i, {"pos": p}) for i, p in positions.items())
        # 1.5 x the unit square's diagonal links every pair: growing stops there at worst.
        while True:
            graph.remove_edges_from(list(graph.edges))
            graph.add_edges_from(radio_edges(positions, radio))
            if connect != "grow" or nx.is_connected(graph):
                break
            radio["radius"] *= 1.1
        if connect != "resample" or nx.is_connected(graph):
            break
    else:
        raise ValueError(f"radius {radius} gave no connected placement of {n} nodes in 100 draws; "
                         "raise radius or use connect='grow'")
    graph.graph["radio"] = radio
    return _finish(graph, "random_geometric", link, node)


def small_world(n: int, k: int = 4, p: float = 0.1, seed: int = 0, *,
                bandwidth: float = DEFAULT_BANDWIDTH, latency: float = DEFAULT_LATENCY,
                loss: float = 0.0, corruption: float = 0.0, compute: float = DEFAULT_COMPUTE,
                memory: int = DEFAULT_MEMORY) -> nx.Graph:
    """Watts-Strogatz: a ring where each node links its ``k`` nearest, each link rewired
    with probability ``p``; redrawn until connected (networkx's connected variant)."""
    n = _int("n", n, 3)
    k = _int("k", k, 2)
    if k >= n:
        raise ValueError(f"k must be smaller than n ({n}), got {k}")
    p = _number("p", p, high=1.0)
    seed = _int("seed", seed, 0)
    link = check_link_attrs(bandwidth, latency, loss, corruption)
    node = check_node_attrs(compute, memory)
    try:
        graph = nx.connected_watts_strogatz_graph(n, k, p, tries=1000, seed=seed)
    except nx.NetworkXError as exc:
        raise ValueError(f"small_world(n={n}, k={k}, p={p}): {exc}") from None
    nx.set_node_attributes(graph, _circle(n), "pos")
    return _finish(graph, "small_world", link, node)


def star(n: int, *, bandwidth: float = DEFAULT_BANDWIDTH, latency: float = DEFAULT_LATENCY,
         loss: float = 0.0, corruption: float = 0.0, compute: float = DEFAULT_COMPUTE,
         memory: int = DEFAULT_MEMORY) -> nx.Graph:
    """Hub 0 linked to nodes 1 .. n-1 (``n`` nodes in all)."""
    n = _int("n", n, 2)
    link = check_link_attrs(bandwidth, latency, loss, corruption)
    node = check_node_attrs(compute, memory)
    graph = nx.star_graph(n - 1)
    pos = {i + 1: p for i, p in _circle(n - 1).items()}
    pos[0] = (0.5, 0.5)
    nx.set_node_attributes(graph, pos, "pos")
    return _finish(graph, "star", link, node)


def hierarchy(devices: int, edges: int, clouds: int = 1, *,
              bandwidth: float = 2.5e5, latency: float = 0.02, loss: float = 0.02,
              corruption: float = 0.0, compute: float = 100.0, memory: int = 1 << 28,
              uplink_bandwidth: float = 1.25e8, uplink_latency: float = 0.01,
              uplink_loss: float = 0.0, edge_compute: float = 1e4, edge_memory: int = 1 << 34,
              cloud_compute: float = 1e5, cloud_memory: int = 1 << 38) -> nx.Graph:
    """Device - edge - cloud: each device attaches to one edge server (spread evenly),
    each edge server to one cloud (spread evenly), clouds to each other.

    Node ids: devices ``0 .. devices-1``, then edges, then clouds; node attribute
    ``tier`` is ``"device"``, ``"edge"`` or ``"cloud"``. ``bandwidth``, ``latency``,
    ``loss``, ``corruption``, ``compute`` and ``memory`` describe the devices and their
    (slow, lossy: 2 Mbit/s, 20 ms, 2%) access links; the ``uplink_*`` parameters the
    edge-cloud and cloud-cloud backbone (1 Gbit/s, 10 ms, lossless by default).
    """
    devices = _int("devices", devices, 1)
    edges = _int("edges", edges, 1)
    clouds = _int("clouds", clouds, 1)
    link = check_link_attrs(bandwidth, latency, loss, corruption)
    uplink = check_link_attrs(uplink_bandwidth, uplink_latency, uplink_loss, 0.0, where="uplink_")
    node = check_node_attrs(compute, memory)
    edge_node = check_node_attrs(edge_compute, edge_memory, where="edge_")
    cloud_node = check_node_attrs(cloud_compute, cloud_memory, where="cloud_")
    graph = nx.Graph()

    def spread(count: int, i: int, y: float) -> tuple[float, float]:
        return ((i + 0.5) / count, y)

    first_edge, first_cloud = devices, devices + edges
    for i in range(devices):
        graph.add_node(i, tier="device", pos=spread(devices, i, 0.0), **node)
    for j in range(edges):
        graph.add_node(first_edge + j, tier="edge", pos=spread(edges, j, 0.5), **edge_node)
    for c in range(clouds):
        graph.add_node(first_cloud + c, tier="cloud", pos=spread(clouds, c, 1.0), **cloud_node)
    for i in range(devices):
        graph.add_edge(i, first_edge + i * edges // devices, **link)
    for j in range(edges):
        graph.add_edge(first_edge + j, first_cloud + j * clouds // edges, **uplink)
    for a in range(clouds):
        for b in range(a + 1, clouds):
            graph.add_edge(first_cloud + a, first_cloud + b, **uplink)
    return _finish(graph, "hierarchy", link, node)


TOPOLOGIES: dict[str, Callable[..., nx.Graph]] = {
    "ring": ring,
    "grid": grid,
    "random_geometric": random_geometric,
    "small_world": small_world,
    "star": star,
    "hierarchy": hierarchy,
}


def build_topology(name: str, **params: Any) -> nx.Graph:
    """The topology ``name`` built with ``params`` (as read from a scenario file).

    :raises ValueError: for an unknown name, an unknown or missing parameter, or a bad
        value; the message names it and lists what is accepted.
    """
    builder = TOPOLOGIES.get(name) if isinstance(name, str) else None
    if builder is None:
        raise ValueError(f"unknown topology {name!r}; choose one of: {', '.join(TOPOLOGIES)}")
    signature = inspect.signature(builder)
    accepted = list(signature.parameters)
    for key in params:
        if key not in signature.parameters:
            raise ValueError(f"topology {name!r} has no parameter {key!r}; it accepts: {', '.join(accepted)}")
    for key, parameter in signature.parameters.items():
        if parameter.default is inspect.Parameter.empty and key not in params:
            raise ValueError(f"topology {name!r} needs parameter {key!r}")
    try:
        return builder(**params)
    except ValueError as exc:
        raise ValueError(f"topology {name!r}: {exc}") from None
