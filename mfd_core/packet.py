"""The MFD datagram: one self-describing, checksummed piece of a model message.

Sans-IO, like h11: bytes in, packets out, and packets in, bytes out. Nothing here
touches a socket or a clock; the simulated network, UDP and Ray are drivers around it.
The byte layout is specified in ``docs/packet-format.md``; this module is its
reference implementation and the tests check it against the test vectors there.

Every datagram carries enough to be routed (destination, TTL), placed (message id,
fragment index/count, tensor index, element range, encoding) and checked (CRC32C, and
optionally a truncated HMAC-SHA256) on its own. Parsing any byte string returns a
:class:`Packet` or raises :class:`PacketError` with a message saying what was wrong.
"""
from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

from crc32c import crc32c

MAGIC = 0x4D  # "M"
VERSION = 1

# Flags: the low nibble of byte 1 (the high nibble is the protocol version).
FLAG_MANIFEST = 0x1  # the payload is a slice of the message's JSON manifest
FLAG_QUANT = 0x2  # an 8-byte quantisation extension follows the fixed header
FLAG_AUTH = 0x4  # a 16-byte HMAC-SHA256 tag follows the payload
FLAG_RESERVED = 0x8  # must be zero in version 1

# Destinations that are not a single node.
BROADCAST = 0xFFFF_FFFF  # every node, forwarded until the TTL runs out
NEIGHBOURS = 0xFFFF_FFFE  # every direct neighbour of the sender, never forwarded
MAX_NODE_ID = 0xFFFF_FFFD

MANIFEST_TENSOR = 0xFFFF  # tensor_index of manifest fragments
MAX_TENSORS = MANIFEST_TENSOR  # tensor indices 0 .. 0xFFFE

# Big-endian ("network order") fixed header. 3-byte fragment index/count are split
# into a 16-bit high part and an 8-bit low part because struct has no 24-bit code.
# TTL and hop count sit together right before the checksum: they are the only fields
# a forwarder rewrites, so (as IPsec AH does with the IPv4 TTL) checksum and tag skip
# them, and forwarding needs no recomputation.
_HEADER = struct.Struct(">BBBBHHIIIIHBHBIHBBI")
HEADER_SIZE = _HEADER.size  # 42
_COVERED_PREFIX = 36  # bytes 0..35 are covered by the checksum; 36,37 = TTL, hops
_TTL_OFFSET = 36
_CHECKSUM_OFFSET = 38
_QUANT = struct.Struct(">fi")  # scale (IEEE754 binary32), zero point (int32)
QUANT_SIZE = _QUANT.size  # 8
# HMAC-SHA256 truncated to 128 bits, as IPsec does (RFC 4868): forging needs 2^128 tries.
TAG_SIZE = 16

# MTU bounds. 256 bytes leaves room for the header and a useful payload on the
# smallest links we model; 65,535 is the largest UDP payload over IPv4 (the same bound
# keeps payload_len in 16 bits).
MIN_MTU = 256
MAX_MTU = 65_535
MAX_FRAGMENTS = 0xFF_FFFF  # 24-bit fragment index/count
MAX_ELEMENTS = 0xFFFF_FFFF  # 32-bit element_start: one tensor holds at most 2^32-1 elements

# Payload encodings: the code, the numpy dtype string (little-endian on the wire) and the
# item size. Floating tensors are sent at a chosen precision; other dtypes travel as they are.
ENCODINGS: dict[int, tuple[str, str, int]] = {
    0: ("fp32", "<f4", 4),
    1: ("fp16", "<f2", 2),
    2: ("bf16", "<u2", 2),  # raw bfloat16 bit patterns
    3: ("int8", "<i1", 1),  # affine: x = (q - zero_point) * scale
    4: ("fp64", "<f8", 8),
    5: ("int64", "<i8", 8),
    6: ("int32", "<i4", 4),
    7: ("int16", "<i2", 2),
    8: ("uint8", "<u1", 1),
    9: ("bool", "<u1", 1),
    10: ("manifest", "<u1", 1),  # length-prefixed UTF-8 JSON bytes
    11: ("int8raw", "<i1", 1),  # an int8 tensor sent as it is (no quantisation)
}
ENCODING_CODE = {name: code for code, (name, _, _) in ENCODINGS.items()}
ENCODING_INT8 = ENCODING_CODE["int8"]
ENCODING_MANIFEST = ENCODING_CODE["manifest"]


class PacketError(ValueError):
    """A datagram that is not a valid MFD packet; the message says what was wrong."""


class ChecksumError(PacketError):
    """The CRC32C does not match: the datagram was corrupted on the way."""


class AuthError(PacketError):
    """The packet is unsigned, forged or replayed for a receiver that holds a fleet key."""


@dataclass(frozen=True, slots=True)
class Packet:
    """One parsed datagram. ``payload`` is a read-only view into the received bytes."""

    flags: int
    encoding: int
    message_id: int
    tensor_index: int
    family_id: int
    model_version: int
    origin: int
    destination: int
    fragment_index: int
    fragment_count: int
    element_start: int
    ttl: int
    hops: int
    payload: memoryview
    scale: float = 1.0
    zero_point: int = 0

    @property
    def is_manifest(self) -> bool:
        return bool(self.flags & FLAG_MANIFEST)

    @property
    def authenticated(self) -> bool:
        return bool(self.flags & FLAG_AUTH)

    @property
    def element_count(self) -> int:
        return len(self.payload) // ENCODINGS[self.encoding][2]


@dataclass(frozen=True, slots=True)
class Fragment:
    """What the sender puts into one datagram, before the common header fields."""

    tensor_index: int
    encoding: int
    element_start: int
    payload: memoryview | bytes
    scale: float = 1.0
    zero_point: int = 0


def _crc(buf: memoryview, end: int) -> int:
    """CRC32C over the datagram except TTL, hop count and the checksum field itself."""
    return crc32c(buf[end:], crc32c(buf[:_COVERED_PREFIX]))


def _tag(key: bytes, buf: memoryview, payload_end: int) -> bytes:
    mac = hmac.new(key, buf[:_COVERED_PREFIX], hashlib.sha256)
    mac.update(buf[HEADER_SIZE:payload_end])
    return mac.digest()[:TAG_SIZE]


def max_payload(mtu: int, *, quantised: bool, authenticated: bool) -> int:
    """Payload bytes that fit one datagram of ``mtu`` bytes."""
    check_mtu(mtu)
    return mtu - HEADER_SIZE - (QUANT_SIZE if quantised else 0) - (TAG_SIZE if authenticated else 0)


def check_mtu(mtu: int) -> None:
    if not isinstance(mtu, int) or not MIN_MTU <= mtu <= MAX_MTU:
        raise ValueError(f"mtu must be an integer from {MIN_MTU} to {MAX_MTU} bytes, got {mtu!r}")


def check_node_id(name: str, value: int, *, special_ok: bool = False) -> None:
    limit = BROADCAST if special_ok else MAX_NODE_ID
    if not isinstance(value, int) or not 0 <= value <= limit:
        raise ValueError(f"{name} must be a node id from 0 to {limit}, got {value!r}")


def build(
    fragments: Sequence[Fragment],
    *,
    family_id: int,
    model_version: int,
    origin: int,
    destination: int,
    message_id: int,
    ttl: int = 16,
    key: bytes | None = None,
) -> list[memoryview]:
    """Serialise one message's fragments into datagrams (read-only views of one buffer).

    Fragment ``i`` becomes datagram ``i``: the caller orders them (manifest first).
    """
    count = len(fragments)
    if not 1 <= count <= MAX_FRAGMENTS:
        raise ValueError(f"a message has 1 to {MAX_FRAGMENTS} fragments, got {count}")
    check_node_id("origin", origin)
    check_node_id("destination", destination, special_ok=True)
    for name, value, bits in (("family_id", family_id, 32), ("model_version", model_version, 32),
                              ("message_id", message_id, 16), ("ttl", ttl, 8)):
        if not isinstance(value, int) or not 0 <= value < (1 << bits):
            raise ValueError(f"{name} must fit {bits} bits unsigned, got {value!r}")
    tag_size = TAG_SIZE if key else 0
    sizes = []
    total = 0
    for frag in fragments:
        size = HEADER_SIZE + (QUANT_SIZE if frag.encoding == ENCODING_INT8 else 0) + len(frag.payload) + tag_size
        if size > MAX_MTU:
            raise ValueError(f"fragment of {size} bytes exceeds the largest datagram ({MAX_MTU})")
        sizes.append(size)
        total += size
    out = bytearray(total)
    view = memoryview(out)
    datagrams: list[memoryview] = []
    pack_header = _HEADER.pack_into
    pos = 0
    auth_flag = FLAG_AUTH if key else 0
    fcount_hi, fcount_lo = count >> 8, count & 0xFF
    for index, (frag, size) in enumerate(zip(fragments, sizes)):
        quantised = frag.encoding == ENCODING_INT8
        flags = auth_flag | (FLAG_QUANT if quantised else 0) | (FLAG_MANIFEST if frag.tensor_index == MANIFEST_TENSOR else 0)
        header_len = HEADER_SIZE + (QUANT_SIZE if quantised else 0)
        plen = len(frag.payload)
        pack_header(view, pos, MAGIC, (VERSION << 4) | flags, header_len, frag.encoding, message_id,
                    frag.tensor_index, family_id, model_version, origin, destination,
                    index >> 8, index & 0xFF, fcount_hi, fcount_lo, frag.element_start, plen, ttl, 0, 0)
        body = pos + header_len
        if quantised:
            _QUANT.pack_into(view, pos + HEADER_SIZE, frag.scale, frag.zero_point)
        view[body:body + plen] = frag.payload
        dgram = view[pos:pos + size]
        if key:
            dgram[body - pos + plen:] = _tag(key, dgram, header_len + plen)
        struct.pack_into(">I", dgram, _CHECKSUM_OFFSET, _crc(dgram, HEADER_SIZE))
        datagrams.append(dgram.toreadonly())
        pos += size
    return datagrams


def parse(datagram: bytes | bytearray | memoryview, key: bytes | None = None) -> Packet:
    """Parse and check one datagram.

    :param key: the fleet key; when given, unsigned and forged packets are refused with
        :class:`AuthError` (replay needs state: the reassembler checks it).
    :raises PacketError: for anything that is not a well-formed, intact MFD packet.
    """
    try:
        buf = memoryview(datagram).cast("B")
    except TypeError as exc:
        raise PacketError(f"not a byte string: {type(datagram).__name__}") from None
    size = len(buf)
    if size < HEADER_SIZE:
        raise PacketError(f"truncated: {size} bytes, the fixed header alone is {HEADER_SIZE}")
    (magic, ver_flags, header_len, encoding, message_id, tensor_index, family_id, model_version,
     origin, destination, fidx_hi, fidx_lo, fcnt_hi, fcnt_lo, element_start, payload_len, ttl, hops,
     checksum) = _HEADER.unpack_from(buf)
    if magic != MAGIC:
        raise PacketError(f"bad magic 0x{magic:02x}, expected 0x{MAGIC:02x}")
    if ver_flags >> 4 != VERSION:
        raise PacketError(f"unsupported protocol version {ver_flags >> 4} (this decoder speaks {VERSION})")
    flags = ver_flags & 0xF
    if flags & FLAG_RESERVED:
        raise PacketError("reserved flag bit 3 is set")
    quantised = bool(flags & FLAG_QUANT)
    expected_header = HEADER_SIZE + (QUANT_SIZE if quantised else 0)
    if header_len != expected_header:
        raise PacketError(f"header length {header_len} does not match its flags (expected {expected_header})")
    tag_size = TAG_SIZE if flags & FLAG_AUTH else 0
    if size != header_len + payload_len + tag_size:
        raise PacketError(
            f"length mismatch: datagram is {size} bytes, header says "
            f"{header_len} + payload {payload_len}{' + tag 16' if tag_size else ''}")
    if _crc(buf, HEADER_SIZE) != checksum:
        raise ChecksumError("checksum mismatch: the datagram was corrupted")
    enc = ENCODINGS.get(encoding)
    if enc is None:
        raise PacketError(f"unknown payload encoding {encoding}")
    if quantised != (encoding == ENCODING_INT8):
        raise PacketError("quantisation extension present without int8 encoding, or int8 without it")
    is_manifest = bool(flags & FLAG_MANIFEST)
    if is_manifest != (tensor_index == MANIFEST_TENSOR) or is_manifest != (encoding == ENCODING_MANIFEST):
        raise PacketError("manifest flag, tensor index 0xFFFF and manifest encoding must go together")
    fragment_index = (fidx_hi << 8) | fidx_lo
    fragment_count = (fcnt_hi << 8) | fcnt_lo
    if fragment_count == 0:
        raise PacketError("fragment count is zero")
    if fragment_index >= fragment_count:
        raise PacketError(f"fragment index {fragment_index} is beyond the count {fragment_count}")
    itemsize = enc[2]
    if payload_len % itemsize:
        raise PacketError(f"payload of {payload_len} bytes is not a whole number of {enc[0]} elements")
    if element_start + payload_len // itemsize > MAX_ELEMENTS:
        raise PacketError("element range runs past 2^32-1")
    if origin > MAX_NODE_ID:
        raise PacketError(f"origin {origin:#x} is a reserved address")
    scale, zero_point = 1.0, 0
    if quantised:
        scale, zero_point = _QUANT.unpack_from(buf, HEADER_SIZE)
        if not (scale > 0 and scale < float("inf")):
            raise PacketError(f"int8 scale must be finite and positive, got {scale!r}")
        if not -128 <= zero_point <= 127:
            raise PacketError(f"int8 zero point {zero_point} is outside -128..127")
    payload_end = header_len + payload_len
    if key is not None:
        if not tag_size:
            raise AuthError("unsigned packet refused: this receiver requires the fleet key")
        if not hmac.compare_digest(_tag(key, buf, payload_end), buf[payload_end:]):
            raise AuthError("forged packet refused: authentication tag does not match")
    return Packet(flags, encoding, message_id, tensor_index, family_id, model_version, origin,
                  destination, fragment_index, fragment_count, element_start, ttl, hops,
                  buf[header_len:payload_end].toreadonly(), scale, zero_point)


def peek_route(datagram: bytes | memoryview) -> tuple[int, int, int]:
    """(destination, ttl, hops) without a full parse: what a forwarder needs per hop."""
    if len(datagram) < HEADER_SIZE or datagram[0] != MAGIC:
        raise PacketError("not an MFD packet")
    destination = int.from_bytes(datagram[20:24], "big")
    return destination, datagram[_TTL_OFFSET], datagram[_TTL_OFFSET + 1]


def forwarded(datagram: bytes | memoryview) -> bytes:
    """A copy of the datagram one hop further on: TTL - 1, hop count + 1.

    Checksum and tag skip these two bytes, so nothing is recomputed.
    :raises PacketError: when the TTL is already spent.
    """
    _, ttl, hops = peek_route(datagram)
    if ttl == 0:
        raise PacketError("TTL expired")
    out = bytearray(datagram)
    out[_TTL_OFFSET] = ttl - 1
    out[_TTL_OFFSET + 1] = min(hops + 1, 0xFF)
    return bytes(out)


def iter_parse(datagrams: Iterable[bytes | memoryview], key: bytes | None = None) -> Iterator[Packet | PacketError]:
    """Parse many datagrams, yielding the error in place of each bad one."""
    for dgram in datagrams:
        try:
            yield parse(dgram, key)
        except PacketError as exc:
            yield exc
