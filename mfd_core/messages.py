"""The messages nodes exchange, as small typed records (h11's ``_events.py`` is the model).

A model message carries tensors and a :class:`ModelHeader` (what the model is and why it
was sent); a control message carries no tensors: :class:`Hello` (a node's profile, sent
to its neighbours), :class:`Pull` (a (re)joining node asks for models), :class:`Resend`
(a receiver asks for the fragments it lacks). Each record has one ``encode`` and one
``decode``; ``decode`` reads what a peer sent, so it checks every field's type and range
and raises :class:`MessageError` on anything else (a hostile or broken peer costs a
dropped message, never an exception elsewhere).

On the wire the records ride in the manifest's ``meta`` object (docs/packet-format.md,
section 4.2), keyed by ``"kind"``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Union

# A resend request is read up to this many fragment ranges (a message has at most 2^24
# fragments; a request naming more ranges than its message has fragments is nonsense).
MAX_RESEND_RANGES = 1 << 16
# A data profile names at most this many classes (the share of each in a node's data).
MAX_LABELS = 1024
MAX_NAME = 128


class MessageError(ValueError):
    """A message whose fields are missing, of the wrong type or out of range."""


# -- field readers: what a peer sent, checked ---------------------------------------------

def _int(meta: Mapping[str, Any], key: str, default: int | None = None, *, low: int = 0,
         high: int = (1 << 63) - 1) -> int:
    value = meta.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise MessageError(f"{key}: expected an integer in [{low}, {high}], got {value!r}")
    return value


def _float(meta: Mapping[str, Any], key: str, default: float | None = None) -> float:
    value = meta.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MessageError(f"{key}: expected a finite number, got {value!r}")
    return float(value)


def _optional_float(meta: Mapping[str, Any], key: str) -> float | None:
    return None if meta.get(key) is None else _float(meta, key)


def _str(meta: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = meta.get(key, default)
    if not isinstance(value, str) or len(value) > MAX_NAME:
        raise MessageError(f"{key}: expected a name of at most {MAX_NAME} characters, got {value!r}")
    return value


def _floats(meta: Mapping[str, Any], key: str) -> tuple[float, ...]:
    values = meta.get(key, ())
    if not isinstance(values, (list, tuple)) or len(values) > MAX_LABELS:
        raise MessageError(f"{key}: expected a list of at most {MAX_LABELS} numbers")
    return tuple(_float({key: v}, key) for v in values)


# -- control messages ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Hello:
    """What a node says about itself to its neighbours: no data, only a profile."""

    KIND: ClassVar[str] = "hello"
    score: float
    samples: int
    compute: float
    memory: float
    family: str
    width: float
    version: int
    labels: tuple[float, ...] = ()  # class shares of its data (travelling models route on them)
    degree: int = 0  # how many neighbours it hears from: a node with few gets little

    def encode(self) -> dict[str, Any]:
        return {"kind": self.KIND, "score": self.score, "samples": self.samples, "compute": self.compute,
                "memory": self.memory, "family": self.family, "width": self.width, "version": self.version,
                "labels": list(self.labels), "degree": self.degree}

    @classmethod
    def decode(cls, meta: Mapping[str, Any]) -> "Hello":
        return cls(score=_float(meta, "score", 0.0), samples=_int(meta, "samples", 0),
                   compute=_float(meta, "compute", 0.0), memory=_float(meta, "memory", 0.0),
                   family=_str(meta, "family", ""), width=_float(meta, "width", 1.0),
                   version=_int(meta, "version", 0), labels=_floats(meta, "labels"),
                   degree=_int(meta, "degree", 0))


@dataclass(frozen=True, slots=True)
class Pull:
    """A node that (re)joined asks for the current models around it."""

    KIND: ClassVar[str] = "pull"

    def encode(self) -> dict[str, Any]:
        return {"kind": self.KIND}

    @classmethod
    def decode(cls, meta: Mapping[str, Any]) -> "Pull":
        return cls()


@dataclass(frozen=True, slots=True)
class Resend:
    """Send again these fragments of message ``message_id``: half-open ranges [start, stop)."""

    KIND: ClassVar[str] = "resend"
    message_id: int
    fragments: tuple[tuple[int, int], ...]

    def encode(self) -> dict[str, Any]:
        return {"kind": self.KIND, "message_id": self.message_id, "fragments": [list(r) for r in self.fragments]}

    @classmethod
    def decode(cls, meta: Mapping[str, Any]) -> "Resend":
        ranges = meta.get("fragments", [])
        if not isinstance(ranges, list):
            raise MessageError("fragments: expected a list of [start, stop) pairs")
        pairs = []
        for pair in ranges[:MAX_RESEND_RANGES]:
            if not (isinstance(pair, list) and len(pair) == 2 and all(
                    isinstance(v, int) and not isinstance(v, bool) for v in pair)):
                raise MessageError(f"fragments: {pair!r} is not a [start, stop) pair of integers")
            pairs.append((pair[0], pair[1]))
        return cls(message_id=_int(meta, "message_id", high=0xFFFF), fragments=tuple(pairs))

    @staticmethod
    def ranges(indices: list[int]) -> tuple[tuple[int, int], ...]:
        """[1, 2, 3, 7] -> ((1, 4), (7, 8)): half-open ranges keep a request small."""
        out: list[list[int]] = []
        for i in indices:
            if out and out[-1][1] == i:
                out[-1][1] = i + 1
            else:
                out.append([i, i + 1])
        return tuple((a, b) for a, b in out)


Control = Union[Hello, Pull, Resend]
CONTROLS: dict[str, type] = {cls.KIND: cls for cls in (Hello, Pull, Resend)}


# -- model messages -----------------------------------------------------------------------

MODEL_KINDS = ("model", "travel", "gossip", "fedavg_global", "fedavg_update")


@dataclass(frozen=True, slots=True)
class Travel:
    """A travelling model's log: which traveller, the class mass it has trained on, hops."""

    traveller: int
    seen: tuple[float, ...] = ()
    visits: int = 0


@dataclass(frozen=True, slots=True)
class ModelHeader:
    """What a model message says about the model it carries.

    :param kind: why it was sent: ``"model"`` (MFD share), ``"travel"`` (a travelling
        model), ``"gossip"``, ``"fedavg_global"`` / ``"fedavg_update"``.
    :param samples: the training samples the model stands for (merge weights).
    :param score: the sender's validation score of it, when the policy weighs by score.
    :param round: the FedAvg round it belongs to.
    """

    kind: str
    samples: int
    family: str
    width: float
    score: float | None = None
    round: int | None = None
    travel: Travel | None = None

    def encode(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"kind": self.kind, "samples": self.samples, "family": self.family,
                                "width": self.width}
        if self.score is not None:
            meta["score"] = self.score
        if self.round is not None:
            meta["round"] = self.round
        if self.travel is not None:
            meta.update(traveller=self.travel.traveller, seen=list(self.travel.seen), visits=self.travel.visits)
        return meta

    @classmethod
    def decode(cls, meta: Mapping[str, Any]) -> "ModelHeader":
        kind = meta.get("kind")
        if kind not in MODEL_KINDS:
            raise MessageError(f"kind: not a model message kind: {kind!r}")
        travel = None
        if "traveller" in meta:
            travel = Travel(_int(meta, "traveller"), _floats(meta, "seen"), _int(meta, "visits", 0))
        return cls(kind=kind, samples=_int(meta, "samples", 1), family=_str(meta, "family", ""),
                   width=_float(meta, "width", 1.0), score=_optional_float(meta, "score"),
                   round=None if meta.get("round") is None else _int(meta, "round"), travel=travel)


def decode(meta: Mapping[str, Any]) -> Control | ModelHeader:
    """The record a message's meta holds. :raises MessageError: on anything else."""
    if not isinstance(meta, Mapping):
        raise MessageError("meta: expected an object")
    kind = meta.get("kind")
    control = CONTROLS.get(kind) if isinstance(kind, str) else None
    if control is not None:
        return control.decode(meta)
    return ModelHeader.decode(meta)
