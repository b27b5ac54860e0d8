"""Heterogeneous fleets end to end: sub-models over packets, capacity tiers, two
architectures, int8 transport (DESIGN.md, properties 2 and 3)."""
from __future__ import annotations

import random
from pathlib import Path

import torch

from mfd_core import codec, scenario
from mfd_core.messages import ModelHeader
from mfd_core.runtime import World, build_world
from mfd_core.knowledge import merge_same_family
from mfd_core.reassembly import Reassembler
from mfd_core.scaling import MLPFamily, extract

SCENARIOS = Path(__file__).resolve().parents[1] / "apps" / "scenarios"
MLP = MLPFamily(64, (64, 64), 10)


def small(name: str, **changes) -> scenario.Scenario:
    """A shipped scenario cut to 6 nodes in one radio range (lossless links: every hello
    arrives) and a few simulated seconds."""
    base = scenario.load(SCENARIOS / f"{name}.toml")
    doc = {"topology": {"nodes": 6, "radius": 0.9, "degrade": False}, "duration": 6.0, "eval_interval": 1.0}
    for key, value in changes.items():
        doc[key] = {**doc.get(key, {}), **value} if isinstance(value, dict) else value
    return base.replace(**doc)


def through_packets(state, *, ratio: float, precision: str = "fp32", shuffle: int | None = None):
    """``state`` as MFD datagrams (reordered when ``shuffle`` is a seed) into a Reassembler."""
    datagrams = codec.to_datagrams(state, origin=7, destination=1, model_version=3, message_id=11,
                                   precision=precision, meta={"kind": "model", "samples": 100, "score": 0.8},
                                   scaling={"family": "mlp", "ratio": ratio})
    if shuffle is not None:
        random.Random(shuffle).shuffle(datagrams)
    reassembler = Reassembler()
    delivered = [m for m in (reassembler.receive(d, now=0.0) for d in datagrams) if m is not None]
    assert len(delivered) == 1 and delivered[0].complete
    return delivered[0]


def slice_mask(full: torch.Tensor, sub: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros(full.shape, dtype=torch.bool)
    mask[tuple(slice(0, s) for s in sub.shape)] = True
    return mask


def silent_mask(full: torch.Tensor, sub: torch.Tensor) -> torch.Tensor:
    """The weights from the units ``sub`` lacks into the units it has: zeros of the
    sub-model in a merge (mfd_core.scaling.merge_overlapping, silent_units)."""
    mask = torch.zeros(full.shape, dtype=torch.bool)
    if full.dim() >= 2:
        mask[: sub.shape[0]] = True
        mask &= ~slice_mask(full, sub)
    return mask


# --------------------------------------------------------------------------- packets


def test_scenarios_load_and_deal_tiers_and_architectures_round_robin() -> None:
    tiers = scenario.load(SCENARIOS / "digits_tiers.toml")
    mixed = scenario.load(SCENARIOS / "digits_mixed_arch.toml")
    assert tiers.learner.widths == (0.25, 0.5, 1.0)
    assert mixed.learner.kinds == ("mlp", "cnn")
    world = build_world(small("digits_tiers"), seed=0)
    assert [world.nodes[n].learner.width for n in sorted(world.nodes)] == [0.25, 0.5, 1.0] * 2
    world = build_world(small("digits_mixed_arch"), seed=0)
    assert [world.nodes[n].learner.family for n in sorted(world.nodes)] == ["mlp", "cnn"] * 3


def test_nodes_train_the_fleets_narrower_widths_nested_in_their_own() -> None:
    world = build_world(small("digits_tiers"), seed=0)
    nested = {n.learner.width: n.learner.nested_shapes for n in world.nodes.values()}
    assert nested[0.25] == []
    assert nested[0.5] == [{k: tuple(v) for k, v in MLP.shapes(0.25).items()}]
    assert nested[1.0] == [{k: tuple(v) for k, v in MLP.shapes(r).items()} for r in (0.25, 0.5)]
    off = build_world(small("digits_tiers", learner={"ordered_dropout": False}), seed=0)
    assert all(n.learner.nested_shapes == [] for n in off.nodes.values())
    one_width = build_world(small("digits"), seed=0)  # the full-width fleet trains as before
    assert all(n.learner.nested_shapes == [] for n in one_width.nodes.values())


def test_half_width_packet_stream_lands_in_the_slice_of_a_full_width_model() -> None:
    sent = MLP.build(0.5, seed=1).state_dict()
    message = through_packets(sent, ratio=0.5, shuffle=0)
    assert message.manifest.scaling == {"family": "mlp", "ratio": 0.5}
    assert {k: v.shape for k, v in message.state.items()} == dict(MLP.shapes(0.5))
    local = MLP.build(1.0, seed=0).state_dict()
    merged = merge_same_family(local, [(message.state, 3.0)], [message.masks], local_weight=1.0)
    for key, full in local.items():
        inside, silent = slice_mask(full, sent[key]), silent_mask(full, sent[key])
        untouched = ~inside & ~silent
        assert torch.equal(merged[key][untouched], full[untouched]), key
        region = tuple(slice(0, s) for s in sent[key].shape)
        expected = (1.0 * full[region] + 3.0 * sent[key]) / 4.0
        torch.testing.assert_close(merged[key][region], expected, rtol=0, atol=1e-6)
        assert not torch.equal(merged[key][region], full[region]), key
        # the weights from the units the sub-model lacks average with its zeros
        torch.testing.assert_close(merged[key][silent], full[silent] / 4.0, rtol=0, atol=1e-6)
    assert silent_mask(local["out.weight"], sent["out.weight"]).sum() == 10 * 32


def test_half_width_model_through_node_accept_changes_only_the_slice() -> None:
    world = build_world(small("digits_tiers", policy={"gate_tolerance": 1.0}), seed=0)
    node = world.nodes[2]  # widths round-robin: node 2 is full width
    assert node.learner.width == 1.0
    before = node.learner.get_state()
    local_weight = node.learner.num_samples * max(node.score(), 1e-3)
    sent = MLP.build(0.5, seed=1).state_dict()
    message = through_packets(sent, ratio=0.5)
    decision = world.policy.accept(node, message, ModelHeader.decode(message.manifest.meta))
    assert decision.accepted and node.counters.accepted == 1
    after = node.learner.get_state()
    expected = merge_same_family(before, [(sent, 100 * 0.8)], local_weight=local_weight)
    for key, full in before.items():
        inside, silent = slice_mask(full, sent[key]), silent_mask(full, sent[key])
        untouched = ~inside & ~silent
        assert torch.equal(after[key][untouched], full[untouched]), key
        torch.testing.assert_close(after[key], expected[key], rtol=0, atol=1e-6)
        assert not torch.equal(after[key][inside], full[inside]), key
        shrink = local_weight / (local_weight + 100 * 0.8)
        torch.testing.assert_close(after[key][silent], full[silent] * shrink, rtol=0, atol=1e-6)


def test_int8_sub_model_merges_within_half_a_quantisation_step() -> None:
    sent = MLP.build(0.5, seed=1).state_dict()
    message = through_packets(sent, ratio=0.5, precision="int8", shuffle=1)
    local = MLP.build(1.0, seed=0).state_dict()
    replaced = merge_same_family(local, [(message.state, 1.0)], local_weight=0.0)
    blended = merge_same_family(local, [(message.state, 1.0)], local_weight=1.0)
    for key, value in sent.items():
        _, scale, _ = codec.quantise_int8(value)
        region = tuple(slice(0, s) for s in value.shape)
        half_step = scale / 2 + 1e-7  # binary32 rounding of the decoded value
        assert (message.state[key] - value).abs().max() <= half_step, key
        assert (replaced[key][region] - value).abs().max() <= half_step, key
        exact_blend = (local[key][region] + value) / 2
        assert (blended[key][region] - exact_blend).abs().max() <= half_step / 2 + 1e-7, key
        silent = silent_mask(local[key], value)
        outside = ~slice_mask(local[key], value) & ~silent
        assert torch.equal(blended[key][outside], local[key][outside]), key
        torch.testing.assert_close(blended[key][silent], local[key][silent] / 2, rtol=0, atol=1e-7)
        assert torch.equal(replaced[key][silent], torch.zeros_like(local[key][silent])), key
    # it was int8 on the wire: a quarter of the fp32 tensor bytes, give or take the manifest
    fp32 = codec.to_datagrams(sent, origin=7, destination=1, model_version=3, message_id=12, precision="fp32")
    int8 = codec.to_datagrams(sent, origin=7, destination=1, model_version=3, message_id=12, precision="int8")
    assert sum(map(len, int8)) < 0.45 * sum(map(len, fp32))


# --------------------------------------------------------------------------- fleets


def _record_absorbed(world: World) -> list[tuple]:
    """(time, receiver, manifest scaling, manifest meta, action, shapes) of every model a node absorbs."""
    seen: list[tuple] = []
    for node in world.nodes.values():
        def absorb_all(messages, *, _node=node, _original=node.absorb_all, **kwargs):
            outcomes = _original(messages, **kwargs)
            for message, outcome in zip(messages, outcomes):
                seen.append((world.env.now, _node.id, dict(message.manifest.scaling), dict(message.manifest.meta),
                             outcome.action, {k: tuple(v.shape) for k, v in message.state.items()}))
            return outcomes

        node.absorb_all = absorb_all
    return seen


def test_tier_fleet_sends_narrow_receivers_sub_models_of_their_width() -> None:
    world = build_world(small("digits_tiers"), seed=0)
    seen = _record_absorbed(world)
    result = world.run()
    assert all(s == s for s in result.scores[-1])  # every node measured
    widths = {n: node.learner.width for n, node in world.nodes.items()}
    # Hellos go out within the first 0.5 s; from then on every sender knows its receiver's width.
    settled = [r for r in seen if r[0] > 1.0]
    assert len(settled) >= 20
    for t, receiver, scaling, meta, _, shapes in settled:
        assert scaling["ratio"] == min(widths[receiver], meta["width"]), (t, receiver, scaling, meta["width"])
        assert shapes == {k: tuple(v) for k, v in MLP.shapes(scaling["ratio"]).items()}
    cut = [r for r in settled if r[3]["width"] > widths[r[1]]]
    assert {widths[r[1]] for r in cut} == {0.25, 0.5}, "both narrow tiers got cut-down models of wider senders"
    assert any(r[4] == "merged" for r in cut)


def test_two_architectures_distil_and_no_sample_leaves_its_node() -> None:
    world = build_world(small("digits_mixed_arch", policy={"gate_tolerance": 1.0}), seed=0)
    seen = _record_absorbed(world)
    result = world.run()
    families = {n: node.learner.family for n, node in world.nodes.items()}
    assert result.extra["distilled"] > 0
    for _, receiver, scaling, _, action, _ in seen:
        if action == "distilled":
            assert scaling["family"] != families[receiver]
        elif action == "merged":
            assert scaling["family"] == families[receiver]
    taught = {families[r] for _, r, _, _, a, _ in seen if a == "distilled"}
    assert taught == {"mlp", "cnn"}, "both directions: MLP taught by CNN and CNN by MLP"
    assert "data" not in world.network.stats()["kinds"]
    assert result.data_bytes[-1] == 0 and result.model_bytes[-1] > 0


def test_heterogeneous_scenarios_are_digits_toml_but_for_the_fleet_mix() -> None:
    """The benchmark compares them with digits.toml's fleet: tuning one must tune all three."""
    digits = scenario.load(SCENARIOS / "digits.toml").model_dump()
    for name, field in (("digits_tiers", "widths"), ("digits_mixed_arch", "kinds")):
        doc = scenario.load(SCENARIOS / f"{name}.toml").model_dump()
        assert doc["learner"][field], f"{name}.toml sets no learner.{field}"
        doc["learner"][field] = digits["learner"][field]
        for key in ("name", "description"):
            doc.pop(key), digits.pop(key, None)
        assert doc == digits, f"{name}.toml has drifted from digits.toml: copy the change over"
