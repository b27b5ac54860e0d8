"""Micro-benchmark of the simulated network's cost per packet hop.

    python tests/test_network_bench.py            # 1,000 nodes, prints hops/s per traffic pattern
    python tests/test_network_bench.py --hour     # one simulated hour of neighbour gossip

Under pytest a small run checks that the cost stays within a generous bound (a
regression to per-packet processes or per-packet route computation is 10x slower).
"""
from __future__ import annotations

import argparse
import resource
import sys
import time

import pytest

from mfd_core import packet
from mfd_core.network import topology
from mfd_core.network.sim import SimNetwork
from mfd_core.packet import BROADCAST, NEIGHBOURS

UINT8 = packet.ENCODING_CODE["uint8"]


def _datagram(origin: int, destination: int, size: int, ttl: int = 16) -> bytes:
    frag = packet.Fragment(0, UINT8, 0, bytes(size - packet.HEADER_SIZE))
    return bytes(packet.build([frag], family_id=1, model_version=1, origin=origin,
                              destination=destination, message_id=origin & 0xFFFF, ttl=ttl)[0])


def gossip(n: int, pattern: str, period: float, horizon: float, size: int = 600,
           seed: int = 1) -> dict[str, float]:
    """Every node sends one datagram every ``period`` simulated seconds, node ``i``
    starting at ``period * i / n``: to its neighbours, to the node halfway round
    (unicast, several hops), or to all (broadcast: a flood costs ~degree x n hops, so
    give it a long period to have few floods). The handler does nothing: this measures
    the network alone."""
    graph = topology.small_world(n, 6, 0.1, seed=seed, bandwidth=1.25e6, latency=0.005, loss=0.01)
    net = SimNetwork(graph, seed=seed)
    for node in graph:
        net.attach(node, lambda datagram, sender: None)
    datagrams = {}
    for node in graph:
        dest = {"neighbours": NEIGHBOURS, "broadcast": BROADCAST}.get(pattern, (node + n // 2) % n)
        datagrams[node] = _datagram(node, dest, size)
    env = net.env

    def start(node: int) -> None:
        dgram = datagrams[node]
        if pattern == "broadcast":  # a new message id each time, else it is a duplicate
            frag = packet.Fragment(0, UINT8, 0, bytes(size - packet.HEADER_SIZE))

        def tick(_event) -> None:
            nonlocal dgram
            if pattern == "broadcast":
                dgram = packet.build([frag], family_id=1, model_version=1, origin=node,
                                     destination=BROADCAST, message_id=int(env.now / period) & 0xFFFF)[0]
            net.send(node, dgram, kind="model")
            env.timeout(period).callbacks.append(tick)

        env.timeout(period * node / n).callbacks.append(tick)

    for node in graph:
        start(node)
    began = time.perf_counter()
    net.run(horizon)
    wall = time.perf_counter() - began
    stats = net.stats()
    hops = stats["air_packets"]
    return {"pattern": pattern, "nodes": n, "hops": hops, "delivered": stats["delivered_packets"],
            "wall_s": wall, "hops_per_s": hops / wall, "us_per_hop": wall / hops * 1e6,
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def test_neighbour_gossip_reaches_every_neighbour_and_loses_what_the_links_lose() -> None:
    result = gossip(200, "neighbours", period=1.0, horizon=20.0)
    # 200 nodes x 20 sends x 6 neighbours go on the air; 1 % of them are lost on the links
    assert result["hops"] == 200 * 20 * 6
    assert 0.97 * result["hops"] < result["delivered"] < 0.999 * result["hops"]


@pytest.mark.slow
def test_unicast_and_broadcast_scale_to_a_thousand_nodes(monkeypatch) -> None:
    """Routes are computed once per destination, not per packet (the regression that
    once made the simulator 10x slower); broadcasts reach the whole fleet. The cost per
    hop is a benchmark (``python tests/test_network_bench.py``), not an assertion."""
    computed = []
    original = SimNetwork._compute_routes
    monkeypatch.setattr(SimNetwork, "_compute_routes",
                        lambda self, dest: computed.append(dest) or original(self, dest))
    unicast = gossip(1000, "unicast", period=5.0, horizon=10.0)
    assert unicast["delivered"] > 0.9 * 1000 * 2 and len(computed) == len(set(computed)) <= 1000
    flood = gossip(1000, "broadcast", period=1000.0, horizon=10.0)
    assert flood["delivered"] > 0.98 * 10 * 999  # ten floods in 10 s, each to (nearly) all 999 others


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--hour", action="store_true", help="one simulated hour of neighbour gossip")
    args = parser.parse_args(argv)
    runs = ([("neighbours", 10.0, 3600.0)] if args.hour else
            [("neighbours", 1.0, 60.0), ("unicast", 1.0, 60.0), ("broadcast", 1000.0, 50.0)])
    for pattern, period, horizon in runs:
        r = gossip(args.nodes, pattern, period, horizon)
        print(f"{r['pattern']:>10}: {r['nodes']} nodes, {horizon:g} s simulated, {r['hops']:,} hops "
              f"in {r['wall_s']:.2f} s wall = {r['hops_per_s'] / 1e3:,.0f}k hops/s, "
              f"{r['us_per_hop']:.2f} us/hop, max RSS {r['max_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main(sys.argv[1:])
