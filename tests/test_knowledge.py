"""Distillation losses, same-family merges, the gate, and absorb_knowledge."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mfd_core.datasets import load_digits, train_val_test_split
from mfd_core.knowledge import (
    Gate,
    IncomingModel,
    absorb_knowledge,
    distillation_loss,
    gaussian_kl,
    merge_same_family,
)
from mfd_core.learners import TorchSupervisedLearner
from mfd_core.scaling import MLPFamily, SmallCNNFamily

torch.set_num_threads(1)

MLP = MLPFamily(64, (64, 64), 10)
CNN = SmallCNNFamily()


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    train, val, test = train_val_test_split(len(data), 0.2, 0.2, seed=0)
    return data, train, val, test


def _learner(digits, family=MLP, ratio=1.0, init_seed=0, n_train=300, seed=0):
    data, train, val, _ = digits
    return TorchSupervisedLearner(
        family.build(ratio, seed=init_seed),
        (data.inputs[train[:n_train]], data.labels[train[:n_train]]),
        (data.inputs[val], data.labels[val]),
        seed=seed,
        family=family.name,
        width=ratio,
    )


# --------------------------------------------------------------------------- losses


def test_gaussian_kl_zero_for_identical_and_matches_closed_form() -> None:
    mean, log_std = torch.randn(4, 3), torch.randn(4, 3) * 0.3
    assert torch.allclose(gaussian_kl(mean, log_std, mean, log_std), torch.zeros(4), atol=1e-6)
    # KL(N(0, 1) || N(1, 2^2)) = log 2 + (1 + 1) / 8 - 1/2, per dimension
    one_dim = math.log(2) + 2 / 8 - 0.5
    p = (torch.zeros(1, 2), torch.zeros(1, 2))
    q = (torch.ones(1, 2), torch.full((1, 2), math.log(2)))
    assert distillation_loss(q, p, "gaussian").item() == pytest.approx(2 * one_dim, rel=1e-6)
    # against torch.distributions as an independent implementation
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(p[0], p[1].exp()), torch.distributions.Normal(q[0], q[1].exp())
    ).sum(-1)
    assert torch.allclose(gaussian_kl(p[0], p[1], q[0], q[1]), ref)


def test_classification_kl_is_zero_for_same_logits_and_scaled_by_t_squared() -> None:
    logits = torch.randn(8, 10)
    assert distillation_loss(logits, logits, "classification").item() == pytest.approx(0.0, abs=1e-6)
    student, teacher = torch.randn(8, 10), torch.randn(8, 10)
    t = 3.0
    p_t = torch.softmax(teacher / t, -1)
    manual = (p_t * (p_t.log() - torch.log_softmax(student / t, -1))).sum(-1).mean() * t * t
    assert distillation_loss(student, teacher, "classification", temperature=t).item() == pytest.approx(manual.item(), rel=1e-5)
    cat = (torch.softmax(teacher, -1) * (torch.log_softmax(teacher, -1) - torch.log_softmax(student, -1))).sum(-1).mean()
    assert distillation_loss(student, teacher, "categorical").item() == pytest.approx(cat.item(), rel=1e-5)
    assert distillation_loss(student, teacher, "regression").item() == pytest.approx(((student - teacher) ** 2).mean().item())
    with pytest.raises(ValueError):
        distillation_loss(student, teacher, "nope")


def test_few_distillation_steps_lower_kl_to_teacher(digits) -> None:
    teacher = _learner(digits, CNN, init_seed=5)
    teacher.train(200)
    student = _learner(digits, MLP, init_seed=1)
    x = student.local_inputs(10_000)
    before = distillation_loss(student.outputs(x), teacher.outputs(x), "classification").item()
    one = student.clone().distil_from(teacher.outputs, steps=1, kind="classification")
    assert one < before
    final = student.distil_from(teacher.outputs, steps=50, kind="classification")
    after = distillation_loss(student.outputs(x), teacher.outputs(x), "classification").item()
    assert after == pytest.approx(final, rel=1e-5)
    assert after < 0.9 * before, (before, after)


# --------------------------------------------------------------------------- merge


def test_partial_mask_merge_changes_only_masked_elements() -> None:
    local = MLP.build(1.0, seed=0).state_dict()
    incoming = MLP.build(1.0, seed=1).state_dict()
    gen = torch.Generator().manual_seed(0)
    masks = {k: torch.rand(v.shape, generator=gen) < 0.5 for k, v in incoming.items()}
    masks.pop("out.bias")  # no entry: that tensor arrived whole
    del incoming["fc0.bias"]  # absent: contributes nothing
    out = merge_same_family(local, [(incoming, 3.0)], [masks], local_weight=1.0)
    for k, v in local.items():
        if k == "fc0.bias":
            assert torch.equal(out[k], v)
            continue
        m = masks.get(k, torch.ones(v.shape, dtype=torch.bool))
        assert torch.equal(out[k][~m], v[~m]), k
        assert torch.allclose(out[k][m], (v[m] + 3.0 * incoming[k][m]) / 4.0), k


# --------------------------------------------------------------------------- gate


def test_gate_refuses_random_weights_and_accepts_better_model(digits) -> None:
    node = _learner(digits, init_seed=0)
    node.train(150)
    gate = Gate(tolerance=0.02)
    random_state = MLP.build(1.0, seed=123).state_dict()
    refused = gate.check(node, random_state)
    assert not refused.accepted and refused.candidate_score < refused.local_score - 0.02
    better = _learner(digits, init_seed=0, seed=7, n_train=600)
    better.train(600)
    accepted = gate.check(node, better.get_state())
    assert accepted.accepted and accepted.candidate_score > accepted.local_score
    # NaNs are refused without being scored
    broken = {k: torch.full_like(v, float("nan")) for k, v in node.get_state().items()}
    assert not gate.check(node, broken).accepted


def test_absorb_knowledge_same_family_merges_good_and_refuses_random(digits) -> None:
    node = _learner(digits, init_seed=0, n_train=150)
    node.train(60)
    peer = _learner(digits, init_seed=0, seed=3, n_train=600)
    peer.train(500)
    before_state = node.get_state()
    junk = IncomingModel("mlp", MLP.build(1.0, seed=99).state_dict(), weight=600.0, origin="junk")
    good = IncomingModel("mlp", peer.get_state(), weight=600.0, origin="peer")
    result = absorb_knowledge(node, [junk, good], gate=Gate(0.0))
    assert [o.action for o in result.outcomes] == ["refused", "merged"]
    assert result.score_after > result.score_before
    assert result.work == 0
    expected = merge_same_family(before_state, [(good.state, 600.0)], local_weight=150.0)
    for k, v in node.get_state().items():
        assert torch.equal(v, expected[k]), k


def test_absorb_knowledge_narrower_partial_model_touches_only_its_slice(digits) -> None:
    node = _learner(digits, init_seed=0)
    node.train(50)
    sub = _learner(digits, ratio=0.5, init_seed=0, seed=2)
    sub.train(300)
    masks = {k: torch.zeros(v.shape, dtype=torch.bool) for k, v in sub.get_state().items()}
    masks["out.weight"][:, :16] = True  # only part of one tensor arrived
    before = node.get_state()
    result = absorb_knowledge(node, IncomingModel("mlp", sub.get_state(), weight=300.0, ratio=0.5, masks=masks), gate=Gate(1.0))
    assert result.outcomes[0].action == "merged"
    after = node.get_state()
    for k in before:
        if k != "out.weight":
            assert torch.equal(after[k], before[k]), k
    assert not torch.equal(after["out.weight"][:, :16], before["out.weight"][:, :16])
    # its weights from the hidden units it lacks average with zeros (silent units), as
    # its units' weights arrived; the tensors none of whose elements arrived are untouched
    shrink = node.num_samples / (node.num_samples + 300.0)
    torch.testing.assert_close(after["out.weight"][:, 32:], before["out.weight"][:, 32:] * shrink, rtol=0, atol=1e-6)
    assert torch.equal(after["out.weight"][:, 16:32], before["out.weight"][:, 16:32])  # lost on the way


def test_absorb_knowledge_other_family_distils_through_the_gate(digits) -> None:
    node = _learner(digits, MLP, init_seed=0, n_train=100)
    node.train(40)
    teacher = _learner(digits, CNN, init_seed=4, n_train=900)
    teacher.train(400)
    families = {"mlp": MLP, "cnn": CNN}
    result = absorb_knowledge(
        node, IncomingModel("cnn", teacher.get_state(), weight=900.0), families=families, gate=Gate(0.0, trial_steps=60)
    )
    assert result.outcomes[0].action == "distilled", result.outcomes[0].decision
    assert result.score_after >= result.score_before
    assert result.work == 60 * 32 and node.work_done == 40 * 32 + 60 * 32
    # a random teacher makes the node worse: refused, node unchanged
    state = node.get_state()
    bad = absorb_knowledge(node, IncomingModel("cnn", CNN.build(seed=8).state_dict()), families=families, gate=Gate(0.0, 30))
    assert bad.outcomes[0].action == "refused"
    assert bad.outcomes[0].decision.reason.startswith("teacher scores") and bad.work == 0
    assert all(torch.equal(v, state[k]) for k, v in node.get_state().items())
    # unknown family, or a partial teacher: refused with a reason
    unknown = absorb_knowledge(node, IncomingModel("resnet", {"w": torch.zeros(1)}), families=families)
    assert unknown.outcomes[0].action == "refused" and "unknown family" in unknown.outcomes[0].decision.reason
    part = {k: torch.zeros(v.shape, dtype=torch.bool) for k, v in teacher.get_state().items()}
    partial = absorb_knowledge(node, IncomingModel("cnn", teacher.get_state(), masks=part), families=families)
    assert "partial" in partial.outcomes[0].decision.reason
    assert np.isnan(partial.outcomes[0].decision.candidate_score)
