"""One learner attached to the network: its model I/O, what it hears, and its learning.

A :class:`Node` is what every sharing policy works through. It sends models and
control messages as MFD packets, reassembles what arrives (asking the origin again for
lost fragments), decodes each message into a typed record (:mod:`mfd_core.messages`)
and hands it to its policy; it trains its learner on the network's clock, keeps its
own validation score cached by model version, and gates and merges (or distils)
incoming models.

It asks nothing of the run that built it but a :class:`NodeServices`: the network
driver, the wire settings, the key, the model families and a log. That narrow surface is
what lets the same node run in one simulated world, in its own OS process on a UDP
socket, or in a Ray actor.
"""
from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from .. import codec, knowledge
from .. import packet
from ..messages import Hello, MessageError, ModelHeader, Pull, Resend, decode, decode_control
from ..network.base import Network
from ..packet import NEIGHBOURS, PacketError
from ..reassembly import Limits, Reassembler, ReceivedControl, ReceivedModel
from ..scaling import ModelFamily, activated_parameters

if TYPE_CHECKING:
    from .base import SharingPolicy

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


class Transport(BaseModel):
    """How every node of a run talks, whatever its sharing policy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mtu: int = Field(1400, ge=256, le=65535)
    resend: bool = Field(True, description="a receiver asks the origin once for the fragments it lacks")


@dataclass(frozen=True)
class NodeServices:
    """All a node may ask of the run that hosts it.

    :param network: the driver the node sends and receives on; its ``env`` is the clock.
    :param transport: MTU and selective repeat.
    :param key: HMAC key the fleet signs its datagrams with (None: unsigned).
    :param families: model families by name (to build teachers of other architectures).
    :param log: ``log(kind, **fields)``: an event in the run's record.
    """

    network: Network
    transport: Transport = Transport()
    key: bytes | None = None
    families: Mapping[str, ModelFamily] = field(default_factory=dict)
    log: Callable[..., None] = lambda kind, **fields: None
    seed: int = 0  # each node draws from its own generator, seeded by (seed, node id)


@dataclass(slots=True)
class Report:
    """What a neighbour said about itself in its latest :class:`~mfd_core.messages.Hello`.

    A node keeps one per neighbour and updates it in place at every hello (a 1,000-node
    MFD hour hears 145,000): a new object each time outlived the collector's young
    generations, and the full collections it brought on walked them all again."""

    score: float
    samples: int
    compute: float
    memory: float
    family: str
    width: float
    version: int
    received: float  # time the report arrived
    label_profile: tuple[float, ...] = ()
    degree: int = 0

    @classmethod
    def from_hello(cls, hello: Hello, received: float) -> "Report":
        return cls(score=hello.score, samples=hello.samples, compute=hello.compute, memory=hello.memory,
                   family=hello.family, width=hello.width, version=hello.version, received=received,
                   label_profile=hello.labels, degree=hello.degree)

    def update(self, fields: tuple, received: float) -> None:
        """Say what a hello says (its fields, as :meth:`Hello.read` gives them), heard at ``received``."""
        (self.score, self.samples, self.compute, self.memory, self.family, self.width, self.version,
         self.label_profile, self.degree) = fields
        self.received = received


@dataclass
class NodeCounters:
    shares: int = 0
    accepted: int = 0
    refused: int = 0
    partial_merged: int = 0
    distilled: int = 0
    bootstraps: int = 0
    resent: int = 0
    malformed: int = 0  # messages whose records did not decode (a broken or hostile peer)


class Node:
    """One learner attached to the network.

    :param node_id: its id on the wire.
    :param learner: its model and its own data (:class:`~mfd_core.learners.base.Learner`).
    :param services: what it may ask of its runtime.
    :param policy: the sharing policy that decides what it does with what it hears.
    """

    def __init__(self, node_id: int, learner, services: NodeServices, policy: "SharingPolicy") -> None:
        self.id = node_id
        self.learner = learner
        self.services = services
        self.network = services.network
        self.policy = policy
        self.reassembler = Reassembler(limits=Limits(timeout_s=SIM_REASSEMBLY_TIMEOUT_S), key=services.key)
        self._version = 0
        # called when something a hello reports may have changed (see `news`)
        self.on_news: Callable[[], None] | None = None
        self._message_id = 0
        self.reports: dict[int, Report] = {}
        self.counters = NodeCounters()
        self.last_share_score = -math.inf
        self.last_share_time = -math.inf
        self.bytes_sent = 0
        self.label_profile: tuple[float, ...] = ()
        # origin -> (state, masks, weight, arrival time): the latest gate-approved model of each
        # peer (MFD keeps the state's tensors as numpy arrays: see MFDPolicy._cached_state)
        self.neighbour_models: dict[int, tuple[dict, dict | None, float, float]] = {}
        self.neighbour_samples: dict[int, int] = {}  # origin -> the samples its cached model stands for
        # origin -> the latest model it sent, held until the node merges what a round brought
        self.held: dict[int, ReceivedModel] = {}
        self.joined_at = -math.inf  # time of the last (re)join; -inf: there from the start
        self.heard_new_neighbour = False  # a neighbour it had no report of spoke since its last hello
        self._expiry_pending = False
        self._sent: OrderedDict[int, list] = OrderedDict()  # message id -> its datagrams
        self._asked: OrderedDict[tuple[int, int], int] = OrderedDict()  # requests made per message
        self._score: tuple[int, float] | None = None  # (model version, validation score)
        self._debt = 0  # work done outside training chunks, paid with the next one
        self._trainable: list[str] | None = None
        self._rng: np.random.Generator | None = None
        self._attrs = self.network.graph.nodes[node_id]  # its compute, memory, ... (a live view)
        self.network.attach(node_id, self._on_datagram)

    # -- what the node is -----------------------------------------------------------

    @property
    def version(self) -> int:
        """The own model's version: every training chunk, install or merge is a new one."""
        return self._version

    @version.setter
    def version(self, value: int) -> None:
        self._version = value
        self.news()

    def news(self) -> None:
        """Something a hello reports may have changed: the model (its score, samples,
        width), the neighbourhood, a new neighbour heard. A policy that reports the node
        listens here instead of looking every few seconds."""
        if self.on_news is not None:
            self.on_news()

    @property
    def now(self) -> float:
        return self.network.env.now

    @property
    def compute(self) -> float:
        return float(self._attrs.get("compute", 1.0))

    @property
    def memory(self) -> float:
        return float(self._attrs.get("memory", 0.0))

    @property
    def rng(self) -> np.random.Generator:
        """The node's own random generator: its draws do not depend on which other nodes
        share its process, so a run cut over processes or actors draws what one would."""
        if self._rng is None:
            self._rng = np.random.default_rng([self.services.seed, self.id])
        return self._rng

    def is_up(self) -> bool:
        return self.network.is_up(self.id)

    def neighbours(self) -> list[int]:
        return self.network.neighbours(self.id)

    def trainable(self) -> list[str] | None:
        """The parameters a low-compute node trains (graph attribute ``activated`` < 1), or None: all."""
        fraction = float(self.network.graph.nodes[self.id].get("activated", 1.0))
        if fraction >= 1.0:
            return None
        if self._trainable is None:
            self._trainable = activated_parameters(self.learner.get_state(), fraction)
        return self._trainable

    # -- learning on the clock --------------------------------------------------------

    def train(self, steps: int, learner=None) -> Iterator:
        """Train ``steps`` minibatches (the own learner, or a visiting one) and spend the
        time that work costs on the node's compute."""
        learner = learner or self.learner
        work = learner.train(steps, trainable=self.trainable()) + self._debt
        self._debt = 0
        if learner is self.learner:
            # the node has changed already: a model that arrives while the chunk's time
            # passes is gated against the trained learner, not the score from before
            self.invalidate_score()
        yield self.network.compute(self.id, work)
        if learner is self.learner:
            # A score taken since the chunk began is of the model as it is now: whatever
            # changed it meanwhile (an install, a merge) dropped or replaced that score. It
            # stands for the new version (scores are of fixed validation data or seeded
            # episodes: a state scores the same every time); measuring again was a third of
            # MFD's scoring in a 1,000-node hour.
            held = self._score
            self.version += 1
            self._score = None if held is None else (self.version, held[1])

    def charge(self, work: int) -> None:
        """Work done outside a training chunk (gate trials, distillation): paid with the next chunk."""
        self._debt += int(work)

    def score(self) -> float:
        """The own model's validation score, computed once per model version."""
        if self._score is None or self._score[0] != self.version:
            self._score = (self.version, self.learner.score())
        return self._score[1]

    def invalidate_score(self) -> None:
        self._score = None

    def set_state(self, state: Mapping[str, torch.Tensor], masks=None) -> None:
        """Install a model (FedAvg's global, gossip's average): a new version of the node."""
        self.learner.set_state(state, masks)
        self.version += 1
        self.invalidate_score()

    def absorb_all(self, messages: Sequence[ReceivedModel], *, weights: Sequence[float], tolerance: float,
                   local_weight: float) -> list[knowledge.Outcome]:
        """Gate the models together and merge (or distil) those that pass; one outcome each."""
        incoming = []
        for message, weight in zip(messages, weights):
            scaling = message.manifest.scaling
            incoming.append(knowledge.IncomingModel(
                family=str(scaling.get("family", self.learner.family)), state=message.state, weight=weight,
                ratio=float(scaling.get("ratio", 1.0)), masks=message.masks, origin=message.origin))
        local_score = self.score()
        result = knowledge.absorb_knowledge(self.learner, incoming, gate=knowledge.Gate(tolerance),
                                            families=self.services.families, local_weight=local_weight,
                                            local_score=local_score)
        if result.work:
            self.charge(result.work)
        self.counters.distilled += sum(o.action == "distilled" for o in result.outcomes)
        if result.accepted:
            self.version += 1
            # what is installed scored this on the node's own validation data in the gate
            self._score = (self.version, result.score_after)
        return result.outcomes

    def visiting_learner(self, message: ReceivedModel):
        """A copy of the learner holding a visiting model (same family and width), or None.

        A traveller that lost fragments on the way takes the holder's values in the lost
        ranges and travels on: lost packets cost only the ranges they carried.
        """
        scaling = message.manifest.scaling
        if scaling.get("family") != self.learner.family or float(scaling.get("ratio", 1.0)) != self.learner.width:
            return None
        visitor = self.learner.clone()
        visitor.set_state(message.state, message.masks)
        return visitor

    # -- sending --------------------------------------------------------------------

    def _next_message_id(self) -> int:
        self._message_id = (self._message_id + 1) & 0xFFFF
        return self._message_id

    def header(self, kind: str = "model", **fields: Any) -> ModelHeader:
        """This node's model header: its samples, family and width, and ``fields``."""
        base: dict[str, Any] = {"samples": self.learner.num_samples, "family": self.learner.family,
                                "width": self.learner.width}
        return ModelHeader(kind=kind, **{**base, **fields})

    def send_model(self, destination: int, *, header: ModelHeader | None = None,
                   state: Mapping[str, torch.Tensor] | None = None, precision: str = "fp32",
                   next_hop: int | None = None, scaling: Mapping[str, Any] | None = None) -> int:
        """Send a model (the own one by default) as MFD packets; returns the bytes sent."""
        state = self.learner.get_state() if state is None else state
        message_id = self._next_message_id()
        datagrams = codec.to_datagrams(
            state, origin=self.id, destination=destination, model_version=self.version,
            message_id=message_id, mtu=self.services.transport.mtu, precision=precision,
            key=self.services.key, meta=(header or self.header()).encode(),
            scaling=scaling or {"family": self.learner.family, "ratio": self.learner.width})
        self._sent[message_id] = datagrams
        while len(self._sent) > SENT_MEMORY:
            self._sent.popitem(last=False)
        return self._send(datagrams, next_hop=next_hop, kind="model")

    def send_control(self, destination: int, record: Hello | Pull | Resend, next_hop: int | None = None,
                     ttl: int = 16) -> int:
        """A control message: one control datagram (no manifest, JSON or reassembly),
        checked and signed like any other.

        ``ttl``: forwards a ``BROADCAST`` may still take (0: the neighbours only).
        """
        room = self.services.transport.mtu - packet.HEADER_SIZE - (packet.TAG_SIZE if self.services.key else 0)
        payload = record.encode(room) if isinstance(record, Resend) else record.encode()
        if len(payload) > room and isinstance(record, Hello) and record.labels:
            payload = dataclasses.replace(record, labels=()).encode()  # the profile without the class shares
        datagram = packet.build_control(payload, origin=self.id, destination=destination,
                                        message_id=self._next_message_id(), model_version=self.version & 0xFFFFFFFF,
                                        ttl=ttl, key=self.services.key)
        return self._send((datagram,), next_hop=next_hop, kind="control")

    def _send(self, datagrams, *, next_hop: int | None, kind: str) -> int:
        sent = 0
        send = self.network.send
        for dgram in datagrams:
            send(self.id, dgram, next_hop=next_hop, kind=kind)
            sent += len(dgram)
        self.bytes_sent += sent
        return sent

    def hello(self) -> None:
        self.heard_new_neighbour = False
        self.send_control(NEIGHBOURS, Hello(
            score=self.score(), samples=self.learner.num_samples, compute=self.compute, memory=self.memory,
            family=self.learner.family, width=self.learner.width, version=self.version,
            labels=self.label_profile, degree=len(self.network.neighbours(self.id))))

    def profile(self) -> tuple:
        """What a hello would tell the neighbours, to the precision they act on."""
        return (round(self.score(), 2), self.learner.num_samples, self.compute, self.memory, self.learner.family,
                self.learner.width, self.label_profile, len(self.network.neighbours(self.id)))

    # -- receiving ------------------------------------------------------------------

    def _on_datagram(self, datagram, from_node: int) -> None:
        if not self.network.is_up(self.id):
            return
        opened = self.reassembler.open_messages
        try:
            message = self.reassembler.receive(datagram, self.network.env.now)
        except PacketError:
            return  # counted in the reassembler's stats; nothing else to do
        if type(message) is ReceivedControl:
            self._control(message)
            return
        if self.reassembler.open_messages > opened:
            self._schedule_expiry()
        if message is not None:
            self.deliver(message, from_node)

    def _control(self, received: ReceivedControl) -> None:
        payload, origin = received.payload, received.origin
        try:
            if payload[:1] == Hello.KIND:
                # the most frequent message: its fields go straight into the report
                fields = Hello.read(payload)
                record = None
            else:
                record = decode_control(payload)
        except MessageError:
            self.counters.malformed += 1
            return
        if record is None:
            report = self.reports.get(origin)
            if report is not None:
                report.update(fields, self.network.env.now)
                return
            self.heard_new_neighbour = True  # it has not heard this node either, likely
            self.news()
            self.reports[origin] = Report.from_hello(Hello(*fields), self.network.env.now)
        elif type(record) is Resend:
            self._resend(origin, record)
        else:
            self.policy.on_control(self, record, origin)

    def _schedule_expiry(self) -> None:
        """One pending look at the open messages per node, however many are open."""
        if not self._expiry_pending:
            self._expiry_pending = True
            wait = RESEND_AFTER_S if self.services.transport.resend else SIM_REASSEMBLY_TIMEOUT_S
            self.network.env.timeout(wait + 1e-6).callbacks.append(self._expire)

    def _expire(self, _event=None) -> None:
        self._expiry_pending = False
        if not self.network.is_up(self.id):
            return
        now = self.network.env.now
        if self.services.transport.resend:
            for origin, message_id, missing in self.reassembler.quiet(now, RESEND_AFTER_S):
                asked = self._asked.get((origin, message_id), 0)
                if asked < RESEND_ROUNDS:
                    self._asked[(origin, message_id)] = asked + 1
                    while len(self._asked) > 4 * SENT_MEMORY:
                        self._asked.popitem(last=False)
                    self.send_control(origin, Resend(message_id, Resend.ranges(missing)))
        for message in self.reassembler.expire(now):
            self.deliver(message, None)
        if self.reassembler.open_messages:
            self._schedule_expiry()  # still streaming: the timeout counts quiet time

    def _resend(self, requester: int, request: Resend) -> None:
        """Send again the fragments a receiver asked for, if the message is still kept."""
        datagrams = self._sent.get(request.message_id)
        if datagrams is None:
            return
        wanted = []
        for start, stop in request.fragments[:len(datagrams)]:
            wanted.extend(range(max(0, start), min(stop, len(datagrams))))
        hop = requester if requester in self.network.neighbours(self.id) else None
        for index in wanted:
            self.network.send(self.id, datagrams[index], next_hop=hop, kind="model")
            self.bytes_sent += len(datagrams[index])
        self.counters.resent += len(wanted)

    def deliver(self, message: ReceivedModel, from_node: int | None = None) -> None:
        """Hand a reassembled model message to the policy, with its decoded header; a
        header that does not decode (a broken or hostile peer) drops the message."""
        try:
            header = decode(message.manifest.meta)
        except MessageError:
            self.counters.malformed += 1
            return
        self.policy.on_model(self, message, header, from_node)
