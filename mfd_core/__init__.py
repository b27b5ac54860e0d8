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
    "save_model": ".codec", "load_model": ".codec", "load_model_meta": ".codec",
    "build_control": ".packet",
    "Reassembler": ".reassembly", "Limits": ".reassembly", "ReceivedModel": ".reassembly",
    "ReceivedControl": ".reassembly",
    "merge_partial": ".reassembly",
    # models that scale, and knowledge between them
    "ModelFamily": ".scaling", "MLPFamily": ".scaling", "SmallCNNFamily": ".scaling",
    "extract": ".scaling", "absorb": ".scaling", "merge_overlapping": ".scaling",
    "Gate": ".knowledge", "merge_same_family": ".knowledge", "absorb_knowledge": ".knowledge",
    "distillation_loss": ".knowledge",
    # learners
    "Learner": ".learners.base", "TorchSupervisedLearner": ".learners.torch_supervised",
    "SB3Learner": ".learners.sb3", "SB3PolicyFamily": ".learners.sb3", "episode_progress": ".learners.sb3",
    "SharedEnvCommons": ".learners.shared_env", "SharedEnvLearner": ".learners.shared_env",
    # the learning process: nodes and sharing policies, registered by name
    "Node": ".process", "NodeServices": ".process", "Transport": ".process",
    "SharingPolicy": ".process", "PolicySettings": ".process", "Runtime": ".process",
    "MFDPolicy": ".process", "MFDSettings": ".process", "TravellingPolicy": ".process",
    "TravellingSettings": ".process", "FedAvgPolicy": ".process", "FedAvgSettings": ".process",
    "GossipPolicy": ".process", "GossipSettings": ".process", "IsolatedPolicy": ".process",
    "IsolatedSettings": ".process", "policy_by_name": ".process", "policy_class": ".process",
    "register_policy": ".process",
    "POLICIES": ".process",
    # typed messages
    "Hello": ".messages", "Pull": ".messages", "Resend": ".messages", "ModelHeader": ".messages",
    "MessageError": ".messages",
    # the runtime and its networks
    "World": ".runtime", "build_world": ".runtime", "run": ".runtime", "topology_of": ".runtime",
    "check_policy": ".runtime",
    "Network": ".network.base", "NetworkChange": ".network.base",
    "SimNetwork": ".network.sim", "UdpNetwork": ".network.udp", "build_topology": ".network.topology",
    # scenarios and results
    "Scenario": ".scenario", "ScenarioError": ".scenario", "load_scenario": ".scenario",
    "RunResult": ".metrics",
}
# names whose defining module calls them something else
_RENAMED = {"load_scenario": "load"}

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
