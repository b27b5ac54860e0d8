"""Helpers shared by several test modules: tiny MFD worlds and what they receive, and
the large model of the packet and reassembly batch tests."""
from __future__ import annotations

import itertools
from pathlib import Path
from collections import defaultdict

import numpy as np
import torch

from mfd_core import codec
from mfd_core.messages import ModelHeader
from mfd_core.runtime import World
from mfd_core.packet import FLAG_MANIFEST, parse
from mfd_core.reassembly import Reassembler
from mfd_core.scenario import Scenario, from_dict

KEY = b"fleet-key"
SCENARIOS = Path(__file__).resolve().parents[1] / "apps" / "scenarios"

_ids = itertools.count(1)


def tiny(name: str = "mfd", **sections) -> Scenario:
    """A 5-node ring, 16-unit MLP, 6 simulated seconds; ``sections`` update its tables."""
    doc = {
        "name": "tiny", "seeds": [0], "duration": 6.0, "eval_interval": 0.5,
        "topology": {"kind": "ring", "nodes": 5, "compute": 2000.0, "bandwidth": 1.0e6, "latency": 0.005},
        "data": {"split": "dirichlet", "alpha": 0.5},
        "learner": {"hidden": [16], "local_steps": 5, "lr": 0.01},
        "policy": {"name": name, "max_silence": 1.0, "hello_interval": 1.0, "precision": "fp32"},
    }
    for key, value in sections.items():
        doc[key] = {**doc[key], **value} if isinstance(value, dict) else value
    return from_dict(doc)


def received(world: World, origin: int, dest: int, state, *, drop: float = 0.0, seed: int = 0, **meta):
    """``state`` cut into packets, ``drop`` of the tensor datagrams lost, the rest fed to a
    fresh Reassembler with the world's key; the message it delivers (partial after expiry)."""
    datagrams = codec.to_datagrams(
        state, origin=origin, destination=dest, model_version=1, message_id=next(_ids), mtu=world.transport.mtu,
        precision="fp32", key=world.key, meta={"kind": "model", **meta},
        scaling={"family": "mlp", "ratio": 1.0})
    rng = np.random.default_rng(seed)
    # the manifest travels too: a receiver needs it to place anything it does not know
    kept = [d for d in datagrams if parse(d, world.key).flags & FLAG_MANIFEST or rng.random() >= drop]
    assert drop == 0 or len(kept) < len(datagrams)
    reassembler = Reassembler(key=world.key)
    message = None
    for d in kept:
        message = reassembler.receive(d, now=0.0) or message
    if message is None:
        (message,) = reassembler.expire(now=1e9)
    return message


def same_state(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def accept(world: World, node, message):
    """The node's policy gates and merges ``message`` (MFD's accept); its decision."""
    return world.policy.accept(node, message, ModelHeader.decode(message.manifest.meta))


def record_sends(world: World):
    sends = defaultdict(list)  # node -> [(time, target, kind, score at the time, header fields)]
    for node in world.nodes.values():
        original = node.send_model

        def send(destination, *args, _node=node, _original=original, **kwargs):
            header = kwargs.get("header") or _node.header()
            sends[_node.id].append((world.env.now, destination, header.kind, _node.score(), header.encode()))
            return _original(destination, *args, **kwargs)

        node.send_model = send
    return sends


def model_shares(records):
    """Group one node's model sends into shares: the sends of one decision share a time."""
    groups = defaultdict(list)
    for t, target, kind, score, _ in records:
        if kind == "model":
            groups[t].append((target, score))
    return sorted(groups.items())


def big_model(seed: int = 0) -> dict[str, torch.Tensor]:
    """About 1.1 MB at fp32 (280 KB at int8): 64 KiB datagrams, enough for the parallel path."""
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(400, 400, generator=g), "a.bias": torch.randn(400, generator=g),
            "b.weight": torch.randn(300, 400, generator=g), "steps": torch.tensor(seed),
            "flags": torch.rand(7, generator=g) > 0.5}
