"""How to build a run's world anywhere: in this process, in another OS process on a UDP
socket, or in a Ray actor on another machine.

A :class:`Recipe` names a builder class (``"package.module:Class"``) and the plain,
JSON-able arguments it takes; the builder says what the overlay graph is and builds the
world of the nodes a network driver hosts. Because a recipe is plain data it travels as a
small JSON file (to ``mfd node``) or as a Ray task argument, and every process that
follows it builds the same graph, the same data split and the same initial models.
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from typing import Any, Protocol

import networkx as nx

from ..network.base import Network
from ..scenario import Scenario, from_dict
from .world import World


class WorldBuilder(Protocol):
    """What a recipe's target builds: the overlay, and the world on a driver."""

    seed: int
    duration: float  # simulated seconds the run lasts

    def graph(self) -> nx.Graph: ...

    def world(self, network: Network) -> World: ...


@dataclass(frozen=True)
class Recipe:
    """A builder named by ``"module:Class"`` and its keyword arguments (plain data)."""

    target: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> WorldBuilder:
        module_name, _, attribute = self.target.partition(":")
        if not module_name or not attribute:
            raise ValueError(f"recipe target {self.target!r}: expected 'package.module:Class'")
        try:
            builder = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"recipe target {self.target!r}: {err}") from None
        return builder(**self.kwargs)

    def to_json(self) -> str:
        return json.dumps({"target": self.target, "kwargs": self.kwargs})

    @classmethod
    def from_json(cls, text: str) -> "Recipe":
        doc = json.loads(text)
        if not isinstance(doc, dict) or not isinstance(doc.get("target"), str):
            raise ValueError("a recipe is a JSON object with a 'target' string and 'kwargs'")
        return cls(doc["target"], dict(doc.get("kwargs") or {}))


class ScenarioRun:
    """A supervised scenario file's run (``mfd run``): its topology and its world.

    :param scenario: the validated scenario, as plain data (``Scenario.model_dump``).
    :param seed: the run's seed.
    :param key: the fleet's HMAC key, hex (None: unsigned datagrams).
    """

    def __init__(self, scenario: dict[str, Any], seed: int, key: str | None = None) -> None:
        self.scenario: Scenario = from_dict(scenario)
        self.seed = int(seed)
        self.duration = self.scenario.duration
        self.key = bytes.fromhex(key) if key else None

    def graph(self) -> nx.Graph:
        from .supervised import topology_of

        return topology_of(self.scenario, self.seed)

    def world(self, network: Network) -> World:
        from .supervised import build_world

        return build_world(self.scenario, self.seed, network, key=self.key)


def scenario_recipe(scenario: Scenario, seed: int, key: bytes | None = None) -> Recipe:
    """The recipe of a supervised scenario's run."""
    return Recipe(f"{ScenarioRun.__module__}:{ScenarioRun.__name__}",
                  {"scenario": json.loads(scenario.model_dump_json(by_alias=True)), "seed": int(seed),
                   "key": key.hex() if key else None})
