"""The messages nodes exchange, as small typed records (h11's ``_events.py`` is the model).

A model message carries tensors and a :class:`ModelHeader` (what the model is and why it
was sent); a control message carries no tensors: :class:`Hello` (a node's profile, sent
to its neighbours), :class:`Pull` (a (re)joining node asks for models), :class:`Resend`
(a receiver asks for the fragments it lacks). Each record has one ``encode`` and one
``decode``; ``decode`` reads what a peer sent, so it checks every field's type and range
and raises :class:`MessageError` on anything else (a hostile or broken peer costs a
dropped message, never an exception elsewhere).

On the wire a model's header rides in its manifest's ``meta`` object
(docs/packet-format.md, section 4.2); a control record is the whole payload of one control
datagram (section 4.4): no manifest, no JSON, no reassembly.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Union

# A resend request names at most this many fragment ranges: it must fit one datagram
# (8 bytes a range); the fragments it leaves out are asked for in the next round.
MAX_RESEND_RANGES = 1024
# A data profile names at most this many classes (the share of each in a node's data).
MAX_LABELS = 256
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
# A control record is the payload of one control datagram (docs/packet-format.md, section
# 4.4): a kind byte, then big-endian fields; nothing else to parse, no JSON.
#
#   Hello   'H' score f64, samples u32, compute f64, memory f64, width f64, version u32,
#           degree u16, family (u8 length + UTF-8), labels (u16 count + count x f32)
#   Pull    'P'
#   Resend  'R' message_id u16, count u16, count x (start u32, stop u32)

_HELLO = struct.Struct(">dIdddIH")
_RESEND = struct.Struct(">HH")
_RANGE = struct.Struct(">II")


class _Reader:
    """Reads a record's fields; running past its end or leaving bytes over is a MessageError."""

    def __init__(self, payload: bytes, kind: str) -> None:
        self.data, self.at, self.kind = memoryview(payload), 1, kind

    def take(self, fmt: struct.Struct) -> tuple:
        if self.at + fmt.size > len(self.data):
            raise MessageError(f"{self.kind}: the record is cut short")
        values = fmt.unpack_from(self.data, self.at)
        self.at += fmt.size
        return values

    def bytes(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise MessageError(f"{self.kind}: the record is cut short")
        out = bytes(self.data[self.at:self.at + n])
        self.at += n
        return out

    def end(self) -> None:
        if self.at != len(self.data):
            raise MessageError(f"{self.kind}: {len(self.data) - self.at} bytes after the record")


def _finite(kind: str, **values: float) -> None:
    for name, value in values.items():
        if not math.isfinite(value):
            raise MessageError(f"{kind}.{name}: expected a finite number, got {value!r}")


@dataclass(frozen=True, slots=True)
class Hello:
    """What a node says about itself to its neighbours: no data, only a profile."""

    KIND: ClassVar[bytes] = b"H"
    score: float
    samples: int
    compute: float
    memory: float
    family: str
    width: float
    version: int
    labels: tuple[float, ...] = ()  # class shares of its data (travelling models route on them)
    degree: int = 0  # how many neighbours it hears from: a node with few gets little

    def encode(self) -> bytes:
        family = self.family.encode("utf-8")
        if len(family) > 255 or len(self.labels) > MAX_LABELS:
            raise ValueError(f"a hello carries a family name of at most 255 bytes and at most {MAX_LABELS} labels")
        head = _HELLO.pack(float(self.score), int(self.samples) & 0xFFFFFFFF, float(self.compute),
                           float(self.memory), float(self.width), int(self.version) & 0xFFFFFFFF,
                           min(int(self.degree), 0xFFFF))
        labels = struct.pack(f">H{len(self.labels)}f", len(self.labels), *self.labels)
        return self.KIND + head + bytes([len(family)]) + family + labels

    @classmethod
    def decode(cls, payload: bytes) -> "Hello":
        return cls(*cls.read(payload))

    @staticmethod
    def read(payload: bytes) -> tuple[float, int, float, float, str, float, int, tuple[float, ...], int]:
        """The fields of a hello record, in the order of the class's fields, checked as
        :meth:`decode` checks them, without building the record: the most frequent
        message of a fleet (a 1,000-node MFD hour hears 145,000), whose receiver copies
        the fields into its report of the sender. :raises MessageError: as :meth:`decode`."""
        end = 1 + _HELLO.size
        if len(payload) < end + 1:
            raise MessageError("hello: the record is cut short")
        score, samples, compute, memory, width, version, degree = _HELLO.unpack_from(payload, 1)
        name_end = end + 1 + payload[end]
        if len(payload) < name_end + 2:
            raise MessageError("hello: the record is cut short")
        try:
            family = payload[end + 1:name_end].decode("utf-8")
        except UnicodeDecodeError:
            raise MessageError("hello.family: not UTF-8") from None
        (count,) = _U16.unpack_from(payload, name_end)
        if count > MAX_LABELS:
            raise MessageError(f"hello.labels: {count} labels, at most {MAX_LABELS}")
        if len(payload) != name_end + 2 + 4 * count:
            raise MessageError("hello: the record's length does not match its labels")
        labels = _LABELS[count].unpack_from(payload, name_end + 2) if count else ()
        if not all(map(math.isfinite, (score, compute, memory, width, *labels))):
            raise MessageError("hello: a number in it is not finite")
        return score, samples, compute, memory, family, width, version, labels, degree


@dataclass(frozen=True, slots=True)
class Pull:
    """A node that (re)joined asks for the current models around it."""

    KIND: ClassVar[bytes] = b"P"

    def encode(self) -> bytes:
        return self.KIND

    @classmethod
    def decode(cls, payload: bytes) -> "Pull":
        _Reader(payload, "pull").end()
        return cls()


@dataclass(frozen=True, slots=True)
class Resend:
    """Send again these fragments of message ``message_id``: half-open ranges [start, stop)."""

    KIND: ClassVar[bytes] = b"R"
    message_id: int
    fragments: tuple[tuple[int, int], ...]

    def encode(self, max_bytes: int | None = None) -> bytes:
        """The record; with ``max_bytes``, only the first ranges that fit (the rest are
        asked for again next round)."""
        fit = len(self.fragments) if max_bytes is None else max(0, (max_bytes - 1 - _RESEND.size) // _RANGE.size)
        ranges = self.fragments[:min(fit, MAX_RESEND_RANGES)]
        return self.KIND + _RESEND.pack(self.message_id, len(ranges)) + b"".join(
            _RANGE.pack(a, b) for a, b in ranges)

    @classmethod
    def decode(cls, payload: bytes) -> "Resend":
        r = _Reader(payload, "resend")
        message_id, count = r.take(_RESEND)
        ranges = tuple(r.take(_RANGE) for _ in range(count))
        r.end()
        return cls(message_id=message_id, fragments=ranges)

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


_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_LABELS = [struct.Struct(f">{n}f") for n in range(MAX_LABELS + 1)]
Control = Union[Hello, Pull, Resend]
CONTROLS: dict[bytes, type] = {cls.KIND: cls for cls in (Hello, Pull, Resend)}


def decode_control(payload: bytes) -> Control:
    """The control record a control datagram carries. :raises MessageError: on anything else."""
    control = CONTROLS.get(bytes(payload[:1]))
    if control is None:
        raise MessageError(f"control: unknown record kind {bytes(payload[:1])!r}")
    return control.decode(payload)


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


def decode(meta: Mapping[str, Any]) -> ModelHeader:
    """The header a model message's meta holds. :raises MessageError: on anything else."""
    if not isinstance(meta, Mapping):
        raise MessageError("meta: expected an object")
    return ModelHeader.decode(meta)
