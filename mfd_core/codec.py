"""Tensors and state_dicts to model messages and back, at a chosen precision.

A message is a manifest (JSON: tensor names, shapes, dtypes, wire encodings,
quantisation parameters, how the model was scaled) plus one byte buffer per tensor.
:func:`to_datagrams` cuts it into MFD packets; the reassembler hands back the
buffers and :func:`decode` turns them into tensors. Nothing here unpickles:
received bytes are read with ``numpy.frombuffer`` under dtypes the manifest names
from a fixed list, and the manifest is parsed as JSON and validated field by field.
"""
from __future__ import annotations

import functools
import gc
import hashlib
import json
import math
import os
import struct
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from . import packet
from .packet import ENCODING_CODE, ENCODINGS, MANIFEST_TENSOR, Fragment, LimitError, PacketError, Run, crc32c

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp64")
MANIFEST_FORMAT = 1
# Tensors per message. The state_dicts we know have up to ~1k entries (ResNet-152 and the
# larger LLMs a 1 GiB message can carry, ~700-1,000); 2,048 leaves 2x. The bound is on
# CPU: a receiver validates, then delivers, every tensor of a message in one call (~6 us
# each in Python on this 2-core box under load, where a call may take 50 ms), and no
# tensor need carry a byte. At 4,096 the worst datagram took 54.5 ms (a manifest of empty
# tensors validated and delivered in one call) and expire() 72 ms; at 2,048, 36.7 and
# 35.6 ms (benchmarks/fuzz.py, 1M inputs, load 4-8). Version 1 allowed 65,535: 2.9 s in
# one expire() (issue 17).
MAX_MESSAGE_TENSORS = 2048
# A manifest's JSON (inflated): 512 KiB holds 2,048 tensors with names of up to ~200
# characters and their meta. The bound is on what one datagram can make a receiver parse
# (a deflated stream inflates ~1,000-fold): json.loads and validation of 512 KiB take
# 10-25 ms here, and the Python objects they make weigh up to ~37x the JSON's bytes, all
# of which a receiver charges before parsing (version 1 allowed 4 MiB).
MAX_MANIFEST_BYTES = 512 << 10
# JSON arrays and objects in a manifest, counted as the '[' and '{' bytes of its text
# (strings included: a bound that needs no parse). 2,048 tensors take 4,096 (an object
# and a shape each); the rest is meta's. Each container is an object the garbage collector
# scans until it is freed: 512 KiB of '[[[]]]' would be 260,000 of them, 20-40 ms of
# collection in whichever call next allocates (benchmarks/fuzz.py), where 16,384 take ~2.
MAX_MANIFEST_CONTAINERS = 16_384
# One message may carry at most 1 GiB of tensor data: a 250M-parameter fp32 model.
# The reassembler's per-origin budget is the tighter, configurable bound.
MAX_MESSAGE_BYTES = 1 << 30
# Tensor names longer than this are not parameter paths but payload smuggled into JSON.
MAX_NAME_LENGTH = 512
# Dimensions per tensor: more than any layer we know (conv3d weights have 5).
MAX_DIMS = 16
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_BIG_ENDIAN_HOST = np.little_endian is False
# Each encoding's elements as a numpy dtype in this host's byte order (the wire's is little).
_NATIVE = {name: np.dtype(wire).newbyteorder("=") for name, wire, _ in ENCODINGS.values()}
# The encoding that carries a dtype as it is, so decoding is a view, not a conversion.
_OWN_ENCODING = {"float32": "fp32", "float16": "fp16", "float64": "fp64", "int64": "int64",
                 "int32": "int32", "int16": "int16", "int8": "int8raw", "uint8": "uint8"}
MANIFEST_PREFIX = struct.Struct(">I")  # manifest stream = uint32 length + JSON
# The prefix's top bit says the bytes that follow are the JSON deflated (zlib, RFC 1950):
# a small model's manifest is mostly repeated keys, and at int8 it is ~9% of its bytes.
MANIFEST_ZLIB = 1 << 31
# Messages whose tensors take at most this many bytes travel as one packed run (all
# tensors back to back, see _packed_runs); past it a datagram's worth of framing per
# tensor is under 1% of the bytes and each tensor keeps its own run (no joining copy).
PACKED_MAX_BYTES = 1 << 20

# Manifest dtype names and the torch dtypes they restore.
_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "float64": torch.float64, "int64": torch.int64, "int32": torch.int32, "int16": torch.int16,
    "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool,
}
_DTYPE_NAMES = {dtype: name for name, dtype in _DTYPES.items()}
_FLOAT_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float64": "fp64"}
_RAW_ENCODING = {"int64": "int64", "int32": "int32", "int16": "int16", "int8": "int8raw",
                 "uint8": "uint8", "bool": "bool"}
# Bits of each float encoding, to never send a tensor at more precision than it has.
_BITS = {"fp64": 64, "fp32": 32, "fp16": 16, "bf16": 16, "int8": 8}


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One tensor of a message: what it is and how it travels."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # the tensor's own dtype, restored on decode
    encoding: str  # how its elements travel: a key of ENCODING_CODE
    scale: float = 1.0  # int8 only: x = (q - zero_point) * scale
    zero_point: int = 0
    # Derived once: a receiver asks for these per tensor and per message.
    numel: int = field(init=False, repr=False, compare=False)  # elements
    itemsize: int = field(init=False, repr=False, compare=False)  # bytes per element on the wire
    nbytes: int = field(init=False, repr=False, compare=False)  # bytes on the wire
    strides: tuple[int, ...] = field(init=False, repr=False, compare=False)  # row-major, in elements
    # Layouts are looked up by their tuple of specs (manifest JSON, family id) once per
    # message: the generated __hash__ would hash all six fields each time. Computed on the
    # first hash (a receiver makes specs it never hashes: 2,048 in one call at most).
    _hash: int | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        numel = math.prod(self.shape)
        itemsize = ENCODINGS[ENCODING_CODE[self.encoding]][2]
        object.__setattr__(self, "numel", numel)
        object.__setattr__(self, "itemsize", itemsize)
        object.__setattr__(self, "nbytes", numel * itemsize)
        strides, step = [], 1
        for size in reversed(self.shape):
            strides.append(step)
            step *= size
        object.__setattr__(self, "strides", tuple(reversed(strides)))

    def __hash__(self) -> int:
        value = self._hash
        if value is None:
            value = hash((self.name, self.shape, self.dtype, self.encoding, self.scale, self.zero_point))
            object.__setattr__(self, "_hash", value)
        return value


@dataclass(frozen=True)
class Layout:
    """A validated tensor list of a received manifest, with what a receiver asks of it."""

    tensors: tuple[TensorSpec, ...]
    family_id: int
    nbytes: int  # tensor bytes on the wire


@dataclass(frozen=True)
class Manifest:
    """What a message carries. ``scaling`` says how the model was cut (family, width ratio,
    which layers), so that a receiver of any width knows where each slice goes."""

    tensors: tuple[TensorSpec, ...]
    scaling: Mapping[str, Any] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)
    # A received manifest's layout, whose family id and size were computed as it was
    # validated; None for one made here (its own are computed, and cached, on demand).
    layout: Layout | None = field(default=None, repr=False, compare=False)

    # Plain properties: functools.cached_property takes a lock on every access in Python
    # 3.11, ~1 us, and these are read several times per message.
    @property
    def family_id(self) -> int:
        layout = self.layout
        return layout.family_id if layout is not None else _family_id(self.tensors)

    @property
    def nbytes(self) -> int:
        layout = self.layout
        return layout.nbytes if layout is not None else _layout_nbytes(self.tensors)

    def index(self, name: str) -> int:
        for i, spec in enumerate(self.tensors):
            if spec.name == name:
                return i
        raise KeyError(name)

    def to_bytes(self) -> bytes:
        # Canonical JSON (keys sorted: format, meta, scaling, tensors), written in parts so
        # that the tensor list, the same in every message of a layout, is encoded once:
        # for a tiny model it is most of the manifest and most of the encoding time.
        # (A received manifest's list is written without the cache: the cache is the
        # sender's, for its own layouts.)
        tensors = _tensors_json(self.tensors) if self.layout is None else _tensors_json.__wrapped__(self.tensors)
        return b"".join((b'{"format":%d,"meta":' % MANIFEST_FORMAT, _canonical_json(dict(self.meta)),
                         b',"scaling":', _canonical_json(dict(self.scaling)), b',"tensors":', tensors, b"}"))

    @classmethod
    def from_bytes(cls, raw: bytes | memoryview, *, layouts: "LayoutCache | None" = None) -> "Manifest":
        """Parse and validate a received manifest's JSON.

        :param layouts: the receiver's cache of tensor lists it validated before; a
            manifest that ends with the bytes of one of them takes it as it is.
        :raises PacketError: on anything malformed (:class:`LimitError` past a limit).
        """
        if len(raw) > MAX_MANIFEST_BYTES:
            raise LimitError(f"manifest of {len(raw)} bytes exceeds the limit of {MAX_MANIFEST_BYTES}")
        raw = bytes(raw)
        containers = raw.count(b"[") + raw.count(b"{")
        if containers > MAX_MANIFEST_CONTAINERS:
            raise LimitError(f"manifest holds {containers} '[' and '{{', over the limit of {MAX_MANIFEST_CONTAINERS}")
        # The garbage collector is held off meanwhile: JSON and the specs made from it hold
        # no reference cycles, so a collection finds nothing to free, yet a manifest of many
        # small containers triggers several, each scanning every object of the process
        # (json.loads of 200 KB of nested empty lists took 140 ms beside 300,000 objects,
        # 7 ms without collections). The objects made are scanned once, by the next one.
        collecting = gc.isenabled()
        gc.disable()
        try:
            return cls._from_json(raw, layouts)
        finally:
            if collecting:
                gc.enable()

    @classmethod
    def _from_json(cls, raw: bytes, layouts: "LayoutCache | None") -> "Manifest":
        doc = _load_json(raw)
        if not isinstance(doc, dict):
            raise PacketError("manifest must be a JSON object")
        fmt = doc.get("format")
        if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt != MANIFEST_FORMAT:
            raise PacketError(f"unsupported manifest format {fmt!r} (this decoder reads {MANIFEST_FORMAT})")
        tensors, scaling, meta = doc.get("tensors"), doc.get("scaling", {}), doc.get("meta", {})
        if not isinstance(tensors, list):
            raise PacketError("manifest 'tensors' must be a list")
        if len(tensors) > MAX_MESSAGE_TENSORS:
            raise LimitError(f"manifest lists {len(tensors)} tensors, over the limit of {MAX_MESSAGE_TENSORS}")
        if not isinstance(scaling, dict) or not isinstance(meta, dict):
            raise PacketError("manifest 'scaling' and 'meta' must be objects")
        # A sender's tensor list is the same in every message of a layout: when the JSON
        # ends with the very bytes of a list validated before, its specs are reused.
        # Sound for any valid JSON: a ',"' outside a string starts a key, and a key whose
        # value runs to the document's closing brace is the top level's last, which is the
        # one json.loads keeps; inside a string, the '"' would end it and leave a bare
        # word, which json.loads has refused already.
        tail = b""
        if layouts is not None:
            cut = raw.rfind(b',"tensors":')
            tail = raw[cut:] if cut >= 0 else b""
        layout = layouts.get(tail) if tail else None
        if layout is None:
            layout = _layout(_parse_specs(tensors))
            if tail:
                layouts.put(tail, layout)
        return cls(layout.tensors, scaling, meta, layout)


def manifest_extras(raw: bytes | memoryview) -> tuple[dict, dict]:
    """``(scaling, meta)`` of a manifest's JSON that :meth:`Manifest.from_bytes` took before
    (so valid): what a receiver that kept only the tensors' fields needs to build the
    :class:`Manifest` again."""
    collecting = gc.isenabled()
    gc.disable()  # as in Manifest.from_bytes
    try:
        doc = _load_json(bytes(raw))
    finally:
        if collecting:
            gc.enable()
    return doc.get("scaling", {}), doc.get("meta", {})


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _load_json(raw: bytes) -> Any:
    """A received manifest's JSON, which must be UTF-8 and JSON (RFC 8259: no NaN or
    Infinity, which Python's json takes by default)."""
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PacketError(f"manifest is not valid UTF-8 JSON: {exc}") from None


def _layout(specs: tuple[TensorSpec, ...]) -> Layout:
    try:
        family = int.from_bytes(hashlib.sha256(family_bytes(
            [(t.name, t.shape, t.dtype) for t in specs])).digest()[:4], "big")
    except ValueError as exc:  # validation makes every layout encodable: this is a bug
        raise AssertionError(f"a validated layout has no family id: {exc}") from None
    return Layout(specs, family, sum(t.nbytes for t in specs))


class LayoutCache:
    """One receiver's tensor lists validated before, by the manifest bytes that end with
    them (see :meth:`Manifest.from_bytes`); bounded in entries and in bytes, least
    recently used first out.

    Per receiver, not per process: what a peer makes one receiver remember is charged to
    that receiver (:attr:`nbytes`) and goes with it (issue 17: module-wide caches shared
    by every receiver held 1.3 GiB after 150 delivered manifests).
    """

    # What an entry holds, beyond its tail's bytes: per spec, its object, dtype and
    # encoding strings, scale and the tuple's slot (~700 bytes), its name (up to 4 bytes a
    # character), its shape and strides (a tuple slot and an int of up to 36 bytes per
    # dimension, each); and the entry itself (measured with tracemalloc, tests/test_codec.py).
    BYTES_PER_TENSOR = 768
    BYTES_PER_NAME_CHARACTER = 4
    BYTES_PER_DIMENSION = 96
    BYTES_PER_ENTRY = 512

    def __init__(self, *, entries: int = 64, nbytes: int = 4 << 20, tail_bytes: int = 64 << 10) -> None:
        """:param entries: layouts kept at most; a fleet sends a few.
        :param nbytes: bytes the entries may cost at most.
        :param tail_bytes: longer tensor lists are not kept (a few hundred tensors)."""
        self.max_entries, self.max_bytes, self.max_tail = entries, nbytes, tail_bytes
        self._entries: OrderedDict[bytes, tuple[Layout, int]] = OrderedDict()
        self.nbytes = 0

    def get(self, tail: bytes) -> Layout | None:
        entry = self._entries.get(tail)
        if entry is None:
            return None
        self._entries.move_to_end(tail)
        return entry[0]

    def put(self, tail: bytes, layout: Layout) -> None:
        cost = self.cost(tail, layout)
        if len(tail) > self.max_tail or cost > self.max_bytes or tail in self._entries:
            return
        while self._entries and (len(self._entries) >= self.max_entries or self.nbytes + cost > self.max_bytes):
            self._pop()
        self._entries[tail] = (layout, cost)
        self.nbytes += cost

    @classmethod
    def cost(cls, tail: bytes, layout: Layout) -> int:
        return len(tail) + cls.BYTES_PER_ENTRY + sum(
            cls.BYTES_PER_TENSOR + cls.BYTES_PER_NAME_CHARACTER * len(t.name) + cls.BYTES_PER_DIMENSION * len(t.shape)
            for t in layout.tensors)

    def shrink(self, nbytes: int) -> int:
        """Drop entries, oldest first, until ``nbytes`` are freed or none is left; returns
        the bytes freed."""
        freed = 0
        while self._entries and freed < nbytes:
            freed += self._pop()
        return freed

    def clear(self) -> None:
        self.shrink(self.nbytes)

    def __len__(self) -> int:
        return len(self._entries)

    def _pop(self) -> int:
        _, (_, cost) = self._entries.popitem(last=False)
        self.nbytes -= cost
        return cost


def _parse_specs(tensors: list) -> tuple[TensorSpec, ...]:
    specs, names, total = [], set(), 0
    for i, entry in enumerate(tensors):
        spec = _parse_spec(i, entry)
        if spec.name in names:
            raise PacketError(f"manifest names tensor {spec.name!r} twice")
        names.add(spec.name)
        total += spec.nbytes
        specs.append(spec)
    if total > MAX_MESSAGE_BYTES:
        raise LimitError(f"manifest declares {total} bytes of tensors, over the limit of {MAX_MESSAGE_BYTES}")
    return tuple(specs)


def _canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


@functools.lru_cache(maxsize=256)  # a fleet sends few layouts (int8 scales make the rest)
def _tensors_json(tensors: tuple[TensorSpec, ...]) -> bytes:
    return _canonical_json([
        {"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "encoding": t.encoding,
         **({"scale": t.scale, "zero_point": t.zero_point} if t.encoding == "int8" else {})}
        for t in tensors])


def _parse_spec(i: int, entry: Any) -> TensorSpec:
    # Checked with type() rather than isinstance: json.loads makes exactly these types
    # (bool apart from int), and a manifest may hold 2,048 entries to check in one call.
    if type(entry) is not dict:
        raise PacketError(f"manifest tensor {i} is not an object")
    name, shape, dtype, encoding = entry.get("name"), entry.get("shape"), entry.get("dtype"), entry.get("encoding")
    if type(name) is not str or not 0 < len(name) <= MAX_NAME_LENGTH:
        raise PacketError(f"manifest tensor {i}: name must be a string of 1 to {MAX_NAME_LENGTH} characters")
    if not name.isascii() and not _is_text(name):
        raise PacketError(f"manifest tensor {i}: name holds a lone surrogate ({ascii(name)[:80]}), which no UTF-8 "
                          f"text can")
    numel = 1
    if type(shape) is list and len(shape) <= MAX_DIMS:
        for d in shape:
            if type(d) is not int or not 0 <= d <= packet.MAX_ELEMENTS:
                numel = -1
                break
            numel *= d
    else:
        numel = -1
    if numel < 0:
        raise PacketError(f"manifest tensor {i} ({name}): shape must be a list of at most {MAX_DIMS} integers "
                          f"0..2^32-1")
    if numel > packet.MAX_ELEMENTS:
        raise PacketError(f"manifest tensor {i} ({name}): more than 2^32-1 elements")
    if type(dtype) is not str or dtype not in _DTYPES:
        raise PacketError(f"manifest tensor {i} ({name}): unknown dtype {dtype!r}")
    if type(encoding) is not str or (dtype, encoding) not in _CARRIES:
        raise PacketError(f"manifest tensor {i} ({name}): encoding {encoding!r} cannot carry dtype {dtype}")
    scale, zero_point = 1.0, 0
    if encoding == "int8":
        scale, zero_point = entry.get("scale"), entry.get("zero_point")
        if type(scale) is int or type(scale) is float:
            try:  # the wire carries the scale as binary32, so the manifest names a binary32 value
                scale = float(np.float32(float(scale))) if abs(scale) <= _FLOAT32_MAX else math.inf
            except OverflowError:
                scale = math.inf
        if type(scale) is not float or not 0 < scale < math.inf:
            raise PacketError(f"manifest tensor {i} ({name}): int8 scale must be a positive finite binary32 number")
        if type(zero_point) is not int or not -128 <= zero_point <= 127:
            raise PacketError(f"manifest tensor {i} ({name}): int8 zero_point must be an integer in -128..127")
    return TensorSpec(name, tuple(shape), dtype, encoding, scale, zero_point)


def _is_text(name: str) -> bool:
    """Whether ``name`` is Unicode text: JSON's ``\\ud800`` escapes give Python strings with
    lone surrogates, which have no UTF-8 form (the family id hashes a name's UTF-8)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _encoding_fits(dtype: str, encoding: str) -> bool:
    """Whether ``encoding`` may carry tensors of ``dtype`` (docs/packet-format.md §3)."""
    if dtype in _FLOAT_DTYPES:
        return encoding in _BITS
    return encoding == _RAW_ENCODING[dtype]


# (dtype, encoding) pairs a manifest may name: one set lookup per tensor.
_CARRIES = frozenset((dtype, encoding) for dtype in _DTYPES for encoding in ENCODING_CODE
                     if encoding not in ("manifest", "control") and _encoding_fits(dtype, encoding))


def layout_fingerprint(layout: Sequence[tuple[str, Sequence[int], str]] | Any) -> int:
    """32-bit fingerprint of an architecture: tensor names, shapes and dtypes, in order
    (the family id of docs/packet-format.md §4.3).

    :raises ValueError: for a layout no message could carry (a name that is not UTF-8
        text of at most 65,535 bytes, more than 255 dimensions, a dimension past 2^32-1).
    """
    return _fingerprint(tuple((name, tuple(shape), dtype) for name, shape, dtype in layout))


_NAME_LENGTH = struct.Struct(">H")
_DIMS = [struct.Struct(f">B{n}IB") for n in range(MAX_DIMS + 1)]


def family_bytes(layout: Sequence[tuple[str, Sequence[int], str]]) -> bytes:
    """What the family id hashes: per tensor, its UTF-8 name after its length (uint16),
    its dimension count (uint8), each dimension (uint32), then its dtype's name after
    its length (uint8); all big-endian. Every field is length-prefixed, so two layouts
    never give the same bytes (version 1 joined names, shapes and dtypes with ':', ','
    and newlines, which a name may itself contain)."""
    out = bytearray()
    try:
        for name, shape, dtype in layout:
            encoded = name.encode("utf-8")  # strict: a lone surrogate is no text (codec refuses such names)
            out += _NAME_LENGTH.pack(len(encoded))
            out += encoded
            dims = _DIMS[len(shape)] if len(shape) <= MAX_DIMS else struct.Struct(f">B{len(shape)}IB")
            out += dims.pack(len(shape), *shape, len(dtype))
            out += dtype.encode("ascii")
    except (struct.error, UnicodeError) as exc:
        raise ValueError(f"a layout no message can carry: {exc}") from None
    return bytes(out)


@functools.lru_cache(maxsize=1024)  # a fleet sends few layouts, over and over
def _fingerprint(layout: tuple[tuple[str, tuple[int, ...], str], ...]) -> int:
    return int.from_bytes(hashlib.sha256(family_bytes(layout)).digest()[:4], "big")


@functools.lru_cache(maxsize=1024)
def _family_id(tensors: tuple[TensorSpec, ...]) -> int:
    return layout_fingerprint((t.name, t.shape, t.dtype) for t in tensors)


@functools.lru_cache(maxsize=1024)
def _layout_nbytes(tensors: tuple[TensorSpec, ...]) -> int:
    return sum(t.nbytes for t in tensors)


# The same spec object for the same tensor of every message this node sends: layouts then
# hash and compare by identity, and specs are not rebuilt per message. (Senders only: what
# a receiver validates stays in its own LayoutCache.)
_spec = functools.lru_cache(maxsize=4096)(TensorSpec)


def state_fingerprint(state: Mapping[str, torch.Tensor]) -> int:
    return layout_fingerprint((k, tuple(v.shape), _dtype_name(v)) for k, v in state.items())


def _dtype_name(t: torch.Tensor) -> str:
    name = _DTYPE_NAMES.get(t.dtype)
    if name is None:
        raise TypeError(f"dtype {t.dtype} cannot travel in an MFD message")
    return name


@dataclass(frozen=True)
class EncodedModel:
    """A message ready to fragment: its manifest and one flat byte buffer per tensor."""

    manifest: Manifest
    buffers: tuple[np.ndarray, ...]  # uint8, C-contiguous, one per manifest tensor

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.buffers)


def _wire_encoding(dtype: str, precision: str) -> str:
    own = _FLOAT_DTYPES.get(dtype)
    if own is None:  # integers and bools travel as they are
        return _RAW_ENCODING[dtype]
    # never send more precision than the tensor has: an fp16 tensor at "fp32" stays fp16
    return own if _BITS[own] <= _BITS[precision] else precision


def quantise_int8(x: torch.Tensor) -> tuple[torch.Tensor, float, int]:
    """Per-tensor affine int8: returns (q, scale, zero_point) with
    ``|x - (q - zero_point) * scale| <= scale / 2`` for every element.

    The range is widened to include 0, as PyTorch's and ONNX's asymmetric schemes do:
    0 stays exact and the zero point always fits int8. ``scale`` is a binary32 value
    (the wire carries binary32), rounded up so that 255 steps span the whole range.
    :raises ValueError: for non-finite values, or a range no binary32 scale can span.
    """
    # numpy from here: the same IEEE float64 arithmetic and round-half-to-even as torch's,
    # at about half the per-call cost (1.6x for 64 elements, 2x for 16k; a fleet quantises
    # ~36 small tensors per share)
    x64 = x.detach().cpu().to(torch.float64).reshape(-1).numpy()
    if x64.size == 0:
        return torch.empty(x.shape, dtype=torch.int8), 1.0, 0
    if not np.isfinite(x64).all():
        raise ValueError("int8 quantisation needs finite values")
    lo, hi = min(float(x64.min()), 0.0), max(float(x64.max()), 0.0)
    if hi == lo:  # all zeros
        return torch.zeros(x.shape, dtype=torch.int8), 1.0, 0
    span = hi - lo
    if not span / 255.0 <= _FLOAT32_MAX:
        raise ValueError(f"a range of {span} is too wide for an int8 scale in binary32")
    scale32 = np.float32(span / 255.0)
    while float(scale32) * 255.0 < span:  # binary32 rounding must not shrink the range
        scale32 = np.nextafter(scale32, np.float32(np.inf))
    scale = float(scale32)
    if not 0 < scale < math.inf:
        raise ValueError(f"a range of {span} is too wide for an int8 scale in binary32")
    zero_point = int(min(127, max(-128, round(-128 - lo / scale))))
    q = np.clip(np.rint(x64 / scale) + zero_point, -128, 127).astype(np.int8)
    return torch.from_numpy(q).reshape(x.shape), scale, zero_point


def encode(
    state: Mapping[str, torch.Tensor],
    precision: str = "fp32",
    *,
    scaling: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    tensor_precision: Mapping[str, str] | None = None,
) -> EncodedModel:
    """Encode a mapping of names to tensors.

    :param precision: how floating tensors travel: ``fp32`` (exact for float32 and
        narrower), ``fp16``, ``bf16``, ``int8`` (per-tensor affine, see
        :func:`quantise_int8`) or ``fp64`` (exact for every dtype). A tensor never
        travels at more precision than it has; integer and bool tensors travel as they are.
    :param tensor_precision: per-name exceptions to ``precision`` (e.g. keep biases at
        fp32 while weights go as int8).
    :param scaling: how the model was cut from its family (see :mod:`mfd_core.scaling`).
    :param meta: anything else the receiver should know; JSON-serialisable.
    """
    overrides = dict(tensor_precision or {})
    for name, value in (("precision", precision), *overrides.items()):
        if value not in PRECISIONS:
            raise ValueError(f"precision for {name} must be one of {PRECISIONS}, got {value!r}")
    unknown = set(overrides) - set(state)
    if unknown:
        raise ValueError(f"tensor_precision names tensors the state does not have: {sorted(unknown)}")
    if len(state) > MAX_MESSAGE_TENSORS:
        raise ValueError(f"a message carries at most {MAX_MESSAGE_TENSORS} tensors, got {len(state)}")
    specs, buffers = [], []
    for name, tensor in state.items():
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LENGTH or not _is_text(name):
            raise ValueError(f"tensor names must be UTF-8 text of 1 to {MAX_NAME_LENGTH} characters, got {name!r}")
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name}: expected a tensor, got {type(tensor).__name__}")
        if tensor.dim() > MAX_DIMS or tensor.numel() > packet.MAX_ELEMENTS:
            raise ValueError(f"{name}: at most {MAX_DIMS} dimensions and 2^32-1 elements travel")
        dtype = _dtype_name(tensor)
        t = tensor.detach().cpu().contiguous()
        encoding = _wire_encoding(dtype, overrides.get(name, precision))
        scale, zero_point = 1.0, 0
        if encoding == "int8":
            t, scale, zero_point = quantise_int8(t)
            data = t.numpy()
        elif encoding == "bf16":
            data = t.to(torch.bfloat16).view(torch.int16).numpy()
        elif encoding == "bool":
            data = t.to(torch.uint8).numpy()
        elif dtype in _FLOAT_DTYPES and encoding != _FLOAT_DTYPES[dtype]:
            data = t.to(_FLOAT_TORCH[encoding]).numpy()
        else:  # travels as it is
            data = t.numpy()
        specs.append(_spec(name, tuple(tensor.shape), dtype, encoding, scale, zero_point))
        data = data.reshape(-1)  # contiguous already: a view
        if _BIG_ENDIAN_HOST:  # the wire is little-endian
            data = data.astype(data.dtype.newbyteorder("<"))
        buffers.append(data.view(np.uint8))
    manifest = Manifest(tuple(specs), dict(scaling or {}), dict(meta or {}))
    if manifest.nbytes > MAX_MESSAGE_BYTES:
        raise ValueError(f"model of {manifest.nbytes} bytes exceeds one message ({MAX_MESSAGE_BYTES})")
    return EncodedModel(manifest, tuple(buffers))


_FLOAT_TORCH = {"fp32": torch.float32, "fp16": torch.float16, "fp64": torch.float64}
# Manifest dtypes numpy has (bfloat16 it lacks: decode_block keeps its bytes instead).
_NUMPY = {name: np.dtype(name) for name in ("float32", "float16", "float64", "int64", "int32", "int16", "int8",
                                            "uint8", "bool")}


def decode_tensor(spec: TensorSpec, buffer: np.ndarray | bytes | memoryview) -> torch.Tensor:
    """Bytes of one tensor (as the manifest describes them) to a tensor of its own dtype.

    The tensor shares memory with ``buffer`` where it can (a writable buffer, a dtype that
    needs no conversion); a read-only buffer is copied.
    :raises PacketError: when the buffer does not hold exactly the tensor's bytes, or a
        bool tensor holds a byte other than 0 and 1.
    """
    raw = np.frombuffer(buffer, dtype=np.uint8)
    if raw.size != spec.nbytes:
        raise PacketError(f"{spec.name}: {raw.size} bytes for a tensor of {spec.nbytes}")
    raw = raw.view(_NATIVE[spec.encoding])
    if _BIG_ENDIAN_HOST:
        raw = raw.byteswap()
    elif not raw.flags.writeable:
        raw = raw.copy()
    if spec.encoding == _OWN_ENCODING.get(spec.dtype):  # fp32 as float32 and the like: no conversion
        return torch.from_numpy(raw).reshape(spec.shape)
    if spec.encoding == "bf16":
        t = torch.from_numpy(raw.view(np.int16)).view(torch.bfloat16)
    elif spec.encoding == "int8":
        t = (torch.from_numpy(raw).to(torch.float32) - spec.zero_point) * spec.scale
    elif spec.encoding == "bool":
        if raw.size and raw.max() > 1:
            raise PacketError(f"{spec.name}: a bool tensor holds a byte other than 0 and 1")
        t = torch.from_numpy(raw).to(torch.bool)
    else:
        t = torch.from_numpy(raw)
    return t.to(_DTYPES[spec.dtype]).reshape(spec.shape)


def decode(manifest: Manifest, buffers: Sequence[np.ndarray | bytes | memoryview]) -> dict[str, torch.Tensor]:
    """A message's tensor buffers (one per manifest tensor, in order) to a state_dict.

    :raises PacketError: when the buffers do not match the manifest.
    """
    if len(buffers) != len(manifest.tensors):
        raise PacketError(f"{len(buffers)} buffers for {len(manifest.tensors)} manifest tensors")
    return {spec.name: decode_tensor(spec, buf) for spec, buf in zip(manifest.tensors, buffers)}


# Wire encodings decoded to float32 by numpy without a torch round trip (see decode_block):
# int8 as (q - zero_point) * scale in binary32, fp16 widened, bf16 as its upper 16 bits.
_TO_FLOAT32 = frozenset({"int8", "fp16", "bf16"})
# (dtype, encoding) pairs whose wire bytes are the tensor's own (little-endian) bytes;
# bool once each byte is checked to be 0 or 1.
_AS_IS = frozenset({*((dtype, encoding) for dtype, encoding in _OWN_ENCODING.items()), ("bfloat16", "bf16"),
                    ("bool", "bool")})


def decode_block(manifest: Manifest, block: np.ndarray, offsets: Sequence[int],
                 runs: Sequence[Sequence[tuple[int, int]]] | None = None, *, bools_checked: bool = False
                 ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """A message's tensors from one block holding their wire bytes, each at its offset
    (a multiple of 8; the block's length a multiple of 8 too): ``(state, masks)``.

    Tensors that travel as they are become views of the block (one ``as_strided`` each,
    ~1.3 us, where ``torch.from_numpy`` and a reshape take ~6); the others are decoded
    into one new block per dtype. Complete (``runs`` None): ``masks`` is None.

    Partial: ``runs[i]`` lists the ``(start, end)`` element ranges of tensor ``i`` that
    arrived, sorted and disjoint; every other element reads 0 (the block's bytes between
    the ranges are zeroed in place), and ``masks`` says which arrived. Past that memset
    the work is proportional to the tensors and the ranges, not to what the manifest
    declared: new blocks come from ``np.zeros`` (the OS's zero pages, for large ones).
    :param bools_checked: the caller checked every byte of the bool tensors already (a
        reassembler does, as each fragment arrives): they are not read again.
    :raises PacketError: for a bool tensor holding a byte other than 0 and 1.
    """
    specs = manifest.tensors
    if _BIG_ENDIAN_HOST:  # the wire is little-endian: take the general path
        state = {spec.name: decode_tensor(spec, block[off:off + spec.nbytes]) for spec, off in zip(specs, offsets)}
        return state, None if runs is None else _masks(specs, runs)
    whole = torch.from_numpy(block)
    views: dict[torch.dtype, torch.Tensor] = {}  # the block as each dtype
    # Decoded tensors (complete: those that do not travel as they are; partial: all) get
    # an element range of one new block per dtype: plan it first, allocate once.
    planned: dict[str, int] = {}
    where = []
    for spec in specs:
        if (spec.dtype, spec.encoding) in _AS_IS or not spec.numel:
            where.append(None)
            continue
        at = planned.get(spec.dtype, 0)
        where.append(at)
        planned[spec.dtype] = at + spec.numel
    outputs = {dtype: np.zeros(count, dtype=_NUMPY[dtype]) if dtype in _NUMPY else np.zeros(2 * count, np.uint8)
               for dtype, count in planned.items()}
    out_views = {dtype: torch.from_numpy(array).view(_DTYPES[dtype]) for dtype, array in outputs.items()}
    state = {}
    for index, (spec, offset, at) in enumerate(zip(specs, offsets, where)):
        if not spec.numel:
            state[spec.name] = torch.empty(spec.shape, dtype=_DTYPES[spec.dtype])
            continue
        if at is None:  # it travels as it is: a view of the block
            if runs is not None:  # what did not arrive reads 0
                item, done = spec.itemsize, 0
                for start, end in (*runs[index], (spec.numel, spec.numel)):
                    block[offset + done * item:offset + start * item] = 0
                    done = end
            if spec.encoding == "bool" and not bools_checked:
                raw = block[offset:offset + spec.numel]
                if raw.size and raw.max() > 1:
                    raise PacketError(f"{spec.name}: a bool tensor holds a byte other than 0 and 1")
            dtype = _DTYPES[spec.dtype]
            view = views.get(dtype)
            if view is None:
                view = views[dtype] = whole.view(dtype)
            state[spec.name] = view.as_strided(spec.shape, spec.strides, offset // spec.itemsize)
            continue
        target = outputs[spec.dtype]
        spans = ((0, spec.numel),) if runs is None else runs[index]
        for start, end in spans:
            _decode_range(spec, block, offset, start, end, target, at)
        state[spec.name] = out_views[spec.dtype].as_strided(spec.shape, spec.strides, at)
    return state, None if runs is None else _masks(specs, runs)


def _decode_range(spec: TensorSpec, block: np.ndarray, offset: int, start: int, end: int,
                  target: np.ndarray, at: int) -> None:
    """Decode elements ``start..end-1`` of ``spec`` (wire bytes at ``offset`` in ``block``)
    into ``target[at + start:at + end]``."""
    item = spec.itemsize
    raw = block[offset + start * item:offset + end * item]
    out = target[at + start:at + end] if spec.dtype in _NUMPY else None
    if spec.dtype == "float32" and spec.encoding in _TO_FLOAT32:
        if spec.encoding == "int8":  # (q - zero_point) * scale, in binary32 as the format says
            np.subtract(raw.view(np.int8), np.float32(spec.zero_point), out=out, dtype=np.float32)
            np.multiply(out, np.float32(spec.scale), out=out)
        elif spec.encoding == "fp16":
            out[...] = raw.view(np.float16)
        else:  # bf16: the upper half of a binary32
            np.left_shift(raw.view(np.uint16), 16, out=out.view(np.uint32), dtype=np.uint32)
        return
    if (spec.dtype, spec.encoding) in _AS_IS:  # the same bytes (bool: once checked to be 0 or 1)
        if spec.encoding == "bool" and raw.size and raw.max() > 1:
            raise PacketError(f"{spec.name}: a bool tensor holds a byte other than 0 and 1")
        target.view(np.uint8)[(at + start) * item:(at + end) * item] = raw
        return
    part = TensorSpec(spec.name, (end - start,), spec.dtype, spec.encoding, spec.scale, spec.zero_point)
    decoded = decode_tensor(part, raw)  # the rare conversions: torch, one call per range
    if out is not None:
        out[...] = decoded.numpy()
    else:  # bfloat16, which numpy lacks: its bytes
        target.view(np.uint8)[2 * (at + start):2 * (at + end)] = decoded.view(torch.int16).numpy().view(np.uint8)


def delivery_nbytes(specs: Sequence[TensorSpec]) -> int:
    """Bytes :func:`decode_block` may allocate for ``specs`` besides their wire block, at
    most: the tensors it decodes into new memory, and a mask byte per element."""
    total = 0
    for spec in specs:
        total += spec.numel
        if (spec.dtype, spec.encoding) not in _AS_IS:
            total += spec.numel * _DTYPES[spec.dtype].itemsize
    return total


def _masks(specs: Sequence[TensorSpec], runs: Sequence[Sequence[tuple[int, int]]]) -> dict[str, torch.Tensor]:
    total = sum(spec.numel for spec in specs)
    flat = np.zeros(total, dtype=bool)
    out, at = {}, 0
    whole = torch.from_numpy(flat)
    for spec, spans in zip(specs, runs):
        for start, end in spans:
            flat[at + start:at + end] = True
        out[spec.name] = whole.as_strided(spec.shape, spec.strides, at)
        at += spec.numel
    return out


def manifest_stream(manifest: Manifest, *, deflate: bool = True) -> bytes:
    """The bytes manifest fragments carry: uint32 big-endian length, then the JSON, or,
    when ``deflate`` is true, the manifest describes tensor bytes and deflating makes it
    shorter, the length with :data:`MANIFEST_ZLIB` set, then the JSON deflated (~15 us
    for a small model's; its 800 bytes become ~280). Manifests without tensor bytes
    (hellos and requests, most of a fleet's datagrams) always go as they are: deflating
    each would cost more CPU than their few bytes are worth."""
    raw = manifest.to_bytes()
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ValueError(f"manifest of {len(raw)} bytes exceeds the limit of {MAX_MANIFEST_BYTES}")
    if raw.count(b"[") + raw.count(b"{") > MAX_MANIFEST_CONTAINERS:
        raise ValueError(f"manifest holds more than {MAX_MANIFEST_CONTAINERS} '[' and '{{': meta too nested or long")
    if deflate and manifest.nbytes:
        packed = _deflate(raw) if len(raw) <= DEFLATE_CACHE_MAX_BYTES else zlib.compress(raw, 9)
        if len(packed) < len(raw):
            return MANIFEST_PREFIX.pack(MANIFEST_ZLIB | len(packed)) + packed
    return MANIFEST_PREFIX.pack(len(raw)) + raw


# A sender deflates the manifests it sent lately once: zlib.compress costs ~150 us here
# however short the input (setting up its ~260 KiB of state), 10% of encoding a 1M-parameter
# model at MTU 1,400, and a node sends the same manifest (its layout, the same meta) over
# and over. Only its own manifests, at most this long, and at most 64 of them (1 MiB).
DEFLATE_CACHE_MAX_BYTES = 16 << 10


@functools.lru_cache(maxsize=64)
def _deflate(raw: bytes) -> bytes:
    return zlib.compress(raw, 9)


def manifest_body_length(prefix: int) -> int:
    """Bytes after the 4-byte prefix of a manifest stream, from the prefix's value.
    :raises LimitError: past :data:`MAX_MANIFEST_BYTES` (deflated or not)."""
    length = prefix & ~MANIFEST_ZLIB
    if length > MAX_MANIFEST_BYTES:
        raise LimitError(f"manifest length {length} exceeds the limit of {MAX_MANIFEST_BYTES}")
    return length


def manifest_from_stream(stream: bytes | bytearray | memoryview, *, layouts: LayoutCache | None = None) -> Manifest:
    """Parse a whole manifest stream (prefix and body), inflating it if it is deflated.

    The inflated size is bounded by :data:`MAX_MANIFEST_BYTES` whatever the stream
    claims; a deflated body that is truncated, inflates past the bound or has bytes after
    its end is refused.
    :param layouts: as for :meth:`Manifest.from_bytes`.
    :raises PacketError: on anything malformed.
    """
    return Manifest.from_bytes(manifest_json(stream), layouts=layouts)


def manifest_json(stream: bytes | bytearray | memoryview, *,
                  reserve: Callable[[int], None] | None = None) -> bytes | memoryview:
    """The JSON of a whole manifest stream (prefix and body), inflated if it is deflated,
    at most :data:`MAX_MANIFEST_BYTES` whatever the stream claims.

    :param reserve: called with a number of bytes before inflating makes them (twice the
        output, a step of :data:`INFLATE_STEP` at a time: the pieces, and the copy that
        joins them), so that a receiver charges what a stream inflates to as it grows;
        it may raise to stop.
    :raises PacketError: on a stream that is not one (truncated, corrupt, too long).
    """
    view = memoryview(stream)
    if len(view) < MANIFEST_PREFIX.size:
        raise PacketError("manifest stream is shorter than its length prefix")
    (prefix,) = MANIFEST_PREFIX.unpack_from(view)
    body = view[MANIFEST_PREFIX.size:]
    if len(body) != manifest_body_length(prefix):
        raise PacketError(f"manifest stream holds {len(body)} bytes after a prefix declaring "
                          f"{manifest_body_length(prefix)}")
    return _inflate_manifest(body, reserve) if prefix & MANIFEST_ZLIB else body


# Inflating goes this many bytes of output at a time, so that a receiver charges what a
# stream turns out to hold, not the limit (a deflated stream may inflate ~1,000-fold).
INFLATE_STEP = 16 << 10


def _inflate_manifest(deflated: memoryview, reserve: Callable[[int], None] | None = None) -> bytes:
    inflater = zlib.decompressobj()
    pieces, total, pending = [], 0, deflated
    try:
        while True:
            step = min(INFLATE_STEP, MAX_MANIFEST_BYTES + 1 - total)  # never more than the bound
            if reserve is not None:
                reserve(2 * step)
            piece = inflater.decompress(pending, step)
            pieces.append(piece)
            total += len(piece)
            pending = inflater.unconsumed_tail
            if total > MAX_MANIFEST_BYTES:
                raise LimitError(f"deflated manifest inflates past the limit of {MAX_MANIFEST_BYTES} bytes")
            if inflater.eof or (not pending and len(piece) < step):
                break
    except zlib.error as exc:
        raise PacketError(f"deflated manifest is corrupt: {exc}") from None
    if not inflater.eof:
        raise PacketError("deflated manifest is truncated")
    if inflater.unused_data:
        raise PacketError(f"{len(inflater.unused_data)} bytes follow the deflated manifest")
    return b"".join(pieces)


def runs(encoded: EncodedModel, mtu: int, *, authenticated: bool = False, deflate_manifest: bool = True) -> list[Run]:
    """The message as runs of fragments that each fit one datagram of ``mtu`` bytes.

    Manifest fragments come first (tensor index 0xFFFF, element_start = byte offset
    into the manifest stream); then every tensor, in manifest order, cut into as many
    whole elements as fit each datagram. Empty tensors take no fragment.
    """
    plain = packet.max_payload(mtu, quantised=False, authenticated=authenticated)
    out = [Run(MANIFEST_TENSOR, ENCODING_CODE["manifest"], 0, manifest_stream(encoded.manifest, deflate=deflate_manifest),
               plain)]
    packed = _packed_runs(encoded, plain)
    if packed is not None:
        out.extend(packed)
        return out
    for index, (spec, buf) in enumerate(zip(encoded.manifest.tensors, encoded.buffers)):
        if spec.numel == 0:
            continue
        chunk = plain - packet.QUANT_SIZE if spec.encoding == "int8" else plain
        chunk -= chunk % spec.itemsize
        out.append(Run(index, ENCODING_CODE[spec.encoding], 0, buf, chunk, spec.scale, spec.zero_point))
    return out


def _packed_runs(encoded: EncodedModel, payload_bytes: int) -> list[Run] | None:
    """All tensors back to back in one stream of datagrams, when they travel in one
    encoding and take at most :data:`PACKED_MAX_BYTES`: a fragment's range then runs on
    from one tensor into the next, and no tensor ends in a part-filled datagram of its
    own. int8 fragments of a packed stream carry no quantisation extension: each element
    decodes with the scale and zero point the manifest gives its tensor. A small model
    thus pays for its manifest and ceil(bytes / payload) headers, not one per tensor.
    Tensors with no elements are passed over.

    A fragment names the tensor and element where its first element lands, so the
    datagrams are grouped into one :class:`Run` per tensor that some datagram starts in.
    """
    present = [(index, spec, buf) for index, (spec, buf) in enumerate(zip(encoded.manifest.tensors, encoded.buffers))
               if spec.numel]
    if len(present) < 2:
        return None
    encoding = present[0][1].encoding
    if (any(spec.encoding != encoding for _, spec, _ in present)
            or sum(spec.nbytes for _, spec, _ in present) > PACKED_MAX_BYTES):
        return None
    payload = memoryview(b"".join(buf for _, _, buf in present))
    itemsize = present[0][1].itemsize
    chunk = payload_bytes - payload_bytes % itemsize
    code, scale = ENCODING_CODE[encoding], None if encoding == "int8" else 1.0
    out: list[Run] = []
    tensor_begin = 0  # byte offset of the current tensor in the payload
    for index, spec, _ in present:
        tensor_end = tensor_begin + spec.nbytes
        first = -(-tensor_begin // chunk) * chunk  # the first datagram that starts in this tensor
        if first < tensor_end:
            last = (tensor_end - 1) // chunk * chunk  # and the last
            end = min(last + chunk, len(payload))
            out.append(Run(index, code, (first - tensor_begin) // itemsize, payload[first:end], chunk, scale))
        tensor_begin = tensor_end
    return out


def fragments(encoded: EncodedModel, mtu: int, *, authenticated: bool = False,
              deflate_manifest: bool = True) -> list[Fragment]:
    """Cut a message into one :class:`Fragment` per datagram of at most ``mtu`` bytes.

    The same cut as :func:`runs` (which :func:`to_datagrams` uses, because it builds
    faster), one object per datagram.
    """
    out = []
    for run in runs(encoded, mtu, authenticated=authenticated, deflate_manifest=deflate_manifest):
        view = memoryview(run.payload).cast("B")
        itemsize = ENCODINGS[run.encoding][2]
        for offset in range(0, len(view), run.chunk):
            out.append(Fragment(run.tensor_index, run.encoding, run.element_start + offset // itemsize,
                                view[offset:offset + run.chunk], run.scale, run.zero_point))
    return out


def to_datagrams(
    state: Mapping[str, torch.Tensor] | EncodedModel,
    *,
    origin: int,
    destination: int,
    model_version: int,
    message_id: int,
    mtu: int = 1400,
    precision: str = "fp32",
    ttl: int = 16,
    key: bytes | None = None,
    scaling: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    manifest_copies: int = 1,
    tensor_precision: Mapping[str, str] | None = None,
    deflate_manifest: bool = True,
) -> list[memoryview]:
    """A model (state_dict or already encoded) as MFD datagrams, manifest first.

    ``manifest_copies=2`` repeats the manifest datagrams at the end, so a message
    whose first manifest datagram is lost can still be placed. The datagrams are
    read-only views of one buffer. ``deflate_manifest=False`` sends the manifest as plain
    JSON even where deflating would shorten it (see :func:`manifest_stream`).
    """
    if not isinstance(manifest_copies, int) or manifest_copies < 1:
        raise ValueError(f"manifest_copies must be a positive integer, got {manifest_copies!r}")
    packet.check_key(key)
    encoded = state if isinstance(state, EncodedModel) else encode(
        state, precision, scaling=scaling, meta=meta, tensor_precision=tensor_precision)
    plan = runs(encoded, mtu, authenticated=key is not None, deflate_manifest=deflate_manifest)
    datagrams = packet.build(plan, family_id=encoded.manifest.family_id, model_version=model_version,
                             origin=origin, destination=destination, message_id=message_id, ttl=ttl, key=key)
    manifest_count = plan[0].count
    for _ in range(manifest_copies - 1):
        datagrams.extend(datagrams[:manifest_count])
    return datagrams


# -- models on disk ---------------------------------------------------------------------
# A model file is what a message carries, in one piece: this magic, the manifest stream
# (as manifest datagrams carry it: length prefix, JSON, deflated where that is shorter),
# then every tensor's wire bytes in manifest order, then the CRC32C of all that (4 bytes,
# big-endian). Reading it parses and checks, as a receiver does: no pickle, so a file from
# anywhere is as safe to open as a datagram.
MODEL_FILE_MAGIC = b"MFD-model-1\n"
_FILE_CRC = struct.Struct(">I")


def save_model(path: str | Path, state: Mapping[str, torch.Tensor], *, precision: str = "fp32",
               meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``state`` to ``path`` as an MFD model file (see :func:`load_model`).

    The file appears whole or not at all (written beside it, then renamed), so a run
    stopped mid-write leaves the previous file intact.
    :param precision: as for :func:`encode`; ``fp32`` keeps float32 models exact.
    :param meta: JSON-serialisable notes kept in the manifest (:func:`load_model_meta`).
    """
    encoded = encode(state, precision, meta=meta)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as fh:
        fh.write(MODEL_FILE_MAGIC)
        stream = manifest_stream(encoded.manifest)
        fh.write(stream)
        crc = crc32c(stream)
        for buffer in encoded.buffers:
            fh.write(memoryview(buffer))
            crc = crc32c(buffer, crc)
        fh.write(_FILE_CRC.pack(crc))
    os.replace(partial, path)
    return path


def _read_model_file(path: str | Path) -> tuple[Manifest, bytearray, int]:
    """(manifest, the file's bytes, where the tensors start) of a model file."""
    path = Path(path)
    raw = bytearray(path.read_bytes())  # writable: decoded tensors share it, no second copy
    head = len(MODEL_FILE_MAGIC)
    if raw[:head] != MODEL_FILE_MAGIC or len(raw) < head + MANIFEST_PREFIX.size + _FILE_CRC.size:
        raise PacketError(f"{path}: not an MFD model file")
    (crc,) = _FILE_CRC.unpack_from(raw, len(raw) - _FILE_CRC.size)
    del raw[len(raw) - _FILE_CRC.size:]
    if crc32c(memoryview(raw)[head:]) != crc:
        raise PacketError(f"{path}: checksum mismatch (the file is damaged or cut short)")
    (prefix,) = MANIFEST_PREFIX.unpack_from(raw, head)
    end = head + MANIFEST_PREFIX.size + manifest_body_length(prefix)
    if end > len(raw):
        raise PacketError(f"{path}: truncated in its manifest")
    try:
        manifest = manifest_from_stream(memoryview(raw)[head:end])
    except PacketError as err:
        raise PacketError(f"{path}: {err}") from None
    if len(raw) - end != manifest.nbytes:
        raise PacketError(f"{path}: {len(raw) - end} bytes of tensors where the manifest lists {manifest.nbytes}")
    return manifest, raw, end


def load_model(path: str | Path) -> dict[str, torch.Tensor]:
    """The state_dict in an MFD model file written by :func:`save_model`.

    :raises PacketError: (a ``ValueError``) for anything that is not a whole, valid model
        file, with the path and what is wrong.
    """
    manifest, raw, offset = _read_model_file(path)
    view = memoryview(raw)
    buffers = []
    for spec in manifest.tensors:
        buffers.append(view[offset:offset + spec.nbytes])
        offset += spec.nbytes
    return decode(manifest, buffers)


def load_model_meta(path: str | Path) -> dict[str, Any]:
    """The ``meta`` a model file was saved with."""
    return dict(_read_model_file(path)[0].meta)
