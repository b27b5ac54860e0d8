"""Generic learner adapters: a node's model and its own data behind one interface."""
from __future__ import annotations

import importlib
from typing import Any

from mfd_core.learners.base import Learner
from mfd_core.learners.torch_supervised import TorchSupervisedLearner

# resolved on first use: a supervised run does not pay for gymnasium
_LAZY = {"SharedEnvCommons": "mfd_core.learners.shared_env", "SharedEnvLearner": "mfd_core.learners.shared_env"}

__all__ = ["Learner", "TorchSupervisedLearner", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mfd_core.learners' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
