"""The node's local learner: its model and its own data, nothing else.

The MFD process talks to every learner (supervised, reinforcement, ...) through this one
interface; it never sees the data, only states, scores and the work done. Sharing,
gating and merging live in :mod:`mfd_core.knowledge`, not here.
"""
from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager

from torch import Tensor, nn

__all__ = ["Learner", "check_state", "only_trainable"]


def check_state(state: Mapping[str, Tensor], local: Mapping[str, Tensor], *, what: str = "shape",
                hint: str = "") -> None:
    """Every tensor of ``state`` is one of ``local``'s, of the same shape.

    :param what: how the message names the incoming tensor's shape ("candidate shape").
    :param hint: what the message adds after a shape mismatch.
    :raises KeyError: a tensor the model does not have.
    :raises ValueError: a tensor of another shape.
    """
    for key, value in state.items():
        if key not in local:
            raise KeyError(f"{key!r} is not a tensor of this model")
        if value.shape != local[key].shape:
            raise ValueError(f"{key}: {what} {tuple(value.shape)} != local {tuple(local[key].shape)}{hint}")


@contextmanager
def only_trainable(module: nn.Module, trainable: Collection[str] | None) -> Iterator[None]:
    """Within the block, only the parameters named in ``trainable`` (all when None) take
    gradients; the others are back as they were after it.

    requires_grad=False rather than zeroed gradients: the backward pass stops at the first
    trainable layer (the point of training few parameters), and Adam skips parameters
    without a gradient, so they stay bit-identical.

    :raises KeyError: ``trainable`` names a parameter the module does not have.
    """
    frozen: list[nn.Parameter] = []
    if trainable is not None:
        params = dict(module.named_parameters())
        unknown = set(trainable) - set(params)
        if unknown:
            raise KeyError(f"unknown parameters: {sorted(unknown)}")
        frozen = [p for k, p in params.items() if k not in trainable and p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


class Learner(ABC):
    """A node's model and its own train/validation data.

    Attributes every implementation sets:

    - ``family``: architecture family name (``"mlp"``, ``"cnn"``, ...); models of one
      family merge, others distil.
    - ``width``: width ratio in ``(0, 1]`` within the family.
    - ``num_samples``: size of the local train set; the weight of this node's model in
      a merge.
    - ``output_kind``: the :func:`mfd_core.knowledge.distillation_loss` kind that fits
      this learner's outputs (``"classification"``, ``"regression"``, ``"gaussian"``...).
    - ``work_done``: samples processed by :meth:`train` and :meth:`distil_from` so far
      (forward and backward), for the simulator's clock.
    """

    family: str
    width: float
    num_samples: int
    output_kind: str
    work_done: int = 0

    @abstractmethod
    def train(self, steps: int, trainable: Collection[str] | None = None) -> int:
        """Train for ``steps`` minibatch steps on the local data.

        :param steps: number of optimiser steps.
        :param trainable: when given, only these parameters change (the "activated"
            parameters of a low-compute node); the others stay bit-identical.
        :return: work done, in samples processed (simulated time = work / node speed).
        """

    @abstractmethod
    def score(self, state: Mapping[str, Tensor] | None = None) -> float:
        """Score on the node's own validation data; higher is better.

        :param state: when given, score this candidate state instead of the current
            one, without changing the learner (the gate uses this). It must have the
            local shapes; tensors it lacks take the local values.
        :return: accuracy for classification, ``-MSE`` for regression, return for RL.
        """

    @abstractmethod
    def get_state(self) -> dict[str, Tensor]:
        """The model state as detached clones (safe to send or keep)."""

    @abstractmethod
    def set_state(self, state: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None = None) -> None:
        """Write a state of the local shapes into the model.

        :param state: tensors to write; tensors it lacks keep their local values (a
            partial model writes only what arrived).
        :param masks: ``{name: bool tensor}``; where given, only the true elements are
            written and the rest keep their local values.
        """

    @abstractmethod
    def outputs(self, inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        """Model outputs on ``inputs`` without gradients (teacher side of distillation)."""

    @abstractmethod
    def local_inputs(self, n: int) -> Tensor:
        """Up to ``n`` of the node's own inputs; used only on the node, never sent."""

    @abstractmethod
    def distil_from(
        self,
        teacher: Callable[[Tensor], Tensor | tuple[Tensor, ...]],
        steps: int,
        kind: str,
        *,
        temperature: float = 2.0,
    ) -> float:
        """Train the local model to match a teacher's outputs on the node's own inputs.

        :param teacher: maps a batch of inputs to the teacher's outputs.
        :param steps: optimiser steps.
        :param kind: a :func:`mfd_core.knowledge.distillation_loss` kind.
        :param temperature: softening temperature for classification.
        :return: the divergence to the teacher on the local inputs after distilling.
        """

    @abstractmethod
    def evaluate(self, inputs: Tensor, targets: Tensor) -> float:
        """The :meth:`score` metric on given data (e.g. a global test set)."""

    def score_teacher(self, teacher: Callable[[Tensor], Tensor | tuple[Tensor, ...]]) -> float | None:
        """Score another model's forward function on the node's own validation data.

        Anything that can be distilled into this learner produces outputs of the same
        layout, so it can be scored with the same metric; the gate uses this to refuse a
        useless teacher before paying for a trial distillation.

        :param teacher: maps a batch of inputs to outputs laid out like :meth:`outputs`.
        :return: the :meth:`score` metric, or ``None`` when this learner cannot score a
            bare function (the gate then relies on the trial alone). The default.
        """
        return None

    def clone(self) -> Learner:
        """An independent copy (model, optimiser, generators); the gate trains on one.

        The default deep-copies; learners holding large buffers should override it.
        """
        return copy.deepcopy(self)
