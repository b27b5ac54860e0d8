"""Push gossip averaging (Boyd et al. 2006): every node pushes its model to a random
neighbour, which averages it in 1:1 — no gate, no choice. Full fp32 models, as the
classic method sends."""
from __future__ import annotations

from pydantic import Field

from .. import knowledge
from ..messages import ModelHeader
from ..reassembly import ReceivedModel
from .base import PolicySettings, Runtime, SharingPolicy
from .node import Node


class GossipSettings(PolicySettings):
    """Settings of gossip averaging (name = "gossip")."""

    gossip_interval: float = Field(1.0, gt=0, description="seconds between a node's gossip pushes")


class GossipPolicy(SharingPolicy):
    """Push gossip averaging: a random neighbour every ``gossip_interval``; receivers average 1:1."""

    name = "gossip"
    Settings = GossipSettings
    settings: GossipSettings
    needs_one_architecture = True

    def start(self, runtime: Runtime) -> None:
        self._last_push: dict[int, float] = {}
        super().start(runtime)

    def after_training(self, node: Node) -> None:
        now = node.now
        if now - self._last_push.get(node.id, -1e18) < self.settings.gossip_interval:
            return
        neighbours = node.neighbours()
        if not neighbours:
            return
        # the draw rng.choice(neighbours) makes, without its conversion to an array (3x the cost)
        target = neighbours[int(node.rng.integers(len(neighbours)))]
        node.send_model(target, header=node.header("gossip"), precision="fp32")
        node.counters.shares += 1
        self._last_push[node.id] = now

    def on_model(self, node: Node, message: ReceivedModel, header: ModelHeader, from_node: int | None) -> None:
        if header.kind != "gossip":
            return
        local = node.learner.get_state()
        if any(name not in local or local[name].shape != t.shape for name, t in message.state.items()):
            return  # gossip averaging needs identical architectures
        merged = knowledge.merge_same_family(local, [(message.state, 1.0)], [message.masks], local_weight=1.0)
        node.set_state(merged)
        node.counters.accepted += 1
