"""MFD core: models as packets, models that scale, knowledge across architectures, and a
serverless learning process. This module is the public door: import from here.

    import mfd_core as mfd
    scenario = mfd.load_scenario("apps/scenarios/digits.toml")
    result = mfd.run(scenario, policy="mfd")

Names are resolved on first use (PEP 562), so ``import mfd_core`` does not pay for
torch, SimPy or stable-baselines3 until a name that needs them is asked for.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it (relative to this package)
_EXPORTS: dict[str, str] = {
    # the wire: datagrams, messages, reassembly
    "PacketError": ".packet", "ChecksumError": ".packet", "AuthError": ".packet",
    "BROADCAST": ".packet", "NEIGHBOURS": ".packet",
    "Manifest": ".codec", "TensorSpec": ".codec", "EncodedModel": ".codec",
    "encode": ".codec", "decode": ".codec", "to_datagrams": ".codec",
    "Reassembler": ".reassembly", "Limits": ".reassembly", "ReceivedModel": ".reassembly",
    "merge_partial": ".reassembly",
    # models that scale, and knowledge between them
    "ModelFamily": ".scaling", "MLPFamily": ".scaling", "SmallCNNFamily": ".scaling",
    "extract": ".scaling", "absorb": ".scaling", "merge_overlapping": ".scaling",
    "Gate": ".knowledge", "merge_same_family": ".knowledge", "absorb_knowledge": ".knowledge",
    "distillation_loss": ".knowledge",
    # learners
    "Learner": ".learners.base", "TorchSupervisedLearner": ".learners.torch_supervised",
    "SB3Learner": ".learners.sb3", "SB3PolicyFamily": ".learners.sb3",
    # sharing policies
    "SharingPolicy": ".process", "MFDPolicy": ".process", "TravellingPolicy": ".process",
    "FedAvgPolicy": ".baselines", "GossipPolicy": ".baselines", "IsolatedPolicy": ".baselines",
    "policy_by_name": ".experiment",
    # the runtime and its networks
    "World": ".experiment", "Node": ".process", "build_world": ".experiment", "run": ".experiment",
    "SimNetwork": ".network.sim", "UdpNetwork": ".network.udp", "NetworkChange": ".network.sim",
    "build_topology": ".network.topology",
    # scenarios and results
    "Scenario": ".scenario", "ScenarioError": ".scenario", "PolicySettings": ".scenario",
    "load_scenario": ".scenario", "RunResult": ".metrics",
}
# names whose defining module calls them something else
_RENAMED = {"PolicySettings": "Policy", "load_scenario": "load"}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mfd_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), _RENAMED.get(name, name))
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return __all__
