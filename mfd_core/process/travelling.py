"""MFD with travelling models: a model visits data holders hop by hop, trained on each.

Each traveller carries in its header the class mass of the data it has been trained on;
the holder forwards it to the neighbour whose reported data profile adds most of what
the traveller has seen least, over a usable link: the model follows the data. Every
holder also gates the visiting model against its own and keeps what helps.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterator, Mapping

import numpy as np
import torch
from pydantic import Field

from ..messages import Control, ModelHeader, Pull, Travel
from ..reassembly import ReceivedModel
from .base import Runtime
from .mfd import MFDPolicy, MFDSettings
from .node import Node


class TravellingSettings(MFDSettings):
    """Settings of travelling MFD (name = "mfd-travel"): MFD's, and how many travel."""

    travellers: int = Field(4, ge=1, description="travelling models in the fleet")


class TravellingPolicy(MFDPolicy):
    """Travelling models; owned models are not pushed, the travellers carry knowledge."""

    name = "mfd-travel"
    Settings = TravellingSettings
    settings: TravellingSettings

    def start(self, runtime: Runtime) -> None:
        super().start(runtime)
        order = list(runtime.node_ids)
        runtime.rng.shuffle(order)
        for i, node_id in enumerate(order[: self.settings.travellers]):
            if node_id in runtime.nodes:  # launched where its first holder is hosted
                runtime.env.process(self._launch(runtime.nodes[node_id], traveller=i))

    def _launch(self, node: Node, traveller: int) -> Iterator:
        yield self.runtime.env.timeout(self.settings.hello_interval + 0.01 * traveller)
        header = node.header("travel", travel=Travel(traveller), score=node.score())
        self._forward(node, node.learner.get_state(), header)

    def after_training(self, node: Node) -> None:
        pass

    def on_control(self, node: Node, record: Control, origin: int) -> None:
        if isinstance(record, Pull):
            node.send_model(origin, header=node.header(score=node.score()), precision=self.settings.precision)

    def on_model(self, node: Node, message: ReceivedModel, header: ModelHeader, from_node: int | None) -> None:
        if header.kind == "model":
            self.accept(node, message, header)
        elif header.kind == "travel" and header.travel is not None:
            self.runtime.env.process(self._visit(node, message, header))

    def _visit(self, node: Node, message: ReceivedModel, header: ModelHeader) -> Iterator:
        self.accept(node, message, header)  # the holder keeps what helps it
        visitor = node.visiting_learner(message)
        if visitor is None:
            return
        yield from node.train(self.runtime.local_steps, learner=visitor)
        travel = header.travel
        seen = np.asarray(travel.seen or [0.0] * len(node.label_profile), dtype=float)
        if len(seen) == len(node.label_profile):
            seen = seen + np.asarray(node.label_profile) * node.learner.num_samples
        onward = dataclasses.replace(header, travel=Travel(travel.traveller, tuple(float(v) for v in seen),
                                                           travel.visits + 1))
        if node.is_up():
            self._forward(node, visitor.get_state(), onward)

    def _forward(self, node: Node, state: Mapping[str, torch.Tensor], header: ModelHeader) -> None:
        net = node.network
        neighbours = net.neighbours(node.id)
        if not neighbours:
            return
        seen = np.asarray(header.travel.seen, dtype=float)
        best, best_gain = None, -math.inf
        for nbr in neighbours:
            report = node.reports.get(nbr)
            profile = np.asarray(report.label_profile if report else (), dtype=float)
            if len(profile) and len(profile) == len(seen) and seen.sum() > 0:
                # the classes this traveller has seen least, weighted by what nbr holds
                gain = float(profile @ (1.0 / (1.0 + seen / seen.sum() * len(seen))))
            else:
                gain = 1.0
            link = net.link(node.id, nbr)
            gain *= (1.0 - link["loss"]) * float(node.rng.uniform(0.8, 1.0))
            if gain > best_gain:
                best, best_gain = nbr, gain
        node.send_model(best, header=header, state=state, precision=self.settings.precision)
