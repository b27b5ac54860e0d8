"""The runtime: a world of nodes on a network it is handed, and the scenario runs built on it."""
from __future__ import annotations

from typing import Callable

from ..metrics import RunResult
from ..process import policy_class
from ..scenario import Scenario
from .supervised import build_world, topology_of
from .world import World


def check_policy(scenario: Scenario, name: str) -> str | None:
    """Why policy ``name`` cannot run ``scenario`` (None: it can), before anything is built."""
    mixed = len(set(scenario.learner.widths)) > 1 or len(set(scenario.learner.kinds)) > 1
    if policy_class(name).needs_one_architecture and mixed:
        return (f"policy {name} averages one architecture, but scenario {scenario.name!r} deals several "
                f"widths/kinds over its nodes (mfd fits models to each receiver; isolated needs nothing)")
    return None


def run(scenario: Scenario, seed: int | None = None, policy: str | None = None,
        progress: Callable[[float], None] | None = None, key: bytes | None = None) -> RunResult:
    """Run ``scenario`` once on the simulator (its first seed, and its own policy, unless given)."""
    if policy is not None and policy != scenario.policy.name:
        scenario = scenario.with_policy(policy)
    world = build_world(scenario, scenario.seeds[0] if seed is None else seed, key=key)
    return world.run(progress)


__all__ = ["World", "build_world", "check_policy", "run", "topology_of"]
