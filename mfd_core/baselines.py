"""The classic alternatives, behind the same :class:`SharingPolicy` interface as MFD.

- :class:`IsolatedPolicy`: every node learns alone; the floor.
- :class:`FedAvgPolicy`: McMahan et al. 2017 with a server *inside* the topology:
  synchronous rounds, the full global model down to every client and every update back
  up, each byte counted on every link it crosses on the way. The server is a single
  point of failure, as in the real thing.
- :class:`GossipPolicy`: randomized gossip averaging (Boyd et al. 2006): every node
  pushes its model to a random neighbour, which averages it in — no gate, no choice.

All use the same packets, network, learners and measurements as MFD, and send full
fp32 models as the classic methods do (``precision`` is an MFD setting).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import networkx as nx
import torch

from . import knowledge
from .process import Node, SharingPolicy
from .reassembly import ReceivedModel

if TYPE_CHECKING:
    from .experiment import World


class IsolatedPolicy(SharingPolicy):
    """No sharing at all."""

    name = "isolated"


class GossipPolicy(SharingPolicy):
    """Push gossip averaging: a random neighbour every ``gossip_interval``; receivers average 1:1."""

    name = "gossip"
    needs_one_architecture = True
    weighs_by_score = False

    def start(self, world: "World") -> None:
        self._last_push: dict[int, float] = {}
        super().start(world)

    def after_training(self, node: Node) -> None:
        world = self.world
        now = world.env.now
        if now - self._last_push.get(node.id, -1e18) < world.settings.gossip_interval:
            return
        neighbours = world.net.neighbours(node.id)
        if not neighbours:
            return
        # the draw rng.choice(neighbours) makes, without its conversion to an array (3x the cost)
        node.send_model(neighbours[int(world.rng.integers(len(neighbours)))], kind="gossip", precision="fp32")
        node.counters.shares += 1
        self._last_push[node.id] = now

    def on_message(self, node: Node, message: ReceivedModel, from_node: int | None) -> None:
        if message.manifest.meta.get("kind") != "gossip":
            return
        local = node.learner.get_state()
        if any(name not in local or local[name].shape != t.shape for name, t in message.state.items()):
            return  # gossip averaging needs identical architectures
        merged = knowledge.merge_same_family(local, [(message.state, 1.0)], [message.masks], local_weight=1.0)
        node.learner.set_state(merged)
        node.counters.accepted += 1
        node.version += 1
        self.world.invalidate_score(node)


class FedAvgPolicy(SharingPolicy):
    """Synchronous FedAvg with a server node inside the topology.

    Each round the server unicasts the global model to every client (multi-hop,
    counted on every link); a client installs it (a partial one only where it arrived),
    trains ``local_steps`` on a working copy and sends the update back; after every
    client answered or ``round_timeout`` passed, the server averages what arrived,
    weighted by sample counts. A client's deployed model is the last global one, as in
    FL practice. When the server is away, no rounds happen.
    """

    name = "fedavg"
    needs_one_architecture = True
    weighs_by_score = False

    def start(self, world: "World") -> None:
        self.world = world
        layouts = {(n.learner.family, n.learner.width) for n in world.nodes.values()}
        if len(layouts) > 1:
            raise ValueError(f"fedavg averages one architecture; this fleet has {sorted(layouts)} "
                             "(use mfd, which fits models to each receiver)")
        chosen = world.settings.server
        if chosen is None:
            closeness = nx.closeness_centrality(world.graph, distance="latency")
            chosen = max(sorted(closeness), key=lambda n: closeness[n])
        self.server = int(chosen)
        self.round = 0
        self._updates: dict[int, ReceivedModel] = {}
        self._all_in = None
        world.result.extra["server"] = self.server
        world.env.process(self._server_loop())

    def _server_loop(self):
        world = self.world
        env = world.env
        server = world.nodes[self.server]
        timeout = world.settings.round_timeout
        clients = [n for n in world.nodes if n != self.server]
        global_state = server.learner.get_state()
        while True:
            if not world.net.is_up(self.server):
                yield env.timeout(world.idle_poll)
                continue
            self.round += 1
            self._updates = {}
            self._all_in = env.event()
            server.version = self.round
            for client in clients:
                server.send_model(client, state=global_state, kind="fedavg_global", meta={"round": self.round},
                                  precision="fp32")
            # the server's own data trains too, on its own compute, with no traffic
            server.learner.set_state(global_state)
            yield from self._local_update(server)
            own_update = server.learner.get_state()
            server.learner.set_state(global_state)
            if clients:
                yield self._all_in | env.timeout(timeout)
            if not world.net.is_up(self.server):
                continue  # it went away mid-round: the round is lost
            global_state = self._aggregate(global_state, own_update, server.learner.num_samples)
            server.learner.set_state(global_state)
            world.invalidate_score(server)
            world.log("fedavg_round", round=self.round, updates=len(self._updates))

    def _local_update(self, node: Node):
        yield from self.world.train(node, self.world.local_steps)

    def _aggregate(self, global_state, own_update, own_samples: int):
        sums = {k: own_update[k].to(torch.float64) * own_samples for k in global_state}
        weights = {k: torch.full_like(global_state[k], float(own_samples), dtype=torch.float64) for k in global_state}
        for update in self._updates.values():
            w = float(update.manifest.meta.get("samples", 1))
            for name, value in update.state.items():
                if name not in sums or value.shape != sums[name].shape:
                    continue
                mask = update.masks[name] if update.masks is not None else None
                contribution = value.to(torch.float64) * w
                if mask is None:
                    sums[name] += contribution
                    weights[name] += w
                else:
                    sums[name] += torch.where(mask, contribution, torch.zeros_like(contribution))
                    weights[name] += mask.to(torch.float64) * w
        return {k: (sums[k] / weights[k]).to(global_state[k].dtype) for k in global_state}

    def on_message(self, node: Node, message: ReceivedModel, from_node: int | None) -> None:
        kind = message.manifest.meta.get("kind")
        if kind == "fedavg_global" and node.id != self.server:
            self.world.env.process(self._client_round(node, message))
        elif kind == "fedavg_update" and node.id == self.server:
            if int(message.manifest.meta.get("round", -1)) != self.round:
                return  # a straggler from an earlier round
            self._updates[message.origin] = message
            expected = sum(1 for n in self.world.nodes if n != self.server)
            if len(self._updates) >= expected and self._all_in is not None and not self._all_in.triggered:
                self._all_in.succeed()

    def _client_round(self, node: Node, message: ReceivedModel):
        world = self.world
        node.learner.set_state(message.state, message.masks)
        deployed = node.learner.get_state()
        node.version += 1
        world.invalidate_score(node)
        yield from self._local_update(node)
        update = node.learner.get_state()
        node.learner.set_state(deployed)
        world.invalidate_score(node)
        if world.net.is_up(node.id):
            node.send_model(self.server, state=update, kind="fedavg_update", precision="fp32",
                            meta={"round": int(message.manifest.meta.get("round", 0))})
