"""The simulated network: timing, queues, loss, corruption, routing, churn, accounting."""
from __future__ import annotations

import math

import networkx as nx
import pytest
import torch

from mfd_core import codec, packet
from mfd_core.network import sim as sim_module
from mfd_core.network import topology
from mfd_core.network.sim import MAX_JITTER_S, NetworkChange, SimNetwork
from mfd_core.network.topology import build_topology
from mfd_core.packet import BROADCAST, NEIGHBOURS

UINT8 = packet.ENCODING_CODE["uint8"]


def datagram(origin: int, destination: int, *, ttl: int = 16, size: int = 1000, message_id: int = 1,
             fragment: int = 0) -> bytes:
    """One datagram of exactly ``size`` bytes (header included)."""
    payload = bytes((fragment + i) % 251 for i in range(size - packet.HEADER_SIZE))
    frags = [packet.Fragment(0, UINT8, 0, b"\0")] * fragment + [packet.Fragment(0, UINT8, 0, payload)]
    out = packet.build(frags, family_id=7, model_version=1, origin=origin, destination=destination,
                       message_id=message_id, ttl=ttl)[fragment]
    assert len(out) == size
    return bytes(out)


def path(attrs: list[dict]) -> nx.Graph:
    """Nodes 0 - 1 - ... - len(attrs), link i having attrs[i]."""
    graph = nx.Graph()
    for i, a in enumerate(attrs):
        graph.add_edge(i, i + 1, **{"loss": 0.0, "corruption": 0.0, **a})
    return graph


def recorder(net: SimNetwork) -> list[tuple[int, int, float, bytes]]:
    """Attach a handler to every node; returns the list it fills with
    (node, from_node, time, datagram)."""
    log: list[tuple[int, int, float, bytes]] = []
    for node in net.graph.nodes:
        net.attach(node, lambda d, f, node=node: log.append((node, f, net.now, bytes(d))))
    return log


# ------------------------------------------------------------------ timing and queues

def test_three_hops_take_the_sum_of_per_hop_delays() -> None:
    links = [{"bandwidth": 1000.0, "latency": 0.25}, {"bandwidth": 500.0, "latency": 0.125},
             {"bandwidth": 4000.0, "latency": 0.5}]
    net = SimNetwork(path(links), seed=0)
    log = recorder(net)
    dg = datagram(0, 3, ttl=5, size=1000)
    net.send(0, dg, kind="model")
    net.run(100)
    expected = sum(1000 / a["bandwidth"] + a["latency"] for a in links)
    assert [(n, f) for n, f, _, _ in log] == [(3, 2)]
    # each link direction adds its fixed sub-nanosecond jitter (no two senders tie at a receiver)
    assert expected <= log[0][2] <= expected + 3 * MAX_JITTER_S
    _, ttl, hops = packet.peek_route(log[0][3])
    assert (ttl, hops) == (3, 2)  # two nodes forwarded it
    assert packet.parse(log[0][3]).payload == packet.parse(dg).payload
    stats = net.stats()
    assert stats["air_packets"] == 3 and stats["air_bytes"] == 3000
    assert stats["nodes"][1]["forwarded_packets"] == 1 and stats["nodes"][0]["sent_packets"] == 1
    assert stats["nodes"][3]["received_bytes"] == 1000
    assert stats["mean_latency"] == pytest.approx(expected)


def test_back_to_back_packets_queue_on_the_link() -> None:
    net = SimNetwork(path([{"bandwidth": 2000.0, "latency": 0.1}]), seed=0)
    log = recorder(net)
    net.send(0, datagram(0, 1, size=500, fragment=0))
    net.send(0, datagram(0, 1, size=500, fragment=1))
    assert net.link_free_at(0, 1) == pytest.approx(0.5)
    assert net.link_free_at(1, 0) == 0.0  # each direction has its own transmitter
    net.run(10)
    times = [t for _, _, t, _ in log]
    assert times[0] == pytest.approx(0.25 + 0.1)
    assert times[1] - times[0] == pytest.approx(500 / 2000.0)


def test_a_packet_sent_later_does_not_queue_behind_a_finished_one() -> None:
    net = SimNetwork(path([{"bandwidth": 1000.0, "latency": 0.0}]), seed=0)
    log = recorder(net)
    net.send(0, datagram(0, 1, size=500))
    net.run(5)
    net.send(0, datagram(0, 1, size=500, fragment=1))
    net.run(10)
    assert [t for _, _, t, _ in log] == pytest.approx([0.5, 5.5])


# ------------------------------------------------------------------ TTL, loss, corruption

def test_ttl_counts_forwardings_and_expiry_is_dropped_and_counted() -> None:
    net = SimNetwork(path([{"bandwidth": 1e6, "latency": 0.01}] * 4), seed=0)
    log = recorder(net)
    net.send(0, datagram(0, 4, ttl=2), kind="model")  # forwarded by 1 and 2, dies at 3
    net.run(10)
    assert log == []
    stats = net.stats()
    assert stats["drops"]["ttl"] == {"packets": 1, "bytes": 1000}
    assert stats["nodes"][3]["dropped_packets"] == 1
    assert stats["kinds"]["model"]["dropped_packets"] == 1
    assert stats["air_packets"] == 3
    net.send(0, datagram(0, 4, ttl=3, message_id=2))  # TTL t crosses t + 1 links
    net.run(20)
    assert [n for n, _, _, _ in log] == [4]
    assert packet.peek_route(log[0][3])[1:] == (0, 3)


def test_a_link_with_loss_one_delivers_nothing() -> None:
    net = SimNetwork(path([{"bandwidth": 1e6, "latency": 0.01, "loss": 1.0}]), seed=3)
    log = recorder(net)
    for i in range(50):
        net.send(0, datagram(0, 1, message_id=i))
    net.run(10)
    assert log == []
    stats = net.stats()
    assert stats["drops"]["loss"]["packets"] == 50
    assert stats["air_packets"] == 50  # the sender still spent the air time
    assert net.link_stats(0, 1)["drops"] == 50


def test_loss_point_three_delivers_about_seventy_percent() -> None:
    net = SimNetwork(path([{"bandwidth": 1e9, "latency": 0.01, "loss": 0.3}]), seed=11)
    log = recorder(net)
    sent = 4000
    for i in range(sent):
        net.send(0, datagram(0, 1, size=64, message_id=i % 65536))
    net.run(10)
    # Binomial(4000, 0.7): sd = 29 packets = 0.7%; 3% is over 4 sd.
    assert len(log) / sent == pytest.approx(0.7, abs=0.03)
    assert net.stats()["drops"]["loss"]["packets"] == sent - len(log)


def test_corruption_flips_are_caught_by_the_checksum() -> None:
    net = SimNetwork(path([{"bandwidth": 1e9, "latency": 0.0, "corruption": 1.0}]), seed=5)
    log = recorder(net)
    originals = [datagram(0, 1, size=300, message_id=i) for i in range(200)]
    for dg in originals:
        net.send(0, dg)
    net.run(1)
    assert len(log) == 200 and net.stats()["corrupted"] == 200
    caught = 0
    for (_, _, _, got), sent in zip(log, originals):
        flipped = [i for i in range(len(sent)) if got[i] != sent[i]]
        assert len(flipped) == 1 and bin(got[flipped[0]] ^ sent[flipped[0]]).count("1") == 1
        if flipped[0] in (36, 37):
            # TTL and hop count are outside the checksum by design (forwarders rewrite
            # them without recomputing it), as the IPv6 hop limit is.
            continue
        with pytest.raises(packet.PacketError):
            packet.parse(got)
        caught += 1
    assert caught >= 190


def test_the_same_seed_gives_the_same_counters_and_another_seed_does_not() -> None:
    def run(seed: int) -> dict:
        graph = topology.grid(4, 4, bandwidth=1e5, latency=0.01, loss=0.2, corruption=0.05)
        net = SimNetwork(graph, seed=seed)
        for node in graph:
            net.send(node, datagram(node, BROADCAST, ttl=4, message_id=node))
            net.send(node, datagram(node, (node + 7) % 16, message_id=100 + node))
        net.run(60)
        return net.stats()

    assert run(1) == run(1)
    assert run(1)["links"] != run(2)["links"]


# ------------------------------------------------------------------ destinations

def test_neighbours_reaches_exactly_the_neighbours_once() -> None:
    graph = topology.grid(3, 3)
    net = SimNetwork(graph, seed=0)
    log = recorder(net)
    net.send(4, datagram(4, NEIGHBOURS, ttl=9), kind="control")
    net.run(10)
    assert sorted(n for n, _, _, _ in log) == [1, 3, 5, 7]
    assert all(f == 4 for _, f, _, _ in log)
    assert net.stats()["nodes"][4]["sent_packets"] == 4
    assert sum(s["forwarded_packets"] for s in net.stats()["nodes"].values()) == 0


def test_broadcast_reaches_every_node_exactly_once() -> None:
    graph = topology.grid(4, 5)
    net = SimNetwork(graph, seed=0)
    log = recorder(net)
    net.send(0, datagram(0, BROADCAST, ttl=20))
    net.run(10)
    assert sorted(n for n, _, _, _ in log) == list(range(1, 20))
    stats = net.stats()
    assert stats["duplicates"] > 0  # flooding sends copies along every cycle ...
    assert stats["delivered_packets"] == 19  # ... but each node takes one
    tree = SimNetwork(topology.star(5), seed=0)
    tree.send(1, datagram(1, BROADCAST))
    tree.run(10)
    assert tree.stats()["air_packets"] == 4  # 1 -> hub -> 3 leaves: nothing goes back


def test_broadcast_stops_when_the_ttl_runs_out() -> None:
    net = SimNetwork(topology.ring(10), seed=0)
    log = recorder(net)
    net.send(0, datagram(0, BROADCAST, ttl=1))  # neighbours forward once more: radius 2
    net.run(10)
    assert sorted(n for n, _, _, _ in log) == [1, 2, 8, 9]


def test_next_hop_forces_the_first_hop() -> None:
    net = SimNetwork(topology.ring(6), seed=0)
    log = recorder(net)
    net.send(0, datagram(0, 2), next_hop=5)  # the long way round: 0-5-4-3-2
    net.run(10)
    assert [n for n, _, _, _ in log] == [2]
    assert packet.peek_route(log[0][3])[2] == 3
    net.send(0, datagram(0, 3, message_id=2), next_hop=3)  # not a neighbour
    net.run(20)
    assert net.stats()["drops"]["no_route"]["packets"] == 1


def test_unicast_to_oneself_is_delivered_without_air_time() -> None:
    net = SimNetwork(topology.ring(3), seed=0)
    log = recorder(net)
    net.send(1, datagram(1, 1))
    net.run(1)
    assert [(n, f, t) for n, f, t, _ in log] == [(1, 1, 0.0)]
    assert net.stats()["air_packets"] == 0


def test_routes_prefer_low_latency_and_the_python_fallback_agrees(monkeypatch) -> None:
    graph = topology.ring(6, latency=0.01)
    graph.edges[0, 1]["latency"] = 1.0  # 0 -> 2 is faster the long way round
    net = SimNetwork(graph, seed=0)
    assert net.route(0, 2) == [0, 5, 4, 3, 2]
    assert net.route(0, 3) == [0, 5, 4, 3]
    # a neighbour is reached over the link to it, as IP prefers a connected route (no table)
    assert net.route(0, 1) == [0, 1]
    big = SimNetwork(topology.small_world(200, 4, 0.2, seed=3, latency=0.01), seed=0)
    fast = {d: big.route(0, d) for d in range(200)}
    monkeypatch.setattr(sim_module, "_dijkstra", None)
    slow = SimNetwork(topology.small_world(200, 4, 0.2, seed=3, latency=0.01), seed=0)
    assert {d: len(slow.route(0, d)) for d in range(200)} == {d: len(p) for d, p in fast.items()}


# ------------------------------------------------------------------ churn

def test_a_node_that_leaves_receives_nothing_and_a_link_down_reroutes() -> None:
    net = SimNetwork(topology.ring(6, bandwidth=1e6, latency=0.01), seed=0)
    log = recorder(net)
    net.leave(3)
    assert not net.is_up(3) and net.neighbours(2) == [1] and net.neighbours(3) == []
    net.send(2, datagram(2, 3))
    net.send(2, datagram(2, NEIGHBOURS, message_id=2))
    net.send(3, datagram(3, 2, message_id=3))  # a node that is down sends nothing either
    net.run(1)
    assert [n for n, _, _, _ in log] == [1]
    drops = net.stats()["drops"]
    assert drops["no_route"]["packets"] == 1 and drops["down"]["packets"] == 1
    net.join(3)
    net.link_down(0, 1)
    assert net.route(0, 1) == [0, 5, 4, 3, 2, 1]
    net.send(0, datagram(0, 1, message_id=4))
    net.run(2)
    assert log[-1][0] == 1 and packet.peek_route(log[-1][3])[2] == 4
    net.link_up(0, 1)
    assert net.route(0, 1) == [0, 1]


def test_a_packet_in_flight_is_lost_when_its_link_goes_down() -> None:
    net = SimNetwork(path([{"bandwidth": 1e6, "latency": 1.0}]), seed=0)
    log = recorder(net)
    net.send(0, datagram(0, 1))
    net.schedule_link_down(0, 1, at=0.5)
    net.run(5)
    assert log == [] and net.stats()["drops"]["down"]["packets"] == 1


def test_scheduled_changes_happen_on_time_and_are_told_to_listeners() -> None:
    net = SimNetwork(topology.ring(5), seed=0)
    changes: list[NetworkChange] = []
    net.on_change(changes.append)
    net.schedule_leave(2, at=1.0)
    net.schedule_join(2, at=3.0)
    net.schedule_link_down(0, 1, at=2.0)
    net.schedule_link_up(0, 1, at=4.0)
    net.schedule_move(4, (0.1, 0.2), at=5.0)
    with pytest.raises(ValueError, match="at must be"):
        net.schedule_leave(1, at=-1.0)
    net.run(1.5)
    assert not net.is_up(2)
    net.run(10)
    assert [(c.kind, c.time, c.node, c.peer) for c in changes] == [
        ("leave", 1.0, 2, None), ("link_down", 2.0, 0, 1), ("join", 3.0, 2, None),
        ("link_up", 4.0, 0, 1), ("move", 5.0, 4, None)]
    assert changes[-1].pos == (0.1, 0.2) and net.graph.nodes[4]["pos"] == (0.1, 0.2)
    assert net.is_up(2) and net.link_is_up(0, 1)


def test_moving_a_radio_node_out_of_range_and_back_changes_its_links() -> None:
    graph = topology.random_geometric(30, 0.3, seed=2)
    net = SimNetwork(graph, seed=0)
    changes: list[NetworkChange] = []
    net.on_change(changes.append)
    before = set(net.neighbours(0))
    home = graph.nodes[0]["pos"]
    net.move(0, (5.0, 5.0))  # far outside the unit square
    assert net.neighbours(0) == [] and graph.degree(0) == 0
    assert {c.peer for c in changes if c.kind == "link_down"} == before
    assert net.route(1, 0) is None
    net.schedule_move(0, home, at=1.0)
    net.run(2)
    assert set(net.neighbours(0)) == before
    assert {c.peer for c in changes if c.kind == "link_up"} == before
    # Links keep their counters across the gap.
    assert all(net.link_stats(0, p)["up"] for p in before)


def test_a_new_node_joins_with_links_and_bootstraps_through_them() -> None:
    net = SimNetwork(topology.ring(4), seed=0)
    changes: list[NetworkChange] = []
    net.on_change(changes.append)
    net.schedule_join(9, at=1.0, links=[0, 2], compute=50.0)
    net.run(2)
    assert net.graph.nodes[9]["compute"] == 50.0 and net.graph.nodes[9]["memory"] > 0
    assert sorted(net.neighbours(9)) == [0, 2]
    assert [(c.kind, c.node, c.peer) for c in changes] == [("join", 9, None), ("link_up", 9, 0),
                                                            ("link_up", 9, 2)]
    log = recorder(net)
    net.send(9, datagram(9, 1))
    net.run(3)
    assert [n for n, _, _, _ in log] == [1]


def test_a_node_can_start_absent() -> None:
    graph = topology.star(4)
    graph.nodes[3]["up"] = False
    net = SimNetwork(graph, seed=0)
    assert sorted(net.neighbours(0)) == [1, 2]
    net.join(3)
    assert sorted(net.neighbours(0)) == [1, 2, 3]


# ------------------------------------------------------------------ compute and accounting

def test_compute_takes_work_over_speed_and_jobs_queue() -> None:
    graph = topology.ring(3, compute=200.0)
    net = SimNetwork(graph, seed=0)
    done: list[tuple[float, float]] = []
    for work in (100, 300):
        net.compute(0, work).callbacks.append(lambda e: done.append((net.now, e.value)))
    net.compute(1, 50).callbacks.append(lambda e: done.append((net.now, e.value)))
    net.run(10)
    assert done == [(0.25, 50), (0.5, 100), (2.0, 300)]
    assert net.stats()["nodes"][0]["compute_time"] == pytest.approx(2.0)
    with pytest.raises(ValueError):
        net.compute(0, -1)


def test_traffic_is_accounted_by_kind() -> None:
    net = SimNetwork(topology.ring(5), seed=0)
    net.send(0, datagram(0, 2, size=800), kind="model")
    net.send(0, datagram(0, NEIGHBOURS, size=100), kind="control")
    net.run(5)
    kinds = net.stats()["kinds"]
    assert kinds["model"]["air_bytes"] == 1600 and kinds["model"]["sent_bytes"] == 800
    assert kinds["model"]["delivered_bytes"] == 800
    assert kinds["control"]["air_bytes"] == 200 and kinds["control"]["delivered_packets"] == 2
    assert kinds.get("data", {}).get("air_bytes", 0) == 0
    stats = net.stats()
    assert stats["air_bytes"] == 1800
    assert sum(link["bytes"] for link in stats["links"]) == 1800


def test_codec_datagrams_cross_the_network_and_decode() -> None:
    state = {"w": torch.arange(300, dtype=torch.float32)}
    dgs = codec.to_datagrams(state, origin=0, destination=3, model_version=1, message_id=1, mtu=256)
    net = SimNetwork(topology.grid(2, 2, bandwidth=1e5), seed=0)
    log = recorder(net)
    for dg in dgs:
        net.send(0, dg, kind="model")
    net.run(10)
    assert len(log) == len(dgs) and {n for n, _, _, _ in log} == {3}
    assert all(packet.parse(d).origin == 0 for _, _, _, d in log)


def test_bad_graphs_and_calls_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match="node ids"):
        SimNetwork(nx.path_graph(["a", "b"]), seed=0)
    with pytest.raises(ValueError, match="undirected"):
        SimNetwork(nx.DiGraph([(0, 1)]), seed=0)
    bad = topology.ring(3)
    bad.edges[0, 1]["loss"] = 2.0
    with pytest.raises(ValueError, match="link 0-1: loss"):
        SimNetwork(bad, seed=0)
    net = SimNetwork(topology.ring(3), seed=0)
    with pytest.raises(ValueError, match="unknown node"):
        net.send(7, datagram(7, 0))
    with pytest.raises(packet.PacketError):
        net.send(0, b"not a packet at all, but long enough to look at its header....")
    with pytest.raises(ValueError, match="no link"):
        net.link(0, 7)
    with pytest.raises(ValueError, match="unknown link attribute"):
        net.set_link(0, 1, bandwith=3)


def test_set_link_changes_timing_and_the_graph() -> None:
    net = SimNetwork(path([{"bandwidth": 1000.0, "latency": 0.0}]), seed=0)
    log = recorder(net)
    net.set_link(0, 1, bandwidth=500.0, latency=0.5)
    assert net.graph.edges[0, 1]["bandwidth"] == 500.0
    net.send(0, datagram(0, 1, size=500))
    net.run(5)
    assert log[0][2] == pytest.approx(1.5)


# ------------------------------------------------------------------ topologies

@pytest.mark.parametrize("name, params, nodes", [
    ("ring", {"n": 7}, 7),
    ("grid", {"rows": 3, "cols": 4}, 12),
    ("random_geometric", {"n": 40, "radius": 0.15, "seed": 1}, 40),
    ("small_world", {"n": 30, "k": 4, "p": 0.3, "seed": 2}, 30),
    ("star", {"n": 6}, 6),
    ("hierarchy", {"devices": 12, "edges": 3, "clouds": 2}, 17),
])
def test_builders_give_connected_graphs_with_every_attribute(name, params, nodes) -> None:
    graph = build_topology(name, **params, latency=0.02)
    assert graph.number_of_nodes() == nodes and sorted(graph) == list(range(nodes))
    assert nx.is_connected(graph)
    for _, attrs in graph.nodes(data=True):
        assert attrs["compute"] > 0 and attrs["memory"] > 0 and len(attrs["pos"]) == 2
    for _, _, attrs in graph.edges(data=True):
        assert attrs["bandwidth"] > 0 and attrs["latency"] > 0
        assert 0 <= attrs["loss"] <= 1 and 0 <= attrs["corruption"] <= 1
    assert 0.02 in {attrs["latency"] for _, _, attrs in graph.edges(data=True)}  # the default applied
    SimNetwork(graph, seed=0)  # every builder's output is a valid network


def test_builder_shapes() -> None:
    assert all(d == 2 for _, d in topology.ring(8).degree)
    assert topology.grid(3, 4).number_of_edges() == 3 * 3 + 2 * 4
    star = topology.star(5)
    assert star.degree(0) == 4 and all(star.degree(i) == 1 for i in range(1, 5))
    h = topology.hierarchy(6, 2, clouds=1, bandwidth=1e5, loss=0.05)
    tiers = nx.get_node_attributes(h, "tier")
    assert [tiers[i] for i in range(9)] == ["device"] * 6 + ["edge"] * 2 + ["cloud"]
    assert all(h.degree(i) == 1 and tiers[next(iter(h[i]))] == "edge" for i in range(6))
    device_link, uplink = h.edges[0, 6], h.edges[6, 8]
    assert device_link["bandwidth"] < uplink["bandwidth"] and device_link["loss"] > uplink["loss"]
    assert h.nodes[8]["compute"] > h.nodes[6]["compute"] > h.nodes[0]["compute"]


def test_radio_links_degrade_with_distance_and_respect_the_radius() -> None:
    graph = topology.random_geometric(60, 0.2, seed=4, bandwidth=1e6, loss=0.01)
    radius = graph.graph["radio"]["radius"]
    for u, v, attrs in graph.edges(data=True):
        (x1, y1), (x2, y2) = graph.nodes[u]["pos"], graph.nodes[v]["pos"]
        assert math.dist((x1, y1), (x2, y2)) <= radius
    near = topology.radio_link(0.0, graph.graph["radio"])
    far = topology.radio_link(radius, graph.graph["radio"])
    assert near["bandwidth"] == 1e6 and near["loss"] == 0.01
    assert far["bandwidth"] < near["bandwidth"] and far["loss"] > near["loss"]
    flat = topology.random_geometric(60, 0.2, seed=4, degrade=False, bandwidth=1e6)
    assert {a["bandwidth"] for _, _, a in flat.edges(data=True)} == {1e6}


def test_random_geometric_connectivity_options() -> None:
    grown = topology.random_geometric(50, 0.05, seed=1, connect="grow")
    assert nx.is_connected(grown) and grown.graph["radio"]["radius"] > 0.05
    sparse = topology.random_geometric(50, 0.05, seed=1, connect="none")
    assert not nx.is_connected(sparse)
    with pytest.raises(ValueError, match="radius"):
        topology.random_geometric(50, 0.01, seed=1, connect="resample")
    assert topology.random_geometric(20, 0.3, seed=5).edges == topology.random_geometric(20, 0.3, seed=5).edges


@pytest.mark.parametrize("name, params, named", [
    ("ring", {"n": 5, "bandwith": 1e6}, "bandwith"),
    ("ring", {"n": 2}, "n"),
    ("grid", {"rows": 3}, "cols"),
    ("grid", {"rows": 3, "cols": 3, "loss": 1.5}, "loss"),
    ("random_geometric", {"n": 10, "radius": -1}, "radius"),
    ("random_geometric", {"n": 10, "radius": 0.3, "connect": "maybe"}, "connect"),
    ("small_world", {"n": 10, "k": 12}, "k"),
    ("star", {"n": 5, "latency": "fast"}, "latency"),
    ("hierarchy", {"devices": 4, "edges": 0}, "edges"),
    ("hierarchy", {"devices": 4, "edges": 2, "uplink_bandwidth": 0}, "uplink_bandwidth"),
    ("mesh", {"n": 4}, "mesh"),
])
def test_build_topology_names_the_bad_parameter(name, params, named) -> None:
    with pytest.raises(ValueError, match=named):
        build_topology(name, **params)
