"""Network drivers: where MFD datagrams travel.

``sim`` is the default (everything in one process on a simulated clock); the drivers
share one surface: ``attach(node, handler)`` and ``send(src, datagram)``.
"""
from .sim import NetworkChange, SimNetwork
from .topology import TOPOLOGIES, build_topology

__all__ = ["NetworkChange", "SimNetwork", "TOPOLOGIES", "build_topology"]
