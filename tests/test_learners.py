"""TorchSupervisedLearner, and the data it learns from (mfd_core.datasets)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mfd_core.datasets import class_counts, dirichlet_split, load_digits, train_val_test_split
from mfd_core.learners import Learner, TorchSupervisedLearner
from mfd_core.learners.torch_supervised import FusedAdam
from mfd_core.scaling import MLPFamily, SmallCNNFamily, activated_parameters

torch.set_num_threads(1)

MLP = MLPFamily(64, (64, 64), 10)


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    train, val, test = train_val_test_split(len(data), 0.2, 0.2, seed=0)
    return data, train, val, test


def _learner(digits, family=MLP, n_train=300, seed=0, init_seed=0, **kw) -> TorchSupervisedLearner:
    data, train, val, _ = digits
    return TorchSupervisedLearner(
        family.build(1.0, seed=init_seed),
        (data.inputs[train[:n_train]], data.labels[train[:n_train]]),
        (data.inputs[val], data.labels[val]),
        seed=seed,
        family=family.name,
        **kw,
    )


# --------------------------------------------------------------------------- datasets


def test_load_digits_shapes_and_ranges() -> None:
    data = load_digits()
    assert data.inputs.shape == (1797, 64) and data.inputs.dtype == np.float32
    assert data.labels.dtype == np.int64 and set(np.unique(data.labels)) == set(range(10))
    assert data.inputs.min() == 0.0 and data.inputs.max() == 1.0
    assert data.image_shape == (1, 8, 8) and data.num_classes == 10


def test_load_digits_gives_sklearns_arrays_with_or_without_its_loader(monkeypatch) -> None:
    from sklearn.datasets import load_digits as sklearn_load_digits

    from mfd_core import datasets

    raw = sklearn_load_digits()
    expected = np.asarray(raw.data, dtype=np.float32) / 16.0
    direct = load_digits()  # the file read where scikit-learn keeps it
    monkeypatch.setattr(datasets, "_sklearn_digits_file", lambda: None)
    fallback = datasets.load_digits()  # scikit-learn's own loader
    for data in (direct, fallback):
        assert np.array_equal(data.inputs, expected) and np.array_equal(data.labels, raw.target)


@pytest.mark.parametrize("alpha", [0.05, 1.0, 100.0])
def test_dirichlet_split_covers_every_index_once(alpha) -> None:
    labels = load_digits().labels
    parts = dirichlet_split(labels, num_nodes=7, alpha=alpha, seed=3, min_per_node=5)
    everything = np.concatenate(parts)
    assert len(everything) == len(labels)
    assert np.array_equal(np.sort(everything), np.arange(len(labels)))
    assert min(len(p) for p in parts) >= 5
    assert dirichlet_split(labels, 7, alpha, seed=3)[2].tolist() == parts[2].tolist()  # seeded


def test_lower_alpha_gives_more_skewed_class_shares() -> None:
    labels = load_digits().labels

    def skew(alpha: float) -> float:
        # mean total-variation distance of a node's class shares from the global shares
        tv = []
        for seed in range(3):
            counts = class_counts(labels, dirichlet_split(labels, 10, alpha, seed), 10)
            shares = counts / counts.sum(1, keepdims=True)
            tv.append(0.5 * np.abs(shares - np.bincount(labels) / len(labels)).sum(1).mean())
        return float(np.mean(tv))

    low, mid, high = skew(0.05), skew(0.5), skew(1000.0)
    assert low > mid + 0.15 and mid > high + 0.1, (low, mid, high)
    assert high < 0.1


def test_dirichlet_split_refuses_too_few_samples() -> None:
    with pytest.raises(ValueError, match="min_per_node"):
        dirichlet_split(np.zeros(20, dtype=np.int64), 5, 1.0, 0, min_per_node=5)


def test_train_val_test_split_partitions() -> None:
    train, val, test = train_val_test_split(np.arange(100, 200), 0.2, 0.1, seed=1)
    assert (len(train), len(val), len(test)) == (70, 20, 10)
    assert np.array_equal(np.sort(np.concatenate([train, val, test])), np.arange(100, 200))
    _, val_small, _ = train_val_test_split(5, 0.05, 0.0)
    assert len(val_small) == 1  # a node's gate always gets some validation data


# --------------------------------------------------------------------------- learner


def test_learner_is_a_learner_and_reports_itself(digits) -> None:
    node = _learner(digits, width=0.5)
    assert isinstance(node, Learner)
    assert (node.family, node.width, node.num_samples, node.output_kind) == ("mlp", 0.5, 300, "classification")


@pytest.mark.parametrize("family", [MLP, SmallCNNFamily()], ids=lambda f: f.name)
def test_training_improves_validation_accuracy(digits, family) -> None:
    node = _learner(digits, family)
    before = node.score()
    work = node.train(300)
    after = node.score()
    assert work == 300 * 32 and node.work_done == work
    assert after > before + 0.4 and after > 0.75, (before, after)
    data, *_, test = digits
    assert node.evaluate(data.inputs[test], data.labels[test]) > 0.7


def test_same_seed_same_result_other_seed_other_result(digits) -> None:
    runs = []
    for seed in (0, 0, 1):
        torch.manual_seed(1000 + len(runs))  # the global generator must not matter
        node = _learner(digits, seed=seed)
        node.train(40)
        runs.append(node.get_state())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_dropout_draws_from_the_learner_seed_and_no_model_moves_the_global_generator(digits) -> None:
    data, train, val, _ = digits

    def dropout_learner(seed):
        torch.manual_seed(0)  # the same initial weights
        model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10))
        return TorchSupervisedLearner(model, (data.inputs[train[:200]], data.labels[train[:200]]),
                                      (data.inputs[val], data.labels[val]), seed=seed)

    runs = []
    for seed, global_seed in ((0, 1), (0, 2), (1, 1)):
        node = dropout_learner(seed)
        torch.manual_seed(global_seed)
        node.train(20)
        runs.append(node.get_state())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])
    for node in (dropout_learner(0), _learner(digits)):
        before = torch.get_rng_state()
        node.train(5)
        assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("optimizer,width", [("adam", 1.0), ("adamw", 1.0), ("adam", 0.5)])
def test_fused_adam_updates_are_bit_identical_to_torchs_fused_adam(digits, optimizer, width) -> None:
    """The learner steps Adam without a torch.optim.Optimizer (whose construction imports
    torch's compiler stack); its updates must stay those of torch.optim.Adam(fused=True),
    bit for bit: with tensors that start training late (their state made then), two
    parameter groups (a narrow width's step size), and a clone carrying the state on."""
    from torch.optim import Adam, AdamW

    def learner():
        data, train, val, _ = digits
        return TorchSupervisedLearner(MLP.build(width, seed=0), (data.inputs[train[:300]], data.labels[train[:300]]),
                                      (data.inputs[val], data.labels[val]), optimizer=optimizer, lr=0.01, seed=0,
                                      width=width, width_lr_exponent=1.5)

    ours, torchs = learner(), learner()
    assert isinstance(ours.optimizer, FusedAdam)
    groups = ours.optimizer.param_groups
    assert len(groups) == (2 if width < 1 else 1)
    torch_class = AdamW if optimizer == "adamw" else Adam
    torchs.optimizer = torch_class([{"params": list(torchs.model.parameters())[:len(g["params"])] if k == 0 else
                                     list(torchs.model.parameters())[len(groups[0]["params"]):], "lr": g["lr"]}
                                    for k, g in enumerate(groups)], lr=0.01, fused=True)
    for node in (ours, torchs):
        node.train(7, trainable=["out.weight", "out.bias"])  # the others get their state later
        node.train(9)
    ours, torchs = ours.clone(), torchs.clone()  # the moments travel with the copy
    for node in (ours, torchs):
        node.train(5)
    a, b = ours.get_state(), torchs.get_state()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["out.weight"], learner().get_state()["out.weight"])  # it did train
    assert all(torch.equal(ours.optimizer.state[p]["exp_avg_sq"], torchs.optimizer.state[q]["exp_avg_sq"])
               for p, q in zip(ours.model.parameters(), torchs.model.parameters()))


def test_fused_adam_takes_cpu_float_parameters_only() -> None:
    with pytest.raises(ValueError, match="CPU float"):
        FusedAdam([{"params": [torch.zeros(3, dtype=torch.int64)]}], lr=0.1)
    learner = TorchSupervisedLearner(nn.Linear(4, 2), (np.zeros((8, 4)), np.zeros(8)), (np.zeros((2, 4)), np.zeros(2)),
                                     optimizer="sgd")
    assert isinstance(learner.optimizer, torch.optim.SGD)  # other optimisers stay torch's own


def test_get_and_set_state_follow_the_model_as_state_dict_does(digits) -> None:
    """get_state/set_state skip state_dict()'s module walk while the model's tensors are
    the ones seen last; replaced tensors, buffers and hooks must still come out right."""
    data, train, val, _ = digits
    model = nn.Sequential(nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    model[1].register_buffer("scratch", torch.zeros(3), persistent=False)
    node = TorchSupervisedLearner(model, (data.inputs[train[:100]], data.labels[train[:100]]),
                                  (data.inputs[val], data.labels[val]))

    def same_as_state_dict():
        state = node.get_state()
        assert list(state) == list(model.state_dict())  # the persistent buffers, not "scratch"
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())

    same_as_state_dict()
    node.train(3)  # running statistics and weights move
    same_as_state_dict()
    replaced = {k: torch.full_like(v, 0.5) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    model.load_state_dict(replaced, assign=True)  # new tensor objects
    same_as_state_dict()
    node.set_state({"3.bias": torch.arange(10.0)})  # into the replaced tensor, i.e. the model
    assert torch.equal(model[3].bias.detach(), torch.arange(10.0))


def test_set_state_with_masks_writes_only_masked_entries(digits) -> None:
    node = _learner(digits)
    before = node.get_state()
    incoming = {k: torch.randn(v.shape) for k, v in before.items()}
    gen = torch.Generator().manual_seed(0)
    masks = {k: torch.rand(v.shape, generator=gen) < 0.3 for k, v in before.items() if k != "out.bias"}
    node.set_state(incoming, masks)
    after = node.get_state()
    for k in before:
        m = masks.get(k, torch.ones(before[k].shape, dtype=torch.bool))
        assert torch.equal(after[k][m], incoming[k][m]), k
        assert torch.equal(after[k][~m], before[k][~m]), k
    # a partial state writes only what it has
    node.set_state({"out.bias": torch.zeros(10)})
    assert torch.equal(node.get_state()["out.bias"], torch.zeros(10))
    assert torch.equal(node.get_state()["fc0.weight"], after["fc0.weight"])
    with pytest.raises(ValueError, match="shape"):
        node.set_state({"out.bias": torch.zeros(5)})
    with pytest.raises(KeyError):
        node.set_state({"nope": torch.zeros(1)})


def test_get_state_is_a_detached_copy(digits) -> None:
    node = _learner(digits)
    state = node.get_state()
    state["out.bias"].add_(100.0)
    assert not torch.equal(node.get_state()["out.bias"], state["out.bias"])
    assert not any(v.requires_grad for v in state.values())


def test_trainable_subset_leaves_the_others_untouched(digits) -> None:
    node = _learner(digits)
    node.train(5)  # optimiser state exists for every parameter: it must still not move them
    before = node.get_state()
    names = activated_parameters(node.model, 0.3)
    assert names == ["out.weight", "out.bias"]
    node.train(30, trainable=names)
    after = node.get_state()
    for k in before:
        if k in names:
            assert not torch.equal(after[k], before[k]), k
        else:
            assert torch.equal(after[k], before[k]), k
    assert all(p.requires_grad for p in node.model.parameters())  # restored
    with pytest.raises(KeyError):
        node.train(1, trainable=["nope"])


def test_score_of_candidate_state_leaves_learner_unchanged(digits) -> None:
    node = _learner(digits)
    node.train(100)
    own, before = node.score(), node.get_state()
    random_state = MLP.build(seed=42).state_dict()
    assert node.score(random_state) < own - 0.3
    assert node.score(before) == own
    assert all(torch.equal(v, before[k]) for k, v in node.get_state().items())
    assert node.score_teacher(node.outputs) == own


def test_local_inputs_come_from_the_train_set(digits) -> None:
    node = _learner(digits, n_train=50)
    x = node.local_inputs(20)
    assert x.shape == (20, 64)
    rows = {tuple(r.tolist()) for r in node.x_train}
    assert all(tuple(r.tolist()) in rows for r in x)
    assert node.local_inputs(1000).shape == (50, 64)


def test_regression_task_scores_negative_mse() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(256, 3, generator=gen)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3
    torch.manual_seed(0)
    node = TorchSupervisedLearner(nn.Linear(3, 1), (x[:200], y[:200]), (x[200:], y[200:]), task="regression", lr=0.05)
    assert node.output_kind == "regression"
    before = node.score()
    node.train(300)
    assert before < node.score() <= 0.0 and node.score() > -1e-3
    assert node.evaluate(x[200:], y[200:]) == pytest.approx(node.score())


def test_clone_trains_independently(digits) -> None:
    node = _learner(digits)
    node.train(5)
    before = node.get_state()
    copy = node.clone()
    copy.train(20)
    copy.distil_from(lambda x: torch.zeros(len(x), 10), 5, "classification")
    assert all(torch.equal(v, before[k]) for k, v in node.get_state().items())
    assert not torch.equal(copy.get_state()["out.weight"], before["out.weight"])
    assert node.work_done == 5 * 32 and copy.work_done == 30 * 32


# --------------------------------------------------------------------------- logit adjustment


def test_logit_adjustment_stops_a_skewed_node_learning_its_own_prior(digits) -> None:
    """A node whose data is 9 parts class 0 to 1 part the rest learns, with the plain loss,
    to answer 0 for much of what it is unsure of; with the logit-adjusted loss its prior is
    explained away and it predicts class 0 far less often on balanced data."""
    data, train, val, test = digits
    labels = data.labels[train]
    zeros, others = train[labels == 0], train[labels != 0]
    skewed = np.concatenate([np.repeat(zeros, 9)[:270], others[:30]])
    share_of_zero = {}
    for tau in (0.0, 1.0):
        learner = TorchSupervisedLearner(MLP.build(1.0, seed=0), (data.inputs[skewed], data.labels[skewed]),
                                         (data.inputs[val], data.labels[val]), seed=0, logit_adjustment=tau)
        learner.train(150)
        with torch.no_grad():
            predicted = learner.outputs(torch.as_tensor(data.inputs[test])).argmax(dim=1)
        share_of_zero[tau] = float((predicted == 0).float().mean())
    assert share_of_zero[1.0] < 0.5 * share_of_zero[0.0], share_of_zero


def test_logit_adjustment_is_for_classification_only(digits) -> None:
    data, train, val, _ = digits
    x, y = data.inputs[train[:50]], data.inputs[train[:50], :1]
    with pytest.raises(ValueError, match="classification"):
        TorchSupervisedLearner(nn.Linear(64, 1), (x, y), (x, y), task="regression", logit_adjustment=1.0)
