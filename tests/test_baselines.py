"""The baselines behind MFD's interface: isolated, FedAvg with its server, gossip without a gate,
and the harness that keeps a comparison fair (same data, initial models, faults and seeds)."""
from __future__ import annotations

import networkx as nx
import pytest
import torch

from mfd_core import codec
from mfd_core.datasets import load_digits, train_val_test_split
from mfd_core.process import policy_by_name
from mfd_core.runtime import World, build_world
from mfd_core.learners import TorchSupervisedLearner
from mfd_core.reassembly import Reassembler
from mfd_core.scaling import MLPFamily
from mfd_core.network.sim import SimNetwork
from mfd_core.scenario import Scenario

from tests import helpers
from tests.helpers import same_state

POLICIES = ("isolated", "fedavg", "gossip", "mfd", "mfd-travel")


def tiny(name: str = "mfd", **sections) -> Scenario:
    """The tests' tiny world (:func:`tests.helpers.tiny`), run for 4 simulated seconds."""
    return helpers.tiny(name, **{"duration": 4.0, **sections})


# --------------------------------------------------------------------------- one interface


def test_every_policy_is_one_name_away() -> None:
    for name in POLICIES:
        assert policy_by_name(name).name == name
    with pytest.raises(ValueError, match="unknown policy 'nope'"):
        policy_by_name("nope")


def test_isolated_nodes_send_nothing() -> None:
    result = build_world(tiny("isolated"), seed=0).run()
    assert result.bytes[-1] == 0 and result.packets[-1] == 0
    assert result.mean_scores()[-1] > result.mean_scores()[0]


# --------------------------------------------------------------------------- FedAvg


def test_fedavg_with_one_node_is_local_training() -> None:
    data = load_digits()
    train, val, test = train_val_test_split(len(data), 0.2, 0.2, seed=0)
    family = MLPFamily(64, (16,), 10)
    graph = nx.Graph()
    graph.add_node(0, compute=1000.0, memory=1 << 30)

    def learner():
        return TorchSupervisedLearner(family.build(1.0, seed=0), (data.inputs[train], data.labels[train]),
                                      (data.inputs[val], data.labels[val]), lr=0.01, seed=5, family="mlp")

    x, y = torch.from_numpy(data.inputs[test]), torch.from_numpy(data.labels[test])
    results, states = {}, {}
    for name in ("fedavg", "isolated"):
        world = World(SimNetwork(nx.Graph(graph), seed=0), {0: learner()}, policy=policy_by_name(name), seed=0, duration=3.0,
                      eval_interval=0.5, local_steps=5, evaluate=lambda _n, l: l.evaluate(x, y))
        results[name] = world.run()
        states[name] = world.nodes[0].learner.get_state()
        work = world.nodes[0].learner.work_done
    rounds = [e for e in results["fedavg"].events if e["event"] == "fedavg_round"]
    assert len(rounds) > 5
    assert results["fedavg"].scores == results["isolated"].scores
    assert same_state(states["fedavg"], states["isolated"])
    # and both are what a plain loop of the same chunks gives (a chunk draws its own seed)
    plain = learner()
    for _ in range(work // (5 * 32)):
        plain.train(5)
    assert same_state(plain.get_state(), states["fedavg"])
    assert results["fedavg"].bytes[-1] == 0  # the only node is the server: nothing on the air


def test_fedavg_stops_when_its_server_is_down_and_mfd_keeps_going() -> None:
    faults = [{"kind": "server_down", "at": 0.3}]
    scenario = tiny(duration=10.0, faults=faults, topology={"kind": "star", "nodes": 5, "compute": 1000.0},
                    data={"split": "iid"})
    fedavg = build_world(scenario.with_policy("fedavg"), seed=0).run()
    at = 0.3 * scenario.duration
    assert fedavg.extra["server"] == 0 and fedavg.extra["faults"][0]["nodes"] == [0]
    rounds = [e["t"] for e in fedavg.events if e["event"] == "fedavg_round"]
    assert len(rounds) >= 2 and max(rounds) <= at
    # once the globals in flight have landed, no client changes any more
    clients = [k for k, n in enumerate(fedavg.node_ids) if n != 0]
    after = [[row[k] for k in clients] for t, row in zip(fedavg.times, fedavg.scores) if t >= at + 1.0]
    assert len(after) > 5 and all(row == after[0] for row in after)

    mfd = build_world(scenario.with_policy("mfd"), seed=0).run()
    accepted_after = [e for e in mfd.events if e["event"] == "gate" and e["accepted"] and e["t"] > at]
    assert accepted_after
    mfd_means = mfd.mean_scores()
    i_at = next(k for k, t in enumerate(mfd.times) if t >= at)
    assert mfd_means[-1] > mfd_means[i_at] + 0.02


def test_fedavg_counts_every_byte_on_every_link_it_crosses() -> None:
    """Ring of 5, server 0: link 0-1 carries the rounds of clients 1 and 2, link 1-2 only client 2's."""
    world = build_world(tiny("fedavg", policy={"server": 0}), seed=0)
    world.run()
    rounds = [e for e in world.result.events if e["event"] == "fedavg_round"]
    assert len(rounds) >= 3 and all(e["updates"] == 4 for e in rounds)
    near, far = world.network.link_stats(0, 1)["bytes"], world.network.link_stats(1, 2)["bytes"]
    assert far > 0 and near / far == pytest.approx(2.0, rel=0.02)
    assert world.network.link_stats(0, 1)["bytes"] == pytest.approx(world.network.link_stats(0, 4)["bytes"], rel=0.02)


# --------------------------------------------------------------------------- gossip


def test_gossip_averages_whatever_arrives() -> None:
    """No gate: a model of random weights, sent as packets, is averaged in 1:1."""
    world = build_world(tiny("gossip"), seed=0)
    world.policy.start(world)
    node = world.nodes[0]
    before = node.learner.get_state()
    gen = torch.Generator().manual_seed(0)
    noise = {k: torch.randn(v.shape, generator=gen) for k, v in before.items()}
    datagrams = codec.to_datagrams(noise, origin=1, destination=0, model_version=1, message_id=1,
                                   key=world.key, meta={"kind": "gossip"})
    reassembler = Reassembler(key=world.key)
    (message,) = [m for m in (reassembler.receive(d, now=0.0) for d in datagrams) if m is not None]
    node.deliver(message, 1)
    after = node.learner.get_state()
    assert node.counters.accepted == 1
    for k in before:
        assert torch.allclose(after[k], (before[k] + noise[k]) / 2, atol=1e-6)


def test_gossip_pushes_to_one_neighbour_per_interval() -> None:
    result = build_world(tiny("gossip", policy={"gossip_interval": 1.0}), seed=0).run()
    # 5 nodes, 4 simulated seconds, at most one push a second each (the first at t=0)
    assert 5 * 3 <= result.extra["shares"] <= 5 * 5
    assert result.extra["accepted"] == result.extra["shares"]


# --------------------------------------------------------------------------- a fair comparison


def test_a_comparison_keeps_data_models_and_faults_and_swaps_only_the_policy() -> None:
    scenario = tiny(duration=2.0, topology={"nodes": 6},
                    faults=[{"kind": "node_leave", "at": 0.5, "fraction": 0.5}])
    chosen, server = {}, None
    reference_world = build_world(scenario, seed=0)
    samples = [n.learner.num_samples for n in reference_world.nodes.values()]
    initial = reference_world.nodes[0].learner.get_state()
    for name in POLICIES:
        world = build_world(scenario.with_policy(name), seed=0)
        # the same data split and the same initial model on every node, whatever the policy
        assert [n.learner.num_samples for n in world.nodes.values()] == samples
        assert all(same_state(n.learner.get_state(), initial) for n in world.nodes.values())
        result = world.run()
        assert result.policy == name
        (fault,) = result.extra["faults"]
        chosen[name] = fault["nodes"]
        if name == "fedavg":
            server = result.extra["server"]
    reference = chosen["isolated"]
    assert len(reference) == 3
    for name, nodes in chosen.items():
        assert len(nodes) == len(reference), name
        if name != "fedavg" or server not in reference:
            assert nodes == reference, name
        else:
            assert server not in nodes and len(set(nodes) & set(reference)) == len(reference) - 1
