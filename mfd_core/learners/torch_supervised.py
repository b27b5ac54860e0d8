"""A :class:`Learner` for any ``torch.nn.Module`` trained on in-memory (X, y) data.

Built for many tiny models on a CPU: data lives in tensors and minibatches are index
slices of them (a ``DataLoader`` costs more per step than these models' forward pass),
and shuffling uses the learner's own ``torch.Generator`` so that a run is reproducible
from its seed whatever else touches torch's global generator.
"""
from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.optim.adam import adam as _adam

from mfd_core.knowledge import distillation_loss
from mfd_core.learners.base import Learner, check_state, only_trainable

__all__ = ["FusedAdam", "TorchSupervisedLearner"]

ArrayLike = Tensor | np.ndarray

_OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}
# Modules whose forward never draws from torch's global generator (exact types: a
# subclass may override forward). A model made only of these trains without forking and
# seeding that generator, ~20 us a chunk, a tenth of a tiny model's whole step.
_DRAWLESS_MODULES = frozenset({
    nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.Identity, nn.Linear, nn.Bilinear, nn.Conv1d, nn.Conv2d,
    nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Unflatten, nn.ReLU, nn.LeakyReLU, nn.ELU,
    nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Softmax, nn.LogSoftmax, nn.LayerNorm, nn.Embedding,
})


def _as_tensors(data: tuple[ArrayLike, ArrayLike], task: str) -> tuple[Tensor, Tensor]:
    x, y = (torch.as_tensor(a) for a in data)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} inputs but {len(y)} targets")
    x = x.to(torch.float32)
    if task == "classification":
        y = y.to(torch.int64)
    else:
        y = y.to(torch.float32)
        if y.dim() == 1:  # one regression target per sample: match a (n, 1) output
            y = y.unsqueeze(1)
    return x, y


class TorchSupervisedLearner(Learner):
    """Supervised learner for any module: classification or regression.

    :param model: the local model (owned by the learner from here on).
    :param train_data: ``(inputs, targets)`` of the node's train set.
    :param val_data: ``(inputs, targets)`` of the node's validation set (the gate's).
    :param task: ``"classification"`` (integer labels, cross-entropy, accuracy) or
        ``"regression"`` (float targets, MSE, score ``-MSE``).
    :param batch_size: minibatch size (the whole set when it is smaller).
    :param lr: learning rate.
    :param optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"``.
    :param seed: seeds shuffling, sampling of local inputs and any randomness inside
        the model (dropout): same seed, same model and data, same result.
    :param family: architecture family name.
    :param width: width ratio within the family.
    :param label_weight: share of the label loss mixed into distillation (Hinton et
        al. 2015 mix hard labels and soft targets); ``0`` distils the teacher alone.
    :param nested_shapes: ordered dropout (FjORD, Horvath et al. 2021) for a width-nested
        model: the state shapes of the narrower sub-models it contains (prefix slices,
        ``family.shapes(r)`` of :mod:`mfd_core.scaling`). Each training step then trains
        one width drawn uniformly from the full model and these, so every prefix also
        works on its own and a sub-model extracted for a narrower node is a good model,
        not a slice that only ever worked with the units cut off. Empty: full width only.
    :param width_lr_exponent: learning-rate scaling for narrow (sub-)models. A model of
        width ratio ``r < 1`` (this learner's own ``width``, or a narrower width drawn by
        ordered dropout) trains every layer after the first at ``lr * r**-exponent``; the
        first layer, whose inputs do not shrink with the width, keeps ``lr``. A narrow
        model is a slice of a wide initialisation: each later layer sums over ``r`` of
        the units the wide model sums over, so its signals and the effect of one Adam
        step shrink with ``r``, and at the wide model's step size it learns several
        times slower (a quarter-width digits MLP: 0.52 against 0.82 mean accuracy after
        15 simulated seconds of the fleet). Maximal-update parametrisation (Yang and Hu
        2021) scales hidden learning rates with ``1/width`` for the same reason. ``0``
        (the default) trains every width at ``lr``; at ``width == 1`` without narrower
        widths nothing changes.
    :param logit_adjustment: classification only. Training adds this times the log of
        the node's own label frequencies to the logits before the loss (logit-adjusted
        loss, Menon et al. 2021): a node that holds few classes then does not learn to
        predict just those, because its prior is explained away, and the model it shares
        is closer to one trained on balanced data. Scoring and inference use the plain
        logits. ``0`` is the plain loss.
    """

    def __init__(
        self,
        model: nn.Module,
        train_data: tuple[ArrayLike, ArrayLike],
        val_data: tuple[ArrayLike, ArrayLike],
        *,
        task: str = "classification",
        batch_size: int = 32,
        lr: float = 1e-3,
        optimizer: str = "adam",
        seed: int = 0,
        family: str = "custom",
        width: float = 1.0,
        label_weight: float = 0.0,
        nested_shapes: Sequence[Mapping[str, Sequence[int]]] = (),
        logit_adjustment: float = 0.0,
        width_lr_exponent: float = 0.0,
    ) -> None:
        if task not in ("classification", "regression"):
            raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
        if optimizer not in _OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(_OPTIMIZERS)}, got {optimizer!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= label_weight <= 1:
            raise ValueError(f"label_weight must be in [0, 1], got {label_weight}")
        self.model = model
        self.task = task
        self.output_kind = task
        self.family, self.width = family, float(width)
        self.batch_size = batch_size
        self.label_weight = label_weight
        self.nested_shapes = [_checked_prefix_shapes(model, shapes) for shapes in nested_shapes]
        self.width_lr_exponent = float(width_lr_exponent)
        # each nested sub-model's width ratio within the family, from its first layer's units
        first_key, first = next(iter(model.state_dict().items()))
        self._nested_widths = [self.width * shapes[first_key][0] / first.shape[0] if first_key in shapes else self.width
                               for shapes in self.nested_shapes]
        self.x_train, self.y_train = _as_tensors(train_data, task)
        self.x_val, self.y_val = _as_tensors(val_data, task)
        if len(self.x_train) == 0 or len(self.x_val) == 0:
            raise ValueError("train and validation data must be non-empty")
        self.num_samples = len(self.x_train)
        self._log_prior = self._label_log_prior(logit_adjustment) if logit_adjustment else None
        self.work_done = 0
        self._optimizer_name, self.lr = optimizer, lr
        self.optimizer = self._make_optimizer()
        # train()/eval() walk every submodule on each call; only worth it where a layer
        # behaves differently in the two modes (dropout, batch norm)
        self._has_modes = any(isinstance(m, (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._NormBase))
                              for m in model.modules())
        self._draws_randomness = any(type(m) not in _DRAWLESS_MODULES for m in model.modules())
        self._state_owners: list[tuple[str, dict, str, Tensor]] | None = None  # see _state_tensors
        model.eval()
        self._shuffle = torch.Generator().manual_seed(seed)
        self._sample = torch.Generator().manual_seed(seed + 1)
        # its own stream: switching ordered dropout on must not reshuffle the minibatches
        self._width_draw = torch.Generator().manual_seed(seed + 2)
        self._order = torch.empty(0, dtype=torch.int64)
        self._pos = 0

    # ------------------------------------------------------------------ internals

    def _label_log_prior(self, tau: float) -> Tensor:
        if self.task != "classification":
            raise ValueError("logit_adjustment applies to classification only")
        with torch.no_grad():
            classes = self.model(self.x_train[:1]).shape[1]
        counts = torch.bincount(self.y_train, minlength=classes).to(torch.float32)
        # half a sample for every class: a class the node never saw gets a finite, low prior
        return tau * torch.log((counts + 0.5) / (counts + 0.5).sum())

    def _loss(self, out: Tensor, y: Tensor) -> Tensor:
        if self.task == "classification":
            if self._log_prior is not None:
                out = out + self._log_prior
            return nn.functional.cross_entropy(out, y)
        return nn.functional.mse_loss(out, y)

    def _metric(self, out: Tensor, y: Tensor) -> float:
        if self.task == "classification":
            return (out.argmax(dim=1) == y).to(torch.float32).mean().item()
        return -nn.functional.mse_loss(out, y).item()

    def _next_batch(self) -> Tensor:
        """Indices of the next minibatch: epochs of fresh permutations, tail dropped."""
        n = self.num_samples
        size = min(self.batch_size, n)
        if self._pos + size > len(self._order):
            self._order = torch.randperm(n, generator=self._shuffle)
            self._pos = 0
        idx = self._order[self._pos : self._pos + size]
        self._pos += size
        return idx

    def _state_tensors(self) -> dict[str, Tensor]:
        """The model's ``state_dict(keep_vars=True)``, without its walk over every module
        and its hooks: ~5 us, and a large fleet asks three times per message (send, merge,
        install). Each call checks that every tensor is still the one its module holds (an
        attribute assignment or ``load_state_dict(assign=True)`` replaces them) and walks
        again otherwise; a model whose state_dict is more than its parameters and
        persistent buffers (hooks, extra state, as the model is when first asked) is
        always walked. The learner owns the model: modules are not added or removed after
        construction."""
        owners = self._state_owners
        if owners:
            for _, container, name, tensor in owners:
                if container.get(name) is not tensor:
                    break
            else:
                return {key: tensor for key, _, _, tensor in owners}
        state = self.model.state_dict(keep_vars=True)
        if owners is None or owners:  # [] marks a model that is always walked
            found = []
            for prefix, module in self.model.named_modules():
                at = f"{prefix}." if prefix else ""
                found += [(at + name, module._parameters, name, t) for name, t in module._parameters.items()
                          if t is not None]
                found += [(at + name, module._buffers, name, t) for name, t in module._buffers.items()
                          if t is not None and name not in module._non_persistent_buffers_set]
            same = len(found) == len(state) and all(state.get(key) is t for key, _, _, t in found)
            self._state_owners = found if same and found else []
        return state

    def _lr_at(self, width: float) -> float:
        """Step size of the layers after the first when training at ``width`` (``width_lr_exponent``)."""
        return self.lr * width ** -self.width_lr_exponent

    def _scale_lr(self, width: float) -> None:
        """Set the optimiser's step sizes for training at ``width``."""
        groups = self.optimizer.param_groups
        if len(groups) == 2:
            groups[1]["lr"] = self._lr_at(width)

    def _make_optimizer(self) -> torch.optim.Optimizer | FusedAdam:
        # A method, not a stored closure: clone() deep-copies the learner, and a closure
        # would keep pointing at the original model's parameters.
        params = list(self.model.parameters())
        groups: list[dict] = [{"params": params}]
        if self.width_lr_exponent and (self.width < 1 or self.nested_shapes):
            # two groups: the first layer (the module of the first parameter) keeps lr,
            # the layers after it take the width's step size (_scale_lr)
            named = list(self.model.named_parameters())
            first = named[0][0].rpartition(".")[0]
            groups = [{"params": [p for k, p in named if k.rpartition(".")[0] == first]},
                      {"params": [p for k, p in named if k.rpartition(".")[0] != first],
                       "lr": self._lr_at(self.width)}]
        # Adam's fused kernel updates every tensor in one call: 2x faster per step than
        # the default loop of ~10 tensor ops per parameter, which dominates for the tiny
        # models of large simulated fleets. It needs float tensors on a device it knows.
        if self._optimizer_name in ("adam", "adamw") and params and all(
                p.is_floating_point() and p.device.type == "cpu" for p in params):
            return FusedAdam(groups, lr=self.lr, decoupled_weight_decay=self._optimizer_name == "adamw")
        return _OPTIMIZERS[self._optimizer_name](groups, lr=self.lr)

    def _steps(
        self,
        steps: int,
        loss_fn: Callable[[Tensor], Tensor],
        trainable: Collection[str] | None,
        optimizer: torch.optim.Optimizer | FusedAdam,
    ) -> int:
        """Run ``steps`` optimiser steps of ``loss_fn(batch indices)``; return samples."""
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        with only_trainable(self.model, trainable):
            work = 0
            if self._has_modes:
                self.model.train()
            try:
                # The model's own randomness (dropout) draws from a generator seeded by ours;
                # the seed is drawn even for a model without any, so that the minibatch
                # stream is the same whatever the model holds.
                seed = int(torch.randint(2**62, (1,), generator=self._shuffle))
                with torch.random.fork_rng(devices=[], enabled=self._draws_randomness):
                    if self._draws_randomness:
                        # the CPU generator only: torch.manual_seed also queues a lazy seed per
                        # accelerator backend, formatting a stack trace each time (~0.2 ms a call)
                        torch.default_generator.manual_seed(seed)
                    for _ in range(steps):
                        idx = self._next_batch()
                        _clear_grads(optimizer)
                        loss = loss_fn(idx)
                        if loss.requires_grad:
                            loss.backward()
                            optimizer.step()
                        work += idx.shape[0]
            finally:
                if self._has_modes:
                    self.model.eval()
        self.work_done += work
        return work

    # ------------------------------------------------------------------ Learner

    def _forward_at_drawn_width(self, x: Tensor) -> Tensor:
        """The model, or one of its nested sub-models (ordered dropout), on ``x``."""
        pick = int(torch.randint(len(self.nested_shapes) + 1, (1,), generator=self._width_draw))
        if pick == len(self.nested_shapes):
            self._scale_lr(self.width)
            return self.model(x)
        self._scale_lr(self._nested_widths[pick])
        # The sub-model's tensors are views of the prefixes of the model's own, so its
        # gradients land in those prefixes; nn.Linear and nn.Conv2d take their sizes from
        # the tensors they are given, not from their constructor.
        params = dict(self.model.named_parameters())
        sliced = {k: params[k][tuple(slice(0, n) for n in shape)] for k, shape in self.nested_shapes[pick].items()}
        return functional_call(self.model, sliced, (x,), strict=False)

    def train(self, steps: int, trainable: Collection[str] | None = None) -> int:
        forward = self._forward_at_drawn_width if self.nested_shapes else self.model

        def loss_fn(idx: Tensor) -> Tensor:
            return self._loss(forward(self.x_train[idx]), self.y_train[idx])

        try:
            return self._steps(steps, loss_fn, trainable, self.optimizer)
        finally:
            self._scale_lr(self.width)

    @torch.no_grad()
    def score(self, state: Mapping[str, Tensor] | None = None) -> float:
        if self._has_modes:
            self.model.eval()
        if state is None:
            return self._metric(self.model(self.x_val), self.y_val)
        check_state(state, self._state_tensors(), what="candidate shape")
        # functional_call runs the module with the candidate tensors swapped in for this
        # call only: the learner's own parameters are never touched.
        out = functional_call(self.model, dict(state), (self.x_val,), strict=False)
        return self._metric(out, self.y_val)

    @torch.no_grad()
    def score_teacher(self, teacher: Callable[[Tensor], Tensor | tuple[Tensor, ...]]) -> float:
        out = teacher(self.x_val)
        if not isinstance(out, Tensor):
            raise TypeError(f"a supervised teacher must return a tensor, got {type(out).__name__}")
        return self._metric(out, self.y_val)

    def get_state(self) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in self._state_tensors().items()}

    @torch.no_grad()
    def set_state(self, state: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None = None) -> None:
        local = self._state_tensors()  # the model's own tensors
        check_state(state, local, hint="; fit other widths with mfd_core.scaling.absorb / merge_overlapping first")
        for key, value in state.items():
            dst = local[key]
            mask = None if masks is None else masks.get(key)
            if mask is None:
                dst.copy_(value)
            else:
                if mask.shape != dst.shape:
                    raise ValueError(f"{key}: mask shape {tuple(mask.shape)} != {tuple(dst.shape)}")
                dst.copy_(torch.where(mask.to(torch.bool), value.to(dst.dtype), dst))
        for key in (masks or {}):
            if key not in state:
                raise KeyError(f"mask for {key!r} without a tensor")

    @torch.no_grad()
    def outputs(self, inputs: Tensor) -> Tensor:
        if self._has_modes:
            self.model.eval()
        return self.model(torch.as_tensor(inputs, dtype=torch.float32))

    def local_inputs(self, n: int) -> Tensor:
        if n >= self.num_samples:
            return self.x_train.clone()
        return self.x_train[torch.randperm(self.num_samples, generator=self._sample)[:n]]

    def distil_from(
        self,
        teacher: Callable[[Tensor], Tensor | tuple[Tensor, ...]],
        steps: int,
        kind: str,
        *,
        temperature: float = 2.0,
    ) -> float:
        # The teacher is fixed: its outputs on every local input are computed once.
        with torch.no_grad():
            target = teacher(self.x_train)
        if isinstance(target, Tensor):
            target = target.detach()
        w = self.label_weight

        def loss_fn(idx: Tensor) -> Tensor:
            out = self.model(self.x_train[idx])
            soft = distillation_loss(out, _take(target, idx), kind, temperature=temperature)
            return soft if w == 0 else (1 - w) * soft + w * self._loss(out, self.y_train[idx])

        # A fresh optimiser: the training optimiser's momentum points along the label
        # loss and would keep training on labels for a dozen steps, which a trial
        # distillation would then credit to the teacher.
        self._steps(steps, loss_fn, None, self._make_optimizer())
        with torch.no_grad():
            return float(distillation_loss(self.model(self.x_train), target, kind, temperature=temperature))

    @torch.no_grad()
    def evaluate(self, inputs: ArrayLike, targets: ArrayLike) -> float:
        x, y = _as_tensors((inputs, targets), self.task)
        if self._has_modes:
            self.model.eval()
        return self._metric(self.model(x), y)

    def __repr__(self) -> str:
        return (
            f"TorchSupervisedLearner(family={self.family!r}, width={self.width}, task={self.task!r}, "
            f"num_samples={self.num_samples})"
        )


def _checked_prefix_shapes(model: nn.Module, shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    """``shapes`` as tuples, after checking each names a parameter and is a prefix of it."""
    params = dict(model.named_parameters())
    out: dict[str, tuple[int, ...]] = {}
    for key, shape in shapes.items():
        if key not in params:
            raise KeyError(f"nested shape for {key!r}, which is not a parameter of the model")
        shape = tuple(int(n) for n in shape)
        full = tuple(params[key].shape)
        if len(shape) != len(full) or any(not 0 < n <= f for n, f in zip(shape, full)):
            raise ValueError(f"{key}: nested shape {shape} is not a prefix of {full}")
        out[key] = shape
    return out


def _clear_grads(optimizer: torch.optim.Optimizer | FusedAdam) -> None:
    """``optimizer.zero_grad(set_to_none=True)`` without its profiler annotation, which
    costs more than the rest of it (~20 us a step in a 1,000-node fleet)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = None


class FusedAdam:
    """Adam, or AdamW with ``decoupled_weight_decay``, on CPU float parameters: what
    ``torch.optim.Adam(groups, lr=lr, fused=True)`` (``AdamW``) does with its default
    hyperparameters, without being a ``torch.optim.Optimizer``.

    - Constructing any ``torch.optim.Optimizer`` imports torch's compiler stack, because
      its ``add_param_group`` is wrapped in ``torch._disable_dynamo``: 1.1 s of CPU, as
      much as importing torch itself, for a kernel that needs none of it.
    - ``Optimizer.step()`` wraps the kernel in hook and profiler bookkeeping and gathers the
      state anew (``_init_group``) on every call, which costs more than the update itself
      for a tiny model (~20 us a step in a 1,000-node fleet).

    The same kernel (``torch.optim.adam.adam(..., fused=True)``) with the same arguments,
    its state made as ``_init_group`` makes it: bit-identical updates (pinned by
    ``tests/test_learners.py``). ``param_groups`` and ``state`` are laid out as torch's, so
    code that reads or sets a group's ``lr`` works on either.

    :param groups: ``[{"params": [...], optionally "lr": ...}]``, as torch takes them.
    :param lr: step size of the groups that name none.
    :param decoupled_weight_decay: AdamW (decay ``1e-2``, torch's default) rather than Adam (none).
    """

    def __init__(self, groups: Sequence[Mapping], *, lr: float, decoupled_weight_decay: bool = False) -> None:
        decay = 1e-2 if decoupled_weight_decay else 0.0
        self.param_groups = [{"lr": lr, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": decay,
                              "decoupled_weight_decay": decoupled_weight_decay, **group, "params": list(group["params"])}
                             for group in groups]
        for group in self.param_groups:
            for p in group["params"]:
                if not (p.is_floating_point() and p.device.type == "cpu"):
                    raise ValueError(f"FusedAdam takes CPU float parameters, got {p.dtype} on {p.device.type}")
        self.state: dict[Tensor, dict[str, Tensor]] = {}

    def _state_of(self, p: Tensor) -> dict[str, Tensor]:
        state = self.state.get(p)
        if state is None:
            if p.grad.is_sparse:
                raise RuntimeError("Adam does not support sparse gradients")
            # as Adam._init_group makes it for a fused group: a float32 step on the parameter's device
            state = self.state[p] = {"step": torch.zeros((), dtype=torch.float32, device=p.device),
                                     "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                                     "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
        return state

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient (the others keep their values and state)."""
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            states = [self._state_of(p) for p in params]
            beta1, beta2 = group["betas"]
            _adam(params, [p.grad for p in params], [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                  [], [s["step"] for s in states], fused=True, amsgrad=False, beta1=beta1, beta2=beta2,
                  lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"], maximize=False,
                  decoupled_weight_decay=group["decoupled_weight_decay"])


def _take(outputs: Tensor | tuple[Tensor, ...], idx: Tensor) -> Tensor | tuple[Tensor, ...]:
    """Rows ``idx`` of an output tensor or of each tensor of an output tuple."""
    if isinstance(outputs, tuple):
        return tuple(o[idx] for o in outputs)
    return outputs[idx]
