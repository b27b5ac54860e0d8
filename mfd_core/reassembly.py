"""Packets to model messages: any order, duplicates ignored, loss tolerated.

Sans-IO: the owner of the clock passes ``now`` (simulated or wall seconds) to
:meth:`Reassembler.receive` and :meth:`Reassembler.expire`. A message whose fragments
all arrive is delivered complete; one still open after ``timeout`` is delivered
*partial*, with a boolean mask per tensor of the elements that arrived, so the
receiver keeps its own values everywhere else. A control datagram is a whole message
on its own and comes out at once as a :class:`ReceivedControl`. Memory is bounded:
every limit is a named constant, bytes are charged before they are allocated, and the
oldest open message is evicted first when a limit is reached.
"""
from __future__ import annotations

from array import array
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
import torch

from .codec import (_MANIFEST_PREFIX, MANIFEST_ZLIB, MAX_MANIFEST_BYTES, Manifest, decode, decode_tensor,
                    manifest_body_length, manifest_from_stream)
from .packet import (ENCODING_CODE, ENCODING_CONTROL, ENCODING_INT8, FLAG_AUTH, FLAG_MANIFEST, FLAG_QUANT,
                     MAX_PAYLOAD, AuthError, LimitError, Packet, PacketError, _parse, batch_checksums, check_key)

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
# With a key, the message ids of one origin's newest model version that are remembered
# below the newest one (a sliding window, as IPsec's anti-replay window, RFC 4303 §3.4.3,
# whose recommended minimum is 64): reordering across more messages of one origin than
# this is refused as a replay. 1,024 bits is 128 bytes per origin of the fleet.
REPLAY_WINDOW = 1024
# Message ids are 16-bit serial numbers (RFC 1982): one is newer than another when it is
# 1 to 32,767 ahead of it, modulo 65,536.
_SERIAL_HALF = 1 << 15
# Bookkeeping charged per fragment a message declares, before anything else is taken:
# one bit of the received-bitmap plus the (tensor, start, count) int64 triple each
# arrival records, rounded up. A first packet that declares 2^24 fragments is thereby
# charged ~420 MB and refused under the default per-origin budget instead of pinning it.
BOOKKEEPING_BYTES_PER_FRAGMENT = 25
# Tensors of a message share one buffer, each at an offset aligned for any dtype (and
# a cache line).
_ALIGN = 64


@dataclass(frozen=True)
class Limits:
    """The reassembler's bounds; the defaults are the module constants above."""

    timeout_s: float = DEFAULT_TIMEOUT_S
    open_per_origin: int = MAX_OPEN_PER_ORIGIN
    bytes_per_origin: int = MAX_BYTES_PER_ORIGIN
    open_total: int = MAX_OPEN_TOTAL
    bytes_total: int = MAX_BYTES_TOTAL
    early_fragments: int = MAX_EARLY_FRAGMENTS

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s!r}")
        for name in ("open_per_origin", "bytes_per_origin", "open_total", "bytes_total"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.early_fragments, int) or self.early_fragments < 0:
            raise ValueError(f"early_fragments must be a non-negative integer, got {self.early_fragments!r}")


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


@dataclass(frozen=True, slots=True)
class ReceivedControl:
    """A control datagram as delivered: the header fields the layer above needs and its
    payload, whose bytes that layer defines (see :func:`mfd_core.packet.build_control`)."""

    origin: int
    destination: int
    message_id: int
    model_version: int
    payload: bytes
    hops: int


class _Open:
    """One message being reassembled."""

    __slots__ = ("first", "ident", "started", "last", "seen", "received", "max_hops", "nbytes",
                 "manifest_chunks", "manifest_length", "manifest_have", "manifest_stream",
                 "manifest", "buffers", "tensors", "ranges", "early", "early_bytes")

    def __init__(self, first: Packet, started: float) -> None:
        self.first = first  # the fields every other fragment must agree with
        # what every datagram of the message must repeat (docs/packet-format.md §4)
        self.ident = (first.fragment_count, first.family_id, first.model_version, first.destination)
        self.started = started
        self.last = started  # when its latest fragment arrived
        self.seen = bytearray((first.fragment_count + 7) >> 3)  # bitmap of fragment indices
        self.received = 0
        self.max_hops = 0
        self.nbytes = 0  # charged to the origin's and the total budget
        self.manifest_chunks: dict[int, bytes] = {}
        self.manifest_length: int | None = None
        self.manifest_have = 0
        self.manifest_stream: bytes | None = None
        self.manifest: Manifest | None = None
        self.buffers: list[np.ndarray] | None = None
        # per tensor: (encoding code, itemsize, numel, scale, zero point, writable view)
        self.tensors: list[tuple] | None = None
        self.ranges = array("q")  # (tensor, start, count) per placed fragment, flattened
        self.early: list[Packet] = []
        self.early_bytes = 0


class Reassembler:
    """Turns a stream of datagrams from many origins into :class:`ReceivedModel` objects
    (and :class:`ReceivedControl` ones for control datagrams).

    A message is named by (origin, message id); its fragments may arrive in any order,
    interleaved with other messages, duplicated or not at all. A control datagram is a
    message of its own, delivered as it arrives: it opens nothing and holds no state but
    its name among the recently finished messages (so that a late copy is not delivered
    twice) and, with a key, the replay record of its origin.

    :param key: fleet key; when set, unsigned, forged and replayed packets are refused.
        A replay is a packet that would start a message this reassembler accepted already
        from the same origin, or one older than it can tell: an older model version, or at
        the newest version a message id more than :data:`REPLAY_WINDOW` behind the newest.
    :param known_layouts: manifests this node already knows, by family id: a message
        whose own manifest is lost can still be placed by them (unless it carries int8
        tensors, whose quantisation parameters change with every message).

    ``stats`` counts what happened: ``fragments`` placed, ``control`` datagrams delivered,
    ``duplicates``, ``late`` (datagrams of a message already delivered or dropped),
    ``complete``, ``partial``, ``evicted``, ``superseded``, ``lost_manifest``, and every refusal by its
    :attr:`PacketError.reason`: ``malformed``, ``corrupted``, ``unsigned``, ``forged``,
    ``replayed``, ``contradictions``, ``over_limit`` (and ``internal``, a bug of ours
    rather than a peer's: any other exception, turned into a refusal of its datagram).
    """

    def __init__(self, *, key: bytes | None = None, limits: Limits = Limits(),
                 known_layouts: Mapping[int, Manifest] | None = None) -> None:
        check_key(key)
        self.key = key
        self.limits = limits
        self.known_layouts = dict(known_layouts or {})
        self.stats: Counter[str] = Counter()
        self._open: OrderedDict[tuple[int, int], _Open] = OrderedDict()  # oldest first
        self._recent: OrderedDict[tuple[int, int, int], None] = OrderedDict()
        # With a key, per origin: [newest model version accepted, newest message id at that
        # version, bitmap of the ids accepted (bit k: newest - k)]. Only origins whose
        # datagrams carried a valid tag enter it, so it grows with the fleet, not with what
        # an attacker sends.
        self._replay: dict[int, list[int]] = {}
        self._bytes_by_origin: Counter[int] = Counter()
        self._bytes_total = 0

    # -- public API -------------------------------------------------------------------

    def receive(self, datagram: bytes | memoryview, now: float) -> ReceivedModel | ReceivedControl | None:
        """Take one datagram; returns the message it completes, if any: a
        :class:`ReceivedModel`, or a :class:`ReceivedControl` for a control datagram.

        :raises PacketError: for a malformed, corrupted, unauthenticated, replayed,
            contradictory or over-limit packet, counted in :attr:`stats` under its
            ``reason``; the reassembler's state stays consistent.
        """
        return self._take(datagram, now, None)

    def receive_many(self, datagrams: Iterable[bytes | memoryview], now: float, *,
                     errors: list[tuple[int, PacketError]] | None = None) -> list[ReceivedModel | ReceivedControl]:
        """Take a batch of datagrams (what one ``recvmmsg`` or one tick of a simulated link
        brings), all at time ``now``; returns the messages they complete, in that order.

        The same as :meth:`receive` for each datagram in turn — the same checks, results
        and :attr:`stats` — except that the CRC32C of the batch's large datagrams (see
        :data:`~mfd_core.packet.PARALLEL_CRC_MIN_DATAGRAM`) is computed ahead, a few MiB
        at a time, in parallel threads where CPUs are spare
        (:func:`~mfd_core.packet.batch_checksums`); fragments are placed one by one, in
        batch order.

        A datagram :meth:`receive` would refuse is refused and counted in :attr:`stats`
        under its ``reason`` in the same way, and the rest of the batch is still taken: the
        error is not raised, since that would lose the messages the rest of the batch
        completes (a driver of :meth:`receive` catches and drops it the same way).
        :param errors: a list to append ``(position in the batch, PacketError)`` to, for
            every datagram refused.
        """
        batch = datagrams if isinstance(datagrams, (list, tuple)) else list(datagrams)
        out = []
        take = self._take
        for position, (datagram, crc) in enumerate(zip(batch, batch_checksums(batch))):
            try:
                message = take(datagram, now, crc)
            except PacketError as exc:
                if errors is not None:
                    errors.append((position, exc))
                continue
            if message is not None:
                out.append(message)
        return out

    def _take(self, datagram, now: float, crc: int | None) -> ReceivedModel | ReceivedControl | None:
        """:meth:`receive`, with the datagram's CRC32C when :meth:`receive_many` computed it."""
        pkt = None
        try:
            pkt = _parse(datagram, self.key, crc)
            if pkt.encoding == ENCODING_CONTROL:  # most of a fleet's datagrams: hellos
                return self._control(pkt)
            # Fast path: the next tensor fragment of an open message whose manifest is
            # known. The checks are _place_tensor_chunk's; anything else (manifest
            # slices, early fragments, new messages, duplicates, contradictions, a
            # missing tag) takes the general path, which says what was wrong.
            (flags, encoding, message_id, tensor_index, family_id, model_version, origin, destination, index,
             fragment_count, start, _, hops, payload, scale, zero_point) = pkt
            msg = self._open.get((origin, message_id))
            if (msg is not None and msg.tensors is not None and not flags & FLAG_MANIFEST
                    and msg.ident == (fragment_count, family_id, model_version, destination)
                    and (self.key is None or flags & FLAG_AUTH) and tensor_index < len(msg.tensors)):
                seen = msg.seen
                byte, bit = index >> 3, 1 << (index & 7)
                code, item, numel, tensor_scale, tensor_zero_point, view = msg.tensors[tensor_index]
                count = len(payload) // item
                if (not seen[byte] & bit and encoding == code and start + count <= numel
                        and (code != ENCODING_INT8 or not flags & FLAG_QUANT
                             or (scale == tensor_scale and zero_point == tensor_zero_point))):
                    view[start * item:(start + count) * item] = payload
                    msg.ranges.extend((tensor_index, start, count))
                    seen[byte] |= bit
                    msg.received += 1
                    msg.last = now
                    if hops > msg.max_hops:
                        msg.max_hops = hops
                    self.stats["fragments"] += 1
                    if msg.received == fragment_count:
                        return self._finish((origin, message_id), msg, complete=True)
                    return None
            if fragment_count == 1 and flags & FLAG_MANIFEST and msg is None:
                whole = self._whole_control_message(pkt)
                if whole is not None:
                    return whole
            return self._receive(pkt, now)
        except PacketError as exc:
            self.stats[exc.reason] += 1
            raise
        except Exception as exc:
            raise self._internal(exc, pkt) from exc

    def receive_packet(self, pkt: Packet, now: float) -> ReceivedModel | ReceivedControl | None:
        """Like :meth:`receive`, for a packet already parsed with this reassembler's key."""
        try:
            if pkt.encoding == ENCODING_CONTROL:
                return self._control(pkt)
            return self._receive(pkt, now)
        except PacketError as exc:
            self.stats[exc.reason] += 1
            raise
        except Exception as exc:
            raise self._internal(exc, pkt) from exc

    def expire(self, now: float) -> list[ReceivedModel]:
        """Deliver, as partial, every message that has had no new fragment for ``timeout_s``.

        Quiet time rather than age (Linux's ipfrag_time counts from the first fragment):
        a large model on a slow link may stream for longer than the timeout, and what
        matters is that its fragments have stopped coming.

        A message whose manifest never arrived (and whose family this node does not
        know) cannot be placed and is dropped, counted as ``lost_manifest``.
        """
        out = []
        for key, msg in list(self._open.items()):
            if now - msg.last < self.limits.timeout_s:
                continue
            if msg.manifest is None and not self._adopt_known_layout(msg):
                self.stats["lost_manifest"] += 1
                self._drop(key, remember=True)
                continue
            try:
                out.append(self._finish(key, msg, complete=False))
            except PacketError as exc:
                self.stats[exc.reason] += 1
            except Exception as exc:  # one message's failure must not cost the others theirs
                self._internal(exc, msg.first)
        return out

    def quiet(self, now: float, after: float) -> list[tuple[int, int, list[int]]]:
        """Open messages with no new fragment for ``after`` seconds, and what they lack.

        :return: ``(origin, message_id, missing fragment indices)`` per message, so the
            receiver can ask the origin for just those (selective repeat) before the
            timeout delivers it as partial.
        """
        out = []
        for (origin, message_id), msg in self._open.items():
            if now - msg.last < after:
                continue
            seen, count = msg.seen, msg.ident[0]
            missing = [i for i in range(count) if not seen[i >> 3] & (1 << (i & 7))]
            out.append((origin, message_id, missing))
        return out

    @property
    def open_messages(self) -> int:
        return len(self._open)

    @property
    def buffered_bytes(self) -> int:
        """Bytes charged to open messages: buffers, early fragments, bookkeeping."""
        return self._bytes_total

    # -- internals ----------------------------------------------------------------------

    def _internal(self, exc: Exception, pkt: Packet | None) -> PacketError:
        """A refusal for an exception other than :class:`PacketError`: a bug of this module,
        not a peer's doing (benchmarks/fuzz.py counts them, and finds none). The datagram is
        still only refused, as any other: the message it belongs to is dropped so that no
        half-placed state stays, it is counted as ``internal``, and a batch goes on."""
        if pkt is not None:
            self._drop((pkt.origin, pkt.message_id), remember=True)
        self.stats["internal"] += 1
        return PacketError(f"internal error on this datagram: {type(exc).__name__}: {exc}", reason="internal")

    def _receive(self, pkt: Packet, now: float) -> ReceivedModel | None:
        if self.key is not None and not pkt.flags & FLAG_AUTH:
            raise AuthError("unsigned packet refused: this receiver requires the fleet key",
                            reason="unsigned")
        key = (pkt.origin, pkt.message_id)
        msg = self._open.get(key)
        if msg is None or msg.ident != (pkt.fragment_count, pkt.family_id, pkt.model_version, pkt.destination):
            if msg is not None:
                if pkt.model_version <= msg.ident[2]:
                    raise PacketError(
                        f"fragment contradicts message {pkt.message_id} from origin {pkt.origin}: "
                        f"count/family/version/destination "
                        f"{(pkt.fragment_count, pkt.family_id, pkt.model_version, pkt.destination)} "
                        f"vs {msg.ident}", reason="contradictions")
                # the sender reused the message id for a newer model: the old one is moot
                self.stats["superseded"] += 1
                self._drop(key, remember=True)
            if (pkt.origin, pkt.message_id, pkt.model_version) in self._recent:
                self.stats["late"] += 1
                return None
            if self.key is not None:
                self._check_replay(pkt.origin, pkt.model_version, pkt.message_id)
            msg = self._start(key, pkt, now)
        index = pkt.fragment_index
        byte, bit = index >> 3, 1 << (index & 7)
        if msg.seen[byte] & bit:
            self.stats["duplicates"] += 1
            return None
        try:
            if pkt.flags & FLAG_MANIFEST:
                self._place_manifest_chunk(msg, pkt)
            elif msg.tensors is None:
                self._hold_early(msg, pkt)
            else:
                self._place_tensor_chunk(msg, pkt)
        except PacketError:
            self._drop(key, remember=True)
            raise
        msg.seen[byte] |= bit
        msg.received += 1
        msg.last = now
        if pkt.hops > msg.max_hops:
            msg.max_hops = pkt.hops
        self.stats["fragments"] += 1
        if msg.received == msg.ident[0]:
            return self._finish(key, msg, complete=True)
        return None

    def _control(self, pkt: Packet) -> ReceivedControl | None:
        """A control datagram: checked like the first datagram of a message, delivered at once."""
        (flags, _, message_id, _, _, model_version, origin, destination, _, _, _, _, hops, payload, _, _) = pkt
        if self.key is not None and not flags & FLAG_AUTH:
            raise AuthError("unsigned packet refused: this receiver requires the fleet key", reason="unsigned")
        key = (origin, message_id)
        if key in self._open:  # the name of a message being reassembled
            msg = self._open[key]
            if model_version <= msg.ident[2]:
                raise PacketError(f"control datagram {message_id} from origin {origin} names an open message",
                                  reason="contradictions")
            self.stats["superseded"] += 1  # the sender reused the message id for a newer version
            self._drop(key, remember=True)
        name = (origin, message_id, model_version)
        if name in self._recent:
            self.stats["late"] += 1
            return None
        if self.key is not None:
            self._check_replay(origin, model_version, message_id)
        self._remember(name)
        self.stats["control"] += 1
        return ReceivedControl(origin, destination, message_id, model_version, bytes(payload), hops)

    def _replayed(self, origin: int, version: int, message_id: int) -> str | None:
        """Why a datagram that would start message ``message_id`` of ``version`` from
        ``origin`` is a replay, or None if it is not (docs/packet-format.md §5.3)."""
        record = self._replay.get(origin)
        if record is None:
            return None
        newest_version, newest_id, seen = record
        if version != newest_version:
            return None if version > newest_version else f"model version {version} is older than {newest_version}"
        ahead = (message_id - newest_id) & 0xFFFF
        if 0 < ahead < _SERIAL_HALF:
            return None
        behind = (newest_id - message_id) & 0xFFFF
        if behind >= REPLAY_WINDOW:
            return f"message {message_id} is {behind} behind the newest of version {version}, past the window"
        if seen >> behind & 1:
            return f"message {message_id} of version {version} was accepted already"
        return None

    def _check_replay(self, origin: int, version: int, message_id: int) -> None:
        """Refuse a replay (:class:`AuthError`), or record the message as accepted."""
        why = self._replayed(origin, version, message_id)
        if why is not None:
            raise AuthError(f"replayed packet refused from origin {origin}: {why}", reason="replayed")
        record = self._replay.get(origin)
        if record is None or version > record[0]:
            self._replay[origin] = [version, message_id, 1]
            return
        ahead = (message_id - record[1]) & 0xFFFF
        if ahead < _SERIAL_HALF:  # newer: the window moves on
            record[1] = message_id
            record[2] = ((record[2] << ahead) | 1) & ((1 << REPLAY_WINDOW) - 1)
        else:
            record[2] |= 1 << ((record[1] - message_id) & 0xFFFF)

    def _remember(self, name: tuple[int, int, int]) -> None:
        self._recent[name] = None
        if len(self._recent) > RECENT_MEMORY:
            self._recent.popitem(last=False)

    def _whole_control_message(self, pkt: Packet) -> ReceivedModel | None:
        """A message that is one datagram holding its whole manifest and no tensor
        elements (a hello, a pull, a resend request: most of an MFD fleet's datagrams),
        delivered without opening, charging and closing a message. None: anything else
        (including anything refused), which the general path handles and explains."""
        payload = pkt.payload
        if pkt.element_start or len(payload) < _MANIFEST_PREFIX.size:
            return None
        (prefix,) = _MANIFEST_PREFIX.unpack_from(payload)
        length = prefix & ~MANIFEST_ZLIB
        if _MANIFEST_PREFIX.size + length != len(payload) or len(payload) > min(self.limits.bytes_per_origin,
                                                                                self.limits.bytes_total):
            return None
        name = (pkt.origin, pkt.message_id, pkt.model_version)
        if name in self._recent:
            return None  # late: counted by the general path
        if self.key is not None and self._replayed(pkt.origin, pkt.model_version, pkt.message_id):
            return None  # replayed: refused by the general path
        try:
            manifest = manifest_from_stream(payload)
        except PacketError:
            return None
        if manifest.nbytes or manifest.family_id != pkt.family_id:
            return None
        if self.key is not None:
            self._check_replay(pkt.origin, pkt.model_version, pkt.message_id)
        self._remember(name)
        self.stats["fragments"] += 1
        self.stats["complete"] += 1
        state = {spec.name: decode_tensor(spec, b"") for spec in manifest.tensors}
        return ReceivedModel(pkt.origin, pkt.message_id, pkt.model_version, pkt.family_id, pkt.destination,
                             manifest, state, None, 1, 1, pkt.hops)

    def _start(self, key: tuple[int, int], pkt: Packet, now: float) -> _Open:
        limits = self.limits
        bookkeeping = pkt.fragment_count * BOOKKEEPING_BYTES_PER_FRAGMENT
        if bookkeeping > min(limits.bytes_per_origin, limits.bytes_total):
            raise LimitError(f"a message of {pkt.fragment_count} fragments needs more bookkeeping "
                             f"than one origin may use ({limits.bytes_per_origin} bytes)")
        same_origin = [k for k in self._open if k[0] == pkt.origin]
        while len(same_origin) >= limits.open_per_origin:
            self._evict(same_origin.pop(0))
        while len(self._open) >= limits.open_total:
            self._evict(next(iter(self._open)))
        msg = _Open(pkt, now)
        self._open[key] = msg
        try:
            self._charge(msg, bookkeeping)
        except PacketError:
            self._drop(key)
            raise
        return msg

    def _hold_early(self, msg: _Open, pkt: Packet) -> None:
        if len(msg.early) >= self.limits.early_fragments:
            raise LimitError(f"more than {self.limits.early_fragments} fragments arrived before the manifest")
        size = len(pkt.payload)
        self._charge(msg, size)
        msg.early_bytes += size
        # copy: the view may point into a buffer the driver reuses
        msg.early.append(pkt._replace(payload=memoryview(bytes(pkt.payload))))

    def _place_manifest_chunk(self, msg: _Open, pkt: Packet) -> None:
        offset, data = pkt.element_start, bytes(pkt.payload)
        if msg.manifest is not None:  # a repeat of a slice: it must agree with what we parsed
            stream = msg.manifest_stream
            if stream is None or offset + len(data) > len(stream) or stream[offset:offset + len(data)] != data:
                raise PacketError(f"manifest fragment at offset {offset} contradicts the manifest",
                                  reason="contradictions")
            return
        stream_limit = MAX_MANIFEST_BYTES + _MANIFEST_PREFIX.size
        if offset + len(data) > stream_limit:
            raise PacketError(f"manifest fragment at offset {offset} runs past any manifest "
                              f"({stream_limit} bytes)", reason="contradictions")
        if offset in msg.manifest_chunks:
            raise PacketError(f"two fragments carry the manifest slice at offset {offset}",
                              reason="contradictions")
        if offset == 0:
            if len(data) < _MANIFEST_PREFIX.size:
                raise PacketError("first manifest fragment is shorter than its length prefix")
            (prefix,) = _MANIFEST_PREFIX.unpack_from(data)
            msg.manifest_length = manifest_body_length(prefix)  # deflated or not; LimitError past 4 MiB
        self._charge(msg, len(data))
        msg.manifest_chunks[offset] = data
        msg.manifest_have += len(data)
        if msg.manifest_length is None:
            return
        total = msg.manifest_length + _MANIFEST_PREFIX.size
        if msg.manifest_have < total:
            return
        stream = bytearray(total)
        covered = 0
        for off, chunk in sorted(msg.manifest_chunks.items()):
            if off != covered or off + len(chunk) > total:
                raise PacketError("manifest fragments overlap, leave a gap or run past the declared length",
                                  reason="contradictions")
            stream[off:off + len(chunk)] = chunk
            covered += len(chunk)
        manifest = manifest_from_stream(stream)
        self._open_buffers(msg, manifest, total)
        # the slices' bytes stay charged, as the assembled stream later slices are checked against
        msg.manifest_chunks = {}
        msg.manifest_stream = bytes(stream)

    def _open_buffers(self, msg: _Open, manifest: Manifest, stream_len: int | None) -> None:
        first = msg.first
        if manifest.family_id != first.family_id:
            raise PacketError(f"manifest layout (family {manifest.family_id:#010x}) does not match the "
                              f"family id in the headers ({first.family_id:#010x})", reason="contradictions")
        nbytes = manifest.nbytes
        count = first.fragment_count
        # Every fragment carries at least one byte and at most MAX_PAYLOAD: a count that
        # cannot hold the declared tensors, or more fragments than bytes, is a lie.
        if nbytes + (stream_len or 0) > count * MAX_PAYLOAD:
            raise PacketError(f"manifest declares {nbytes} bytes of tensors, more than {count} fragments "
                              f"can carry", reason="contradictions")
        if stream_len is not None and count > stream_len + nbytes:
            raise PacketError(f"{count} fragments for {stream_len + nbytes} bytes: some would be empty",
                              reason="contradictions")
        self._charge(msg, nbytes)  # refuses (LimitError) before anything is allocated
        msg.manifest = manifest
        # One allocation for the whole message, each tensor at a 64-byte aligned offset.
        # Not zeroed: a complete message overwrites every byte, and a partial delivery
        # zeroes what did not arrive (see _finish).
        offsets, end = [], 0
        for spec in manifest.tensors:
            offsets.append(end)
            end += -(-spec.nbytes // _ALIGN) * _ALIGN
        block = np.empty(end, dtype=np.uint8)
        msg.buffers = [block[off:off + spec.nbytes] for off, spec in zip(offsets, manifest.tensors)]
        msg.tensors = [(ENCODING_CODE[spec.encoding], spec.itemsize, spec.numel, spec.scale,
                        spec.zero_point, memoryview(buf)) for spec, buf in zip(manifest.tensors, msg.buffers)]
        early, msg.early = msg.early, []
        for pkt in early:
            self._place_tensor_chunk(msg, pkt)
        self._uncharge(msg, msg.early_bytes)
        msg.early_bytes = 0

    def _place_tensor_chunk(self, msg: _Open, pkt: Packet) -> None:
        tensors = msg.tensors
        index = pkt.tensor_index
        if index >= len(tensors):
            raise PacketError(f"tensor index {index} is beyond the manifest's {len(tensors)} tensors",
                              reason="contradictions")
        code, item, numel, scale, zero_point, view = tensors[index]
        if pkt.encoding != code:
            raise PacketError(f"fragment encoding {pkt.encoding} contradicts the manifest ({code}) for "
                              f"{msg.manifest.tensors[index].name}", reason="contradictions")
        # int8 with the extension: its parameters must be the manifest's, and its range stays
        # within the tensor. Without it (a packed run), each element decodes with the
        # parameters the manifest gives the tensor it lands in.
        quantised = code == ENCODING_INT8 and pkt.flags & FLAG_QUANT
        if quantised and (pkt.scale != scale or pkt.zero_point != zero_point):
            raise PacketError(f"fragment quantisation parameters contradict the manifest for "
                              f"{msg.manifest.tensors[index].name}", reason="contradictions")
        start = pkt.element_start
        payload = pkt.payload
        count = len(payload) // item
        if start + count <= numel:
            view[start * item:(start + count) * item] = payload
            msg.ranges.extend((index, start, count))
            return
        # A fragment of a packed run (a small model's tensors back to back): the elements
        # past this tensor's end continue into the next tensors that have any, in manifest
        # order, each of the same encoding; int8 only without the extension, whose single
        # scale could not be right for two tensors.
        if start >= numel or quantised:
            raise PacketError(f"elements {start}..{start + count} run past {msg.manifest.tensors[index].name}'s "
                              f"{numel}", reason="contradictions")
        placed = []
        done = 0
        while done < count:
            if index >= len(tensors):
                raise PacketError(f"a packed fragment's {count} elements run past the last tensor",
                                  reason="contradictions")
            code_here, _, numel_here, _, _, view_here = tensors[index]
            n = min(count - done, numel_here - start)
            if n > 0:
                if code_here != code:
                    raise PacketError(f"a packed fragment runs into {msg.manifest.tensors[index].name}, "
                                      f"which travels in another encoding", reason="contradictions")
                placed.append((view_here, start, n, done, index))
                done += n
            index += 1
            start = 0
        # placed only once the whole fragment is known to fit: a refused one leaves nothing
        for view_here, start, n, offset, index in placed:
            view_here[start * item:(start + n) * item] = payload[offset * item:(offset + n) * item]
            msg.ranges.extend((index, start, n))

    def _adopt_known_layout(self, msg: _Open) -> bool:
        layout = self.known_layouts.get(msg.first.family_id)
        # int8 parameters change with every message: a remembered layout's would decode
        # this message's elements wrongly (fragments without the extension carry none to
        # check them against), so such a message is lost with its manifest.
        if layout is None or any(spec.encoding == "int8" for spec in layout.tensors):
            return False
        try:
            self._open_buffers(msg, layout, None)
        except PacketError as exc:
            self.stats[exc.reason] += 1
            return False
        return True

    def _finish(self, key: tuple[int, int], msg: _Open, *, complete: bool) -> ReceivedModel:
        self._drop(key, remember=True)
        manifest = msg.manifest
        if manifest is None:
            raise PacketError(f"all {msg.ident[0]} fragments arrived but they do not make up a manifest",
                              reason="contradictions")
        if complete:
            bad = _first_uncovered(msg.ranges, [spec.numel for spec in manifest.tensors])
            if bad is not None:
                raise PacketError(f"all fragments arrived but they do not cover {manifest.tensors[bad].name} "
                                  f"exactly once", reason="contradictions")
            state = decode(manifest, msg.buffers)
            self.stats["complete"] += 1
            return self._delivery(msg, state, None)
        masks_np = [np.zeros(spec.numel, dtype=bool) for spec in manifest.tensors]
        ranges = msg.ranges
        for i in range(0, len(ranges), 3):
            masks_np[ranges[i]][ranges[i + 1]:ranges[i + 1] + ranges[i + 2]] = True
        state, masks = {}, {}
        for spec, buf, mask in zip(manifest.tensors, msg.buffers, masks_np):
            buf.reshape(spec.numel, spec.itemsize)[~mask] = 0  # what did not arrive reads as 0 bytes
            state[spec.name] = decode_tensor(spec, buf)
            masks[spec.name] = torch.from_numpy(mask).reshape(spec.shape)
        self.stats["partial"] += 1
        return self._delivery(msg, state, masks)

    def _delivery(self, msg: _Open, state, masks) -> ReceivedModel:
        first = msg.first
        return ReceivedModel(first.origin, first.message_id, first.model_version, first.family_id,
                             first.destination, msg.manifest, state, masks, msg.received,
                             first.fragment_count, msg.max_hops)

    def _charge(self, msg: _Open, nbytes: int) -> None:
        limits = self.limits
        origin = msg.first.origin
        if msg.nbytes + nbytes > limits.bytes_per_origin or msg.nbytes + nbytes > limits.bytes_total:
            raise LimitError(f"message {msg.first.message_id} from origin {origin} needs more than the "
                             f"{min(limits.bytes_per_origin, limits.bytes_total)} bytes allowed")
        if self._bytes_by_origin[origin] + nbytes > limits.bytes_per_origin:
            for k, m in list(self._open.items()):  # oldest first
                if k[0] == origin and m is not msg:
                    self._evict(k)
                    if self._bytes_by_origin[origin] + nbytes <= limits.bytes_per_origin:
                        break
        while self._bytes_total + nbytes > limits.bytes_total:
            victim = next((k for k, m in self._open.items() if m is not msg), None)
            if victim is None:
                raise LimitError(f"the reassembler's {limits.bytes_total} bytes are spent")
            self._evict(victim)
        msg.nbytes += nbytes
        self._bytes_by_origin[origin] += nbytes
        self._bytes_total += nbytes

    def _uncharge(self, msg: _Open, nbytes: int) -> None:
        origin = msg.first.origin
        msg.nbytes -= nbytes
        self._bytes_by_origin[origin] -= nbytes
        self._bytes_total -= nbytes

    def _evict(self, key: tuple[int, int]) -> None:
        self.stats["evicted"] += 1
        self._drop(key, remember=True)

    def _drop(self, key: tuple[int, int], *, remember: bool = False) -> None:
        msg = self._open.pop(key, None)
        if msg is None:
            return
        origin = key[0]
        self._bytes_by_origin[origin] -= msg.nbytes
        if self._bytes_by_origin[origin] <= 0:
            del self._bytes_by_origin[origin]
        self._bytes_total -= msg.nbytes
        msg.nbytes = 0
        if remember:
            first = msg.first
            self._recent[(first.origin, first.message_id, first.model_version)] = None
            while len(self._recent) > RECENT_MEMORY:
                self._recent.popitem(last=False)


def _first_uncovered(ranges: array, numels: list[int]) -> int | None:
    """Index of the first tensor whose element ranges do not cover it exactly once.

    ``ranges`` holds (tensor, start, count) triples, flattened, in arrival order.
    """
    if len(ranges) <= 3 * 256:  # few fragments: plain Python beats numpy's call overhead
        triples = sorted(zip(ranges[0::3], ranges[1::3], ranges[2::3]))
        covered = [0] * len(numels)
        for tensor, start, count in triples:
            if start != covered[tensor]:
                return tensor  # a gap or an overlap
            covered[tensor] = start + count
        for tensor, (have, numel) in enumerate(zip(covered, numels)):
            if have != numel:
                return tensor
        return None
    table = np.frombuffer(ranges, dtype=np.int64).reshape(-1, 3)
    bad = np.zeros(len(numels), dtype=bool)
    covered = np.zeros(len(numels), dtype=np.int64)
    table = table[np.lexsort((table[:, 1], table[:, 0]))]
    tensor, start, count = table[:, 0], table[:, 1], table[:, 2]
    expected = np.zeros(len(table), dtype=np.int64)
    expected[1:] = np.where(tensor[1:] == tensor[:-1], start[:-1] + count[:-1], 0)
    np.logical_or.at(bad, tensor, start != expected)  # a gap or an overlap
    np.add.at(covered, tensor, count)
    bad |= covered != np.asarray(numels, dtype=np.int64)
    hits = np.flatnonzero(bad)
    return int(hits[0]) if len(hits) else None


def merge_partial(local: Mapping[str, torch.Tensor], received: ReceivedModel) -> dict[str, torch.Tensor]:
    """The receiver's state with every element that arrived replaced by the received one.

    Tensors the message did not carry (or carried in another shape), and elements whose
    fragments were lost, keep the local values. (Blending rather than replacing is
    :mod:`mfd_core.knowledge`'s job.)
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
