"""The UDP driver on loopback: the simulated network's surface over real sockets.

Every socket binds 127.0.0.1 on an ephemeral port; each test runs well under a second
of real time.
"""
from __future__ import annotations

import networkx as nx
import pytest
import simpy.rt
import torch

from mfd_core import codec, packet
from mfd_core.network import topology
from mfd_core.network.udp import UdpNetwork
from mfd_core.packet import BROADCAST, NEIGHBOURS

UINT8 = packet.ENCODING_CODE["uint8"]


def datagram(origin: int, destination: int, *, ttl: int = 16, message_id: int = 1) -> bytes:
    frag = packet.Fragment(0, UINT8, 0, bytes(range(200)))
    return bytes(packet.build([frag], family_id=3, model_version=1, origin=origin,
                              destination=destination, message_id=message_id, ttl=ttl)[0])


def recorder(net: UdpNetwork, nodes) -> list[tuple[int, int, bytes]]:
    log: list[tuple[int, int, bytes]] = []
    for node in nodes:
        net.attach(node, lambda d, f, node=node: log.append((node, f, bytes(d))))
    return log


def settle(net: UdpNetwork, seconds: float = 0.15) -> None:
    net.run(until=net.now + seconds)


def test_unicast_is_forwarded_hop_by_hop_over_loopback() -> None:
    with UdpNetwork(topology.ring(5)) as net:
        assert all(host == "127.0.0.1" and port > 0 for host, port in net.addresses.values())
        log = recorder(net, range(5))
        net.send(0, datagram(0, 2, ttl=4), kind="model")
        settle(net)
        assert [(n, f) for n, f, _ in log] == [(2, 1)]
        assert packet.peek_route(log[0][2])[1:] == (3, 1)
        assert packet.parse(log[0][2]).origin == 0  # intact: the checksum skips the TTL
        stats = net.stats()
        assert stats["nodes"][1]["forwarded_packets"] == 1 and stats["air_packets"] == 2
        assert stats["kinds"]["model"]["sent_packets"] == 1


def test_ttl_expiry_neighbours_and_broadcast() -> None:
    with UdpNetwork(topology.grid(3, 3)) as net:
        log = recorder(net, range(9))
        net.send(0, datagram(0, 8, ttl=1))  # 4 links away, may be forwarded once
        settle(net)
        assert log == [] and net.stats()["drops"]["ttl"]["packets"] == 1
        net.send(4, datagram(4, NEIGHBOURS, message_id=2))
        settle(net)
        assert sorted(n for n, _, _ in log) == [1, 3, 5, 7]
        log.clear()
        net.send(0, datagram(0, BROADCAST, message_id=3))
        settle(net, 0.3)
        assert sorted(n for n, _, _ in log) == list(range(1, 9))
        assert net.stats()["duplicates"] > 0


def test_two_hosts_share_one_overlay() -> None:
    graph = nx.path_graph(3)
    env = simpy.rt.RealtimeEnvironment(strict=False)
    with UdpNetwork(graph, nodes=[0, 1], env=env) as a, UdpNetwork(graph, nodes=[2], env=env) as b:
        a.add_peers(b.addresses)
        b.add_peers(a.addresses)
        log = recorder(b, [2])
        state = {"w": torch.arange(100, dtype=torch.float32)}
        dgs = codec.to_datagrams(state, origin=0, destination=2, model_version=1, message_id=9, mtu=256)
        for dg in dgs:
            a.send(0, dg, kind="model")
        env.run(until=0.2)
        assert len(log) == len(dgs) and {f for _, f, _ in log} == {1}
        assert all(packet.parse(d).origin == 0 for _, _, d in log)


def test_a_node_that_leaves_receives_nothing_and_is_routed_around() -> None:
    with UdpNetwork(topology.ring(4)) as net:
        changes = []
        net.on_change(changes.append)
        log = recorder(net, range(4))
        net.leave(1)
        assert net.neighbours(0) == [3] and not net.is_up(1)
        net.send(0, datagram(0, 2))  # around the other side: 0-3-2
        net.send(0, datagram(0, 1, message_id=2))
        settle(net)
        assert [(n, f) for n, f, _ in log] == [(2, 3)]
        assert net.stats()["drops"]["no_route"]["packets"] == 1
        net.join(1)
        assert [c.kind for c in changes] == ["leave", "join"]


def test_foreign_senders_and_bad_calls_are_refused() -> None:
    with UdpNetwork(topology.ring(3)) as net:
        log = recorder(net, range(3))
        import socket
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
            stranger.sendto(datagram(7, 0), net.addresses[0])
        settle(net, 0.05)
        assert log == [] and net.stats()["drops"]["foreign"]["packets"] == 1
        with pytest.raises(ValueError, match="not hosted"):
            net.send(9, datagram(9, 0))
        with pytest.raises(packet.PacketError):
            net.send(0, b"x" * 50)
