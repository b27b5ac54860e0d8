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

import itertools
import struct
from array import array
from bisect import bisect_left
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
import torch

from .codec import (MANIFEST_PREFIX, MANIFEST_ZLIB, MAX_MANIFEST_BYTES, Layout, LayoutCache, Manifest, TensorSpec,
                    decode_block, decode_tensor, delivery_nbytes, manifest_body_length, manifest_extras, manifest_json)
from .packet import (ENCODING_CODE, ENCODING_CONTROL, ENCODING_INT8, ENCODINGS, FLAG_AUTH, FLAG_MANIFEST, FLAG_QUANT,
                     HEADER_SIZE, MAX_DATAGRAM, MAX_PAYLOAD, AuthError, LimitError, Packet, PacketError,
                     SpareBuffer, batch_checksums, check_key, checksum_of, checksums_in_place, header_records, lead_word,
                     parse)

# The block of a received model: the last one's memory once its tensors are all gone.
_BLOCKS = SpareBuffer()

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

# What else a peer makes a receiver hold is charged too, by these measured costs
# (tracemalloc, CPython 3.11; tests/test_reassembly.py checks the charges cover what is
# held, for the attack shapes of issue 17):
# - an open message's own objects (its record, the table entries, the header it keeps);
OPEN_MESSAGE_BYTES = 2048
# - a fragment held before its manifest, beyond its payload (a tuple of its fields);
EARLY_FRAGMENT_BYTES = 256
# - a manifest slice's bytes, while the stream is assembled: the stream, a byte of
#   coverage each, and the copy that is parsed;
STREAM_BYTES_PER_BYTE = 3
# - a manifest's JSON while it is parsed: json.loads makes up to ~37 bytes of objects
#   per byte of text (nested one-key objects, {"":{"":{}}}; lists of empty lists ~32, a
#   tensor list ~11), and ~1 more while it runs. The objects are not kept: an open
#   message holds its manifest as the stream it came in (and tables of plain tuples), and
#   parses it again to deliver it. Held, they would be the garbage collector's to scan at
#   every full collection of the process, however many a peer made (a 1 GiB budget of
#   small lists is ~19 million objects: seconds per collection);
PARSE_BYTES_PER_JSON_BYTE = 40
#   An open message whose manifest's JSON is at most KEEP_PARSED_JSON_BYTES long keeps
#   the objects (a hundred or so, charged as above; 256 open messages at most hold
#   ~60,000): delivering it then need not inflate and parse it again (~50 us for a small
#   model's, a tenth of the time a 1M-parameter model takes at 64 KiB datagrams).
KEEP_PARSED_JSON_BYTES = 1024
# - zlib's state while a deflated manifest is inflated (its 32 KiB window and tables);
INFLATE_BYTES = 64 << 10
# - each tensor's entry in a message's tables (a tuple of 6 numbers, a list slot, its
#   name's str beyond the bytes it took in the JSON, which are charged too);
TENSOR_BYTES = 256
# - a (tensor, start, count) triple recorded beyond one per fragment (a packed fragment
#   records one per tensor it reaches).
RANGE_BYTES = 24
# expire() delivers at most this much work per call (tensors, plus element ranges / 8),
# and at least one message: the rest, due too, are delivered by the next call. 2,048
# tensors (a message at the limit) take ~15 ms to deliver here.
EXPIRE_WORK = 2048
# quiet() names at most this many missing fragments per message (the first ones): a
# request for them fits a few datagrams, and the next call names the rest.
QUIET_MISSING = 4096
# Tensors of a message share one buffer, each at an offset aligned for any dtype (and
# a cache line).
_ALIGN = 64
# A manifest stream is at most this long (§4.2: a 4-byte prefix and the JSON).
_STREAM_LIMIT = MAX_MANIFEST_BYTES + MANIFEST_PREFIX.size
_ONES = b"\x01" * 65_536  # coverage marks for a manifest slice (at most a datagram long)
_ENCODING_BOOL = ENCODING_CODE["bool"]
_FALSE_TRUE = b"\x00\x01"  # the only bytes a bool element may be (§3)
_EMPTY = memoryview(b"")
# receive_many's runs (see Reassembler._take_run): a window of at most RUN_DATAGRAMS
# datagrams and RUN_BYTES bytes (its copy stays in the L3 cache until it is placed; a
# new one each time: copying into a buffer kept for the purpose measured 20% slower),
# tried only where at least RUN_MIN_DATAGRAMS remain; an attempt costs ~50-150 us of array
# calls, under 0.1 us a datagram over a full window of 1,400-byte ones.
RUN_DATAGRAMS = 2048
RUN_BYTES = 2 << 20
RUN_MIN_DATAGRAMS = 16
RUN_QUIET_MAX = 1024
RUN_PRESCAN = 4  # datagrams after the first that must look like the same message's (< RUN_MIN_DATAGRAMS)
# The lead words (magic, version/flags, header length, encoding) of the datagrams a run
# takes: tensor fragments without flags (no manifest, quantisation extension or tag), of
# an encoding whose bytes need no check (bool bytes are checked one by one), and their
# item sizes.
_RUN_LEADS = {lead_word(0, code): itemsize for code, (name, _, itemsize) in ENCODINGS.items()
              if name not in ("manifest", "control", "bool")}
# Datagrams at least this long are taken one at a time (_take_large_run): per datagram,
# a few us of Python are little beside its CRC32C and copy, and joining them first would
# copy every byte once more.
RUN_LARGE_DATAGRAM = 8 << 10
# The fields of a datagram of a large run that are not the same in all: tensor index,
# fragment index, element start, payload length, hops, checksum (bytes 6..41, TTL skipped).
_VARIABLE = struct.Struct(">H16xHB3xIHxBI")
# The fields a run attempt reads from the datagrams it glances at, without checking them,
# and from its first datagram (up to the element start and payload length).
_RUN_HEAD = struct.Struct(">IHHIIIIHBHB")
_RUN_FIRST = struct.Struct(">IHHIIIIHBHBIH")


def _cut(window: list) -> np.ndarray:
    """The lengths of a run's window's datagrams, the window cut (in place, with them) to
    RUN_BYTES bytes, one datagram at least. Read into an array directly: a list of the
    lengths and its conversion cost ~35 us more a window of 1,400-byte datagrams."""
    lengths = np.fromiter(map(len, window), dtype=np.int64, count=len(window))
    ends = np.cumsum(lengths)
    if len(ends) and ends[-1] > RUN_BYTES:
        keep = max(1, int(np.searchsorted(ends, RUN_BYTES, side="right")))
        del window[keep:]
        lengths = lengths[:keep]
    return lengths


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

    __slots__ = ("first", "ident", "last", "seen", "received", "max_hops", "nbytes", "stream", "covered",
                 "stream_have", "stream_total", "manifest", "specs", "layout", "block", "view", "offsets", "tensors",
                 "nonempty", "ranges", "early", "early_bytes", "arrays", "keep_manifest")

    def __init__(self, first: Packet, started: float) -> None:
        self.first = first  # its header fields, without the payload (a view into a datagram)
        # what every datagram of the message must repeat (docs/packet-format.md §4)
        self.ident = (first.fragment_count, first.family_id, first.model_version, first.destination)
        self.last = started  # when its latest new fragment arrived
        self.seen = bytearray((first.fragment_count + 7) >> 3)  # bitmap of fragment indices
        self.received = 0
        self.max_hops = 0
        self.nbytes = 0  # charged to the origin's and the total budget
        # The manifest stream while its slices arrive: the bytes, and a byte per byte that
        # says which arrived (a slice that overlaps another is caught as it arrives, at
        # the cost of its own length); once parsed, the stream alone, as later copies of
        # a slice must repeat it.
        self.stream: bytearray | bytes = bytearray()
        self.covered: bytearray | None = bytearray()
        self.stream_have = 0
        self.stream_total: int | None = None  # 4 + L, once bytes 0..3 have arrived
        # The parsed manifest, only within the call that parsed it (or a known layout): an
        # open message keeps the stream, its tensors' fields as plain tuples (name, shape,
        # dtype, encoding, scale, zero point) and (family id, tensor bytes), from which it
        # is built again to be delivered.
        self.manifest: Manifest | None = None
        self.specs: list[tuple] | None = None
        self.layout: tuple[int, int] | None = None
        self.block: np.ndarray | None = None  # every tensor's wire bytes
        self.view: memoryview | None = None  # the block, writable
        self.offsets: list[int] | None = None  # where each tensor starts in the block
        # per tensor: (encoding code, itemsize, numel, scale, zero point, byte offset)
        self.tensors: list[tuple] | None = None
        self.nonempty: list[int] | None = None  # indices of tensors with elements, for packed fragments
        self.ranges = array("q")  # (tensor, start, count) per placed range, flattened
        # fragments that came before the manifest: (tensor, encoding, flags, start, scale,
        # zero point, payload), plain tuples (which the garbage collector stops tracking)
        self.early: list[tuple] = []
        self.early_bytes = 0
        self.keep_manifest = False  # a short manifest is kept parsed until delivery
        # for receive_many's runs: per tensor its encoding code, elements and byte offset
        self.arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None


class _RecentNames:
    """The names (origin, message id, model version) of the last ``size`` messages a
    receiver finished, oldest forgotten first.

    Held as ints, in a dict and a ring of two arrays, which the garbage collector never
    walks: a dict of ints is untracked, and so are arrays. The ``OrderedDict`` of tuples
    before was walked whole at every full collection, and a 1,000-node MFD hour
    remembers 250,000 names (a full collection at its end: 252 -> 185 ms; gossip's
    119,000: 139 -> 102 ms)."""

    __slots__ = ("_names", "_ring", "_next")

    def __init__(self, size: int) -> None:
        self._names: dict[int, None] = {}
        self._ring = array("Q", bytes(16 * size))  # per slot: origin, then version << 16 | message id
        self._next = 0

    def __contains__(self, name: tuple[int, int, int]) -> bool:
        origin, message_id, version = name
        return (origin << 48 | version << 16 | message_id) in self._names

    def __len__(self) -> int:
        return len(self._names)

    def clear(self) -> None:
        self._names.clear()
        self._ring = array("Q", bytes(len(self._ring) * 8))
        self._next = 0

    def add(self, name: tuple[int, int, int]) -> None:
        origin, message_id, version = name
        low = version << 16 | message_id
        key = origin << 48 | low
        names = self._names
        if key in names:
            return
        ring, slot = self._ring, 2 * self._next
        if len(names) == len(ring) // 2:
            del names[ring[slot] << 48 | ring[slot + 1]]  # the oldest
        ring[slot], ring[slot + 1] = origin, low
        names[key] = None
        self._next = (self._next + 1) % (len(ring) // 2)


class Reassembler:
    """Turns a stream of datagrams from many origins into :class:`ReceivedModel` objects
    (and :class:`ReceivedControl` ones for control datagrams).

    A message is named by (origin, message id); its fragments may arrive in any order,
    interleaved with other messages, duplicated or not at all. A control datagram is a
    message of its own, delivered as it arrives: it opens nothing and holds no state but
    its name among the recently finished messages (so that a late copy is not delivered
    twice) and, with a key, the replay record of its origin.

    Whatever a peer sends, this receiver holds at most its :class:`Limits` (parsed
    manifests, per-tensor tables and its cache of layouts included, each charged before it
    is made), and one call does a bounded amount of work: proportional to the datagram
    (its bytes, and the tensors a packed fragment reaches), plus, for the datagram that
    completes a manifest or a message, that manifest's JSON (at most
    :data:`~mfd_core.codec.MAX_MANIFEST_BYTES`) and tensors (at most
    :data:`~mfd_core.codec.MAX_MESSAGE_TENSORS`) and the decoding of the bytes that arrived
    (see :meth:`expire` for its share).

    :param key: fleet key; when set, unsigned, forged and replayed packets are refused.
        A replay is a packet that would start a message this reassembler accepted already
        from the same origin, or one older than it can tell: an older model version, or at
        the newest version a message id more than :data:`REPLAY_WINDOW` behind the newest.
    :param known_layouts: manifests this node already knows, by family id: a message
        whose own manifest is lost can still be placed by them (unless it carries int8
        tensors, whose quantisation parameters change with every message).

    ``stats`` counts what happened: ``fragments`` placed, ``control`` datagrams delivered,
    ``duplicates``, ``late`` (datagrams of a message already delivered or dropped),
    ``complete``, ``partial``, ``evicted``, ``superseded``, ``lost_manifest``, and every
    refusal by its :attr:`PacketError.reason`: ``malformed``, ``corrupted``, ``unsigned``,
    ``forged``, ``replayed``, ``contradictions``, ``over_limit`` (and ``internal``, a bug
    of ours rather than a peer's: any other exception, turned into a refusal of its
    datagram).
    """

    def __init__(self, *, key: bytes | None = None, limits: Limits = Limits(),
                 known_layouts: Mapping[int, Manifest] | None = None) -> None:
        check_key(key)
        self.key = key
        self.limits = limits
        self.known_layouts = dict(known_layouts or {})
        self.stats: Counter[str] = Counter()
        self._open: OrderedDict[tuple[int, int], _Open] = OrderedDict()  # oldest first
        self._recent = _RecentNames(RECENT_MEMORY)
        # With a key, per origin: [newest model version accepted, newest message id at that
        # version, bitmap of the ids accepted (bit k: newest - k)]. Only origins whose
        # datagrams carried a valid tag enter it, so it grows with the fleet, not with what
        # an attacker sends.
        self._replay: dict[int, list[int]] = {}
        self._bytes_by_origin: Counter[int] = Counter()
        self._bytes_total = 0  # charged to open messages
        # Tensor lists validated before (a fleet sends a few layouts, over and over), within
        # a sixteenth of the budget; its bytes count against the total, and it gives them
        # back first when messages need them.
        self._layouts = LayoutCache(nbytes=min(4 << 20, limits.bytes_total // 16))

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
        (:func:`~mfd_core.packet.batch_checksums`), and that, without a key, a run of one
        open message's tensor fragments in increasing order (a sender's stream as a link
        delivers it) is taken many at a time: up to :data:`RUN_DATAGRAMS` datagrams (at
        most :data:`RUN_BYTES`) are copied into one buffer, their headers checked as
        arrays, their checksums computed one call each and their payloads copied into the
        message's block with one strided copy per stretch; datagrams of
        :data:`RUN_LARGE_DATAGRAM` bytes or more go through a lean loop instead. The first
        datagram a run would not take as :meth:`receive` takes it (anything refused,
        duplicated, out of order, of another message or kind) ends the run there, and is
        taken one by one. At MTU 1,400 this is ~2-4x the throughput of one by one.

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
        checks = iter(batch_checksums(batch))
        pending: deque = deque()  # values of `checks` a run attempt read but did not use, in order
        count = len(batch)
        # Runs of a message's fragments in order (a sender's stream, as a link delivers it)
        # are taken up to RUN_DATAGRAMS at a time by _take_run, with the same checks and
        # outcome; after a run attempt that took fewer than RUN_MIN_DATAGRAMS, the next go
        # one by one, and that quiet spell doubles with each such attempt in a row (up to
        # RUN_QUIET_MAX), so that traffic that is no run (messages interleaved datagram by
        # datagram) costs a few attempts per batch.
        runs = self.key is None and count >= RUN_MIN_DATAGRAMS
        quiet_until = position = 0
        quiet = RUN_MIN_DATAGRAMS
        while position < count:
            if runs and position >= quiet_until and count - position >= RUN_MIN_DATAGRAMS:
                try:
                    taken = self._take_run(batch, position, now, checks, pending, out, errors)
                except Exception as exc:  # a bug of ours, not a peer's doing (see _internal)
                    failure = self._internal_run(exc, batch[position])
                    if errors is not None:
                        errors.append((position, failure))
                    # the rest one by one, each checksum computed as it is parsed: how many
                    # values of `checks` the attempt had read is not known
                    runs, checks = False, itertools.repeat(None)
                    pending.clear()
                    taken = -1
                if taken != -1:
                    taken = max(taken, 0)
                    position += taken
                    if taken < RUN_MIN_DATAGRAMS:
                        quiet_until = position + quiet
                        quiet = min(2 * quiet, RUN_QUIET_MAX)
                    else:
                        quiet = RUN_MIN_DATAGRAMS
                    if taken:
                        continue
            datagram = batch[position]
            crc = pending.popleft() if pending else next(checks)
            try:
                message = take(datagram, now, crc)
            except PacketError as exc:
                if errors is not None:
                    errors.append((position, exc))
            else:
                if message is not None:
                    out.append(message)
            position += 1
        return out

    def _take_run(self, batch: list, position: int, now: float, checks, pending: deque, out: list,
                  errors: list | None) -> int:
        """Take the longest run of datagrams from ``batch[position]`` on that :meth:`_take`
        would take one after the other without a refusal, on its fast path: tensor
        fragments of one open message whose manifest is known, in increasing fragment
        order, none seen before, each within its tensor, intact and unsigned (a receiver
        without a key). Returns how many were taken, their outcome _take's (the first
        datagram that is anything else is left to it), -1 when the first datagram is no
        start of a run (not a tensor fragment of an open message), or -2 when a glance at a
        few datagrams of the window (its last, its middle, its first quarter's end) says
        they are not one message's, however short the window is cut.

        The window (up to RUN_DATAGRAMS datagrams and RUN_BYTES bytes) is joined into one
        buffer; its headers are read as one array, its checks are array operations, its
        CRC32Cs one call per datagram (where ``checks``, :func:`batch_checksums`, did not
        compute them ahead), and its payloads are copied into the message's block with one
        strided copy per stretch of equal, back-to-back fragments. The work is proportional
        to the window's bytes, and a window is tried only when its last datagram is a later
        fragment of the first's message.
        """
        first = batch[position]
        kind = type(first)
        if (kind is not bytes and kind is not memoryview and kind is not bytearray) or len(first) < HEADER_SIZE:
            return -1
        try:
            (lead, message_id, tensor_index, family_id, model_version, origin, destination, index_hi, index_lo,
             count_hi, count_lo, element_start, payload_len) = _RUN_FIRST.unpack_from(first)
        except (struct.error, TypeError, ValueError, BufferError):
            return -1
        item = _RUN_LEADS.get(lead)
        if item is None:
            return -1
        msg = self._open.get((origin, message_id))
        fragment_count = (count_hi << 8) | count_lo
        if msg is None or msg.tensors is None or msg.ident != (fragment_count, family_id, model_version, destination):
            return -1
        if tensor_index >= len(msg.tensors) or element_start + payload_len // item > msg.tensors[tensor_index][2]:
            # a fragment across a tensor's end (small tensors share datagrams), which a run
            # does not place, or one _take refuses: one by one, and a run may start after it
            return -1
        if len(first) >= RUN_LARGE_DATAGRAM:
            return self._take_large_run(batch, position, now, checks, pending, out, errors, msg, item)
        # The window: the next few datagrams must look like later fragments of the same
        # message (unchecked: a heuristic, what is taken is checked below; an attempt costs
        # as much as ~100 datagrams one by one, so it is made only where a run seems to
        # start); it is cut before any of a few more datagrams (its first quarter's end,
        # its middle, its last) that does not, then to RUN_BYTES.
        first_index = (index_hi << 8) | index_lo
        # as many as RUN_BYTES holds of datagrams of the first's size (_cut below trims it
        # to RUN_BYTES where later ones are longer)
        end = min(len(batch), position + max(RUN_MIN_DATAGRAMS, min(RUN_DATAGRAMS, RUN_BYTES // len(first))))
        for probe in range(position + 1, position + 1 + RUN_PRESCAN):
            later = batch[probe]
            if type(later) is not kind or len(later) < HEADER_SIZE:
                return -2
            try:
                (_, later_id, _, _, _, later_origin, _, later_hi, later_lo, _, _) = _RUN_HEAD.unpack_from(later)
            except (struct.error, TypeError, ValueError, BufferError):
                return -2
            if later_id != message_id or later_origin != origin or ((later_hi << 8) | later_lo) <= first_index:
                return -2
        while True:
            if end - position < RUN_MIN_DATAGRAMS:
                return -2
            span = end - position
            for probe in (position + span // 4, position + span // 2, end - 1):
                later = batch[probe]
                if type(later) is not kind or len(later) < HEADER_SIZE:
                    break
                try:
                    (_, later_id, _, _, _, later_origin, _, later_hi, later_lo, _, _) = _RUN_HEAD.unpack_from(later)
                except (struct.error, TypeError, ValueError, BufferError):
                    break
                if later_id != message_id or later_origin != origin or ((later_hi << 8) | later_lo) <= first_index:
                    break
            else:
                break
            end = probe
        window = batch[position:end]
        try:
            lengths = _cut(window)
            joined = bytearray().join(window)
            if len(joined) != int(lengths.sum()):
                raise ValueError("a view whose len() is not its byte count")
        except (TypeError, ValueError):
            # something other than a flat byte string (the bytes of anything else may not be
            # what parse reads): the window ends before the first such object
            for n, datagram in enumerate(window):
                kind_here = type(datagram)
                if not (kind_here is bytes or kind_here is bytearray or (
                        kind_here is memoryview and datagram.format == "B" and datagram.ndim == 1
                        and datagram.c_contiguous)):
                    del window[n:]
                    break
            if not window:
                return 0
            lengths = _cut(window)
            joined = bytearray().join(window)
        del window
        buf = np.frombuffer(joined, dtype=np.uint8)
        ends = np.cumsum(lengths)
        starts = ends - lengths
        odd = np.flatnonzero((lengths < HEADER_SIZE) | (lengths > MAX_DATAGRAM))
        usable = int(odd[0]) if len(odd) else len(lengths)
        if not usable:
            return 0
        lengths, starts, ends = lengths[:usable], starts[:usable], ends[:usable]
        uniform = int(lengths[0]) if lengths.min() == lengths.max() else None
        head = header_records(buf, starts, uniform)
        tables = msg.arrays
        if tables is None:
            tables = msg.arrays = (np.array([entry[0] for entry in msg.tensors], dtype=np.int64),
                                   np.array([entry[2] for entry in msg.tensors], dtype=np.int64),
                                   np.array([entry[5] for entry in msg.tensors], dtype=np.int64))
        codes, numels, offsets = tables
        payload_len = head["payload_len"].astype(np.int64)
        index = (head["fragment_index_hi"].astype(np.int64) << 8) | head["fragment_index_lo"]
        tensor = head["tensor_index"].astype(np.int64)
        element_start = head["element_start"].astype(np.int64)
        inside = tensor < len(codes)
        tensor = np.where(inside, tensor, 0)
        elements = payload_len // item
        ok = ((head["lead"] == lead) & (head["message_id"] == message_id) & (head["origin"] == origin)
              & (head["family_id"] == family_id) & (head["model_version"] == model_version)
              & (head["destination"] == destination) & (head["fragment_count_hi"] == count_hi)
              & (head["fragment_count_lo"] == count_lo) & (lengths == HEADER_SIZE + payload_len)
              & (payload_len > 0) & (payload_len == elements * item) & (index < fragment_count) & inside
              & (codes[tensor] == (lead & 0xFF)) & (element_start + elements <= numels[tensor]))
        ok[1:] &= index[1:] > index[:-1]  # increasing: no fragment twice in the run
        refused = np.flatnonzero(~ok)
        taken = int(refused[0]) if len(refused) else usable
        if taken:  # none seen before: their bits in the received-bitmap are clear
            low = int(index[0]) >> 3
            bits = np.unpackbits(np.frombuffer(msg.seen, dtype=np.uint8)[low:(int(index[taken - 1]) >> 3) + 1],
                                 bitorder="little")
            seen = np.flatnonzero(bits[index[:taken] - 8 * low])
            if len(seen):
                taken = int(seen[0])
        if not taken:
            return 0
        # CRC32C: the values checked ahead as they are, the others computed here
        ahead = [pending.popleft() for _ in range(min(len(pending), taken))]
        ahead += itertools.islice(checks, taken - len(ahead))
        if ahead.count(None) == taken:  # small datagrams: none computed ahead (the usual case)
            crcs = checksums_in_place(buf, starts[:taken], ends[:taken], uniform)
        elif None in ahead:
            computed = checksums_in_place(buf, starts[:taken], ends[:taken], uniform)
            crcs = [known if known is not None else crc for known, crc in zip(ahead, computed)]
        else:
            crcs = ahead
        corrupted = np.flatnonzero(np.asarray(crcs, dtype=np.int64) != head["checksum"][:taken])
        if len(corrupted):
            taken = int(corrupted[0])
            pending.extendleft(reversed(ahead[taken:]))  # for _take, which refuses the corrupted one
            if not taken:
                return 0
        # Place: one strided copy per stretch of fragments of equal length whose payloads
        # follow each other in the block (a tensor's full fragments, in order).
        tensor, element_start, elements = tensor[:taken], element_start[:taken], elements[:taken]
        payload_len, starts, lengths = payload_len[:taken], starts[:taken], lengths[:taken]
        target = offsets[tensor] + element_start * item
        breaks = np.flatnonzero((target[1:] != target[:-1] + payload_len[:-1]) | (payload_len[1:] != payload_len[:-1])
                                | (lengths[1:] != lengths[:-1])) + 1
        block = msg.block
        for begin, stop in zip([0, *breaks.tolist()], [*breaks.tolist(), taken]):
            rows, width, stride = stop - begin, int(payload_len[begin]), int(lengths[begin])
            at, source = int(target[begin]), int(starts[begin])  # source: the first datagram
            block[at:at + rows * width].reshape(rows, width)[...] = (
                buf[source:source + rows * stride].reshape(rows, stride)[:, HEADER_SIZE:HEADER_SIZE + width])
        msg.ranges.frombytes(np.stack((tensor, element_start, elements), axis=1).tobytes())
        # Their bits, set as one OR of a packed range: the indices are increasing and unseen,
        # and ufunc.at costs ~0.1 us an index (8% of a 1M model's decode at MTU 1,400).
        low = int(index[0]) >> 3
        marks = np.zeros(((int(index[taken - 1]) >> 3) + 1 - low) * 8, dtype=bool)
        marks[index[:taken] - 8 * low] = True
        seen_bytes = np.frombuffer(msg.seen, dtype=np.uint8)
        seen_bytes[low:low + len(marks) // 8] |= np.packbits(marks, bitorder="little")
        msg.received += taken
        msg.last = now
        hops = int(head["hops"][:taken].max())
        if hops > msg.max_hops:
            msg.max_hops = hops
        self.stats["fragments"] += taken
        if msg.received == fragment_count:
            self._finish_run(msg, position + taken - 1, out, errors)
        return taken

    def _take_large_run(self, batch: list, position: int, now: float, checks, pending: deque, out: list,
                        errors: list | None, msg: _Open, item: int) -> int:
        """:meth:`_take_run` for large datagrams: one at a time, as :meth:`_take`'s fast path,
        without making a :class:`Packet` of each. What differs between the datagrams of a
        run is read with one ``unpack``; the rest must repeat the first's bytes. Each
        datagram is checked and then copied while it is in cache."""
        first = batch[position]
        kind = type(first)
        fixed = (first[:6], first[8:24], first[27:30])  # lead and message id; family .. destination; count
        encoding = first[3]
        fragment_count = msg.ident[0]
        tensors, seen, view, ranges = msg.tensors, msg.seen, msg.view, msg.ranges
        ntensors = len(tensors)
        unpack = _VARIABLE.unpack_from
        stop = min(len(batch), position + RUN_DATAGRAMS)
        taken = 0
        hops_max = msg.max_hops
        done = False
        for k in range(position, stop):
            datagram = batch[k]
            if type(datagram) is not kind:
                break
            if kind is memoryview and (datagram.format != "B" or datagram.ndim != 1 or not datagram.c_contiguous):
                break
            size = len(datagram)
            if not HEADER_SIZE < size <= MAX_DATAGRAM or (datagram[:6], datagram[8:24], datagram[27:30]) != fixed:
                break
            tensor, index_hi, index_lo, start, payload_len, hops, checksum = unpack(datagram, 6)
            index = (index_hi << 8) | index_lo
            count = payload_len // item
            if (size != HEADER_SIZE + payload_len or count * item != payload_len or index >= fragment_count
                    or seen[index >> 3] & (1 << (index & 7)) or tensor >= ntensors):
                break
            code, _, numel, _, _, offset = tensors[tensor]
            if code != encoding or start + count > numel:
                break
            known = pending.popleft() if pending else next(checks)
            buf = datagram if kind is memoryview else memoryview(datagram)
            crc = known if known is not None else checksum_of(buf)
            if crc != checksum:
                pending.appendleft(known)  # _take refuses it, with the same value
                break
            view[offset + start * item:offset + (start + count) * item] = buf[HEADER_SIZE:]
            ranges.extend((tensor, start, count))
            seen[index >> 3] |= 1 << (index & 7)
            if hops > hops_max:
                hops_max = hops
            taken += 1
            if msg.received + taken == fragment_count:
                done = True
                break
        if not taken:
            return 0
        msg.received += taken
        msg.last = now
        msg.max_hops = hops_max
        self.stats["fragments"] += taken
        if done:
            self._finish_run(msg, position + taken - 1, out, errors)
        return taken

    def _finish_run(self, msg: _Open, position: int, out: list, errors: list | None) -> None:
        """Deliver a message a run completed, as _take would for its last datagram."""
        first = msg.first
        try:
            out.append(self._finish((first.origin, first.message_id), msg, complete=True))
        except PacketError as exc:
            self.stats[exc.reason] += 1
            if errors is not None:
                errors.append((position, exc))
        except Exception as exc:
            failure = self._internal(exc, first)
            if errors is not None:
                errors.append((position, failure))

    def _take(self, datagram, now: float, crc: int | None) -> ReceivedModel | ReceivedControl | None:
        """:meth:`receive`, with the datagram's CRC32C when :meth:`receive_many` computed it."""
        pkt = None
        try:
            pkt = parse(datagram, self.key, crc=crc)
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
                code, item, numel, tensor_scale, tensor_zero_point, offset = msg.tensors[tensor_index]
                count = len(payload) // item
                if (not seen[byte] & bit and encoding == code and start + count <= numel
                        and (code != ENCODING_INT8 or not flags & FLAG_QUANT
                             or (scale == tensor_scale and zero_point == tensor_zero_point))
                        and (code != _ENCODING_BOOL or not payload.tobytes().translate(None, _FALSE_TRUE))):
                    msg.view[offset + start * item:offset + (start + count) * item] = payload
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
        """Deliver, as partial, messages that have had no new fragment for ``timeout_s``.

        Quiet time rather than age (Linux's ipfrag_time counts from the first fragment):
        a large model on a slow link may stream for longer than the timeout, and what
        matters is that its fragments have stopped coming.

        A message whose manifest never arrived (and whose family this node does not
        know) cannot be placed and is dropped, counted as ``lost_manifest``.

        One call delivers the messages due, the longest quiet first, as long as their
        tensors stay within :data:`EXPIRE_WORK` (one message at least): a call's time stays
        bounded however many are due, and those left, still open and due, are delivered
        by the next call (as long as :attr:`open_messages` is not 0, a caller calls again).
        """
        due = sorted(((msg.last, key) for key, msg in self._open.items()
                      if now - msg.last >= self.limits.timeout_s), key=lambda item: item[0])
        out, work = [], 0
        for _, key in due:
            msg = self._open[key]
            cost = len(msg.tensors or ()) + len(msg.ranges) // 24
            if out and work + cost > EXPIRE_WORK:
                break
            if msg.tensors is None and not self._adopt_known_layout(msg):
                self.stats["lost_manifest"] += 1
                self._drop(key, remember=True)
                continue
            work += len(msg.tensors) + len(msg.ranges) // 24
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
            timeout delivers it as partial; at most :data:`QUIET_MISSING` per message, the
            first ones (a later call names the rest).
        """
        out = []
        for (origin, message_id), msg in self._open.items():
            if now - msg.last < after:
                continue
            bits = np.unpackbits(np.frombuffer(msg.seen, dtype=np.uint8), bitorder="little")[:msg.ident[0]]
            missing = np.flatnonzero(bits == 0)[:QUIET_MISSING].tolist()
            out.append((origin, message_id, missing))
        return out

    @property
    def open_messages(self) -> int:
        return len(self._open)

    @property
    def buffered_bytes(self) -> int:
        """Bytes charged to open messages: buffers, manifests, tables, early fragments,
        bookkeeping. With :attr:`cached_bytes`, at most ``limits.bytes_total``."""
        return self._bytes_total

    @property
    def cached_bytes(self) -> int:
        """Bytes charged to the layouts this receiver validated before and keeps (a sixteenth
        of ``limits.bytes_total`` at most, 4 MiB by default; given back first when open
        messages need room)."""
        return self._layouts.nbytes

    # -- internals ----------------------------------------------------------------------

    def _internal_run(self, exc: Exception, first) -> PacketError:
        """:meth:`_internal` for a run attempt that failed: the message its first datagram
        names (whose state the attempt may have left half-updated) is dropped."""
        try:
            (_, message_id, _, _, _, origin, *_) = _RUN_HEAD.unpack_from(first)
        except Exception:
            return self._internal(exc, None)
        msg = self._open.get((origin, message_id))
        return self._internal(exc, None if msg is None else msg.first)

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
                self._place_tensor_chunk(msg, (pkt.tensor_index, pkt.encoding, pkt.flags, pkt.element_start,
                                               pkt.scale, pkt.zero_point, pkt.payload))
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
        if not msg.keep_manifest:
            msg.manifest = None  # still open: it keeps the stream, not the objects parsed from it
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
        self._recent.add(name)

    # A one-datagram manifest message takes the short path only when its manifest is
    # plain JSON this short (a hello is ~300 bytes): what parsing it makes for a moment
    # is then too small to charge. Anything else takes the general, charged path.
    _WHOLE_MESSAGE_BYTES = 4096

    def _whole_control_message(self, pkt: Packet) -> ReceivedModel | None:
        """A message that is one datagram holding its whole manifest and no tensor
        elements (a hello, a pull, a resend request: most of an MFD fleet's datagrams
        before control datagrams), delivered without opening, charging and closing a
        message. None: anything else (including anything refused), which the general path
        handles and explains."""
        payload = pkt.payload
        if pkt.element_start or not MANIFEST_PREFIX.size <= len(payload) <= self._WHOLE_MESSAGE_BYTES:
            return None
        (prefix,) = MANIFEST_PREFIX.unpack_from(payload)
        if prefix & MANIFEST_ZLIB or MANIFEST_PREFIX.size + prefix != len(payload):
            return None
        name = (pkt.origin, pkt.message_id, pkt.model_version)
        if name in self._recent:
            return None  # late: counted by the general path
        if self.key is not None and self._replayed(pkt.origin, pkt.model_version, pkt.message_id):
            return None  # replayed: refused by the general path
        try:
            manifest = Manifest.from_bytes(payload[MANIFEST_PREFIX.size:], layouts=self._layouts)
        except PacketError:
            return None
        self._trim_cache()
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
        bookkeeping = pkt.fragment_count * BOOKKEEPING_BYTES_PER_FRAGMENT + OPEN_MESSAGE_BYTES
        if bookkeeping > min(limits.bytes_per_origin, limits.bytes_total):
            raise LimitError(f"a message of {pkt.fragment_count} fragments needs more bookkeeping "
                             f"than one origin may use ({limits.bytes_per_origin} bytes)")
        same_origin = [k for k in self._open if k[0] == pkt.origin]
        while len(same_origin) >= limits.open_per_origin:
            self._evict(same_origin.pop(0))
        while len(self._open) >= limits.open_total:
            self._evict(next(iter(self._open)))
        msg = _Open(pkt._replace(payload=_EMPTY), now)
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
        size = len(pkt.payload) + EARLY_FRAGMENT_BYTES
        self._charge(msg, size)
        msg.early_bytes += size
        # the payload copied: the view may point into a buffer the driver reuses
        msg.early.append((pkt.tensor_index, pkt.encoding, pkt.flags, pkt.element_start, pkt.scale, pkt.zero_point,
                          bytes(pkt.payload)))

    def _place_manifest_chunk(self, msg: _Open, pkt: Packet) -> None:
        offset, data = pkt.element_start, pkt.payload
        end = offset + len(data)
        if msg.tensors is not None:  # a repeat of a slice: it must agree with what we parsed
            stream = msg.stream
            if end > len(stream) or stream[offset:end] != data:
                raise PacketError(f"manifest fragment at offset {offset} contradicts the manifest",
                                  reason="contradictions")
            return
        stream, covered = msg.stream, msg.covered
        if covered.find(1, offset, end) >= 0:  # any cut is allowed; an overlap is not (§4.1)
            raise PacketError(f"manifest fragment at offset {offset} overlaps another", reason="contradictions")
        if end > (msg.stream_total or _STREAM_LIMIT):
            raise PacketError(f"manifest fragment at offset {offset} runs past the manifest stream "
                              f"({msg.stream_total or _STREAM_LIMIT} bytes)", reason="contradictions")
        if end > len(stream):
            self._charge(msg, STREAM_BYTES_PER_BYTE * (end - len(stream)))
            covered += bytes(end - len(covered))
            stream += bytes(end - len(stream))
        stream[offset:end] = data
        covered[offset:end] = _ONES[:end - offset]
        msg.stream_have += end - offset
        if msg.stream_total is None:
            if covered[:MANIFEST_PREFIX.size] != _ONES[:MANIFEST_PREFIX.size]:
                return  # the length prefix has not all arrived (a slice may be 1 byte)
            (prefix,) = MANIFEST_PREFIX.unpack_from(stream)
            msg.stream_total = MANIFEST_PREFIX.size + manifest_body_length(prefix)  # LimitError past the limit
            if len(stream) > msg.stream_total:
                raise PacketError(f"manifest fragments run past the stream's {msg.stream_total} bytes",
                                  reason="contradictions")
        if msg.stream_have == msg.stream_total:  # no overlap, nothing past the end: all there, once
            self._parse_manifest(msg)

    def _parse_manifest(self, msg: _Open) -> None:
        stream = bytes(msg.stream)
        total = len(stream)
        msg.stream, msg.covered = stream, None
        self._uncharge(msg, (STREAM_BYTES_PER_BYTE - 1) * total)  # the stream alone stays
        reserved = [INFLATE_BYTES]
        self._charge(msg, INFLATE_BYTES)

        def reserve(nbytes: int) -> None:  # what inflating makes, charged as it grows
            self._charge(msg, nbytes)
            reserved.append(nbytes)

        try:
            raw = manifest_json(stream, reserve=reserve)
        finally:
            self._uncharge(msg, sum(reserved))
        deflated = MANIFEST_PREFIX.unpack_from(stream)[0] & MANIFEST_ZLIB
        # what parsing it makes, now and again to deliver it (kept charged till then)
        parsing = PARSE_BYTES_PER_JSON_BYTE * len(raw) + ((INFLATE_BYTES + 2 * len(raw)) if deflated else 0)
        self._charge(msg, parsing)  # refuses (LimitError) before json.loads makes its objects
        try:
            manifest = Manifest.from_bytes(raw, layouts=self._layouts)
        except PacketError:
            self._uncharge(msg, parsing)
            raise
        self._trim_cache()
        self._open_buffers(msg, manifest, total, len(raw))

    def _open_buffers(self, msg: _Open, manifest: Manifest, stream_len: int | None, names_bytes: int) -> None:
        first = msg.first
        if manifest.family_id != first.family_id:
            raise PacketError(f"manifest layout (family {manifest.family_id:#010x}) does not match the "
                              f"family id in the headers ({first.family_id:#010x})", reason="contradictions")
        specs = manifest.tensors
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
        # One block for the whole message, each tensor at a 64-byte aligned offset; what
        # delivering it may make besides (the tensors decoded into new memory, a mask of
        # what arrived) is charged with it, before anything is allocated.
        offsets, end = [], 0
        for spec in specs:
            offsets.append(end)
            end += -(-spec.nbytes // _ALIGN) * _ALIGN
        self._charge(msg, names_bytes + end + delivery_nbytes(specs) + TENSOR_BYTES * len(specs))  # LimitError first
        msg.manifest = manifest
        msg.keep_manifest = names_bytes <= KEEP_PARSED_JSON_BYTES
        msg.specs = [(spec.name, spec.shape, spec.dtype, spec.encoding, spec.scale, spec.zero_point) for spec in specs]
        msg.layout = (manifest.family_id, nbytes)
        # Not zeroed: a complete message overwrites every byte, and a partial delivery
        # zeroes what did not arrive (see _finish). The delivered tensors are views of the
        # block: it is the next message's once they are all gone (SpareBuffer).
        msg.block = _BLOCKS.take(end)
        msg.view = memoryview(msg.block)
        msg.offsets = offsets
        msg.tensors = [(ENCODING_CODE[spec.encoding], spec.itemsize, spec.numel, spec.scale, spec.zero_point, offset)
                       for spec, offset in zip(specs, offsets)]
        early, msg.early = msg.early, []
        for fragment in early:
            self._place_tensor_chunk(msg, fragment)
        self._uncharge(msg, msg.early_bytes)
        msg.early_bytes = 0

    def _place_tensor_chunk(self, msg: _Open, fragment: tuple) -> None:
        """Place ``fragment``: (tensor index, encoding, flags, element start, scale, zero
        point, payload)."""
        index, encoding, flags, start, fragment_scale, fragment_zero_point, payload = fragment
        tensors = msg.tensors
        if index >= len(tensors):
            raise PacketError(f"tensor index {index} is beyond the manifest's {len(tensors)} tensors",
                              reason="contradictions")
        code, item, numel, scale, zero_point, offset = tensors[index]
        if encoding != code:
            raise PacketError(f"fragment encoding {encoding} contradicts the manifest ({code}) for "
                              f"{msg.specs[index][0]}", reason="contradictions")
        # int8 with the extension: its parameters must be the manifest's, and its range stays
        # within the tensor. Without it (a packed run), each element decodes with the
        # parameters the manifest gives the tensor it lands in.
        quantised = code == ENCODING_INT8 and flags & FLAG_QUANT
        if quantised and (fragment_scale != scale or fragment_zero_point != zero_point):
            raise PacketError(f"fragment quantisation parameters contradict the manifest for "
                              f"{msg.specs[index][0]}", reason="contradictions")
        if code == _ENCODING_BOOL and bytes(payload).translate(None, _FALSE_TRUE):
            raise PacketError(f"a bool fragment of {msg.specs[index][0]} holds a byte other than 0 and 1")
        count = len(payload) // item
        view = msg.view
        if start + count <= numel:
            view[offset + start * item:offset + (start + count) * item] = payload
            msg.ranges.extend((index, start, count))
            return
        # A fragment of a packed run (a small model's tensors back to back): the elements
        # past this tensor's end continue into the next tensors that have any, in manifest
        # order, each of the same encoding; int8 only without the extension, whose single
        # scale could not be right for two tensors. Tensors without elements are passed
        # over by the list of those with some: the work is one step per tensor reached,
        # each of which takes an element of the fragment.
        if start >= numel or quantised:
            raise PacketError(f"elements {start}..{start + count} run past {msg.specs[index][0]}'s {numel}",
                              reason="contradictions")
        nonempty = msg.nonempty
        if nonempty is None:
            nonempty = msg.nonempty = [i for i, entry in enumerate(tensors) if entry[2]]
        position = bisect_left(nonempty, index)
        placed = []
        done = 0
        while done < count:
            if position >= len(nonempty):
                raise PacketError(f"a packed fragment's {count} elements run past the last tensor",
                                  reason="contradictions")
            index = nonempty[position]
            code_here, _, numel_here, _, _, offset_here = tensors[index]
            if code_here != code:
                raise PacketError(f"a packed fragment runs into {msg.specs[index][0]}, which travels in another "
                                  f"encoding", reason="contradictions")
            n = min(count - done, numel_here - start)
            placed.append((offset_here, start, n, done, index))
            done += n
            position += 1
            start = 0
        # charged and placed only once the whole fragment is known to fit: a refused one leaves nothing
        self._charge(msg, RANGE_BYTES * (len(placed) - 1))
        for offset_here, start, n, at, index in placed:
            view[offset_here + start * item:offset_here + (start + n) * item] = payload[at * item:(at + n) * item]
            msg.ranges.extend((index, start, n))

    def _adopt_known_layout(self, msg: _Open) -> bool:
        layout = self.known_layouts.get(msg.first.family_id)
        # int8 parameters change with every message: a remembered layout's would decode
        # this message's elements wrongly (fragments without the extension carry none to
        # check them against), so such a message is lost with its manifest.
        if layout is None or any(spec.encoding == "int8" for spec in layout.tensors):
            return False
        try:
            self._open_buffers(msg, layout, None, 0)
        except PacketError as exc:
            self.stats[exc.reason] += 1
            return False
        return True

    def _finish(self, key: tuple[int, int], msg: _Open, *, complete: bool) -> ReceivedModel:
        if msg.tensors is None:
            self._drop(key, remember=True)
            raise PacketError(f"all {msg.ident[0]} fragments arrived but they do not make up a manifest",
                              reason="contradictions")
        if complete:
            bad = _first_uncovered(msg.ranges, [entry[2] for entry in msg.tensors])
            if bad is not None:
                self._drop(key, remember=True)
                raise PacketError(f"all fragments arrived but they do not cover {msg.specs[bad][0]} exactly once",
                                  reason="contradictions")
        try:
            manifest = msg.manifest if msg.manifest is not None else self._parse_again(msg)
        finally:
            self._drop(key, remember=True)
        if complete:
            state, masks = decode_block(manifest, msg.block, msg.offsets, bools_checked=True)
            self.stats["complete"] += 1
        else:
            state, masks = decode_block(manifest, msg.block, msg.offsets, _runs(msg.ranges, len(manifest.tensors)),
                                        bools_checked=True)
            self.stats["partial"] += 1
        first = msg.first
        return ReceivedModel(first.origin, first.message_id, first.model_version, first.family_id,
                             first.destination, manifest, state, masks, msg.received, first.fragment_count,
                             msg.max_hops)

    def _parse_again(self, msg: _Open) -> Manifest:
        """The manifest of an open message, to deliver it: its tensors from the fields it
        kept (validated already), the rest from its stream again, within what
        _open_buffers charged for that."""
        scaling, meta = manifest_extras(manifest_json(msg.stream))
        specs = tuple(TensorSpec(*fields) for fields in msg.specs)
        return Manifest(specs, scaling, meta, Layout(specs, *msg.layout))

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
        over = self._bytes_total + self._layouts.nbytes + nbytes - limits.bytes_total
        if over > 0:  # what the cache holds goes first: it is cheap to make again
            self._layouts.shrink(over)
        while self._bytes_total + self._layouts.nbytes + nbytes > limits.bytes_total:
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

    def _trim_cache(self) -> None:
        """The cache of layouts grew as a manifest was parsed: within the total, always."""
        over = self._bytes_total + self._layouts.nbytes - self.limits.bytes_total
        if over > 0:
            self._layouts.shrink(over)

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
            self._remember((first.origin, first.message_id, first.model_version))


def _runs(ranges: array, tensors: int) -> list[list[tuple[int, int]]]:
    """Per tensor, the sorted, disjoint ``(start, end)`` element ranges that ``ranges`` (the
    (tensor, start, count) triples of a message's fragments, in arrival order) cover.
    Overlapping or touching ranges are merged; the work is a sort of the triples."""
    out: list[list[tuple[int, int]]] = [[] for _ in range(tensors)]
    if len(ranges) <= 3 * 256:  # few fragments: plain Python beats numpy's call overhead
        for tensor, start, count in sorted(zip(ranges[0::3], ranges[1::3], ranges[2::3])):
            spans = out[tensor]
            if spans and start <= spans[-1][1]:
                if start + count > spans[-1][1]:
                    spans[-1] = (spans[-1][0], start + count)
            else:
                spans.append((start, start + count))
        return out
    table = np.frombuffer(ranges, dtype=np.int64).reshape(-1, 3)
    # one line for every tensor, 2^33 apart (a tensor has fewer than 2^32 elements): no
    # range of one tensor can touch another's
    begin = (table[:, 0] << 33) + table[:, 1]
    order = np.argsort(begin, kind="stable")
    begin = begin[order]
    end = begin + table[order, 2]
    reach = np.maximum.accumulate(end)
    fresh = np.ones(len(begin), dtype=bool)
    fresh[1:] = begin[1:] > reach[:-1]  # a gap before it: a new run starts
    starts = begin[fresh]
    stops = np.maximum.reduceat(end, np.flatnonzero(fresh))
    tensor = starts >> 33
    for index, start, stop in zip(tensor.tolist(), (starts - (tensor << 33)).tolist(),
                                  (stops - (tensor << 33)).tolist()):
        out[index].append((start, stop))
    return out


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
    tensor, start, count = table[:, 0], table[:, 1], table[:, 2]
    key = (tensor << 33) | start  # a tensor has fewer than 2^32 elements
    if not (key[1:] >= key[:-1]).all():  # fragments that came in order are sorted already
        order = np.argsort(key, kind="stable")
        tensor, start, count = tensor[order], start[order], count[order]
    end = start + count
    same = tensor[1:] == tensor[:-1]
    expected = np.zeros(len(tensor), dtype=np.int64)
    expected[1:] = np.where(same, end[:-1], 0)
    last = np.ones(len(tensor), dtype=bool)
    last[:-1] = ~same  # the last range of each tensor that has any
    sizes = np.asarray(numels, dtype=np.int64)
    bad = np.zeros(len(numels), dtype=bool)
    bad[tensor[start != expected]] = True  # a gap or an overlap
    bad[tensor[last][end[last] != sizes[tensor[last]]]] = True  # the end is missing or runs past it
    present = np.zeros(len(numels), dtype=bool)
    present[tensor] = True
    bad |= ~present & (sizes != 0)  # no range at all
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
