"""The sharing policy interface, and the runtime a policy is started on.

Policies are interchangeable objects behind :class:`SharingPolicy`, as Flower's
strategies are: each lives in a module of its own with its own :class:`PolicySettings`,
and is registered by name (:mod:`mfd_core.process`), so a scenario swaps one name and
keeps the topology, the data, the models, the faults and the seed.

A policy sees the run through :class:`Runtime` — the clock, the network, the nodes
hosted here, a random generator — never through the object that built it.
"""
from __future__ import annotations

from abc import ABC
from typing import Any, ClassVar, Iterator, Mapping, Protocol, Sequence

import numpy as np
import simpy
import torch
from pydantic import BaseModel, ConfigDict

from ..messages import Control, ModelHeader
from ..network.base import Network
from ..reassembly import ReceivedModel
from .node import Node


class PolicySettings(BaseModel):
    """A policy's own settings: frozen, unknown keys refused (the scenario file's ``[policy]``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Runtime(Protocol):
    """What a policy may ask of the run it is started on."""

    env: simpy.Environment
    network: Network
    nodes: Mapping[int, Node]  # the nodes hosted here
    node_ids: Sequence[int]  # every node of the run, hosted here or elsewhere
    rng: np.random.Generator  # for run-level draws, the same in every process (nodes have their own)
    local_steps: int  # minibatch (or env) steps per training chunk
    idle_poll: float  # seconds between checks of a node that is away
    extra: dict[str, Any]  # run-level facts for the record (FedAvg's server, ...)

    def log(self, kind: str, **fields: Any) -> None: ...


class SharingPolicy(ABC):
    """How nodes share: isolated, FedAvg, gossip, MFD... one interface, swapped by name.

    :param settings: this policy's :attr:`Settings` (its defaults if None).
    """

    name: ClassVar[str] = "policy"
    Settings: ClassVar[type[PolicySettings]] = PolicySettings
    # averaging policies (FedAvg, gossip) need one architecture and width fleet-wide
    needs_one_architecture: ClassVar[bool] = False

    def __init__(self, settings: PolicySettings | Mapping[str, Any] | None = None) -> None:
        if settings is None:
            settings = self.Settings()
        elif isinstance(settings, Mapping):
            settings = self.Settings(**settings)
        elif not isinstance(settings, self.Settings):
            raise TypeError(f"{self.name} takes {self.Settings.__name__}, got {type(settings).__name__}")
        self.settings = settings

    def start(self, runtime: Runtime) -> None:
        """Start the processes of every hosted node (called once, before the run)."""
        self.runtime = runtime
        for node in runtime.nodes.values():
            runtime.env.process(self.node_loop(node))

    def node_loop(self, node: Node) -> Iterator:
        """Default life of a node: train in chunks, and after each chunk, :meth:`after_training`."""
        runtime = self.runtime
        steps = runtime.local_steps
        while True:
            if not node.is_up():
                yield runtime.env.timeout(runtime.idle_poll)
                continue
            yield from node.train(steps)
            self.after_training(node)

    def after_training(self, node: Node) -> None:
        """Called after each training chunk of the default loop."""

    def on_model(self, node: Node, message: ReceivedModel, header: ModelHeader, from_node: int | None) -> None:
        """A model message arrived at ``node`` (complete, or partial after its timeout)."""

    def on_control(self, node: Node, record: Control, origin: int) -> None:
        """A control message the node does not handle itself (a :class:`~mfd_core.messages.Pull`)."""

    def on_join(self, node: Node) -> None:
        """A node came (back): by default it just carries on with what it has."""

    def served_state(self, node: Node) -> dict[str, torch.Tensor] | None:
        """The model ``node`` serves when measured or deployed (None: its own)."""
        return None
