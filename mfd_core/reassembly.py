"""Packets to model messages: any order, duplicates ignored, loss tolerated.

Sans-IO: the owner of the clock passes ``now`` (simulated or wall seconds) to
:meth:`Reassembler.receive` and :meth:`Reassembler.expire`. A message whose fragments
all arrive is delivered complete; one still open after ``timeout`` is delivered
*partial*, with a boolean mask per tensor of the elements that arrived, so the
receiver keeps its own values everywhere else. Memory is bounded: every limit is a
named constant, and the oldest open message is evicted first when one is reached.
"""
from __future__ import annotations

import math
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import torch

from .codec import _MANIFEST_PREFIX, MAX_MANIFEST_BYTES, Manifest, decode, decode_tensor
from .packet import ENCODING_CODE, AuthError, ChecksumError, Packet, PacketError, parse

# Linux waits 30 s for the fragments of an IP datagram (net.ipv4.ipfrag_time); a model
# message is larger but our links are simulated or local, so the same default serves.
DEFAULT_TIMEOUT_S = 30.0
# A peer rarely has more than a couple of models in flight to us (one per width or
# precision it serves); 8 leaves room for reordering across versions.
MAX_OPEN_PER_ORIGIN = 8
# Two 25M-parameter fp32 models (100 MB each) in flight from one peer, plus slack.
MAX_BYTES_PER_ORIGIN = 256 << 20
# Across all peers: a fleet of up to 256 simultaneous senders...
MAX_OPEN_TOTAL = 256
# ...within 1 GiB, a small fraction of an edge box's memory.
MAX_BYTES_TOTAL = 1 << 30
# Fragments that arrive before their manifest are buffered (copied) up to this many per
# message: at MTU 1,400 that is ~5.6 MB, enough to ride out a lost first datagram.
MAX_EARLY_FRAGMENTS = 4096
# Recently finished messages, remembered so a late duplicate is not taken for a new one.
RECENT_MEMORY = 1024


@dataclass(frozen=True)
class Limits:
    timeout_s: float = DEFAULT_TIMEOUT_S
    open_per_origin: int = MAX_OPEN_PER_ORIGIN
    bytes_per_origin: int = MAX_BYTES_PER_ORIGIN
    open_total: int = MAX_OPEN_TOTAL
    bytes_total: int = MAX_BYTES_TOTAL
    early_fragments: int = MAX_EARLY_FRAGMENTS


@dataclass
class ReceivedModel:
    """A model message as delivered: complete, or partial with masks of what arrived."""

    origin: int
    message_id: int
    model_version: int
    family_id: int
    destination: int
    manifest: Manifest
    state: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor] | None  # None when complete; else bool, True = arrived
    fragments_received: int
    fragment_count: int
    hops: int

    @property
    def complete(self) -> bool:
        return self.masks is None

    @property
    def received_fraction(self) -> float:
        return self.fragments_received / self.fragment_count


@dataclass
class _Open:
    first: Packet  # the first fragment seen: the fields every other fragment must agree with
    started: float
    seen: set[int] = field(default_factory=set)
    manifest_chunks: dict[int, bytes] = field(default_factory=dict)
    manifest_length: int | None = None
    manifest: Manifest | None = None
    buffers: list[np.ndarray] | None = None
    ranges: list[list[tuple[int, int]]] | None = None  # per tensor: (start, count) received
    early: list[Packet] = field(default_factory=list)
    nbytes: int = 0
    max_hops: int = 0


class Reassembler:
    """Turns a stream of datagrams from many origins into :class:`ReceivedModel` objects.

    :param key: fleet key; when set, unsigned, forged and replayed packets are refused.
    :param known_layouts: manifests this node already knows, by family id: a message
        whose own manifest is lost can still be placed by them.
    """

    def __init__(self, *, key: bytes | None = None, limits: Limits = Limits(),
                 known_layouts: Mapping[int, Manifest] | None = None) -> None:
        self.key = key
        self.limits = limits
        self.known_layouts = dict(known_layouts or {})
        self.stats: Counter[str] = Counter()
        self._open: OrderedDict[tuple[int, int], _Open] = OrderedDict()  # oldest first
        self._recent: OrderedDict[tuple[int, int, int], None] = OrderedDict()
        self._newest_version: dict[int, int] = {}
        self._bytes_by_origin: Counter[int] = Counter()

    # -- public API -------------------------------------------------------------------

    def receive(self, datagram: bytes | memoryview, now: float) -> ReceivedModel | None:
        """Take one datagram; returns the message it completes, if any.

        :raises PacketError: for a malformed, corrupted, unauthenticated or contradictory
            packet (counted in :attr:`stats`); the reassembler's state stays consistent.
        """
        try:
            pkt = parse(datagram, self.key)
        except PacketError as exc:
            self.stats[_reason(exc)] += 1
            raise
        return self.receive_packet(pkt, now)

    def receive_packet(self, pkt: Packet, now: float) -> ReceivedModel | None:
        if self.key is not None:
            newest = self._newest_version.get(pkt.origin, -1)
            if pkt.model_version < newest:
                self.stats["replayed"] += 1
                raise AuthError(f"replayed packet refused: model version {pkt.model_version} from "
                                f"origin {pkt.origin} is older than {newest}")
            self._newest_version[pkt.origin] = pkt.model_version
        key = (pkt.origin, pkt.message_id)
        if (pkt.origin, pkt.message_id, pkt.model_version) in self._recent:
            self.stats["duplicates"] += 1
            return None
        msg = self._open.get(key)
        if msg is None:
            msg = self._start(pkt, now)
        else:
            self._check_same_message(msg, pkt)
        if pkt.fragment_index in msg.seen:
            self.stats["duplicates"] += 1
            return None
        try:
            self._place(msg, pkt)
        except PacketError:
            self.stats["contradictions"] += 1
            self._drop(key)
            raise
        msg.seen.add(pkt.fragment_index)
        msg.max_hops = max(msg.max_hops, pkt.hops)
        self.stats["fragments"] += 1
        if len(msg.seen) == msg.first.fragment_count:
            return self._finish(key, msg, complete=True)
        return None

    def expire(self, now: float) -> list[ReceivedModel]:
        """Deliver, as partial, every message open for longer than the timeout."""
        out = []
        for key, msg in list(self._open.items()):
            if now - msg.started < self.limits.timeout_s:
                continue
            if msg.manifest is None and not self._adopt_known_layout(msg):
                self.stats["lost_manifest"] += 1
                self._drop(key)
                continue
            delivered = self._finish(key, msg, complete=False)
            if delivered is not None:
                out.append(delivered)
        return out

    @property
    def open_messages(self) -> int:
        return len(self._open)

    @property
    def buffered_bytes(self) -> int:
        return sum(self._bytes_by_origin.values())

    # -- internals ----------------------------------------------------------------------

    def _start(self, pkt: Packet, now: float) -> _Open:
        limits = self.limits
        same_origin = [k for k in self._open if k[0] == pkt.origin]
        while len(same_origin) >= limits.open_per_origin:
            self._evict(same_origin.pop(0))
        while len(self._open) >= limits.open_total:
            self._evict(next(iter(self._open)))
        msg = _Open(first=pkt, started=now)
        self._open[(pkt.origin, pkt.message_id)] = msg
        return msg

    def _check_same_message(self, msg: _Open, pkt: Packet) -> None:
        first = msg.first
        if (pkt.fragment_count, pkt.family_id, pkt.model_version) != (
                first.fragment_count, first.family_id, first.model_version):
            self.stats["contradictions"] += 1
            raise PacketError(
                f"fragment contradicts message {pkt.message_id} from origin {pkt.origin}: count/family/version "
                f"{(pkt.fragment_count, pkt.family_id, pkt.model_version)} vs "
                f"{(first.fragment_count, first.family_id, first.model_version)}")

    def _place(self, msg: _Open, pkt: Packet) -> None:
        if pkt.is_manifest:
            self._place_manifest_chunk(msg, pkt)
        elif msg.manifest is None:
            if len(msg.early) >= self.limits.early_fragments:
                raise PacketError("too many fragments before the manifest")
            self._charge(msg, len(pkt.payload))
            # copy: the view may point into a buffer the driver reuses
            msg.early.append(_with_payload(pkt, bytes(pkt.payload)))
        else:
            self._place_tensor_chunk(msg, pkt)

    def _place_manifest_chunk(self, msg: _Open, pkt: Packet) -> None:
        if msg.manifest is not None:
            return  # a repeat of a manifest slice we already parsed
        offset, data = pkt.element_start, bytes(pkt.payload)
        if offset == 0:
            if len(data) < _MANIFEST_PREFIX.size:
                raise PacketError("first manifest fragment is shorter than its length prefix")
            (length,) = _MANIFEST_PREFIX.unpack_from(data)
            if length > MAX_MANIFEST_BYTES:
                raise PacketError(f"manifest length {length} exceeds the limit of {MAX_MANIFEST_BYTES}")
            msg.manifest_length = length
        if offset > MAX_MANIFEST_BYTES + _MANIFEST_PREFIX.size:
            raise PacketError(f"manifest fragment at offset {offset} lies beyond any manifest")
        self._charge(msg, len(data))
        msg.manifest_chunks[offset] = data
        if msg.manifest_length is None:
            return
        total = msg.manifest_length + _MANIFEST_PREFIX.size
        have = sum(len(c) for c in msg.manifest_chunks.values())
        if have < total:
            return
        stream = bytearray(total)
        covered = 0
        for off, chunk in sorted(msg.manifest_chunks.items()):
            if off != covered or off + len(chunk) > total:
                raise PacketError("manifest fragments overlap, leave a gap or run past the declared length")
            stream[off:off + len(chunk)] = chunk
            covered += len(chunk)
        manifest = Manifest.from_bytes(memoryview(stream)[_MANIFEST_PREFIX.size:])
        if manifest.family_id != msg.first.family_id:
            raise PacketError("manifest layout does not match the family id in the headers")
        self._open_buffers(msg, manifest)
        msg.manifest_chunks.clear()

    def _open_buffers(self, msg: _Open, manifest: Manifest) -> None:
        self._charge(msg, manifest.nbytes)
        msg.manifest = manifest
        msg.buffers = [np.zeros(spec.nbytes, dtype=np.uint8) for spec in manifest.tensors]
        msg.ranges = [[] for _ in manifest.tensors]
        early, msg.early = msg.early, []
        for pkt in early:
            self._place_tensor_chunk(msg, pkt)

    def _place_tensor_chunk(self, msg: _Open, pkt: Packet) -> None:
        manifest = msg.manifest
        if pkt.tensor_index >= len(manifest.tensors):
            raise PacketError(f"tensor index {pkt.tensor_index} is beyond the manifest's {len(manifest.tensors)} tensors")
        spec = manifest.tensors[pkt.tensor_index]
        if ENCODING_CODE[spec.encoding] != pkt.encoding:
            raise PacketError(f"fragment encoding {pkt.encoding} contradicts the manifest ({spec.encoding}) for {spec.name}")
        if spec.encoding == "int8" and (abs(pkt.scale - spec.scale) > 1e-12 * max(1.0, spec.scale)
                                        or pkt.zero_point != spec.zero_point):
            raise PacketError(f"fragment quantisation parameters contradict the manifest for {spec.name}")
        count = pkt.element_count
        if pkt.element_start + count > spec.numel:
            raise PacketError(f"elements {pkt.element_start}..{pkt.element_start + count} run past "
                              f"{spec.name}'s {spec.numel}")
        item = spec.itemsize
        msg.buffers[pkt.tensor_index][pkt.element_start * item:(pkt.element_start + count) * item] = pkt.payload
        msg.ranges[pkt.tensor_index].append((pkt.element_start, count))

    def _adopt_known_layout(self, msg: _Open) -> bool:
        layout = self.known_layouts.get(msg.first.family_id)
        if layout is None:
            return False
        try:
            self._open_buffers(msg, layout)
        except PacketError:
            return False
        return True

    def _finish(self, key: tuple[int, int], msg: _Open, *, complete: bool) -> ReceivedModel | None:
        self._drop(key)
        self._remember(msg)
        manifest = msg.manifest
        if complete:
            for spec, ranges in zip(manifest.tensors, msg.ranges):
                if not _covers_exactly(ranges, spec.numel):
                    self.stats["contradictions"] += 1
                    raise PacketError(f"all fragments arrived but they do not cover {spec.name} exactly once")
            self.stats["complete"] += 1
            return self._delivery(msg, decode(manifest, msg.buffers), None)
        state, masks = {}, {}
        for spec, buf, ranges in zip(manifest.tensors, msg.buffers, msg.ranges):
            mask = np.zeros(spec.numel, dtype=bool)
            for start, count in ranges:
                mask[start:start + count] = True
            state[spec.name] = decode_tensor(spec, buf)
            masks[spec.name] = torch.from_numpy(mask).reshape(spec.shape)
        self.stats["partial"] += 1
        return self._delivery(msg, state, masks)

    def _delivery(self, msg: _Open, state, masks) -> ReceivedModel:
        first = msg.first
        return ReceivedModel(first.origin, first.message_id, first.model_version, first.family_id,
                             first.destination, msg.manifest, state, masks, len(msg.seen),
                             first.fragment_count, msg.max_hops)

    def _charge(self, msg: _Open, nbytes: int) -> None:
        origin = msg.first.origin
        if self._bytes_by_origin[origin] + nbytes > self.limits.bytes_per_origin:
            self._make_room(origin, nbytes, keep=msg)
        if self._bytes_by_origin[origin] + nbytes > self.limits.bytes_per_origin:
            raise PacketError(f"message from origin {origin} needs more than the "
                              f"{self.limits.bytes_per_origin} bytes allowed per origin")
        while self.buffered_bytes + nbytes > self.limits.bytes_total:
            victim = next((k for k, m in self._open.items() if m is not msg), None)
            if victim is None:
                raise PacketError("message larger than the reassembler's total memory limit")
            self._evict(victim)
        msg.nbytes += nbytes
        self._bytes_by_origin[origin] += nbytes

    def _make_room(self, origin: int, nbytes: int, keep: _Open) -> None:
        for k, m in list(self._open.items()):
            if self._bytes_by_origin[origin] + nbytes <= self.limits.bytes_per_origin:
                return
            if k[0] == origin and m is not keep:
                self._evict(k)

    def _evict(self, key: tuple[int, int]) -> None:
        self.stats["evicted"] += 1
        self._drop(key)

    def _drop(self, key: tuple[int, int]) -> None:
        msg = self._open.pop(key, None)
        if msg is not None:
            self._bytes_by_origin[key[0]] -= msg.nbytes
            if self._bytes_by_origin[key[0]] <= 0:
                del self._bytes_by_origin[key[0]]

    def _remember(self, msg: _Open) -> None:
        first = msg.first
        self._recent[(first.origin, first.message_id, first.model_version)] = None
        while len(self._recent) > RECENT_MEMORY:
            self._recent.popitem(last=False)


def _covers_exactly(ranges: list[tuple[int, int]], numel: int) -> bool:
    position = 0
    for start, count in sorted(ranges):
        if start != position:
            return False
        position += count
    return position == numel


def _with_payload(pkt: Packet, payload: bytes) -> Packet:
    return Packet(pkt.flags, pkt.encoding, pkt.message_id, pkt.tensor_index, pkt.family_id,
                  pkt.model_version, pkt.origin, pkt.destination, pkt.fragment_index, pkt.fragment_count,
                  pkt.element_start, pkt.ttl, pkt.hops, memoryview(payload), pkt.scale, pkt.zero_point)


def _reason(exc: PacketError) -> str:
    """The stats counter a refused datagram is counted under."""
    if isinstance(exc, ChecksumError):
        return "corrupted"
    if isinstance(exc, AuthError):
        return "unsigned" if "unsigned" in str(exc) else "forged"
    return "malformed"


def merge_partial(local: Mapping[str, torch.Tensor], received: ReceivedModel) -> dict[str, torch.Tensor]:
    """The receiver's state with every element that arrived replaced by the received one.

    Tensors the message did not carry, and elements whose fragments were lost, keep the
    local values. (Blending rather than replacing is :mod:`mfd_core.knowledge`'s job.)
    """
    out = {}
    for name, value in local.items():
        incoming = received.state.get(name)
        if incoming is None or incoming.shape != value.shape:
            out[name] = value.clone()
            continue
        if received.masks is None:
            out[name] = incoming.to(value.dtype).clone()
        else:
            out[name] = torch.where(received.masks[name], incoming.to(value.dtype), value)
    return out
