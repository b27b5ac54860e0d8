"""Width-nested families: extract / absorb / merge, receiver fitting, activated parameters."""
from __future__ import annotations

import math

import pytest
import torch

from mfd_core.scaling import (
    MLPFamily,
    ReceiverProfile,
    SmallCNNFamily,
    absorb,
    activated_parameters,
    choose_precision,
    choose_ratio,
    extract,
    merge_overlapping,
    param_count,
    scaled_width,
)

torch.set_num_threads(1)

FAMILIES = [MLPFamily(64, (64, 64), 10), SmallCNNFamily()]
RATIOS = [0.25, 0.5, 1.0]


def _random_state(family, ratio, seed):
    return {k: v.clone() for k, v in family.build(ratio, seed=seed).state_dict().items()}


def test_scaled_width_is_ceil_without_float_noise() -> None:
    assert scaled_width(10, 0.3) == 3  # 0.3 * 10 = 3.0000000000000004 in floats
    assert scaled_width(64, 0.25) == 16
    assert scaled_width(10, 0.25) == 3
    assert scaled_width(3, 0.01) == 1
    with pytest.raises(ValueError):
        scaled_width(10, 0.0)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_extract_then_absorb_at_ratio_one_weight_one_is_identity(family) -> None:
    full = _random_state(family, 1.0, seed=0)
    other = _random_state(family, 1.0, seed=1)
    sub = extract(full, family.shapes(1.0))
    out = absorb(other, sub, weight=1.0)
    assert out.keys() == full.keys()
    for k in full:
        assert torch.equal(out[k], full[k]), k
    # and the result shares no memory with its inputs
    out[next(iter(out))].add_(1.0)
    assert torch.equal(sub[next(iter(sub))], full[next(iter(full))])


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_absorb_changes_only_the_slice(family, ratio) -> None:
    full = _random_state(family, 1.0, seed=0)
    sub = {k: torch.randn(s) for k, s in family.shapes(ratio).items()}
    out = absorb(full, sub, weight=0.5)
    changed_some = False
    for k, v in full.items():
        region = tuple(slice(0, s) for s in sub[k].shape)
        inside = torch.zeros(v.shape, dtype=torch.bool)
        inside[region] = True
        assert torch.equal(out[k][~inside], v[~inside]), f"{k} changed outside the slice"
        assert torch.allclose(out[k][region], 0.5 * v[region] + 0.5 * sub[k])
        changed_some |= not torch.equal(out[k][region], v[region])
    assert changed_some
    for k in full:  # input untouched
        assert torch.equal(full[k], _random_state(family, 1.0, seed=0)[k])


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
@pytest.mark.parametrize("ratio", RATIOS)
def test_extracted_sub_model_loads_strictly_and_runs(family, ratio) -> None:
    full = _random_state(family, 1.0, seed=0)
    sub = extract(full, family.shapes(ratio))
    model = family.build(ratio)
    model.load_state_dict(sub, strict=True)
    out = model(torch.rand(5, 64))
    assert out.shape == (5, 10)
    # seeded builds of every width are slices of the one seeded full model
    seeded = family.build(ratio, seed=0).state_dict()
    for k in sub:
        assert torch.equal(seeded[k], sub[k]), k


def test_sub_model_widths_follow_ceil_rule() -> None:
    shapes = MLPFamily(64, (64, 10), 10).shapes(0.3)
    assert tuple(shapes["fc0.weight"]) == (20, 64)  # ceil(19.2), input kept
    assert tuple(shapes["fc1.weight"]) == (3, 20)
    assert tuple(shapes["out.weight"]) == (10, 3)  # output kept
    cnn = SmallCNNFamily().shapes(0.5)
    assert tuple(cnn["conv0.weight"]) == (8, 1, 3, 3)
    assert tuple(cnn["fc.weight"]) == (32, 16 * 16)


def test_merge_overlapping_matches_hand_computed_example() -> None:
    base = {"w": torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]), "b": torch.tensor([0.0, 0.0])}
    half = {"w": torch.tensor([[4.0, 4.0]]), "b": torch.tensor([3.0])}  # covers [0, :2] and b[0]
    full = {"w": torch.full((2, 3), 7.0)}  # no "b": a partial message
    mask_full = {"w": torch.tensor([[True, True, True], [True, False, False]])}
    out = merge_overlapping(base, [(half, 2.0), (full, 1.0)], base_weight=1.0, masks=[None, mask_full])
    expected_w = torch.tensor(
        [
            [(1 + 2 * 4 + 7) / 4, (1 + 2 * 4 + 7) / 4, (1 + 7) / 2],
            [(1 + 7) / 2, 1.0, 1.0],
        ]
    )
    assert torch.allclose(out["w"], expected_w)
    assert torch.equal(out["w"][1, 1:], base["w"][1, 1:])  # uncovered: exactly the base
    assert torch.allclose(out["b"], torch.tensor([(0 + 2 * 3) / 3, 0.0]))


def test_merge_overlapping_any_mix_of_widths() -> None:
    fam = MLPFamily(64, (64, 64), 10)
    base = _random_state(fam, 0.5, seed=0)
    wide, narrow = _random_state(fam, 1.0, seed=1), _random_state(fam, 0.25, seed=2)
    out = merge_overlapping(base, [(wide, 1.0), (narrow, 1.0)], base_weight=1.0)
    model = fam.build(0.5)
    model.load_state_dict(out, strict=True)
    k = "fc1.weight"
    assert torch.allclose(out[k][:16, :16], (base[k][:16, :16] + wide[k][:16, :16] + narrow[k]) / 3)
    assert torch.allclose(out[k][16:, 16:], (base[k][16:, 16:] + wide[k][16:32, 16:32]) / 2)


def test_merge_overlapping_rejects_unknown_tensors() -> None:
    with pytest.raises(KeyError):
        merge_overlapping({"a": torch.zeros(2)}, [({"z": torch.zeros(2)}, 1.0)])


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_merging_complete_same_width_models_at_once_gives_the_per_tensor_bits(family) -> None:
    base = _random_state(family, 1.0, 0)
    others = [(_random_state(family, 1.0, seed), weight) for seed, weight in ((1, 3.0), (2, 0.0), (3, 0.7))]
    for base_weight in (1.0, 0.0, 12.5):
        whole = merge_overlapping(base, others, base_weight=base_weight)
        # a mask dict with no entries means "complete" too, and takes the tensor-by-tensor path
        per_tensor = merge_overlapping(base, others, base_weight=base_weight, masks=[{}] * len(others))
        assert list(whole) == list(base)
        assert all(whole[k].shape == base[k].shape and torch.equal(whole[k], per_tensor[k]) for k in base)
    half = _random_state(family, 0.5, 4)  # another width: not the whole-model path, still the same merge
    mixed = merge_overlapping(base, [others[0], (half, 1.0)])
    assert all(torch.equal(mixed[k], v) for k, v in
               merge_overlapping(base, [others[0], (half, 1.0)], masks=[{}, {}]).items())


def test_choose_ratio_shrinks_with_memory_and_bandwidth() -> None:
    fam = MLPFamily(64, (64, 64), 10)
    rich = ReceiverProfile(memory_bytes=1e9, compute_flops=1e10, link_bandwidth=1e7)
    assert choose_ratio(fam, rich, time_budget_s=1.0) == 1.0
    # memory for 16 bytes a parameter of the 0.5 model but not of the full one
    mem = 16 * param_count(fam, 0.5) + 1
    assert choose_ratio(fam, ReceiverProfile(mem, 1e10, 1e7), time_budget_s=1.0) == 0.5
    assert choose_ratio(fam, ReceiverProfile(16 * param_count(fam, 0.25), 1e10, 1e7), time_budget_s=1.0) == 0.25
    assert choose_ratio(fam, ReceiverProfile(100, 1e10, 1e7), time_budget_s=1.0) is None
    # bandwidth, 1 s budget, fp32: the 1.0 / 0.5 / 0.25 models are 35880 / 13864 / 5928 bytes
    slow = [ReceiverProfile(1e9, 1e10, bw) for bw in (1e7, 2e4, 8e3)]
    picked = [choose_ratio(fam, p, time_budget_s=1.0, precision="fp32") for p in slow]
    assert picked == [1.0, 0.5, 0.25]
    # lossy links shrink too
    assert choose_ratio(fam, ReceiverProfile(1e9, 1e10, 4e4, 0.5), time_budget_s=1.0, precision="fp32") == 0.5
    # compute: 1000 samples x 3 x forward FLOPs must fit in the budget
    assert choose_ratio(fam, ReceiverProfile(1e9, 3e7, 1e9), time_budget_s=1.0) == 0.5


def test_choose_precision_lowers_on_slow_or_lossy_links() -> None:
    assert choose_precision(ReceiverProfile(1e9, 1e9, 1e8)) == "fp32"
    assert choose_precision(ReceiverProfile(1e9, 1e9, 5e5)) == "fp16"
    assert choose_precision(ReceiverProfile(1e9, 1e9, 1e8, 0.02)) == "fp16"
    assert choose_precision(ReceiverProfile(1e9, 1e9, 5e4)) == "int8"
    assert choose_precision(ReceiverProfile(1e9, 1e9, 1e8, 0.1)) == "int8"


def test_activated_parameters_are_the_last_layers_within_the_fraction() -> None:
    fam = MLPFamily(64, (64, 64), 10)
    model = fam.build(1.0)
    total = param_count(fam)
    assert activated_parameters(model, 0.01) == ["out.weight", "out.bias"]  # at least the output layer
    half = activated_parameters(model, 0.6)
    assert half == ["fc1.weight", "fc1.bias", "out.weight", "out.bias"]
    assert sum(dict(model.named_parameters())[k].numel() for k in half) <= 0.6 * total
    assert activated_parameters(model.state_dict(), 1.0) == list(model.state_dict())
    with pytest.raises(ValueError):
        activated_parameters(model, 0.0)


def test_fingerprint_tells_architectures_apart() -> None:
    assert MLPFamily(64, (64, 64), 10).fingerprint() == MLPFamily(64, (64, 64), 10).fingerprint()
    assert MLPFamily(64, (64, 64), 10).fingerprint() != MLPFamily(64, (32, 64), 10).fingerprint()
    assert MLPFamily(64).fingerprint() != SmallCNNFamily().fingerprint()
    assert 0 <= SmallCNNFamily().fingerprint() < 2**32
    assert math.isclose(param_count(SmallCNNFamily(), 1.0), sum(p.numel() for p in SmallCNNFamily().build().parameters()))


def test_merge_overlapping_with_zero_base_weight_replaces_only_covered_elements() -> None:
    base = {"w": torch.tensor([1.0, 2.0, 3.0])}
    out = merge_overlapping(base, [({"w": torch.tensor([5.0, 9.0])}, 1.0), ({"w": torch.tensor([7.0])}, 3.0)], base_weight=0.0)
    assert torch.equal(out["w"], torch.tensor([(5.0 + 21.0) / 4, 9.0, 3.0]))
