"""Width-nested model families: sub-models, their absorption back, and fitting a receiver.

A family is nested in width as in HeteroFL (Diao et al., ICLR 2021): the sub-model of
ratio ``r`` keeps the first ``ceil(r * C)`` units of every hidden layer; the input and
output layers keep their size. Every tensor of a sub-model is then a *prefix slice* (on
every dimension) of the same tensor of a wider model, so :func:`extract`, :func:`absorb`
and :func:`merge_overlapping` need no knowledge of the architecture: they work on any
family whose widths nest this way, and on any mix of widths of one family.

No normalisation layers: HeteroFL has to replace BatchNorm by a "static" one whose
statistics are not shared, because running statistics of a sub-model do not slice. Plain
layers slice exactly.
"""
from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "ModelFamily",
    "MLPFamily",
    "SmallCNNFamily",
    "scaled_width",
    "extract",
    "absorb",
    "merge_overlapping",
    "ReceiverProfile",
    "param_count",
    "flops_per_sample",
    "choose_ratio",
    "choose_precision",
    "activated_parameters",
    "BYTES_PER_ELEMENT",
]

# Wire bytes per element at each precision; int8's per-tensor scale is negligible here.
BYTES_PER_ELEMENT: dict[str, int] = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}


def scaled_width(units: int, ratio: float) -> int:
    """Units a layer of ``units`` keeps at ``ratio``: ``ceil(ratio * units)``, at least 1.

    Rounded to 9 decimals first so that float noise (``0.3 * 10 = 3.0000000000000004``)
    does not add a unit.
    """
    _check_ratio(ratio)
    return max(1, math.ceil(round(ratio * units, 9)))


def _check_ratio(ratio: float) -> None:
    if not 0 < ratio <= 1:
        raise ValueError(f"width ratio must be in (0, 1], got {ratio}")


class ModelFamily(ABC):
    """An architecture whose models of every width ratio nest by prefix slicing.

    Subclasses set :attr:`name` and :attr:`input_shape` and implement :meth:`_make`.
    """

    #: Family name carried in messages; two families with one name must be one architecture.
    name: str
    #: Shape of one input sample (without the batch dimension).
    input_shape: tuple[int, ...]

    @abstractmethod
    def _make(self, ratio: float) -> nn.Module:
        """The module of width ``ratio`` with torch's default initialisation."""

    def build(self, ratio: float = 1.0, seed: int | None = None) -> nn.Module:
        """Make the model of width ``ratio``.

        :param ratio: width ratio in ``(0, 1]``.
        :param seed: when given, the full-width model is initialised from this seed and
            the result is its prefix slice, so models of every width built from one seed
            start as slices of one model (as HeteroFL's sub-models are slices of the
            global one): merging them is meaningful from the first step. When ``None``
            torch's global generator initialises it.
        """
        _check_ratio(ratio)
        if seed is None:
            return self._make(ratio)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # CPU only: see TorchSupervisedLearner._steps
            full = self._make(1.0)
        if ratio == 1.0:
            return full
        model = self._make(ratio)
        model.load_state_dict(extract(full.state_dict(), self.shapes(ratio)), strict=True)
        return model

    def shapes(self, ratio: float = 1.0) -> dict[str, torch.Size]:
        """Shape of every state tensor of the model of width ``ratio``."""
        _check_ratio(ratio)
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            model = self._make(ratio)
        return {k: v.shape for k, v in model.state_dict().items()}

    def fingerprint(self) -> int:
        """32-bit architecture id: name and full-width shapes (for a message's family id)."""
        text = self.name + ";" + ";".join(f"{k}:{tuple(s)}" for k, s in self.shapes(1.0).items())
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class MLPFamily(ModelFamily):
    """Fully connected ReLU network; hidden layers scale with the ratio.

    State names: ``fc0.*``, ``fc1.*``, ... for hidden layers, ``out.*`` for the output.

    :param in_dim: input features (kept at every ratio).
    :param hidden: hidden layer widths at ratio 1.
    :param out_dim: outputs (kept at every ratio).
    :param name: family name; default ``"mlp"``.
    """

    def __init__(self, in_dim: int, hidden: Sequence[int] = (64, 64), out_dim: int = 10, name: str = "mlp") -> None:
        self.in_dim, self.hidden, self.out_dim, self.name = in_dim, tuple(hidden), out_dim, name
        self.input_shape = (in_dim,)

    def _make(self, ratio: float) -> nn.Module:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        width = self.in_dim
        for i, h in enumerate(self.hidden):
            layers[f"fc{i}"] = nn.Linear(width, scaled_width(h, ratio))
            layers[f"act{i}"] = nn.ReLU()
            width = scaled_width(h, ratio)
        layers["out"] = nn.Linear(width, self.out_dim)
        return nn.Sequential(layers)


class SmallCNNFamily(ModelFamily):
    """Two 3x3 conv layers, 2x2 max-pool, one hidden dense layer; takes flat inputs.

    It reshapes flat ``C*H*W`` rows inside, so it trains on the same data as
    :class:`MLPFamily`. Flattening is channel-major, so the first ``k`` channels of the
    last conv are the first ``k*H*W/4`` inputs of the dense layer: prefix slicing stays
    exact across the flatten.

    State names: ``conv0.*``, ``conv1.*``, ``fc.*``, ``out.*``.

    :param in_channels: input channels (kept).
    :param image: ``(height, width)`` of the image.
    :param channels: conv channels at ratio 1.
    :param hidden: dense hidden units at ratio 1.
    :param out_dim: outputs (kept).
    :param name: family name; default ``"cnn"``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image: tuple[int, int] = (8, 8),
        channels: tuple[int, int] = (16, 32),
        hidden: int = 64,
        out_dim: int = 10,
        name: str = "cnn",
    ) -> None:
        self.in_channels, self.image, self.channels = in_channels, tuple(image), tuple(channels)
        self.hidden, self.out_dim, self.name = hidden, out_dim, name
        self.input_shape = (in_channels * image[0] * image[1],)

    def _make(self, ratio: float) -> nn.Module:
        c0, c1 = (scaled_width(c, ratio) for c in self.channels)
        h = scaled_width(self.hidden, ratio)
        pooled = (self.image[0] // 2) * (self.image[1] // 2)
        return nn.Sequential(
            OrderedDict(
                [
                    ("unflatten", nn.Unflatten(1, (self.in_channels, *self.image))),
                    ("conv0", nn.Conv2d(self.in_channels, c0, 3, padding=1)),
                    ("act0", nn.ReLU()),
                    ("conv1", nn.Conv2d(c0, c1, 3, padding=1)),
                    ("act1", nn.ReLU()),
                    ("pool", nn.MaxPool2d(2)),
                    ("flatten", nn.Flatten()),
                    ("fc", nn.Linear(c1 * pooled, h)),
                    ("act2", nn.ReLU()),
                    ("out", nn.Linear(h, self.out_dim)),
                ]
            )
        )


# --------------------------------------------------------------------------- slicing


def _overlap(a: Sequence[int], b: Sequence[int], name: str) -> tuple[slice, ...]:
    """Prefix slice of the region two nested tensors share: the smaller size on each dim."""
    if len(a) != len(b):
        raise ValueError(f"{name}: tensors of {len(a)} and {len(b)} dims do not nest")
    return tuple(slice(0, min(x, y)) for x, y in zip(a, b))


def extract(state: Mapping[str, Tensor], shapes: Mapping[str, Sequence[int]]) -> dict[str, Tensor]:
    """The sub-model state of the given shapes: a prefix slice of every tensor.

    Use ``family.shapes(ratio)`` for the shapes of a width ratio.

    :param state: state of a wider (or equal) model of the family.
    :param shapes: wanted shape of every tensor; keys not in ``shapes`` are left out
        (e.g. pass only the activated parameters).
    :return: new contiguous tensors (no views into ``state``).
    :raises KeyError: a wanted tensor is missing from ``state``.
    :raises ValueError: a wanted shape is not a prefix of the tensor's shape.
    """
    out: dict[str, Tensor] = {}
    for key, shape in shapes.items():
        if key not in state:
            raise KeyError(f"{key!r} not in state")
        t = state[key]
        shape = tuple(shape)
        if len(shape) != t.dim() or any(s > f for s, f in zip(shape, t.shape)):
            raise ValueError(f"{key}: shape {shape} is not a prefix slice of {tuple(t.shape)}")
        out[key] = t[tuple(slice(0, s) for s in shape)].clone()
    return out


def absorb(full_state: Mapping[str, Tensor], sub_state: Mapping[str, Tensor], weight: float) -> dict[str, Tensor]:
    """Blend a sub-model into the overlapping prefix slice of a larger one.

    Inside the overlap: ``(1 - weight) * full + weight * sub``; everything else (and every
    tensor ``sub_state`` lacks) is unchanged, bit for bit. ``weight == 1`` copies ``sub``
    exactly, so extract-then-absorb at ratio 1 is the identity.

    :param full_state: the model to absorb into (not modified).
    :param sub_state: state of a model of the same family; any width (a wider one
        contributes its slice of the overlap).
    :param weight: blend weight in ``[0, 1]``.
    :return: new state with the shapes of ``full_state``.
    """
    if not 0 <= weight <= 1:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    out = {k: v.clone() for k, v in full_state.items()}
    for key, sub in sub_state.items():
        if key not in out:
            raise KeyError(f"{key!r} of the sub-model is not in the full state")
        dst = out[key]
        region = _overlap(dst.shape, sub.shape, key)
        src = sub[region].to(dst.dtype)
        if weight == 1 or not dst.is_floating_point():
            dst[region] = src
        elif weight > 0:
            dst[region] = (1 - weight) * dst[region] + weight * src
    return out


def merge_overlapping(
    base_state: Mapping[str, Tensor],
    contributions: Sequence[tuple[Mapping[str, Tensor], float]],
    *,
    base_weight: float = 1.0,
    masks: Sequence[Mapping[str, Tensor] | None] | None = None,
    silent_units: bool = False,
) -> dict[str, Tensor]:
    """HeteroFL's overlap-weighted average, plus the base model.

    Every element becomes ``(base_weight * base + sum_i w_i * s_i) / (base_weight +
    sum_i w_i)`` over the contributions ``i`` that cover it (their tensor reaches that
    element and, where masks are given, their mask is true there). Elements that no
    contribution covers keep the base value exactly.

    With ``silent_units`` a narrower contribution also covers, with the value 0, the
    weights from the units it lacks into the units it has: a sub-model computes what the
    wider model computes with those units switched off, so it says those weights are
    zero. The average is then one of the models' functions, not of a sub-model's prefix
    spliced onto a wider model's other units, whose outputs were tuned to the old
    prefix. In a weight tensor (dim 0 the output units, dims 1+ the inputs, as in
    ``nn.Linear`` and ``nn.Conv2d``) that is every element within the contribution's
    output units but beyond its inputs; the output layer's columns from the missing
    hidden units are the part that matters. Those weights then shrink as narrower
    neighbours' models arrive, where plain HeteroFL keeps a wide node's extra units only
    as good as the few wide nodes that train them (1-D tensors, biases: unchanged rule).
    Under a mask, a unit's zeros count only where some of its weights arrived.

    :param base_state: the receiver's own state; fixes the output shapes (not modified).
    :param contributions: ``(state, weight)`` pairs, ``weight >= 0`` (e.g. the sender's
        sample count); states of any width of the family, possibly lacking tensors
        (a partial message: missing tensors contribute nothing).
    :param base_weight: weight of the base model, ``>= 0``.
    :param masks: one entry per contribution, ``None`` or ``{name: bool tensor}`` shaped
        like that contribution's tensor; false elements contribute nothing. A tensor with
        no mask entry counts as complete.
    :param silent_units: count the weights from units a narrower contribution lacks
        into the units it has as zeros of that contribution (see above).
    :return: new state with the shapes of ``base_state``.
    """
    if masks is not None and len(masks) != len(contributions):
        raise ValueError(f"{len(masks)} masks for {len(contributions)} contributions")
    if base_weight < 0 or any(w < 0 for _, w in contributions):
        raise ValueError("weights must be >= 0")
    if masks is None or all(m is None for m in masks):
        whole = _plain_average(base_state, contributions, base_weight)
        if whole is not None:
            return whole
    out: dict[str, Tensor] = {}
    for key, base in base_state.items():
        if not base.is_floating_point():  # counters and the like are not averaged
            out[key] = base.clone()
            continue
        # float64 accumulation: the sum of many weighted terms should not lose the base's
        # low bits; cast back at the end.
        present = [(state[key], w, None if masks is None or masks[i] is None else masks[i].get(key))
                   for i, (state, w) in enumerate(contributions) if key in state and w > 0]
        if not present:
            out[key] = base.clone()
            continue
        if all(t.shape == base.shape and m is None for t, _, m in present):
            # The common case (same width, complete): a plain weighted average. Same
            # result as the general path; ~5x cheaper for the tiny models of big fleets.
            out[key] = _weighted_average(base, [(t, w) for t, w, _ in present], base_weight).to(base.dtype)
            continue
        num = base.to(torch.float64) * base_weight
        den = torch.full(base.shape, float(base_weight), dtype=torch.float64)
        covered = torch.zeros(base.shape, dtype=torch.bool)
        for i, (state, weight) in enumerate(contributions):
            if key not in state or weight == 0:
                continue
            sub = state[key]
            region = _overlap(base.shape, sub.shape, key)
            mask = None if masks is None or masks[i] is None else masks[i].get(key)
            if mask is None:
                part = torch.ones(tuple(r.stop for r in region), dtype=torch.bool)
            else:
                if mask.shape != sub.shape:
                    raise ValueError(f"{key}: mask shape {tuple(mask.shape)} != tensor shape {tuple(sub.shape)}")
                part = mask[region].to(torch.bool)
            contrib = sub[region].to(torch.float64)
            num[region] += torch.where(part, contrib * weight, 0.0)
            den[region] += part * float(weight)
            covered[region] |= part
            if silent_units and base.dim() >= 2:
                # within the contribution's output units, beyond its inputs: zeros of
                # the sub-model (the numerator gains nothing). They go with their unit:
                # a unit none of whose weights arrived says nothing.
                silent = torch.zeros(base.shape, dtype=torch.bool)
                silent[region[0]] = part.reshape(part.shape[0], -1).any(dim=1).reshape(-1, *[1] * (base.dim() - 1))
                silent[region] = False
                den += silent * float(weight)
                covered |= silent
        merged = (num / den.clamp_min(torch.finfo(torch.float64).tiny)).to(base.dtype)
        out[key] = torch.where(covered & (den > 0), merged, base)
    for i, (state, _) in enumerate(contributions):
        unknown = set(state) - set(base_state)
        if unknown:
            raise KeyError(f"contribution {i} has tensors the base lacks: {sorted(unknown)}")
    return out


def _weighted_average(base: Tensor, parts: Sequence[tuple[Tensor, float]], base_weight: float) -> Tensor:
    """``base`` and ``parts`` averaged by weight, in float64 (the sum of many weighted
    terms should not lose the base's low bits); the caller casts back."""
    total = base_weight + sum(w for _, w in parts)
    acc = base.to(torch.float64) * (base_weight / total)
    for t, w in parts:
        acc += t.to(torch.float64) * (w / total)
    return acc


def _plain_average(base_state: Mapping[str, Tensor], contributions: Sequence[tuple[Mapping[str, Tensor], float]],
                   base_weight: float) -> dict[str, Tensor] | None:
    """:func:`merge_overlapping` where every contribution is complete and of the base's
    own tensors, shapes and (one, floating) dtype: the per-tensor weighted average done
    once over all tensors laid end to end. The same operations on every element, so the
    same bits; a model of a few small tensors (a gossiping fleet's) merges ~2x faster.
    None where that does not hold."""
    weighted = [(state, w) for state, w in contributions if w > 0]
    if not weighted or not base_state:
        return None
    dtype = next(iter(base_state.values())).dtype
    if not dtype.is_floating_point:
        return None
    for key, base in base_state.items():
        if base.dtype != dtype or any(key not in state or state[key].shape != base.shape for state, _ in weighted):
            return None
    if any(len(state) != len(base_state) for state, _ in weighted):
        return None  # tensors the base lacks: the general path names them
    if dtype in _NUMPY_FLOATS and all(t.device.type == "cpu" for t in base_state.values()):
        # numpy's per-call cost is a fraction of torch's, and a fleet's models are a few
        # small tensors: the same float64 products and sums in the same order, so the same bits
        def flat(state):
            return np.concatenate([state[key].detach().numpy().reshape(-1) for key in base_state])

        total = base_weight + sum(w for _, w in weighted)
        acc = flat(base_state).astype(np.float64) * (base_weight / total)
        for state, w in weighted:
            acc += flat(state).astype(np.float64) * (w / total)
        merged = torch.from_numpy(acc.astype(_NUMPY_FLOATS[dtype]))
    else:
        merged = _weighted_average(torch.cat([t.reshape(-1) for t in base_state.values()]),
                                   [(torch.cat([state[key].reshape(-1) for key in base_state]), w)
                                    for state, w in weighted], base_weight).to(dtype)
    return {key: piece.view(base.shape) for (key, base), piece in
            zip(base_state.items(), merged.split([t.numel() for t in base_state.values()]))}


_NUMPY_FLOATS = {torch.float32: np.float32, torch.float64: np.float64}


# --------------------------------------------------------------------------- fitting


@dataclass(frozen=True)
class ReceiverProfile:
    """What a receiving node can hold, compute and receive.

    :param memory_bytes: memory the receiver gives the model for training.
    :param compute_flops: training throughput in FLOP/s.
    :param link_bandwidth: bytes/s of the link to it.
    :param link_loss: datagram loss probability of that link, in ``[0, 1)``.
    """

    memory_bytes: float
    compute_flops: float
    link_bandwidth: float
    link_loss: float = 0.0

    def __post_init__(self) -> None:
        if self.memory_bytes <= 0 or self.compute_flops <= 0 or self.link_bandwidth <= 0:
            raise ValueError(f"memory, compute and bandwidth must be > 0: {self}")
        if not 0 <= self.link_loss < 1:
            raise ValueError(f"link_loss must be in [0, 1), got {self.link_loss}")


def param_count(family: ModelFamily, ratio: float = 1.0) -> int:
    """Number of elements in the state of the model of width ``ratio``."""
    return sum(math.prod(s) for s in family.shapes(ratio).values())


def flops_per_sample(family: ModelFamily, ratio: float = 1.0) -> int:
    """Forward FLOPs (2 per multiply-add) of one sample through the model of ``ratio``.

    Counted from Linear and Conv layers with forward hooks; other layers are noise at
    this size.
    """
    model = family.build(ratio)
    macs = 0

    def _count(module: nn.Module, _inp: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Linear):
            macs += module.in_features * module.out_features
        elif isinstance(module, nn.modules.conv._ConvNd):
            per_out = module.in_channels // module.groups * math.prod(module.kernel_size)
            macs += out[0].numel() * per_out

    hooks = [m.register_forward_hook(_count) for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *family.input_shape))
    finally:
        for h in hooks:
            h.remove()
    return 2 * macs


# Training memory per parameter: fp32 weights, gradients and Adam's two moments.
_TRAIN_BYTES_PER_PARAM = 16
# Training FLOPs per sample = 3 x forward (backward costs about twice the forward;
# Kaplan et al. 2020 count 6N per token against 2N forward).
_TRAIN_FLOPS_FACTOR = 3


def choose_precision(
    profile: ReceiverProfile,
    *,
    fp16_below_bandwidth: float = 1e6,
    int8_below_bandwidth: float = 1e5,
    fp16_above_loss: float = 0.01,
    int8_above_loss: float = 0.05,
) -> str:
    """Wire precision for a receiver: lower on slow or lossy links.

    Fewer bytes mean fewer fragments, and a message of ``F`` fragments arrives whole with
    probability ``(1 - loss) ** F``, so a lossy link favours small messages as much as a
    slow one. Averaging tolerates int8 with a per-tensor scale (QSGD, Alistarh et al.
    2017, trains at 4-8 bits). Thresholds are keyword arguments: a scenario may move them.

    :param profile: the receiver.
    :return: ``"fp32"``, ``"fp16"`` or ``"int8"``.
    """
    if profile.link_bandwidth < int8_below_bandwidth or profile.link_loss >= int8_above_loss:
        return "int8"
    if profile.link_bandwidth < fp16_below_bandwidth or profile.link_loss >= fp16_above_loss:
        return "fp16"
    return "fp32"


def choose_ratio(
    family: ModelFamily,
    profile: ReceiverProfile,
    ratios: Sequence[float] = (0.25, 0.5, 1.0),
    time_budget_s: float = 10.0,
    *,
    train_samples: int = 1000,
    precision: str | None = None,
) -> float | None:
    """Largest width ratio a receiver can hold, receive and train within the budget.

    A ratio fits when (1) its training memory (16 bytes a parameter: fp32 weights,
    gradients, Adam moments) fits ``memory_bytes``, and (2) receiving it plus training it
    on ``train_samples`` samples takes at most ``time_budget_s``: transfer is
    ``bytes / (bandwidth * (1 - loss))`` (lost fragments are resent or missed, either
    way the goodput), training is ``train_samples * 3 * forward FLOPs / compute_flops``.

    :param family: the model family.
    :param profile: the receiver.
    :param ratios: candidate ratios.
    :param time_budget_s: time for one receive-and-train round.
    :param train_samples: samples the receiver processes in that round.
    :param precision: wire precision; default :func:`choose_precision` of the profile.
    :return: the ratio, or ``None`` when not even the smallest fits (send nothing).
    """
    precision = choose_precision(profile) if precision is None else precision
    if precision not in BYTES_PER_ELEMENT:
        raise ValueError(f"unknown precision {precision!r}; expected one of {sorted(BYTES_PER_ELEMENT)}")
    for ratio in sorted(ratios, reverse=True):
        n = param_count(family, ratio)
        if n * _TRAIN_BYTES_PER_PARAM > profile.memory_bytes:
            continue
        transfer_s = n * BYTES_PER_ELEMENT[precision] / (profile.link_bandwidth * (1 - profile.link_loss))
        train_s = train_samples * _TRAIN_FLOPS_FACTOR * flops_per_sample(family, ratio) / profile.compute_flops
        if transfer_s + train_s <= time_budget_s:
            return ratio
    return None


def activated_parameters(model_or_state: nn.Module | Mapping[str, Tensor], fraction: float) -> list[str]:
    """Parameters a low-compute node trains: the last layers, up to ``fraction`` of all.

    Layers (a module's weight and bias together) are taken from the output backwards
    while their total stays within ``fraction`` of the parameter count, and always at
    least the output layer: the last layers adapt a model to local data at the lowest
    backward cost (the gradient stops there), as in partial fine-tuning.

    :param model_or_state: a module (its parameters) or a state (its float tensors).
    :param fraction: share of parameters to train, in ``(0, 1]``.
    :return: names in model order; a message then carries only these.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if isinstance(model_or_state, nn.Module):
        sizes = {k: p.numel() for k, p in model_or_state.named_parameters()}
    else:
        sizes = {k: v.numel() for k, v in model_or_state.items() if v.is_floating_point()}
    if not sizes:
        return []
    layers: OrderedDict[str, list[str]] = OrderedDict()
    for key in sizes:
        layers.setdefault(key.rpartition(".")[0], []).append(key)
    budget = fraction * sum(sizes.values())
    chosen: list[str] = []
    total = 0
    for names in reversed(layers.values()):
        count = sum(sizes[k] for k in names)
        if chosen and total + count > budget:
            break
        chosen = names + chosen
        total += count
    return chosen
