"""The MFD process on tiny worlds: gate, partial merges, when/whom to share, joins,
travelling models, FedAvg's single point of failure, reproducibility.

Every world here is a handful of nodes, a 16-unit MLP and a few simulated seconds, so
that the whole file runs in seconds on a busy CPU.
"""
from __future__ import annotations

import math
from collections import defaultdict

import networkx as nx
import pytest
import torch

from mfd_core.messages import Pull
from mfd_core.process.node import Report
from mfd_core.datasets import load_digits, train_val_test_split
from mfd_core.runtime import World, build_world
from mfd_core.learners import TorchSupervisedLearner
from mfd_core.scaling import MLPFamily

from tests.helpers import accept, model_shares, received, record_sends, same_state, tiny

# --------------------------------------------------------------------------- the gate


def test_gate_refuses_random_weights_and_accepts_a_better_model() -> None:
    world = build_world(tiny(data={"split": "iid"}, policy={"gate_tolerance": 0.02}), seed=0)
    trained, teacher, fresh = world.nodes[0], world.nodes[1], world.nodes[2]
    trained.learner.train(150)
    teacher.learner.train(150)
    before = trained.learner.get_state()
    # random weights that claim to be excellent: the gate must judge on local data, not on claims
    gen = torch.Generator().manual_seed(7)
    noise = {k: torch.randn(v.shape, generator=gen) for k, v in before.items()}
    poisoned = received(world, 3, 0, noise, score=1.0, samples=100 * trained.learner.num_samples)
    assert poisoned.complete
    decision = accept(world, trained, poisoned)
    assert not decision.accepted and decision.candidate_score < decision.local_score - 0.02
    assert same_state(trained.learner.get_state(), before)
    assert trained.counters.refused == 1 and trained.counters.accepted == 0
    assert 3 not in trained.neighbour_models  # a refused model is not served either

    score_before = fresh.learner.score()
    good = received(world, 1, 2, teacher.learner.get_state(), score=teacher.learner.score(),
                    samples=teacher.learner.num_samples)
    decision = accept(world, fresh, good)
    assert decision.accepted
    assert fresh.learner.score() > score_before + 0.3
    assert fresh.counters.accepted == 1 and 1 in fresh.neighbour_models
    gates = [e for e in world.result.events if e["event"] == "gate"]
    assert [(e["node"], e["origin"], e["accepted"]) for e in gates] == [(0, 3, False), (2, 1, True)]


def test_gate_on_the_network_path_refuses_random_weights() -> None:
    """The same refusal when the model is sent as packets over the simulated ring."""
    world = build_world(tiny(data={"split": "iid"}, policy={"gate_tolerance": 0.02}), seed=0)
    receiver = world.nodes[0]
    receiver.learner.train(300)
    before = receiver.learner.get_state()
    gen = torch.Generator().manual_seed(3)
    noise = {k: torch.randn(v.shape, generator=gen) for k, v in before.items()}
    world.nodes[1].send_model(0, header=world.nodes[1].header(score=1.0, samples=10_000), state=noise)
    world.network.run(until=1.0)
    assert receiver.counters.refused == 1 and receiver.counters.accepted == 0
    assert same_state(receiver.learner.get_state(), before)


# --------------------------------------------------------------------------- partial models


def test_partial_model_merges_only_what_arrived() -> None:
    world = build_world(tiny(data={"split": "iid"}, policy={"gate_tolerance": 1.0}), seed=0)
    node, sender = world.nodes[0], world.nodes[1]
    sender.learner.train(100)
    before = node.learner.get_state()
    message = received(world, 1, 0, sender.learner.get_state(), drop=0.3, seed=1,
                       score=0.9, samples=sender.learner.num_samples)
    assert not message.complete
    arrived = sum(int(m.sum()) for m in message.masks.values())
    total = sum(m.numel() for m in message.masks.values())
    assert 0.4 < arrived / total < 0.95
    assert accept(world, node, message).accepted
    after = node.learner.get_state()
    changed = 0
    for name, mask in message.masks.items():
        assert torch.equal(after[name][~mask], before[name][~mask]), f"{name}: lost elements changed"
        changed += int((after[name][mask] != before[name][mask]).sum())
    assert changed > 0.5 * arrived  # what arrived was merged
    assert node.counters.partial_merged == 1


def test_lossy_links_deliver_partial_models_that_are_merged() -> None:
    world = build_world(tiny(topology={"loss": 0.3}, policy={"gate_tolerance": 1.0}), seed=0)
    result = world.run()
    assert result.extra["partial_merged"] > 0
    assert all(math.isfinite(s) for row in result.scores for s in row)


# --------------------------------------------------------------------------- when and with whom


@pytest.mark.parametrize("margin, silence", [(0.02, 1.0), (1.0, 1.5), (0.0, 100.0)])
def test_mfd_shares_only_when_improved_or_silent_and_to_at_most_fanout(margin, silence) -> None:
    scenario = tiny(topology={"kind": "small_world", "nodes": 6, "k": 4},
                    policy={"share_margin": margin, "max_silence": silence, "fanout": 2})
    world = build_world(scenario, seed=0)
    sends = record_sends(world)
    result = world.run()
    total = 0
    for node_id, records in sends.items():
        shares = model_shares(records)
        total += len(shares)
        assert world.nodes[node_id].counters.shares == len(shares)
        neighbours = set(world.graph.neighbors(node_id))
        # max_silence, shortened on these clean links (clean_silence), stretched above the fanout
        waits = world.policy.silence(world.nodes[node_id])
        assert waits <= silence
        last_t, last_score = -math.inf, -math.inf
        for t, targets in shares:
            ids = [target for target, _ in targets]
            assert 1 <= len(ids) <= 2 and len(set(ids)) == len(ids) and set(ids) <= neighbours
            score = targets[0][1]
            assert score >= last_score + margin or t - last_t >= waits - 1e-9, (node_id, t, score, last_score)
            last_t, last_score = t, score
    assert total > 0
    if margin >= 1.0:  # accuracy cannot rise by 1.0: shares only come from silence
        for node_id, records in sends.items():
            times = [t for t, _ in model_shares(records)]
            waits = world.policy.silence(world.nodes[node_id])
            assert all(b - a >= waits - 1e-9 for a, b in zip(times, times[1:]))
    # what goes on the air is models and control messages; never raw data
    kinds = world.network.stats()["kinds"]
    assert set(kinds) <= {"model", "control"}
    assert result.summary()["data_bytes"] == 0 and all(b == 0 for b in result.data_bytes)


# --------------------------------------------------------------------------- joins


def _joiner_world(policy: str, joiner: int, at: float) -> World:
    scenario = tiny(policy, duration=8.0, data={"split": "iid"},
                    topology={"compute": 500.0},
                    # asked of the neighbours only (bootstrap_hops 1; at fanout 2, two neighbours
                    # suffice), and shares one hop out, so what reaches the joiner first is their answer
                    policy={"gate_tolerance": 0.05, "bootstrap_hops": 1, "fanout": 2, "sparse_share_hops": 1})
    world = build_world(scenario, seed=0)
    world.network.leave(joiner)  # not there at the start
    world.network.schedule_join(joiner, at)
    return world


def test_a_node_that_joins_bootstraps_from_its_neighbours() -> None:
    joiner, at = 2, 5.0
    mfd = _joiner_world("mfd", joiner, at)
    mfd_result = mfd.run()
    alone = _joiner_world("isolated", joiner, at)
    alone_result = alone.run()
    node = mfd.nodes[joiner]
    assert node.counters.bootstraps == 1
    pulled = [e for e in mfd_result.events if e["event"] == "gate" and e["node"] == joiner and e["t"] < at + 0.5]
    assert pulled and {e["origin"] for e in pulled} <= set(mfd.graph.neighbors(joiner))
    assert any(e["accepted"] for e in pulled)
    # half a simulated second after joining: a bootstrapped node against a fresh one
    i = next(k for k, t in enumerate(mfd_result.times) if t >= at + 0.5)
    col = mfd_result.node_ids.index(joiner)
    assert mfd_result.scores[i][col] > alone_result.scores[i][col] + 0.2


def test_a_node_with_few_neighbours_bootstraps_from_two_hops_and_weighs_blends_by_their_samples() -> None:
    """A rejoining node with fewer neighbours than its fanout asks two hops out; the
    answers are the neighbourhoods' blends, weighed by the samples behind them, so
    the joiner's stale model counts for its own samples only."""
    joiner, at = 3, 4.0
    scenario = tiny(duration=5.0, data={"split": "iid"}, topology={"nodes": 7, "compute": 500.0},
                    # shares one hop out only: the nodes two hops away would otherwise send the
                    # joiner their plain shares too, and the latest model of an origin is what
                    # its samples are recorded from
                    policy={"fanout": 3, "gate_tolerance": 0.3, "bootstrap_hops": 1, "sparse_share_hops": 1},
                    faults=[{"kind": "node_leave", "at": 0.2, "nodes": [joiner], "rejoin_at": at / 5.0}])
    world = build_world(scenario, seed=0)
    result = world.run()
    node = world.nodes[joiner]
    assert node.counters.bootstraps == 1 and node.joined_at == pytest.approx(at)
    answers = {e["origin"] for e in result.events
               if e["event"] == "gate" and e["node"] == joiner and at <= e["t"] < at + 0.3}
    two_hops = {1, 5}  # a ring of 7: nodes 1 and 5 are two hops from node 3
    assert answers <= {1, 2, 4, 5} and answers & two_hops, answers
    # a blend stands for its origin's samples and those of the models it blends
    blended = [o for o in answers if node.neighbour_samples.get(o, 0) > world.nodes[o].learner.num_samples]
    assert blended, {o: node.neighbour_samples.get(o) for o in answers}
    assert not world.policy.bootstrapping(node)


def test_a_merged_model_is_cached_as_a_copy_and_served_in_the_blend() -> None:
    """The neighbour cache holds its own copy of a merged model (numpy arrays, which the
    garbage collector does not walk), and the blend serves it as tensors."""
    world = build_world(tiny(data={"split": "iid"}), seed=0)
    world.policy.runtime = world
    node, sender = world.nodes[0], world.nodes[1]
    sender.learner.train(50)
    state = sender.learner.get_state()
    message = received(world, 1, 0, state, score=0.9)
    assert accept(world, node, message).accepted
    cached = node.neighbour_models[1][0]
    assert cached.keys() == state.keys() and not any(isinstance(v, torch.Tensor) for v in cached.values())
    assert all(torch.equal(torch.from_numpy(cached[k]), message.state[k]) for k in state)
    for value in message.state.values():
        value.zero_()  # what arrived is the message's; the cache is not a view of it
    assert not all(torch.equal(torch.from_numpy(cached[k]), message.state[k]) for k in state)
    blend = world.policy.blend(node)
    assert blend is not None and all(isinstance(v, torch.Tensor) for v in blend.values())


def test_a_score_taken_during_a_training_chunk_stands_for_the_version_it_ends_with() -> None:
    world = build_world(tiny(), seed=0)
    node = world.nodes[0]
    calls = []
    score = node.learner.score
    node.learner.score = lambda state=None: calls.append(state is None) or score(state)
    chunk = node.train(1)
    next(chunk)  # trained; the chunk's time passes
    during = node.score()
    version = node.version
    with pytest.raises(StopIteration):
        next(chunk)
    assert node.version == version + 1 and node.score() == during and calls == [True]
    node.set_state(node.learner.get_state())  # an install: scored afresh
    node.score()
    assert calls == [True, True]


def test_a_node_still_bootstrapping_does_not_answer_pulls() -> None:
    """Back from an absence with nothing merged since, a node has only its stale model to give."""
    world = build_world(tiny(), seed=0)
    node, asker = world.nodes[0], world.nodes[1]
    node.joined_at = 0.0
    sent = node.bytes_sent
    world.policy.runtime = world
    world.policy.on_control(node, Pull(), asker.id)
    assert node.bytes_sent == sent  # stale: no answer
    node.neighbour_models[2] = (node.learner.get_state(), None, 1.0, 0.5)  # merged something since
    world.policy.on_control(node, Pull(), asker.id)
    assert node.bytes_sent > sent


def test_a_neighbour_heard_from_a_moment_ago_is_sent_to_last() -> None:
    """With ``echo_window``, a neighbour whose model was just merged (it holds most of what
    would go back) yields its place to one not heard from; without, both take turns."""
    def targets(echo_window: float) -> set[int]:
        world = build_world(tiny(policy={"fanout": 1, "echo_window": echo_window}), seed=0)
        world.policy.runtime = world
        node = world.nodes[0]  # a ring of 5: neighbours 1 and 4
        node.neighbour_models[1] = (node.learner.get_state(), None, 1.0, world.env.now)
        return {nbr for _ in range(40) for nbr in world.policy.choose_targets(node, 1)}

    assert targets(2.0) == {4}
    assert targets(0.0) == {1, 4}


def test_a_node_with_no_more_neighbours_than_its_fanout_reaches_further_for_the_same_transmissions() -> None:
    """On a ring of 5 a node has 2 neighbours: with fanout 2 it would send to both at every
    share, so once both have reported themselves alike (same family and width) it chooses
    among the nodes 2 hops out too, within the 2 transmissions a share to both neighbours
    takes. With fanout 1 it has a choice among its neighbours; ``sparse_share_hops = 1``,
    a neighbour not heard from or one of another width keep it to its neighbours."""
    def choices(fanout: int, reported: dict[int, float] | None = None, **policy) -> list[list[int]]:
        world = build_world(tiny(policy={"fanout": fanout, **policy}), seed=0)
        world.policy.runtime = world
        node = world.nodes[0]
        for nbr, width in (reported or {}).items():
            node.reports[nbr] = Report(score=0.5, samples=10, compute=1.0, memory=0.0, family=node.learner.family,
                                       width=width, version=1, received=0.0)
        return [world.policy.choose_targets(node, fanout) for _ in range(40)]

    alike = {1: 1.0, 4: 1.0}
    hops = {1: 1, 4: 1, 2: 2, 3: 2}
    wide = choices(2, alike)
    assert {t for c in wide for t in c} & {2, 3}
    assert all(c and sum(hops[t] for t in c) <= 2 for c in wide)
    assert {t for c in choices(2, alike, sparse_share_hops=1) for t in c} == {1, 4}
    assert {t for c in choices(2, {1: 1.0}) for t in c} == {1, 4}  # node 4 not heard from yet
    assert {t for c in choices(2, {1: 1.0, 4: 0.5}) for t in c} == {1, 4}  # node 4 is narrower
    assert {t for c in choices(1, alike) for t in c} <= {1, 4}


def _silences(topology: dict, **policy) -> dict[int, float]:
    """{node: MFDPolicy.silence} of a tiny world (``max_silence`` 1, ``fanout`` 2)."""
    world = build_world(tiny(topology=topology, policy={"fanout": 2, **policy}), seed=0)
    world.policy.runtime = world
    return {n: world.policy.silence(node) for n, node in world.nodes.items()}


def test_a_node_with_more_neighbours_than_its_fanout_stays_silent_longer() -> None:
    """A star's hub, with 8 neighbours against a fanout of 2, waits (8 / 2) ** silence_density
    times ``max_silence`` before it shares anyway; its leaves (one neighbour) and a ring's
    nodes (two) wait ``max_silence``, as every node does with ``silence_density = 0``."""
    def silences(topology: dict, **policy) -> dict[int, float]:
        return _silences(topology, **{"clean_silence": 1.0, **policy})

    star = silences({"kind": "star", "nodes": 9})
    hub = max(star, key=star.get)
    assert star[hub] == pytest.approx(4 ** 0.25)
    assert {v for n, v in star.items() if n != hub} == {1.0}
    assert set(silences({"kind": "ring", "nodes": 5}).values()) == {1.0}
    assert set(silences({"kind": "star", "nodes": 9}, silence_density=0.0).values()) == {1.0}


def test_a_node_whose_links_lose_nothing_shares_sooner() -> None:
    """Where its links and its neighbours' links lose nothing a node waits ``clean_silence``
    times ``max_silence``; the factor rises linearly with the worst of those links' loss to 1
    at 1 %, and multiplies the density's."""
    assert list(_silences({"kind": "ring", "nodes": 5}).values()) == pytest.approx([0.33] * 5)
    assert list(_silences({"kind": "ring", "nodes": 5, "loss": 0.005}).values()) == pytest.approx([0.665] * 5)
    assert set(_silences({"kind": "ring", "nodes": 5, "loss": 0.02}).values()) == {1.0}
    assert set(_silences({"kind": "ring", "nodes": 5}, clean_silence=1.0).values()) == {1.0}
    star = _silences({"kind": "star", "nodes": 9})
    assert max(star.values()) == pytest.approx(0.33 * 4 ** 0.25)
    # one lossy link on the ring 0-1-2-3-4-0: within two hops of it, every node but 3
    world = build_world(tiny(policy={"fanout": 2}), seed=0)
    world.policy.runtime = world
    world.network.set_link(0, 1, loss=0.05)
    assert {n: world.policy.silence(node) for n, node in world.nodes.items()} == \
        {0: 1.0, 1: 1.0, 2: 1.0, 3: pytest.approx(0.33), 4: 1.0}


def test_a_scenario_node_join_starts_the_node_absent_and_it_bootstraps() -> None:
    """``node_join`` on a node with no earlier leave: it is not there before, then joins."""
    scenario = tiny(duration=6.0, data={"split": "iid"}, topology={"compute": 500.0},
                    faults=[{"kind": "node_join", "at": 0.5, "nodes": [3]}])
    world = build_world(scenario, seed=0)
    result = world.run()
    joins = [e for e in result.events if e["event"] == "join"]
    assert [(e["t"], e["node"]) for e in joins] == [(3.0, 3)]
    assert world.nodes[3].counters.bootstraps == 1
    series = result.node_series(3)
    before = [s for t, s in zip(result.times, series) if t < 3.0]
    assert before and all(math.isnan(s) for s in before)  # away: no score, a gap in the curves
    assert all(math.isfinite(s) for t, s in zip(result.times, series) if t >= 3.0)
    assert world.nodes[3].learner.work_done > 0


def test_nodes_away_have_no_score() -> None:
    scenario = tiny("isolated", duration=4.0,
                    faults=[{"kind": "node_leave", "at": 0.25, "nodes": [1], "rejoin_at": 0.75}])
    result = build_world(scenario, seed=0).run()
    series = result.node_series(1)
    for t, s in zip(result.times, series):
        assert math.isnan(s) == (1.0 <= t < 3.0), t
    assert math.isfinite(result.final_mean_score)


# --------------------------------------------------------------------------- travelling models


def test_travelling_models_visit_nodes_and_improve_them() -> None:
    scenario = tiny("mfd-travel", duration=6.0, topology={"nodes": 6}, policy={"travellers": 2})
    world = build_world(scenario, seed=0)
    sends = record_sends(world)
    result = world.run()
    hops = [(t, node, target, meta) for node, records in sends.items()
            for t, target, kind, _, meta in records if kind == "travel"]
    holders = {node for _, node, _, _ in hops}
    assert len(holders) >= 4  # travellers moved around the ring
    for _, node, target, _ in hops:
        assert target in set(world.graph.neighbors(node))
    by_traveller = defaultdict(list)
    for t, _, _, meta in sorted(hops, key=lambda h: h[0]):
        by_traveller[meta["traveller"]].append(meta["visits"])
    assert set(by_traveller) == {0, 1}
    for visits in by_traveller.values():
        assert visits == sorted(visits) and visits[-1] >= 4  # trained on each holder on the way
    assert result.extra["accepted"] > 0
    isolated = build_world(scenario.with_policy("isolated"), seed=0).run()
    assert result.final_mean_score > isolated.final_mean_score + 0.03


def test_a_traveller_that_lost_fragments_is_trained_and_travels_on() -> None:
    world = build_world(tiny("mfd-travel", policy={"hello_interval": 5.0, "gate_tolerance": 1.0}), seed=0)
    world.policy.start(world)
    sends = record_sends(world)
    holder = world.nodes[0]
    traveller = world.nodes[2].learner.get_state()
    message = received(world, 2, 0, traveller, drop=0.3, seed=2, score=0.5, samples=100,
                       traveller=0, seen=[], visits=3)
    message.manifest.meta["kind"] = "travel"
    assert not message.complete
    holder.deliver(message)
    world.network.run(until=1.0)
    hop = next((target, meta) for _, target, kind, _, meta in sends[0] if kind == "travel")
    assert hop[0] in (1, 4) and hop[1]["visits"] == 4 and hop[1]["traveller"] == 0
    assert len(hop[1]["seen"]) == 10 and sum(hop[1]["seen"]) > 0


# --------------------------------------------------------------------------- reproducibility


def _fingerprint(result):
    return result.scores, result.bytes, result.packets, [(e["t"], e["event"]) for e in result.events]


@pytest.mark.parametrize("policy", ["mfd", "fedavg", "mfd-travel"])
def test_same_seed_same_results_and_another_seed_differs(policy) -> None:
    scenario = tiny(policy, duration=2.0, topology={"loss": 0.1})
    first = build_world(scenario, seed=0).run()
    second = build_world(scenario, seed=0).run()
    assert _fingerprint(first) == _fingerprint(second)
    assert first.bytes[-1] > 0
    other = build_world(scenario, seed=1).run()
    assert other.scores != first.scores and other.bytes != first.bytes


# --------------------------------------------------------------------------- hellos


def _hello_times(world: World) -> dict[int, list[float]]:
    times = defaultdict(list)
    for node in world.nodes.values():
        original = node.hello

        def hello(_node=node, _original=original):
            times[_node.id].append(round(world.env.now, 6))
            _original()

        node.hello = hello
    return times


def _quiet_world_and_hello_times():
    """A 400 s world whose models never change (looks every 1 s, keep-alive 10 s backing
    off to 80 s), and the times of each node's hellos as they will be sent."""
    scenario = tiny(duration=400.0, eval_interval=400.0, topology={"compute": 200.0},  # 0.8 s chunks
                    policy={"hello_interval": 1.0, "hello_refresh": 10.0, "hello_refresh_max": 80.0})
    world = build_world(scenario, seed=0)
    for node in world.nodes.values():
        # a chunk's work as training would cost it (one sample a unit), but the model never
        # changes; a chunk of 1 unit made 160x as many chunks, each scored: 5 minutes a test
        node.learner.train = lambda steps, trainable=None, batch=node.learner.batch_size: steps * batch
    return world, _hello_times(world)


def test_keep_alives_back_off_while_nothing_changes_and_news_is_told_at_the_next_look() -> None:
    world, times = _quiet_world_and_hello_times()
    node = world.nodes[2]
    # something a hello tells changes at t = 200.5: the node must say so at its next look
    world.start()
    world.advance(200.5)
    node.learner.num_samples += 1
    node.news()
    world.advance(world.duration)
    world.finish()
    gaps = [b - a for a, b in zip(times[0], times[0][1:])]
    # a fixed 10 s keep-alive would have sent 40 hellos in 400 s; the back-off doubles the
    # wait up to 80 s: 10, 20, 40, 80, 80, ...
    assert len(times[0]) <= 9 and max(gaps) == pytest.approx(80.0, abs=1.0)
    assert all(b >= a - 1e-9 for a, b in zip(gaps[:4], gaps[1:5]))
    # the change is told within one look (1 s) and the keep-alive falls back to 10 s
    after = [t for t in times[2] if t >= 200.5]
    assert after[0] - 200.5 <= 1.0
    assert after[1] - after[0] == pytest.approx(10.0, abs=1e-6)


def test_a_new_score_is_told_at_once_but_does_not_reset_the_keep_alive() -> None:
    """Scores move with every merge: a news hello says the new one, and the keep-alive keeps
    its backed-off interval (resetting it at each cost a 1,000-node hour 30,000 hellos)."""
    world, times = _quiet_world_and_hello_times()
    node = world.nodes[2]
    world.start()
    world.advance(200.5)  # backed off to 80 s by now: 10, 20, 40, 80, ...
    node.learner.score = lambda state=None: 0.123  # only the score changes
    node.invalidate_score()
    node.news()
    world.advance(world.duration)
    world.finish()
    after = [t for t in times[2] if t >= 200.5]
    assert after[0] - 200.5 <= 1.0  # told at the next look
    assert after[1] - after[0] == pytest.approx(80.0, abs=1e-6)  # then the keep-alive as backed off
