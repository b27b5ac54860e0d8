"""One run: a scenario's world (network, nodes, data, learners) under one sharing policy.

The harness is the same for every policy, so a comparison swaps one name and keeps
the topology, the data split, the initial models, the faults and the seed.
Simulated time is charged for the work a learner does (samples / node speed) and
for every byte on every link (the network driver); the clock is SimPy's.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import networkx as nx
import numpy as np
import torch

from . import knowledge
from .datasets import class_counts, dirichlet_split, load_digits, train_val_test_split
from .learners.base import Learner
from .learners.torch_supervised import TorchSupervisedLearner
from .metrics import RunResult
from .network.sim import SimNetwork
from .network.topology import build_topology
from .process import MFDPolicy, Node, SharingPolicy, TravellingPolicy
from .scaling import MLPFamily, ModelFamily, SmallCNNFamily, activated_parameters
from .scenario import Fault, Scenario
from .scenario import Policy as PolicySettings


def policy_by_name(name: str) -> SharingPolicy:
    from .baselines import FedAvgPolicy, GossipPolicy, IsolatedPolicy

    table: dict[str, type[SharingPolicy]] = {
        "isolated": IsolatedPolicy, "fedavg": FedAvgPolicy, "gossip": GossipPolicy,
        "mfd": MFDPolicy, "mfd-travel": TravellingPolicy,
    }
    if name not in table:
        raise ValueError(f"unknown policy {name!r}; choose from {', '.join(table)}")
    return table[name]()


def check_policy(scenario: Scenario, name: str) -> str | None:
    """Why ``name`` cannot run ``scenario`` (None: it can), before anything is built."""
    policy = policy_by_name(name)
    mixed = len(set(scenario.learner.widths)) > 1 or len(set(scenario.learner.kinds)) > 1
    if policy.needs_one_architecture and mixed:
        return (f"policy {name} averages one architecture, but scenario {scenario.name!r} deals several "
                f"widths/kinds over its nodes (mfd fits models to each receiver; isolated needs nothing)")
    return None


def _topology(s: Scenario, seed: int) -> nx.Graph:
    t = s.topology
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


class World:
    """Everything a run holds: the clock, the network, the nodes, the record.

    Generic over tasks: it takes a graph and one :class:`~mfd_core.learners.base.Learner`
    per learning node, and ``evaluate(node_id, learner) -> float`` for the measurements
    (a held-out test set, evaluation episodes...). :func:`build_world` makes the world
    of a digits scenario; the apps make theirs from their environments.

    :param settings: the sharing policy's settings (:class:`mfd_core.scenario.Policy`).
    :param local_steps: minibatch (or environment) steps per training chunk.
    :param families: model families by name, to build teachers of other architectures.
    :param faults: :class:`mfd_core.scenario.Fault` entries, in fractions of ``duration``.
    """

    idle_poll = 0.5  # simulated seconds between checks of a node that is away

    def __init__(self, graph: nx.Graph, learners: Mapping[int, Learner], *, settings: PolicySettings,
                 seed: int, duration: float, eval_interval: float, local_steps: int,
                 evaluate: Callable[[int, Learner], float], families: Mapping[str, ModelFamily] | None = None,
                 faults: Sequence[Fault] = (), name: str = "run", key: bytes | None = None,
                 label_profiles: Mapping[int, Sequence[float]] | None = None,
                 policy: SharingPolicy | None = None) -> None:
        self.graph, self.settings, self.seed, self.key = graph, settings, seed, key
        self.duration, self.eval_interval, self.local_steps = duration, eval_interval, local_steps
        self.faults, self.evaluate = tuple(faults), evaluate
        self.rng = np.random.default_rng(seed)
        self.net = SimNetwork(graph, seed=seed)
        self.env = self.net.env
        for fault in self.faults:  # a node whose first appearance is a node_join is not there before it
            for n in fault.nodes if fault.kind == "node_join" else ():
                if not any(f.kind == "node_leave" and n in f.nodes and f.at < fault.at for f in self.faults):
                    self.net.leave(n)
        self.policy = policy or policy_by_name(settings.name)
        self.families: dict[str, ModelFamily] = dict(families or {})
        self._scores: dict[int, tuple[int, float]] = {}
        self._debt: dict[int, int] = {}
        self._trainable: dict[int, list[str]] = {}
        self.nodes: dict[int, Node] = {}
        for node_id, learner in learners.items():
            node = Node(node_id, learner, self)
            node.label_profile = tuple((label_profiles or {}).get(node_id, ()))
            self.nodes[node_id] = node
        self.result = RunResult(name, self.policy.name, seed, sorted(self.nodes))
        self._progress: Callable[[float], None] | None = None

    # -- services for the policies ------------------------------------------------------

    def compute_of(self, node_id: int) -> float:
        return float(self.graph.nodes[node_id].get("compute", 1.0))

    def memory_of(self, node_id: int) -> float:
        return float(self.graph.nodes[node_id].get("memory", 0.0))

    def trainable(self, node: Node) -> list[str] | None:
        """The parameters a low-compute node trains (graph attribute ``activated`` < 1), or None: all."""
        fraction = float(self.graph.nodes[node.id].get("activated", 1.0))
        if fraction >= 1.0:
            return None
        if node.id not in self._trainable:
            self._trainable[node.id] = activated_parameters(node.learner.get_state(), fraction)
        return self._trainable[node.id]

    def train(self, node: Node, steps: int, learner=None) -> Iterator:
        """Train ``steps`` minibatches and spend the simulated time that work costs."""
        learner = learner or node.learner
        work = learner.train(steps, trainable=self.trainable(node)) + self._debt.pop(node.id, 0)
        if learner is node.learner:
            # the node has changed already: a model that arrives while the chunk's time
            # passes is gated against the trained learner, not the score from before
            self.invalidate_score(node)
        yield self.net.compute(node.id, work)
        if learner is node.learner:
            node.version += 1
            self.invalidate_score(node)

    def charge(self, node: Node, work: int) -> None:
        """Work done outside a training chunk (gate trials, distillation): paid with the next chunk."""
        self._debt[node.id] = self._debt.get(node.id, 0) + int(work)

    def cached_score(self, node: Node) -> float:
        cached = self._scores.get(node.id)
        if cached is None or cached[0] != node.version:
            cached = (node.version, node.learner.score())
            self._scores[node.id] = cached
        return cached[1]

    def invalidate_score(self, node: Node) -> None:
        self._scores.pop(node.id, None)

    def absorb(self, node: Node, message, *, weight: float, tolerance: float) -> knowledge.Outcome:
        return self.absorb_all(node, [message], weights=[weight], tolerance=tolerance)[0]

    def absorb_all(self, node: Node, messages: Sequence[Any], *, weights: Sequence[float],
                   tolerance: float) -> list[knowledge.Outcome]:
        """Gate the models together and merge (or distil) those that pass; one outcome each."""
        incoming = []
        for message, weight in zip(messages, weights):
            scaling = message.manifest.scaling
            incoming.append(knowledge.IncomingModel(
                family=str(scaling.get("family", node.learner.family)), state=message.state, weight=weight,
                ratio=float(scaling.get("ratio", 1.0)), masks=message.masks, origin=message.origin))
        local_score = self.cached_score(node)
        local_weight = node.merge_weight(node.learner.num_samples, lambda: local_score)
        result = knowledge.absorb_knowledge(node.learner, incoming, gate=knowledge.Gate(tolerance),
                                            families=self.families, local_weight=local_weight,
                                            local_score=local_score)
        if result.work:
            self.charge(node, result.work)
        node.counters.distilled += sum(o.action == "distilled" for o in result.outcomes)
        if result.accepted:
            node.version += 1
            # what is installed scored this on the node's own validation data in the gate
            self._scores[node.id] = (node.version, result.score_after)
        return result.outcomes

    def visiting_learner(self, node: Node, message):
        """A copy of the node's learner holding a visiting model (same family and width), or None.

        A traveller that lost fragments on the way takes the holder's values in the lost
        ranges and travels on: lost packets cost only the ranges they carried.
        """
        scaling = message.manifest.scaling
        if scaling.get("family") != node.learner.family or float(scaling.get("ratio", 1.0)) != node.learner.width:
            return None
        visitor = node.learner.clone()
        visitor.set_state(message.state, message.masks)
        return visitor

    def log(self, kind: str, **fields: Any) -> None:
        self.result.events.append({"t": round(self.env.now, 6), "event": kind, **fields})

    # -- faults -------------------------------------------------------------------------

    def _schedule_faults(self) -> None:
        # Faults draw from their own generator: policies draw from self.rng as they start,
        # and a comparison must lose the same nodes under every policy.
        fault_rng = np.random.default_rng([self.seed, 1])
        for fault in self.faults:
            at = fault.at * self.duration
            nodes = list(fault.nodes)
            if fault.kind == "server_down":
                nodes = [getattr(self.policy, "server", None)]
                nodes = [n for n in nodes if n is not None]
            if fault.kind == "node_leave" and not nodes and fault.fraction:
                # the same count and order under every policy; FedAvg's server (whose loss is
                # server_down) is passed over for the next in line
                server = getattr(self.policy, "server", None)
                order = [int(n) for n in fault_rng.permutation(sorted(self.nodes)) if n != server]
                nodes = sorted(order[:max(1, round(fault.fraction * len(self.nodes)))])
            if fault.kind in ("server_down", "node_leave"):
                for n in nodes:
                    self.net.schedule_leave(n, at)
                    if fault.rejoin_at is not None:
                        self.net.schedule_join(n, fault.rejoin_at * self.duration)
                self.result.extra.setdefault("faults", []).append(
                    {"kind": fault.kind, "at": at, "nodes": nodes,
                     "rejoin_at": None if fault.rejoin_at is None else fault.rejoin_at * self.duration})
            elif fault.kind == "node_join":
                for n in nodes:
                    self.net.schedule_join(n, at)
            elif fault.kind == "link_down":
                self.net.schedule_link_down(*fault.link, at)
            elif fault.kind == "link_up":
                self.net.schedule_link_up(*fault.link, at)
            elif fault.kind == "loss":
                self.env.process(self._set_loss(at, float(fault.value)))

    def _set_loss(self, at: float, value: float):
        yield self.env.timeout(at)
        for u, v in list(self.graph.edges):
            self.net.set_link(u, v, loss=value)
        self.log("loss", value=value)

    def _on_change(self, change: Any) -> None:
        kind = change.get("kind") if isinstance(change, dict) else getattr(change, "kind", None)
        node = change.get("node") if isinstance(change, dict) else getattr(change, "node", None)
        self.log(str(kind), node=node)
        if kind == "join" and node in self.nodes:
            self.policy.on_join(self.nodes[node])

    # -- running ----------------------------------------------------------------------

    def _measure(self):
        interval = self.eval_interval
        while True:
            scores = self._scores_now()
            self.result.record(self.env.now, scores, self.net.stats())
            if self._progress:
                self._progress(self.env.now)
            yield self.env.timeout(interval)

    def run(self, progress: Callable[[float], None] | None = None) -> RunResult:
        self._progress = progress
        started = time.perf_counter()
        # The models of a simulated fleet are tiny: torch's intra-op threads cost more
        # than they give (a 64-64-10 MLP step: 1.2 ms with 2 threads, 0.3 ms with 1, here).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._run(started)
        finally:
            torch.set_num_threads(threads)

    def _run(self, started: float) -> RunResult:
        self.net.on_change(self._on_change)
        self.policy.start(self)
        self._schedule_faults()
        self.env.process(self._measure())
        self.net.run(until=self.duration + 1e-9)
        if not self.result.times or self.result.times[-1] < self.duration - 1e-9:
            self.result.record(self.env.now, self._scores_now(), self.net.stats())
        self.result.wall_seconds = time.perf_counter() - started
        self.result.extra.update(self._counters())
        return self.result

    def _scores_now(self) -> list[float]:
        # a node that is away serves nothing: NaN, a gap in its curve, left out of means
        return [self._score_served(self.nodes[n]) if self.net.is_up(n) else math.nan for n in self.result.node_ids]

    def _score_served(self, node: Node) -> float:
        """Score the model the node serves: its own, or its neighbourhood blend (MFD)."""
        served = node.served_state() if self.settings.serve_blend else None
        if served is None:
            return self.evaluate(node.id, node.learner)
        own = node.learner.get_state()
        node.learner.set_state(served)
        try:
            return self.evaluate(node.id, node.learner)
        finally:
            node.learner.set_state(own)

    def _counters(self) -> dict[str, Any]:
        totals: dict[str, int] = {}
        for node in self.nodes.values():
            for name, value in vars(node.counters).items():
                totals[name] = totals.get(name, 0) + value
            for name, value in node.reassembler.stats.items():
                totals[f"rx_{name}"] = totals.get(f"rx_{name}", 0) + value
        return totals


def build_world(scenario: Scenario, seed: int, *, key: bytes | None = None,
                policy: SharingPolicy | None = None) -> World:
    """The world of a digits scenario: its topology, a Dirichlet split of the bundled
    digits over the nodes, one model per node (all from one initialisation), and the
    held-out global test set for the measurements."""
    s = scenario
    graph = _topology(s, seed)
    data = load_digits()
    features, num_classes = data.inputs.shape[1], data.num_classes
    families: dict[str, ModelFamily] = {
        "mlp": MLPFamily(features, s.learner.hidden, num_classes, name="mlp"),
        "cnn": SmallCNNFamily(out_dim=num_classes, name="cnn"),
    }
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
        idx = pool[np.asarray(part)]
        train, val, _ = train_val_test_split(idx, val_fraction=s.data.val_fraction, test_fraction=0.0,
                                             seed=seed * 1000 + k)
        attrs = graph.nodes[node_id]
        # capacity tiers and architectures are dealt round-robin over the node ids
        if s.learner.widths:
            attrs["width"] = s.learner.widths[node_id % len(s.learner.widths)]
        if s.learner.kinds:
            attrs["family"] = s.learner.kinds[node_id % len(s.learner.kinds)]
        if s.learner.activated:
            attrs["activated"] = s.learner.activated[node_id % len(s.learner.activated)]
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
        total = counts[k].sum()
        profiles[node_id] = [float(c) / total for c in counts[k]] if total else []
    return World(graph, learners, settings=s.policy, seed=seed, duration=s.duration,
                 eval_interval=s.eval_interval, local_steps=s.learner.local_steps,
                 evaluate=lambda _node, learner: learner.evaluate(test_x, test_y), families=families,
                 faults=s.faults, name=s.name, key=key, label_profiles=profiles, policy=policy)


def run(scenario: Scenario, seed: int | None = None, policy: str | None = None,
        progress: Callable[[float], None] | None = None, key: bytes | None = None) -> RunResult:
    """Run ``scenario`` once (its first seed, and its own policy, unless given)."""
    if policy is not None and policy != scenario.policy.name:
        scenario = scenario.with_policy(policy)
    world = build_world(scenario, scenario.seeds[0] if seed is None else seed, key=key)
    return world.run(progress)
