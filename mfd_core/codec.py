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
import hashlib
import json
import math
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from . import packet
from .packet import ENCODING_CODE, ENCODINGS, MANIFEST_TENSOR, Fragment, LimitError, PacketError, Run

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp64")
MANIFEST_FORMAT = 1
# A manifest of 4 MiB describes ~50k tensors at ~80 bytes each, well past the largest
# state_dicts we know (a ResNet-152 has ~1k tensors); the cap bounds what a lying peer
# can make a receiver buffer before anything is checked.
MAX_MANIFEST_BYTES = 4 << 20
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
_MANIFEST_PREFIX = struct.Struct(">I")  # manifest stream = uint32 length + JSON
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
    # Layouts are looked up by their tuple of specs (manifest JSON, family id) once per
    # message: the generated __hash__ would hash all six fields each time.
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        numel = math.prod(self.shape)
        itemsize = ENCODINGS[ENCODING_CODE[self.encoding]][2]
        object.__setattr__(self, "numel", numel)
        object.__setattr__(self, "itemsize", itemsize)
        object.__setattr__(self, "nbytes", numel * itemsize)
        object.__setattr__(self, "_hash", hash((self.name, self.shape, self.dtype, self.encoding, self.scale,
                                                self.zero_point)))

    def __hash__(self) -> int:
        return self._hash


@dataclass(frozen=True)
class Manifest:
    """What a message carries. ``scaling`` says how the model was cut (family, width ratio,
    which layers), so that a receiver of any width knows where each slice goes."""

    tensors: tuple[TensorSpec, ...]
    scaling: Mapping[str, Any] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)

    # Plain properties over per-layout caches: functools.cached_property takes a lock on
    # every access in Python 3.11, ~1 us, and these are read several times per message.
    @property
    def family_id(self) -> int:
        return _family_id(self.tensors)

    @property
    def nbytes(self) -> int:
        return _layout_nbytes(self.tensors)

    def index(self, name: str) -> int:
        for i, spec in enumerate(self.tensors):
            if spec.name == name:
                return i
        raise KeyError(name)

    def to_bytes(self) -> bytes:
        # Canonical JSON (keys sorted: format, meta, scaling, tensors), written in parts so
        # that the tensor list, the same in every message of a layout, is encoded once:
        # for a tiny model it is most of the manifest and most of the encoding time.
        return b"".join((b'{"format":%d,"meta":' % MANIFEST_FORMAT, _canonical_json(dict(self.meta)),
                         b',"scaling":', _canonical_json(dict(self.scaling)),
                         b',"tensors":', _tensors_json(self.tensors), b"}"))

    @classmethod
    def from_bytes(cls, raw: bytes | memoryview) -> "Manifest":
        """Parse and validate a received manifest. :raises PacketError: on anything malformed."""
        if len(raw) > MAX_MANIFEST_BYTES:
            raise LimitError(f"manifest of {len(raw)} bytes exceeds the limit of {MAX_MANIFEST_BYTES}")
        raw = bytes(raw)
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise PacketError(f"manifest is not valid UTF-8 JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise PacketError("manifest must be a JSON object")
        fmt = doc.get("format")
        if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt != MANIFEST_FORMAT:
            raise PacketError(f"unsupported manifest format {fmt!r} (this decoder reads {MANIFEST_FORMAT})")
        tensors, scaling, meta = doc.get("tensors"), doc.get("scaling", {}), doc.get("meta", {})
        if not isinstance(tensors, list) or len(tensors) > packet.MAX_TENSORS:
            raise PacketError("manifest 'tensors' must be a list of at most 65,535 entries")
        if not isinstance(scaling, dict) or not isinstance(meta, dict):
            raise PacketError("manifest 'scaling' and 'meta' must be objects")
        # A sender's tensor list is the same in every message of a layout: when the JSON
        # ends with the very bytes of a list validated before, its specs are reused.
        # Sound for any valid JSON: a ',"' outside a string starts a key, and a key whose
        # value runs to the document's closing brace is the top level's last, which is the
        # one json.loads keeps; inside a string, the '"' would end it and leave a bare
        # word, which json.loads has refused already.
        cut = raw.rfind(b',"tensors":')
        tail = raw[cut:] if cut >= 0 else b""
        specs = _SPECS_BY_TAIL.get(tail) if tail else None
        if specs is None:
            specs = _parse_specs(tensors)
            if tail:
                if len(_SPECS_BY_TAIL) >= _SPECS_CACHE_SIZE:
                    _SPECS_BY_TAIL.clear()
                _SPECS_BY_TAIL[tail] = specs
        return cls(specs, scaling, meta)


# Validated tensor lists by the manifest bytes that end with them (see Manifest.from_bytes).
# A fleet sends few layouts; the cache is emptied, not grown, past this many.
_SPECS_CACHE_SIZE = 256
_SPECS_BY_TAIL: dict[bytes, tuple[TensorSpec, ...]] = {}


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
    where = f"manifest tensor {i}"
    if not isinstance(entry, dict):
        raise PacketError(f"{where} is not an object")
    name, shape, dtype, encoding = entry.get("name"), entry.get("shape"), entry.get("dtype"), entry.get("encoding")
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LENGTH:
        raise PacketError(f"{where}: name must be a string of 1 to {MAX_NAME_LENGTH} characters")
    if not name.isascii() and not _is_text(name):
        raise PacketError(f"{where}: name holds a lone surrogate ({ascii(name)[:80]}), which no UTF-8 text can")
    if (not isinstance(shape, list) or len(shape) > MAX_DIMS
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= packet.MAX_ELEMENTS for d in shape)):
        raise PacketError(f"{where} ({name}): shape must be a list of at most {MAX_DIMS} non-negative integers")
    if math.prod(shape) > packet.MAX_ELEMENTS:
        raise PacketError(f"{where} ({name}): more than 2^32-1 elements")
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise PacketError(f"{where} ({name}): unknown dtype {dtype!r}")
    if (not isinstance(encoding, str) or encoding not in ENCODING_CODE or encoding in ("manifest", "control")
            or not _encoding_fits(dtype, encoding)):
        raise PacketError(f"{where} ({name}): encoding {encoding!r} cannot carry dtype {dtype}")
    scale, zero_point = 1.0, 0
    if encoding == "int8":
        scale, zero_point = entry.get("scale"), entry.get("zero_point")
        if isinstance(scale, (int, float)) and not isinstance(scale, bool):
            try:  # the wire carries the scale as binary32, so the manifest names a binary32 value
                scale = float(np.float32(float(scale))) if abs(scale) <= _FLOAT32_MAX else math.inf
            except OverflowError:
                scale = math.inf
        if not isinstance(scale, float) or not 0 < scale < math.inf:
            raise PacketError(f"{where} ({name}): int8 scale must be a positive finite binary32 number")
        if not isinstance(zero_point, int) or isinstance(zero_point, bool) or not -128 <= zero_point <= 127:
            raise PacketError(f"{where} ({name}): int8 zero_point must be an integer in -128..127")
    return _spec(name, tuple(shape), dtype, encoding, scale, zero_point)


def _is_text(name: str) -> bool:
    """Whether ``name`` is Unicode text: JSON's ``\\ud800`` escapes give Python strings with
    lone surrogates, which have no UTF-8 form (the family id hashes a name's UTF-8)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _encoding_fits(dtype: str, encoding: str) -> bool:
    if dtype in _FLOAT_DTYPES:
        return encoding in _BITS
    return encoding == _RAW_ENCODING[dtype]


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


# The same spec object for the same tensor of every message: layouts then hash and
# compare by identity, and specs are not rebuilt per message.
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
    x64 = x.detach().to(torch.float64).reshape(-1)
    if x64.numel() == 0:
        return torch.empty(x.shape, dtype=torch.int8), 1.0, 0
    if not torch.isfinite(x64).all():
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
    q = torch.clamp(torch.round(x64 / scale) + zero_point, -128, 127).to(torch.int8)
    return q.reshape(x.shape), scale, zero_point


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
    if len(state) > packet.MAX_TENSORS:
        raise ValueError(f"a message carries at most {packet.MAX_TENSORS} tensors, got {len(state)}")
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
    if deflate and manifest.nbytes:
        packed = zlib.compress(raw, 9)
        if len(packed) < len(raw):
            return _MANIFEST_PREFIX.pack(MANIFEST_ZLIB | len(packed)) + packed
    return _MANIFEST_PREFIX.pack(len(raw)) + raw


def manifest_body_length(prefix: int) -> int:
    """Bytes after the 4-byte prefix of a manifest stream, from the prefix's value.
    :raises LimitError: past :data:`MAX_MANIFEST_BYTES` (deflated or not)."""
    length = prefix & ~MANIFEST_ZLIB
    if length > MAX_MANIFEST_BYTES:
        raise LimitError(f"manifest length {length} exceeds the limit of {MAX_MANIFEST_BYTES}")
    return length


def manifest_from_stream(stream: bytes | bytearray | memoryview) -> Manifest:
    """Parse a whole manifest stream (prefix and body), inflating it if it is deflated.

    The inflated size is bounded by :data:`MAX_MANIFEST_BYTES` whatever the stream
    claims; a deflated body that is truncated, inflates past the bound or has bytes after
    its end is refused.
    :raises PacketError: on anything malformed.
    """
    view = memoryview(stream)
    if len(view) < _MANIFEST_PREFIX.size:
        raise PacketError("manifest stream is shorter than its length prefix")
    (prefix,) = _MANIFEST_PREFIX.unpack_from(view)
    body = view[_MANIFEST_PREFIX.size:]
    if len(body) != manifest_body_length(prefix):
        raise PacketError(f"manifest stream holds {len(body)} bytes after a prefix declaring "
                          f"{manifest_body_length(prefix)}")
    if prefix & MANIFEST_ZLIB:
        body = _inflate_manifest(body)
    return Manifest.from_bytes(body)


def _inflate_manifest(deflated: memoryview) -> bytes:
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(deflated, MAX_MANIFEST_BYTES + 1)  # never more than the bound
    except zlib.error as exc:
        raise PacketError(f"deflated manifest is corrupt: {exc}") from None
    if len(raw) > MAX_MANIFEST_BYTES or inflater.unconsumed_tail:
        raise LimitError(f"deflated manifest inflates past the limit of {MAX_MANIFEST_BYTES} bytes")
    if not inflater.eof:
        raise PacketError("deflated manifest is truncated")
    if inflater.unused_data:
        raise PacketError(f"{len(inflater.unused_data)} bytes follow the deflated manifest")
    return raw


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
