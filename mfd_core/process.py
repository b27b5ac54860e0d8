"""The self-organising MFD node: no server, no global rounds.

Every node decides alone:

- **when** to share: when its own validation score rose by ``share_margin`` since it
  last shared, or when it has been silent for ``max_silence`` (so a saturated node
  still passes on what it knows), within a byte budget;
- **with whom**: the ``fanout`` neighbours that gain most, judged from what they
  report about themselves (score, samples, compute, memory) and the link to them
  (bandwidth, loss, latency);
- **what to accept**: every incoming model passes the gate (scored on the node's own
  validation data, refused if it would make the node worse), then is merged weighted
  by samples and score; a partial model merges only what arrived.

Two serverless patterns (DESIGN.md, property 4): :class:`MFDPolicy` — *owned models*
exchanged between peers — and :class:`TravellingPolicy` — models that visit data
holders hop by hop, are trained on each and are forwarded to the neighbour whose data
they have seen least. A node that joins pulls its neighbours' models to bootstrap; a
node that leaves takes nothing the others need with it.

:class:`Node` is the I/O every policy shares (send a model or a report, reassemble,
dispatch); policies are interchangeable objects behind :class:`SharingPolicy`, like
Flower's strategies, so that a scenario swaps one name.
"""
from __future__ import annotations

import math
from abc import ABC
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

import networkx as nx
import numpy as np
import torch

from . import codec, knowledge, scaling
from .packet import BROADCAST, NEIGHBOURS, PacketError
from .reassembly import Limits, Reassembler, ReceivedModel

if TYPE_CHECKING:  # the world is built by mfd_core.experiment
    from .experiment import World

# A datagram over a simulated edge link arrives within milliseconds; a message quiet for
# 2 s has lost fragments for good and is delivered as partial.
SIM_REASSEMBLY_TIMEOUT_S = 2.0
# After 0.3 s without a new fragment the receiver asks the origin for the fragments it
# lacks (selective repeat, as TCP SACK or QUIC do), at most 3 times: at 20% loss a
# request and its answer both arrive 64% of the time, so three rounds recover ~95% of
# what one would leave missing; a model is useful partial, so it does not wait forever.
RESEND_AFTER_S = 0.3
RESEND_ROUNDS = 3
# A sender keeps its last 16 model messages for such requests (~150 KB for the digits MLP at int8).
SENT_MEMORY = 16


@dataclass
class Report:
    """What a neighbour says about itself in its periodic hello (no data, only a profile)."""

    score: float
    samples: int
    compute: float
    memory: float
    family: str
    width: float
    version: int
    received: float  # simulated time the report arrived
    label_profile: tuple[float, ...] = ()  # class shares of its data (travelling models route on it)
    degree: int = 0  # how many neighbours it hears from: a node with few gets little


@dataclass
class NodeCounters:
    shares: int = 0
    accepted: int = 0
    refused: int = 0
    partial_merged: int = 0
    distilled: int = 0
    bootstraps: int = 0
    resent: int = 0


def _as_ranges(indices: list[int]) -> list[list[int]]:
    """[1, 2, 3, 7] -> [[1, 4], [7, 8]]: half-open ranges keep a resend request small."""
    out: list[list[int]] = []
    for i in indices:
        if out and out[-1][1] == i:
            out[-1][1] = i + 1
        else:
            out.append([i, i + 1])
    return out


class Node:
    """One learner attached to the network: its model I/O, reports and counters."""

    def __init__(self, node_id: int, learner, world: "World") -> None:
        self.id = node_id
        self.learner = learner
        self.world = world
        self.reassembler = Reassembler(limits=Limits(timeout_s=SIM_REASSEMBLY_TIMEOUT_S), key=world.key)
        self.version = 0
        self._message_id = 0
        self.reports: dict[int, Report] = {}
        self.counters = NodeCounters()
        self.last_share_score = -math.inf
        self.last_share_time = -math.inf
        self.bytes_sent = 0
        self._expiry_pending = False
        self._sent: OrderedDict[int, list] = OrderedDict()  # message id -> its datagrams
        self._asked: OrderedDict[tuple[int, int], int] = OrderedDict()  # requests made per message
        self.label_profile: tuple[float, ...] = ()
        # origin -> (state, masks, weight, arrival time): the latest gate-approved model of each peer
        self.neighbour_models: dict[int, tuple[dict, dict | None, float, float]] = {}
        self.neighbour_samples: dict[int, int] = {}  # origin -> the samples its cached model stands for
        # origin -> the latest model it sent, held until the node merges what a round brought
        # (policy setting merge_window > 0)
        self.held: dict[int, ReceivedModel] = {}
        self.joined_at = -math.inf  # simulated time of the last (re)join; -inf: there from the start
        world.net.attach(node_id, self._on_datagram)

    # -- sending --------------------------------------------------------------------

    def _next_message_id(self) -> int:
        self._message_id = (self._message_id + 1) & 0xFFFF
        return self._message_id

    def send_model(self, destination: int, *, state: Mapping[str, torch.Tensor] | None = None,
                   kind: str = "model", meta: Mapping[str, Any] | None = None,
                   precision: str | None = None, next_hop: int | None = None,
                   scaling: Mapping[str, Any] | None = None) -> int:
        """Send a model (the own one by default) as MFD packets; returns the bytes sent."""
        policy = self.world.settings
        state = self.learner.get_state() if state is None else state
        full_meta = {"kind": kind, "samples": self.learner.num_samples,
                     "family": self.learner.family, "width": self.learner.width, **(meta or {})}
        if self.world.policy.weighs_by_score:  # scoring costs a validation pass per send
            full_meta.setdefault("score", self.learner_score())
        message_id = self._next_message_id()
        datagrams = codec.to_datagrams(
            state, origin=self.id, destination=destination, model_version=self.version,
            message_id=message_id, mtu=policy.mtu, precision=precision or policy.precision,
            key=self.world.key, meta=full_meta,
            scaling=scaling or {"family": self.learner.family, "ratio": self.learner.width})
        self._sent[message_id] = datagrams
        while len(self._sent) > SENT_MEMORY:
            self._sent.popitem(last=False)
        return self._send(datagrams, next_hop=next_hop, kind="model")

    def send_control(self, destination: int, meta: Mapping[str, Any], next_hop: int | None = None,
                     ttl: int = 16) -> int:
        """A manifest-only message (hello, pull): no tensors, the same packets and checks.

        ``ttl``: forwards a ``BROADCAST`` may still take (0: the neighbours only).
        """
        datagrams = codec.to_datagrams({}, origin=self.id, destination=destination, model_version=self.version,
                                       message_id=self._next_message_id(), mtu=self.world.settings.mtu,
                                       key=self.world.key, meta=dict(meta), ttl=ttl)
        return self._send(datagrams, next_hop=next_hop, kind="control")

    def _send(self, datagrams, *, next_hop: int | None, kind: str) -> int:
        sent = 0
        for dgram in datagrams:
            self.world.net.send(self.id, dgram, next_hop=next_hop, kind=kind)
            sent += len(dgram)
        self.bytes_sent += sent
        return sent

    def hello(self) -> None:
        self.send_control(NEIGHBOURS, {
            "kind": "hello", "score": self.learner_score(), "samples": self.learner.num_samples,
            "compute": self.world.compute_of(self.id), "memory": self.world.memory_of(self.id),
            "family": self.learner.family, "width": self.learner.width, "version": self.version,
            "labels": list(self.label_profile), "degree": len(self.world.net.neighbours(self.id))})

    # -- receiving ------------------------------------------------------------------

    def _on_datagram(self, datagram, from_node: int) -> None:
        if not self.world.net.is_up(self.id):
            return
        opened = self.reassembler.open_messages
        now = self.world.env.now
        try:
            message = self.reassembler.receive(datagram, now)
        except PacketError:
            return  # counted in the reassembler's stats; nothing else to do
        if self.reassembler.open_messages > opened:
            self._schedule_expiry()
        if message is not None:
            self._dispatch(message, from_node)

    def _schedule_expiry(self) -> None:
        """One pending look at the open messages per node, however many are open."""
        if not self._expiry_pending:
            self._expiry_pending = True
            wait = RESEND_AFTER_S if self.world.settings.resend else SIM_REASSEMBLY_TIMEOUT_S
            self.world.env.timeout(wait + 1e-6).callbacks.append(self._expire)

    def _expire(self, _event=None) -> None:
        self._expiry_pending = False
        if not self.world.net.is_up(self.id):
            return
        now = self.world.env.now
        if self.world.settings.resend:
            for origin, message_id, missing in self.reassembler.quiet(now, RESEND_AFTER_S):
                asked = self._asked.get((origin, message_id), 0)
                if asked < RESEND_ROUNDS:
                    self._asked[(origin, message_id)] = asked + 1
                    while len(self._asked) > 4 * SENT_MEMORY:
                        self._asked.popitem(last=False)
                    self.send_control(origin, {"kind": "resend", "message_id": message_id,
                                               "fragments": _as_ranges(missing)})
        for message in self.reassembler.expire(now):
            self._dispatch(message, None)
        if self.reassembler.open_messages:
            self._schedule_expiry()  # still streaming: the timeout counts quiet time

    def _resend(self, requester: int, meta: Mapping[str, Any]) -> None:
        """Send again the fragments a receiver asked for, if the message is still kept."""
        datagrams = self._sent.get(int(meta.get("message_id", -1)))
        if datagrams is None:
            return
        wanted = []
        for pair in meta.get("fragments", [])[:len(datagrams)]:
            if isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, int) for v in pair):
                wanted.extend(range(max(0, pair[0]), min(pair[1], len(datagrams))))
        hop = requester if requester in self.world.net.neighbours(self.id) else None
        for index in wanted:
            self.world.net.send(self.id, datagrams[index], next_hop=hop, kind="model")
            self.bytes_sent += len(datagrams[index])
        self.counters.resent += len(wanted)

    def _dispatch(self, message: ReceivedModel, from_node: int | None) -> None:
        meta = message.manifest.meta
        kind = meta.get("kind")
        if kind == "resend":
            self._resend(message.origin, meta)
            return
        if kind == "hello":
            self.reports[message.origin] = Report(
                score=float(meta.get("score", 0.0)), samples=int(meta.get("samples", 0)),
                compute=float(meta.get("compute", 0.0)), memory=float(meta.get("memory", 0.0)),
                family=str(meta.get("family", "")), width=float(meta.get("width", 1.0)),
                version=int(meta.get("version", 0)), received=self.world.env.now,
                label_profile=tuple(float(v) for v in meta.get("labels", ())),
                degree=int(meta.get("degree", 0)))
            return
        self.world.policy.on_message(self, message, from_node)

    # -- the node's learner -----------------------------------------------------------

    def served_state(self) -> dict[str, torch.Tensor] | None:
        """The blend of the own model with the fresh cached neighbour models (None: serve the own).

        Entries older than ``serve_max_age`` are stale and left out; weights are the
        samples x score each model came with, the own model's likewise.
        """
        now = self.world.env.now
        max_age = self.world.settings.serve_max_age
        fresh = [(state, masks, weight) for state, masks, weight, t in self.neighbour_models.values()
                 if now - t <= max_age]
        if not fresh:
            return None
        own = self.learner.get_state()
        return knowledge.merge_same_family(
            own, [(state, weight) for state, _, weight in fresh], [masks for _, masks, _ in fresh],
            local_weight=self.merge_weight(self.learner.num_samples, self.learner_score))

    def served_samples(self) -> int:
        """The training samples behind :meth:`served_state`: the own ones and those of the
        fresh cached models (what a blend stands for when it is weighed against others)."""
        now, max_age = self.world.env.now, self.world.settings.serve_max_age
        return self.learner.num_samples + sum(
            self.neighbour_samples.get(origin, 0) for origin, (_, _, _, t) in self.neighbour_models.items()
            if now - t <= max_age)

    def bootstrapping(self) -> bool:
        """Back from an absence and nothing merged since: it knows only its stale model."""
        return not any(t >= self.joined_at for _, _, _, t in self.neighbour_models.values())

    def learner_score(self) -> float:
        return self.world.cached_score(self)

    def accept(self, message: ReceivedModel) -> knowledge.GateDecision:
        """Gate, then merge (same family) or distil (another architecture) an incoming model.

        A merged model is also kept, as the latest from its origin, in the node's
        neighbour cache: the node serves the blend of its own model and these
        (:meth:`served_state`), which is what local training has not yet pulled apart.
        """
        weight = self._merge_weight(message)
        outcome = self.world.absorb(self, message, weight=weight, tolerance=self.world.settings.gate_tolerance)
        self._record(message, weight, outcome)
        return outcome.decision

    def hold(self, message: ReceivedModel) -> None:
        """Keep a model until :meth:`accept_held` (the latest of each origin)."""
        kept = self.held.get(message.origin)
        if kept is None or message.model_version >= kept.model_version:
            self.held[message.origin] = message

    def accept_held(self) -> None:
        """Gate the held models, then merge those that pass in one average with the own.

        Merged one at a time, three models that arrive together weigh 1/2, 1/4 and 1/8
        (each merge halves what came before); merged together, each weighs by its samples
        and score. Averaging the fleet's models of one round is data-parallel learning:
        in the robots fleet (TD3+HER reach, 4 robots, every 25-50 env steps) the average
        reached 90 % success in 0.6-0.85x the env steps of a robot alone (2 seeds).
        """
        if not self.held:
            return
        messages = list(self.held.values())
        self.held.clear()
        weights = [self._merge_weight(m) for m in messages]
        outcomes = self.world.absorb_all(self, messages, weights=weights, tolerance=self.world.settings.gate_tolerance)
        for message, weight, outcome in zip(messages, weights, outcomes):
            self._record(message, weight, outcome)

    def _merge_weight(self, message: ReceivedModel) -> float:
        meta = message.manifest.meta
        return self.merge_weight(meta.get("samples", 1), lambda: meta.get("score", 0.5))

    def merge_weight(self, samples: float, score: Callable[[], float]) -> float:
        """What a model counts for in a merge (policy ``merge_weights``); ``score`` is
        asked only when it counts, since scoring an RL policy means running episodes."""
        if self.world.settings.merge_weights == "samples":
            return float(samples)
        return float(samples) * max(float(score()), 1e-3)

    def _record(self, message: ReceivedModel, weight: float, outcome: knowledge.Outcome) -> None:
        decision = outcome.decision
        if outcome.action == "merged":
            self.neighbour_models[message.origin] = (message.state, message.masks, weight, self.world.env.now)
            self.neighbour_samples[message.origin] = int(message.manifest.meta.get("samples", 1))
        if decision.accepted:
            self.counters.accepted += 1
            if not message.complete:
                self.counters.partial_merged += 1
        else:
            self.counters.refused += 1
        self.world.log("gate", node=self.id, origin=message.origin, accepted=decision.accepted,
                       reason=decision.reason, partial=not message.complete)


class SharingPolicy(ABC):
    """How nodes share: isolated, FedAvg, gossip, MFD... one interface, swapped by name."""

    name: str = "policy"
    # averaging policies (FedAvg, gossip) need one architecture and width fleet-wide
    needs_one_architecture: bool = False
    # whether models carry their sender's validation score (MFD weighs merges by it)
    weighs_by_score: bool = True

    def start(self, world: "World") -> None:
        """Start the SimPy processes of every node (called once, before the run)."""
        self.world = world
        for node in world.nodes.values():
            world.env.process(self.node_loop(node))

    def node_loop(self, node: Node):
        """Default life of a node: train in chunks, and after each chunk, :meth:`after_training`."""
        world = self.world
        steps = world.local_steps
        while True:
            if not world.net.is_up(node.id):
                yield world.env.timeout(world.idle_poll)
                continue
            yield from world.train(node, steps)
            self.after_training(node)

    def after_training(self, node: Node) -> None:
        pass

    def on_message(self, node: Node, message: ReceivedModel, from_node: int | None) -> None:
        pass

    def on_join(self, node: Node) -> None:
        """A node came (back): by default it just carries on with what it has."""


class MFDPolicy(SharingPolicy):
    """Owned models: each node keeps its own and exchanges with chosen neighbours."""

    name = "mfd"

    def start(self, world: "World") -> None:
        super().start(world)
        for node in world.nodes.values():
            world.env.process(self._hello_loop(node))

    def _hello_loop(self, node: Node):
        world = self.world
        interval = world.settings.hello_interval
        # stagger the first hellos so a fleet does not speak all at once
        yield world.env.timeout(float(world.rng.uniform(0, min(interval, 0.5))))
        while True:
            if world.net.is_up(node.id):
                node.hello()
            yield world.env.timeout(interval)

    def after_training(self, node: Node) -> None:
        policy = self.world.settings
        now = self.world.env.now
        score = node.learner_score()
        improved = score >= node.last_share_score + policy.share_margin
        silent = now - node.last_share_time >= policy.max_silence
        if not (improved or silent):
            return
        if policy.byte_budget and node.bytes_sent > policy.byte_budget * max(now, 1e-9):
            return
        targets = self.choose_targets(node, policy.fanout)
        if not targets:
            return
        for target in targets:
            state, precision, fitted = self.fit_to_receiver(node, target)
            node.send_model(target, state=state, precision=precision, scaling=fitted)
        node.counters.shares += 1
        node.last_share_score, node.last_share_time = score, now

    def choose_targets(self, node: Node, fanout: int) -> list[int]:
        """Neighbours that gain most per byte: a weaker reported score, a good link.

        Neighbours not yet heard from count as needing help (score 0) so a fleet starts
        mixing before the first reports arrive.
        """
        world = self.world
        neighbours = world.net.neighbours(node.id)
        if not neighbours:
            return []
        hops = world.settings.share_hops
        if hops > 1:
            # a small fleet on a chain of links: a neighbourhood average mixes the fleet
            # only over several rounds; reaching further, one round does
            reach = nx.single_source_shortest_path_length(world.graph, node.id, cutoff=hops)
            neighbours = sorted(n for n, d in reach.items() if d > 0 and world.net.is_up(n)
                                and world.net.route(node.id, n))
        own = node.learner_score()
        scored = []
        for nbr in neighbours:
            report = node.reports.get(nbr)
            their = report.score if report is not None else 0.0
            link = self._first_link(node, nbr)
            quality = link["bandwidth"] * (1.0 - link["loss"]) / (1.0 + 100.0 * link["latency"])
            need = 1.0 + max(0.0, own - their)
            if report is not None and report.degree and self.world.settings.favour_isolated:
                # a neighbour with few neighbours of its own has few other sources
                need *= 1.0 + 2.0 / report.degree
            # a little noise so equal neighbours take turns
            scored.append((need * quality * float(world.rng.uniform(0.5, 1.0)), nbr))
        scored.sort(reverse=True)
        if world.settings.echo_window > 0:
            # a neighbour whose model this node merged a moment ago holds most of what it
            # would get back; the others go first (a stable sort keeps each group's order)
            now = world.env.now
            heard = {origin for origin, (_, _, _, t) in node.neighbour_models.items()
                     if now - t <= world.settings.echo_window}
            scored.sort(key=lambda pair: pair[1] in heard)
        return [nbr for _, nbr in scored[:fanout]]

    def fit_to_receiver(self, node: Node, target: int, state: Mapping[str, torch.Tensor] | None = None
                        ) -> tuple[dict, str, dict]:
        """The largest model the receiver can use, at the precision its link deserves.

        Width: a receiver of the same family that reported a narrower width gets the
        sub-model of its width (HeteroFL: the first ceil(r*C) units of each hidden
        layer), cut down further while its reported memory cannot train it. Precision:
        the scenario's, or with ``auto`` chosen from the link's rate and loss. A node
        that trains only some layers (``activated`` < 1) sends only those.
        """
        world, settings = self.world, self.world.settings
        report = node.reports.get(target)
        link = self._first_link(node, target)
        family = world.families.get(node.learner.family)
        ratio = node.learner.width
        if report is not None and report.family == node.learner.family:
            ratio = min(ratio, report.width)
        if family is not None and report is not None and report.memory > 0:
            # Adam training holds weights, gradients and two moments: 16 bytes a parameter
            while ratio > 0.125 and scaling.param_count(family, ratio) * 16 > report.memory:
                ratio /= 2
        state = dict(state) if state is not None else node.learner.get_state()
        if ratio < node.learner.width and family is not None:
            state = scaling.extract(state, family.shapes(ratio))
        trained = world.trainable(node)
        if trained is not None:
            state = {name: value for name, value in state.items() if name in trained}
        precision = settings.precision
        if precision == "auto":
            precision = scaling.choose_precision(scaling.ReceiverProfile(
                memory_bytes=int(report.memory) if report and report.memory else 1 << 30,
                compute_flops=1.0, link_bandwidth=link["bandwidth"], link_loss=min(link["loss"], 0.999)))
        return state, precision, {"family": node.learner.family, "ratio": ratio}

    def _first_link(self, node: Node, target: int) -> Mapping[str, float]:
        """The link a message to ``target`` leaves on: to it, or to the first hop of the
        route (a joiner two hops out asks by a wider pull); a lossless default if none."""
        net = self.world.net
        if target in net.neighbours(node.id):
            return net.link(node.id, target)
        path = net.route(node.id, target)
        if path and len(path) > 1:
            return net.link(node.id, path[1])
        return {"bandwidth": 1.0, "loss": 0.0, "latency": 0.0}

    def on_message(self, node: Node, message: ReceivedModel, from_node: int | None) -> None:
        kind = message.manifest.meta.get("kind")
        if kind == "pull":
            if node.joined_at > -math.inf and node.bootstrapping():
                return  # back itself and nothing fresh yet: its stale model would not help
            # a node (re)joining gets the best this node has: what it serves, its
            # neighbourhood's blend, not only its own model, weighed by all the samples
            # behind it, so that the joiner's stale model counts for its own samples only
            state, precision, fitted = self.fit_to_receiver(node, message.origin, node.served_state())
            node.send_model(message.origin, state=state, precision=precision, scaling=fitted,
                            meta={"samples": node.served_samples()})
        elif kind == "model":
            if node.world.settings.merge_window > 0:
                node.hold(message)
            else:
                node.accept(message)

    def node_loop(self, node: Node):
        """With ``merge_window`` > 0, rounds: merge what the last round brought, train a
        chunk, share, then listen ``merge_window`` seconds for the neighbours' models of
        this round (models of one round average well; one a chunk older pulls the node
        back by that chunk). Without, the default loop: each model merged as it arrives."""
        world = self.world
        window = world.settings.merge_window
        if window <= 0:
            yield from super().node_loop(node)
            return
        while True:
            if not world.net.is_up(node.id):
                yield world.env.timeout(world.idle_poll)
                continue
            node.accept_held()
            yield from world.train(node, world.local_steps)
            self.after_training(node)
            yield world.env.timeout(window)

    def on_join(self, node: Node) -> None:
        """Bootstrap: ask for the current models around; the gate picks what helps.

        Those asked answer with what they serve (their neighbourhood's blend). The ask
        goes ``bootstrap_hops`` out, and at least two hops from a node with fewer
        neighbours than it would send to (``fanout``), as an expanding-ring search does
        for routes: one neighbourhood is a narrow view of the fleet (in the digits fleet,
        rejoiners that bootstrapped from their neighbours alone often stayed below the
        fleet's median; from three hops out nearly all reached it within a second).
        """
        node.counters.bootstraps += 1
        node.joined_at = self.world.env.now
        node.last_share_score = -math.inf
        hops = self.world.settings.bootstrap_hops
        if len(self.world.net.neighbours(node.id)) < self.world.settings.fanout:
            hops = max(hops, 2)
        if hops > 1:
            node.send_control(BROADCAST, {"kind": "pull"}, ttl=hops - 1)  # forwarded hops - 1 times
        else:
            node.send_control(NEIGHBOURS, {"kind": "pull"})
        node.hello()


class TravellingPolicy(MFDPolicy):
    """Travelling models: a model visits data holders hop by hop, trained on each.

    Each traveller carries in its manifest the class shares of the data it has been
    trained on; the holder forwards it to the neighbour whose reported data profile
    adds most of what the traveller has seen least, over a usable link. Every holder
    also gates the visiting model against its own and keeps what helps.
    """

    name = "mfd-travel"

    def start(self, world: "World") -> None:
        super().start(world)
        order = list(world.nodes)
        world.rng.shuffle(order)
        for i, node_id in enumerate(order[: world.settings.travellers]):
            node = world.nodes[node_id]
            world.env.process(self._launch(node, traveller=i))

    def _launch(self, node: Node, traveller: int):
        yield self.world.env.timeout(self.world.settings.hello_interval + 0.01 * traveller)
        self._forward(node, node.learner.get_state(), {"traveller": traveller, "seen": [], "visits": 0})

    def after_training(self, node: Node) -> None:
        pass  # owned models are not pushed; the travellers carry knowledge

    def on_message(self, node: Node, message: ReceivedModel, from_node: int | None) -> None:
        kind = message.manifest.meta.get("kind")
        if kind == "pull":
            node.send_model(message.origin)
        elif kind == "model":
            node.accept(message)
        elif kind == "travel":
            self.world.env.process(self._visit(node, message))

    def _visit(self, node: Node, message: ReceivedModel):
        world = self.world
        meta = dict(message.manifest.meta)
        node.accept(message)  # the holder keeps what helps it
        visitor = world.visiting_learner(node, message)
        if visitor is None:
            return
        yield from world.train(node, world.local_steps, learner=visitor)
        seen = np.asarray(meta.get("seen") or [0.0] * len(node.label_profile), dtype=float)
        if len(seen) == len(node.label_profile):
            seen = seen + np.asarray(node.label_profile) * node.learner.num_samples
        meta.update(seen=[float(v) for v in seen], visits=int(meta.get("visits", 0)) + 1)
        if world.net.is_up(node.id):
            self._forward(node, visitor.get_state(), meta)

    def _forward(self, node: Node, state, meta: dict) -> None:
        world = self.world
        neighbours = world.net.neighbours(node.id)
        if not neighbours:
            return
        seen = np.asarray(meta.get("seen") or [], dtype=float)
        best, best_gain = None, -math.inf
        for nbr in neighbours:
            report = node.reports.get(nbr)
            profile = np.asarray(report.label_profile if report else (), dtype=float)
            if len(profile) and len(profile) == len(seen) and seen.sum() > 0:
                # the classes this traveller has seen least, weighted by what nbr holds
                gain = float(profile @ (1.0 / (1.0 + seen / seen.sum() * len(seen))))
            else:
                gain = 1.0
            link = world.net.link(node.id, nbr)
            gain *= (1.0 - link["loss"]) * float(world.rng.uniform(0.8, 1.0))
            if gain > best_gain:
                best, best_gain = nbr, gain
        node.send_model(best, state=state, kind="travel", meta=meta)
