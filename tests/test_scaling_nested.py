"""Width-nested training and merging: ordered dropout makes every prefix a model of its
own, and a merge counts a narrower model as the wider one with its missing units off."""
from __future__ import annotations

import pytest
import torch

from mfd_core.datasets import load_digits
from mfd_core.knowledge import merge_same_family
from mfd_core.learners.torch_supervised import TorchSupervisedLearner
from mfd_core.scaling import MLPFamily, SmallCNNFamily, extract, merge_overlapping


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    x, y = torch.from_numpy(d.inputs).float(), torch.from_numpy(d.labels)
    return (x[:400], y[:400]), (x[1000:1400], y[1000:1400])


def _accuracy(family, ratio, state, data) -> float:
    model = family.build(ratio)
    model.load_state_dict(extract(state, family.shapes(ratio)), strict=True)
    x, y = data
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.mark.parametrize("family", [MLPFamily(64, (64, 64), 10), SmallCNNFamily()], ids=["mlp", "cnn"])
def test_ordered_dropout_makes_the_quarter_width_prefix_a_good_model(digits, family) -> None:
    train, test = digits
    prefix, full = {}, {}
    for ordered in (False, True):
        nested = [family.shapes(0.25), family.shapes(0.5)] if ordered else []
        learner = TorchSupervisedLearner(family.build(1.0, seed=0), train, (train[0][:50], train[1][:50]),
                                         lr=0.005, seed=0, nested_shapes=nested)
        learner.train(150)
        state = learner.get_state()
        prefix[ordered], full[ordered] = _accuracy(family, 0.25, state, test), _accuracy(family, 1.0, state, test)
    # without it the prefix only ever worked next to the units cut off (0.1-0.3 here)
    assert prefix[True] >= 0.7 and prefix[True] >= prefix[False] + 0.2, prefix
    # and the full width still learns (0.92-0.96 either way)
    assert min(full.values()) >= 0.85, full


def test_ordered_dropout_steps_touch_only_the_prefix_of_a_drawn_width(digits) -> None:
    family = MLPFamily(64, (64, 64), 10)
    train, _ = digits
    learner = TorchSupervisedLearner(family.build(1.0, seed=0), train, train, lr=0.01, optimizer="sgd", seed=3,
                                     nested_shapes=[family.shapes(0.25)])
    before = learner.get_state()
    moved_outside = 0
    for _ in range(12):
        start = learner.get_state()
        learner.train(1)
        end = learner.get_state()
        # plain SGD: a step at the quarter width leaves every unit beyond it bit-identical
        if not torch.equal(end["fc1.weight"][16:], start["fc1.weight"][16:]):
            moved_outside += 1
        assert not torch.equal(end["fc1.weight"][:16, :16], start["fc1.weight"][:16, :16])
    assert 0 < moved_outside < 12  # both widths were drawn
    assert not torch.equal(learner.get_state()["out.weight"], before["out.weight"])


def test_nested_shapes_must_be_prefixes_of_parameters() -> None:
    family = MLPFamily(8, (4,), 3)
    data = (torch.zeros(4, 8), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError):
        TorchSupervisedLearner(family.build(1.0), data, data, nested_shapes=[{"fc0.weight": (5, 8)}])
    with pytest.raises(KeyError):
        TorchSupervisedLearner(family.build(1.0), data, data, nested_shapes=[{"nope": (1,)}])


def test_silent_units_hand_computed_example() -> None:
    base = {"w": torch.ones(2, 3), "b": torch.ones(2)}
    narrow = {"w": torch.tensor([[3.0, 3.0]]), "b": torch.tensor([3.0])}  # 1 output unit, 2 inputs
    plain = merge_overlapping(base, [(narrow, 1.0)], base_weight=1.0)
    silent = merge_overlapping(base, [(narrow, 1.0)], base_weight=1.0, silent_units=True)
    assert torch.equal(plain["w"], torch.tensor([[2.0, 2.0, 1.0], [1.0, 1.0, 1.0]]))
    # the weight from the input the narrow model lacks into its unit averages with a zero;
    # the unit it lacks (row 1) and the biases follow the plain rule
    assert torch.equal(silent["w"], torch.tensor([[2.0, 2.0, 0.5], [1.0, 1.0, 1.0]]))
    assert torch.equal(silent["b"], plain["b"])


def test_silent_units_merge_averages_the_two_models_outputs() -> None:
    # one hidden layer shared by both: the merged model's outputs are then exactly the
    # average of the two models' outputs, which the plain overlap average is not
    family = MLPFamily(6, (8,), 3)
    wide = family.build(1.0, seed=0).state_dict()
    narrow = extract(wide, family.shapes(0.5))
    gen = torch.Generator().manual_seed(1)
    narrow["out.weight"] = torch.randn(narrow["out.weight"].shape, generator=gen)
    narrow["out.bias"] = torch.randn(3, generator=gen)
    x = torch.randn(20, 6, generator=gen)

    def outputs(ratio, state):
        model = family.build(ratio)
        model.load_state_dict(state, strict=True)
        with torch.no_grad():
            return model(x)

    expected = (outputs(1.0, wide) + outputs(0.5, narrow)) / 2
    silent = merge_same_family(wide, [(narrow, 1.0)], local_weight=1.0)
    plain = merge_same_family(wide, [(narrow, 1.0)], local_weight=1.0, silent_units=False)
    torch.testing.assert_close(outputs(1.0, silent), expected, rtol=0, atol=1e-5)
    assert (outputs(1.0, plain) - expected).abs().max() > 0.05


def test_silent_units_leave_equal_widths_and_wider_contributions_alone() -> None:
    family = MLPFamily(64, (64, 64), 10)
    base, other = family.build(0.5, seed=0).state_dict(), family.build(0.5, seed=1).state_dict()
    wide = family.build(1.0, seed=2).state_dict()
    for contribution in (other, wide):
        silent = merge_overlapping(base, [(contribution, 2.0)], base_weight=1.0, silent_units=True)
        plain = merge_overlapping(base, [(contribution, 2.0)], base_weight=1.0)
        for key in base:
            torch.testing.assert_close(silent[key], plain[key], rtol=0, atol=0)


def test_width_lr_exponent_lets_a_narrow_slice_learn_at_the_pace_of_the_wide_model(digits) -> None:
    # a quarter-width slice of a wide initialisation: its later layers' signals are small
    family = MLPFamily(64, (64, 64), 10)
    train, test = digits
    accuracy = {}
    for exponent in (0.0, 1.5):
        learner = TorchSupervisedLearner(family.build(0.25, seed=0), train, (train[0][:50], train[1][:50]),
                                         lr=0.005, seed=0, width=0.25, width_lr_exponent=exponent)
        learner.train(40)
        accuracy[exponent] = _accuracy(family, 0.25, learner.get_state(), test)
    assert accuracy[1.5] >= accuracy[0.0] + 0.1, accuracy


def test_width_lr_exponent_scales_the_layers_after_the_first_and_leaves_full_width_alone(digits) -> None:
    family = MLPFamily(64, (64, 64), 10)
    train, _ = digits
    narrow = TorchSupervisedLearner(family.build(0.25, seed=0), train, train, lr=0.01, width=0.25, width_lr_exponent=1.5)
    first, rest = narrow.optimizer.param_groups
    assert [p.shape for p in first["params"]] == [torch.Size([16, 64]), torch.Size([16])]  # fc0 keeps lr
    assert first["lr"] == 0.01 and rest["lr"] == pytest.approx(0.01 * 0.25**-1.5)
    # a full-width model without narrower widths trains exactly as without the option
    states = []
    for exponent in (0.0, 1.5):
        learner = TorchSupervisedLearner(family.build(1.0, seed=0), train, train, lr=0.01, width_lr_exponent=exponent)
        learner.train(5)
        states.append(learner.get_state())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    # ordered dropout: each drawn width takes its own step size, and the model's own is back after training
    wide = TorchSupervisedLearner(family.build(1.0, seed=0), train, train, lr=0.01, seed=3, width_lr_exponent=1.5,
                                  nested_shapes=[family.shapes(0.25)])
    seen = set()
    for _ in range(12):
        wide._forward_at_drawn_width(train[0][:4])
        seen.add(round(wide.optimizer.param_groups[1]["lr"], 6))
    assert seen == {0.01, round(0.01 * 0.25**-1.5, 6)}
    wide.train(3)
    assert [g["lr"] for g in wide.optimizer.param_groups] == [0.01, 0.01]
