"""FedAvg (McMahan et al. 2017) with a server *inside* the topology.

Synchronous rounds: the server unicasts the global model to every client (multi-hop,
counted on every link it crosses); a client installs it (a partial one only where it
arrived), trains ``local_steps`` on it and sends the update back; after every client
answered or ``round_timeout`` passed, the server averages what arrived, weighted by
sample counts. A client's deployed model is the last global one, as in FL practice.
The server is a single point of failure, as in the real thing: while it is away, no
rounds happen. Full fp32 models both ways.
"""
from __future__ import annotations

from typing import Iterator

import networkx as nx
import torch
from pydantic import Field

from ..messages import ModelHeader
from ..reassembly import ReceivedModel
from .base import PolicySettings, Runtime, SharingPolicy
from .node import Node


class FedAvgSettings(PolicySettings):
    """Settings of FedAvg (name = "fedavg")."""

    server: int | None = Field(None, ge=0, description="server node (default: the most central)")
    round_timeout: float = Field(5.0, gt=0, description="seconds a round waits for clients")


def most_central(graph: nx.Graph) -> int:
    """The node with the highest closeness centrality by link latency (ties: the lowest id)."""
    closeness = nx.closeness_centrality(graph, distance="latency")
    return int(max(sorted(closeness), key=lambda n: closeness[n]))


class FedAvgPolicy(SharingPolicy):
    """Synchronous FedAvg with a server node inside the topology."""

    name = "fedavg"
    Settings = FedAvgSettings
    settings: FedAvgSettings
    needs_one_architecture = True

    def start(self, runtime: Runtime) -> None:
        self.runtime = runtime
        layouts = {(n.learner.family, n.learner.width) for n in runtime.nodes.values()}
        if len(layouts) > 1:
            raise ValueError(f"fedavg averages one architecture; this fleet has {sorted(layouts)} "
                             "(use mfd, which fits models to each receiver)")
        chosen = self.settings.server
        self.server = int(chosen) if chosen is not None else most_central(runtime.network.graph)
        self.round = 0
        self._updates: dict[int, ReceivedModel] = {}
        self._all_in = None
        runtime.extra["server"] = self.server
        if self.server in runtime.nodes:  # the server loop runs where the server is hosted
            runtime.env.process(self._server_loop())

    def _server_loop(self) -> Iterator:
        runtime = self.runtime
        env = runtime.env
        server = runtime.nodes[self.server]
        timeout = self.settings.round_timeout
        clients = [n for n in runtime.node_ids if n != self.server]
        global_state = server.learner.get_state()
        while True:
            if not server.is_up():
                yield env.timeout(runtime.idle_poll)
                continue
            self.round += 1
            self._updates = {}
            self._all_in = env.event()
            server.version = self.round
            for client in clients:
                server.send_model(client, header=server.header("fedavg_global", round=self.round),
                                  state=global_state, precision="fp32")
            # the server's own data trains too, on its own compute, with no traffic
            server.learner.set_state(global_state)
            yield from server.train(runtime.local_steps)
            own_update = server.learner.get_state()
            server.learner.set_state(global_state)
            if clients:
                yield self._all_in | env.timeout(timeout)
            if not server.is_up():
                continue  # it went away mid-round: the round is lost
            global_state = self._aggregate(global_state, own_update, server.learner.num_samples)
            server.learner.set_state(global_state)
            server.invalidate_score()
            runtime.log("fedavg_round", round=self.round, updates=len(self._updates))

    def _aggregate(self, global_state, own_update, own_samples: int):
        sums = {k: own_update[k].to(torch.float64) * own_samples for k in global_state}
        weights = {k: torch.full_like(global_state[k], float(own_samples), dtype=torch.float64) for k in global_state}
        for update, header in self._updates.values():
            w = float(header.samples)
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

    def on_model(self, node: Node, message: ReceivedModel, header: ModelHeader, from_node: int | None) -> None:
        if header.kind == "fedavg_global" and node.id != self.server:
            self.runtime.env.process(self._client_round(node, message, header))
        elif header.kind == "fedavg_update" and node.id == self.server:
            if header.round != self.round:
                return  # a straggler from an earlier round
            self._updates[message.origin] = (message, header)
            expected = sum(1 for n in self.runtime.node_ids if n != self.server)
            if len(self._updates) >= expected and self._all_in is not None and not self._all_in.triggered:
                self._all_in.succeed()

    def _client_round(self, node: Node, message: ReceivedModel, header: ModelHeader) -> Iterator:
        node.set_state(message.state, message.masks)
        deployed = node.learner.get_state()
        yield from node.train(self.runtime.local_steps)
        update = node.learner.get_state()
        node.learner.set_state(deployed)
        node.invalidate_score()
        if node.is_up():
            node.send_model(self.server, header=node.header("fedavg_update", round=header.round or 0),
                            state=update, precision="fp32")
