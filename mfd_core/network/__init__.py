"""Network drivers: where MFD datagrams travel.

``sim`` is the default (everything in one process on a simulated clock); ``udp`` runs
the same nodes on real sockets in real time. The drivers share one surface:
``env``, ``attach(node, handler)``, ``send(src, datagram, next_hop=, kind=)``,
``compute``, ``neighbours``, ``is_up``, ``link``, ``on_change``, ``stats``, ``run``.
"""
from .sim import NetworkChange, SimNetwork
from .topology import TOPOLOGIES, build_topology
from .udp import UdpNetwork

__all__ = ["NetworkChange", "SimNetwork", "TOPOLOGIES", "UdpNetwork", "build_topology"]
