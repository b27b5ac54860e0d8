"""The self-organising learning process: nodes, and the sharing policies they follow.

One policy per module, each with its own settings, registered by name here so that a
scenario (or a comparison) swaps one name:

========== ===================================== =====================================
name       policy                                module
========== ===================================== =====================================
isolated   every node alone (the floor)          :mod:`mfd_core.process.isolated`
fedavg     FedAvg with a server in the topology  :mod:`mfd_core.process.fedavg`
gossip     push gossip averaging                 :mod:`mfd_core.process.gossip`
mfd        MFD, owned models                     :mod:`mfd_core.process.mfd`
mfd-travel MFD, travelling models                :mod:`mfd_core.process.travelling`
========== ===================================== =====================================

A policy of one's own: subclass :class:`SharingPolicy` (with a ``Settings`` class) and
decorate it with :func:`register_policy`.
"""
from __future__ import annotations

from typing import Any, Mapping

from .base import PolicySettings, Runtime, SharingPolicy
from .fedavg import FedAvgPolicy, FedAvgSettings
from .gossip import GossipPolicy, GossipSettings
from .isolated import IsolatedPolicy, IsolatedSettings
from .mfd import MFDPolicy, MFDSettings
from .node import Node, NodeCounters, NodeServices, Report, Transport
from .travelling import TravellingPolicy, TravellingSettings

POLICIES: dict[str, type[SharingPolicy]] = {}


def register_policy(cls: type[SharingPolicy]) -> type[SharingPolicy]:
    """Make ``cls`` available by its ``name`` (usable as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, SharingPolicy)):
        raise TypeError(f"{cls!r} is not a SharingPolicy subclass")
    if cls.name in POLICIES and POLICIES[cls.name] is not cls:
        raise ValueError(f"a policy named {cls.name!r} is registered already ({POLICIES[cls.name].__name__})")
    POLICIES[cls.name] = cls
    return cls


for _policy in (IsolatedPolicy, FedAvgPolicy, GossipPolicy, MFDPolicy, TravellingPolicy):
    register_policy(_policy)


def policy_class(name: str) -> type[SharingPolicy]:
    """The policy registered as ``name``. :raises ValueError: naming the choices."""
    try:
        return POLICIES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}") from None


def policy_by_name(name: str, settings: PolicySettings | Mapping[str, Any] | None = None) -> SharingPolicy:
    """A new policy object of the registered ``name`` with ``settings`` (defaults if None)."""
    return policy_class(name)(settings)


__all__ = ["POLICIES", "FedAvgPolicy", "FedAvgSettings", "GossipPolicy", "GossipSettings", "IsolatedPolicy",
           "IsolatedSettings", "MFDPolicy", "MFDSettings", "Node", "NodeCounters", "NodeServices",
           "PolicySettings", "Report", "Runtime", "SharingPolicy", "Transport", "TravellingPolicy",
           "TravellingSettings", "policy_by_name", "policy_class", "register_policy"]
