"""The world of a supervised scenario file: its topology, a split of its dataset over the
nodes, one torch model per node (all from one initialisation), a held-out test set.

:func:`topology_of` is the scenario's overlay (what a network driver is built on);
:func:`build_world` hosts, on a driver it is handed, the nodes that driver hosts.
"""
from __future__ import annotations

import importlib
import math

import networkx as nx
import numpy as np
import torch
from torch import nn

from ..datasets import Dataset, class_counts, dirichlet_split, load_digits, train_val_test_split
from ..learners.base import Learner
from ..learners.torch_supervised import TorchSupervisedLearner
from ..network.base import Network
from ..network.sim import SimNetwork
from ..network.topology import build_topology
from ..process import SharingPolicy
from ..scaling import MLPFamily, ModelFamily, SmallCNNFamily
from ..scenario import Scenario
from .world import World


def topology_of(scenario: Scenario, seed: int) -> nx.Graph:
    """The scenario's overlay graph for ``seed`` (random topologies draw from it)."""
    t = scenario.topology
    link = {"bandwidth": t.bandwidth, "latency": t.latency, "loss": t.loss, "corruption": t.corruption,
            "compute": t.compute, "memory": t.memory}
    if t.kind == "random_geometric":
        return build_topology("random_geometric", n=t.nodes, radius=t.radius, seed=seed, degrade=t.degrade, **link)
    if t.kind == "grid":
        rows = t.rows or max(1, int(math.sqrt(t.nodes)))
        if t.nodes % rows:
            raise ValueError(f"topology.rows: {rows} does not divide {t.nodes} nodes")
        return build_topology("grid", rows=rows, cols=t.nodes // rows, **link)
    if t.kind == "small_world":
        return build_topology("small_world", n=t.nodes, k=t.k, p=t.p, seed=seed, **link)
    if t.kind == "hierarchy":
        return build_topology("hierarchy", devices=t.nodes - t.edges - 1, edges=t.edges, **link)
    return build_topology(t.kind, n=t.nodes, **link)


def _hook(spec: str, what: str):
    module_name, _, attribute = spec.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"{what} {spec!r} cannot be imported: {err}") from None


def load_dataset(name: str) -> Dataset:
    """The scenario's data: the bundled digits, or what a ``package.module:function``
    hook returns (a :class:`~mfd_core.datasets.Dataset`, or ``(inputs, labels)`` arrays:
    float features of shape ``(n, features)`` and integer labels ``0..classes-1``)."""
    if name == "digits":
        return load_digits()
    made = _hook(name, "data.dataset")()
    if isinstance(made, Dataset):
        inputs, labels = made.inputs, made.labels
    elif isinstance(made, tuple) and len(made) == 2:
        inputs, labels = made
    else:
        raise ValueError(f"data.dataset {name!r} returned {type(made).__name__}; expected a Dataset or "
                         "(inputs, labels)")
    inputs = np.asarray(inputs, dtype=np.float32)
    labels = np.asarray(labels)
    if inputs.ndim != 2 or labels.ndim != 1 or len(inputs) != len(labels) or not len(labels):
        raise ValueError(f"data.dataset {name!r}: inputs must be (n, features) and labels (n,), got "
                         f"{inputs.shape} and {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise ValueError(f"data.dataset {name!r}: labels must be integers 0..classes-1")
    if isinstance(made, Dataset):
        return Dataset(inputs, labels.astype(np.int64), made.image_shape, made.num_classes)
    return Dataset(inputs, labels.astype(np.int64), (1, 1, inputs.shape[1]), int(labels.max()) + 1)


def dataset_size(name: str) -> int:
    """How many samples the scenario's data has (to check a fleet is not larger than it)."""
    return 1797 if name == "digits" else len(load_dataset(name))


class HookFamily(ModelFamily):
    """A user's own model (``learner.kind = "package.module:function"``): one width only."""

    def __init__(self, spec: str, features: int, classes: int) -> None:
        self.name, self._make_model = spec, _hook(spec, "learner.kind")
        self.features, self.classes, self.input_shape = features, classes, (features,)

    def _make(self, ratio: float) -> nn.Module:
        if ratio != 1.0:
            raise ValueError(f"{self.name} is a model of its own: it has one width")
        model = self._make_model(self.features, self.classes)
        if not isinstance(model, nn.Module):
            raise ValueError(f"learner.kind {self.name!r} returned {type(model).__name__}, not a torch.nn.Module")
        return model


def build_world(scenario: Scenario, seed: int, network: Network | None = None, *, key: bytes | None = None,
                policy: SharingPolicy | None = None) -> World:
    """The world of a digits scenario on ``network`` (default: the simulator on the
    scenario's topology): a Dirichlet split of the bundled digits over the nodes, one
    model per hosted node, the held-out global test set for the measurements.

    :param policy: a policy object to run instead of the scenario's own.
    """
    s = scenario
    if network is None:
        network = SimNetwork(topology_of(s, seed), seed=seed)
    graph = network.graph
    data = load_dataset(s.data.dataset)
    features, num_classes = data.inputs.shape[1], data.num_classes
    families: dict[str, ModelFamily] = {"mlp": MLPFamily(features, s.learner.hidden, num_classes, name="mlp")}
    if data.image_shape == (1, 8, 8):  # the small CNN reads 8x8 images
        families["cnn"] = SmallCNNFamily(out_dim=num_classes, name="cnn")
    if ":" in s.learner.kind:
        families[s.learner.kind] = HookFamily(s.learner.kind, features, num_classes)
    missing = {s.learner.kind, *s.learner.kinds} - set(families)
    if missing:
        raise ValueError(f"learner.kind: {sorted(missing)} cannot read {s.data.dataset} inputs "
                         f"(images of {data.image_shape}); use mlp")
    pool, _, test = train_val_test_split(len(data), val_fraction=0.0, test_fraction=s.data.test_fraction, seed=seed)
    test_x, test_y = torch.from_numpy(data.inputs[test]), torch.from_numpy(data.labels[test])
    nodes = sorted(graph.nodes)
    if s.data.split == "dirichlet":
        parts = dirichlet_split(data.labels[pool], len(nodes), s.data.alpha, seed=seed)
    else:
        parts = np.array_split(np.random.default_rng(seed).permutation(len(pool)), len(nodes))
    counts = class_counts(data.labels[pool], [np.asarray(p) for p in parts], num_classes)
    learners: dict[int, Learner] = {}
    profiles: dict[int, list[float]] = {}
    for k, (node_id, part) in enumerate(zip(nodes, parts)):
        attrs = graph.nodes[node_id]
        # capacity tiers and architectures are dealt round-robin over the node ids
        if s.learner.widths:
            attrs["width"] = s.learner.widths[node_id % len(s.learner.widths)]
        if s.learner.kinds:
            attrs["family"] = s.learner.kinds[node_id % len(s.learner.kinds)]
        if s.learner.activated:
            attrs["activated"] = s.learner.activated[node_id % len(s.learner.activated)]
        total = counts[k].sum()
        profiles[node_id] = [float(c) / total for c in counts[k]] if total else []
        if not network.hosts(node_id):
            continue
        idx = pool[np.asarray(part)]
        train, val, _ = train_val_test_split(idx, val_fraction=s.data.val_fraction, test_fraction=0.0,
                                             seed=seed * 1000 + k)
        kind = attrs.get("family") or s.learner.kind
        width = float(attrs.get("width", s.learner.width))
        # One initialisation for the fleet (the family's seed): averaging models that
        # started apart mixes unrelated features (McMahan et al. 2017, fig. 1).
        model = families[kind].build(width, seed=seed)
        # ordered dropout over the fleet's narrower widths: what this node sends a
        # narrower neighbour is then a model that works on its own (none in a one-width fleet)
        nested = [families[kind].shapes(r) for r in sorted(set(s.learner.widths)) if r < width] \
            if s.learner.ordered_dropout else []
        learners[node_id] = TorchSupervisedLearner(
            model, (data.inputs[train], data.labels[train]), (data.inputs[val], data.labels[val]),
            batch_size=s.learner.batch_size, lr=s.learner.lr, seed=seed * 1000 + k, family=kind, width=width,
            nested_shapes=nested, logit_adjustment=s.learner.logit_adjustment,
            width_lr_exponent=s.learner.width_lr_exponent)
    return World(network, learners, policy=policy or s.policy.make(), transport=s.policy.transport,
                 seed=seed, duration=s.duration, eval_interval=s.eval_interval, local_steps=s.learner.local_steps,
                 evaluate=lambda _node, learner: learner.evaluate(test_x, test_y), families=families,
                 faults=s.faults, name=s.name, key=key, label_profiles=profiles, node_ids=nodes)
