"""Generic learner adapters: a node's model and its own data behind one interface."""
from mfd_core.learners.base import Learner
from mfd_core.learners.torch_supervised import TorchSupervisedLearner

__all__ = ["Learner", "TorchSupervisedLearner"]
