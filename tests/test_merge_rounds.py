"""MFD in rounds (``merge_window``), sharing past the neighbours (``share_hops``) and a
gate that does not score what it already scored (tiny digits worlds, seconds to run)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from mfd_core import knowledge
from mfd_core.runtime import build_world

from tests.helpers import model_shares, received, record_sends, same_state, tiny


def test_held_models_merge_together_in_one_average() -> None:
    world = build_world(tiny(data={"split": "iid"}, policy={"gate_tolerance": 1.0, "merge_window": 0.3}), seed=0)
    node, a, b = world.nodes[0], world.nodes[1], world.nodes[4]
    a.learner.train(60)
    b.learner.train(120)
    before = node.learner.get_state()
    messages = [received(world, origin, 0, peer.learner.get_state(), score=0.5, samples=100)
                for origin, peer in ((1, a), (4, b))]
    for message in messages:
        node.deliver(message, None)
    assert same_state(node.learner.get_state(), before)  # held, not merged on arrival
    assert set(node.held) == {1, 4}
    local_weight = node.learner.num_samples * max(node.score(), 1e-3)
    world.policy.accept_held(node)
    expected = knowledge.merge_same_family(before, [(m.state, 50.0) for m in messages], local_weight=local_weight)
    after = node.learner.get_state()
    assert all(torch.allclose(after[k], expected[k], atol=1e-6) for k in expected)
    assert node.counters.accepted == 2 and not node.held
    # the score the gate gave the installed state is the node's score: not measured again
    assert node.score() == pytest.approx(node.learner.score())


def test_a_node_holds_the_latest_model_of_each_origin() -> None:
    world = build_world(tiny(policy={"merge_window": 0.3}), seed=0)
    node = world.nodes[0]
    state = world.nodes[1].learner.get_state()
    old, new = (received(world, 1, 0, state, score=0.5, samples=10) for _ in range(2))
    world.policy.hold(node, old)
    world.policy.hold(node, new)
    assert node.held[1] is new  # same version: the later one
    world.policy.hold(node, dataclasses.replace(old, model_version=old.model_version - 1))
    assert node.held[1] is new  # an older version (a straggler) does not replace it


def test_rounds_run_end_to_end_and_reach_past_the_neighbours() -> None:
    scenario = tiny(topology={"kind": "ring", "nodes": 6},
                    policy={"merge_window": 0.2, "share_hops": 2, "fanout": 4, "max_silence": 0.5})
    world = build_world(scenario, seed=0)
    sends = record_sends(world)
    world.run()
    far = 0
    for node_id, records in sends.items():
        for _, targets in model_shares(records):
            for target, _ in targets:
                hops = abs(target - node_id) % 6
                assert min(hops, 6 - hops) <= 2
                far += min(hops, 6 - hops) == 2
    assert far > 0
    assert sum(n.counters.accepted for n in world.nodes.values()) > 0


def test_absorb_takes_a_known_local_score_and_reports_the_gates_score_after() -> None:
    world = build_world(tiny(data={"split": "iid"}), seed=0)
    learner, teacher = world.nodes[0].learner, world.nodes[1].learner
    teacher.train(150)
    calls = []
    original = learner.score

    def counting(state=None):
        calls.append(state is None)
        return original(state)

    learner.score = counting
    incoming = knowledge.IncomingModel("mlp", teacher.get_state(), weight=10.0 * learner.num_samples)
    result = knowledge.absorb_knowledge(learner, incoming, gate=knowledge.Gate(0.5), local_score=0.1)
    assert result.score_before == 0.1
    assert calls == [False]  # one score: the candidate's; neither the local nor the installed one again
    assert result.score_after == pytest.approx(original())


def test_merge_weights_samples_leaves_scores_out_and_never_asks_for_one() -> None:
    def no_score() -> float:
        raise AssertionError("the score was asked for")

    by_score = build_world(tiny(), seed=0).policy
    assert by_score.merge_weight(12, lambda: 0.5) == 6.0
    assert by_score.merge_weight(12, lambda: 0.0) == 12 * 1e-3  # a floor: a model scoring 0 still counts a little
    by_samples = build_world(tiny(policy={"merge_weights": "samples"}), seed=0).policy
    assert by_samples.merge_weight(12, no_score) == 12.0
    assert by_samples.merge_weight(12, lambda: 0.5) == by_samples.merge_weight(12, lambda: 0.0)
