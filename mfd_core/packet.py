"""The MFD datagram: one self-describing, checksummed piece of a model message.

Sans-IO, like h11: bytes in, packets out, and packets in, bytes out. Nothing here
touches a socket or a clock; the simulated network, UDP and Ray are drivers around it.
The byte layout is specified in ``docs/packet-format.md``; this module is its
reference implementation and the tests check it against the test vectors there.

Every datagram carries enough to be routed (destination, TTL), placed (message id,
fragment index/count, tensor index, element range, encoding) and checked (CRC32C, and
optionally a truncated HMAC-SHA256) on its own. Parsing any byte string returns a
:class:`Packet` or raises :class:`PacketError` with a message saying what was wrong.

A *control* datagram (:func:`build_control`) is a whole message in one datagram: the
same header, and a payload of opaque bytes that the layer above defines (a hello, a
pull, a resend request); no manifest, no reassembly.
"""
from __future__ import annotations

import hashlib
import hmac
import itertools
import math
import os
import struct
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator, NamedTuple, Sequence

import numpy as np
# CRC32C (Castagnoli), the spec's checksum. fastcrc's iscsi folds with the CPU's carry-less
# multiply where there is one: here 2x the crc32c package's speed on a 64 KiB datagram and
# 0.6x its time a call on a 1,400-byte one (crc32c runs the CRC32 instruction).
from fastcrc.crc32 import iscsi as crc32c

MAGIC = 0x4D  # "M"
# Version 2 (docs/packet-format.md): control datagrams, packed runs and deflated
# manifests, length-prefixed family ids. Version-1 datagrams are refused: every node of a
# fleet runs the same build, and a decoder of both would have to keep two family ids.
VERSION = 2

# Flags: the low nibble of byte 1 (the high nibble is the protocol version).
FLAG_MANIFEST = 0x1  # the payload is a slice of the message's manifest stream
FLAG_QUANT = 0x2  # an 8-byte quantisation extension follows the fixed header
FLAG_AUTH = 0x4  # a 16-byte HMAC-SHA256 tag follows the payload
FLAG_RESERVED = 0x8  # must be zero

# Destinations that are not a single node.
BROADCAST = 0xFFFF_FFFF  # every node, forwarded until the TTL runs out
NEIGHBOURS = 0xFFFF_FFFE  # every direct neighbour of the sender, never forwarded
MAX_NODE_ID = 0xFFFF_FFFD

MANIFEST_TENSOR = 0xFFFF  # tensor_index of manifest fragments
# What the tensor index field can name, 0 .. 0xFFFE (a manifest lists at most codec.MAX_MESSAGE_TENSORS).
MAX_TENSORS = MANIFEST_TENSOR

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
_DESTINATION_OFFSET = 20
_QUANT = struct.Struct(">fi")  # scale (IEEE754 binary32), zero point (int32)
_CRC = struct.Struct(">I")
_ROUTE = struct.Struct(">BB18xI12xBB")  # magic, version/flags, destination, TTL, hops
QUANT_SIZE = _QUANT.size  # 8
# HMAC-SHA256 truncated to 128 bits, as IPsec does (RFC 4868): forging needs 2^128 tries.
TAG_SIZE = 16

# MTU bounds. 256 bytes leaves room for the header and a useful payload on the
# smallest links we model; 65,535 is the largest UDP payload over IPv4 (the same bound
# keeps payload_len in 16 bits).
MIN_MTU = 256
MAX_MTU = 65_535
MAX_PAYLOAD = MAX_MTU - HEADER_SIZE  # the most payload bytes any datagram can carry
MAX_DATAGRAM = MAX_MTU  # build never makes a longer one, so parse refuses longer input
MAX_FRAGMENTS = 0xFF_FFFF  # 24-bit fragment index/count
# A control datagram is one whole datagram: its payload is what is left of the largest.
MAX_CONTROL_PAYLOAD = MAX_DATAGRAM - HEADER_SIZE
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
    9: ("bool", "<u1", 1),  # one byte per element, 0 or 1
    10: ("manifest", "<u1", 1),  # bytes of the manifest stream (uint32 length + JSON)
    11: ("int8raw", "<i1", 1),  # an int8 tensor sent as it is (no quantisation)
    12: ("control", "<u1", 1),  # a control datagram's payload: opaque bytes of the layer above
}
ENCODING_CODE = {name: code for code, (name, _, _) in ENCODINGS.items()}
ENCODING_INT8 = ENCODING_CODE["int8"]
ENCODING_MANIFEST = ENCODING_CODE["manifest"]
ENCODING_CONTROL = ENCODING_CODE["control"]
# Item size by code, as a tuple so the per-packet paths index instead of hashing.
_ITEMSIZE = tuple(ENCODINGS[code][2] if code in ENCODINGS else 0 for code in range(256))

# Messages of at most this many datagrams are built one datagram at a time in plain
# Python (:func:`_build_small`): ~2 us a datagram, where the numpy path's per-run array
# set-up costs ~10 us a run. The models of fleets of thousands of nodes are a few short
# datagrams (a manifest, then one per tensor or one for all); past a few dozen numpy wins.
SMALL_MESSAGE_FRAGMENTS = 32
# build writes a run of many datagrams this many bytes at a time (see there).
BUILD_WINDOW = 2 << 20
# Within a larger message, runs of at most this many datagrams (the manifest, a bias, the
# last short datagram of each tensor) are written the same way: ~2 us each against ~60 us
# of array calls for a run of any length (1M parameters at MTU 1,400: 7 of 9 runs).
SHORT_SEGMENT = 4

# Batch checksums (:func:`build`, :func:`batch_checksums` for
# :meth:`Reassembler.receive_many <mfd_core.reassembly.Reassembler.receive_many>`): the
# CRC32C of datagrams at least this long is computed in parallel threads. fastcrc releases
# the GIL while it runs (checked: another thread counts on meanwhile), so threads do
# overlap, but every call re-takes the GIL after, and waking a helper costs microseconds.
# CRC32C runs at ~45 GB/s on one core here (cache-warm): 0.1 us for a 1,400-byte datagram
# with the call, less than one GIL hand-over, while the Python that places it holds the GIL
# for ~1 us; a 64 KiB datagram takes ~1.5 us, which threads can share. 16 KiB is where a
# call's CRC time starts to outweigh its GIL round trip.
PARALLEL_CRC_MIN_DATAGRAM = 16 << 10
# ...and only when those datagrams add up to this many bytes (~17 us of CRC32C on one
# core): below it, handing half of the batch to another thread costs what it saves.
PARALLEL_CRC_MIN_BATCH = 256 << 10
# A receiver's batch is checked this many bytes at a time, each window just before it is
# placed, so its datagrams are still in cache when they are copied out: checking a 100 MB
# batch first and placing it after reads it from memory twice (measured, 25M parameters
# at 64 KiB: 18% slower than checking each datagram as it is placed). 4 MiB: a few times
# the L2, well inside the L3.
PARALLEL_CRC_WINDOW = 4 << 20
# Threads that share a batch, the caller's included: 1 unless MFD_CRC_THREADS asks for
# more (at most one per CPU this process may run on, and 8: past that, memory bandwidth
# rather than CPU bounds CRC32C over a large model); fewer when the CPUs are busy (see
# spare_cpus). One, because on the 2-CPU machines we measure on a helper thread lost even
# when the other CPU was idle: models of 1M / 25M parameters at 64 KiB decoded at 0.82x /
# 2.06x torch.load's speed with 2 threads and 0.91x / 2.46x with one, and encoded at
# 1.13x / 3.64x against 1.33x / 4.19x torch.save's (load 0.9, interleaved): every CRC32C
# call hands the GIL over, and the caller waits for it as long as the helper saves.
_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _crc_threads_setting() -> int:
    try:
        asked = int(os.environ.get("MFD_CRC_THREADS", "1"))
    except ValueError:
        asked = 1
    return max(1, min(8, _CPUS, asked))


CRC_THREADS = _crc_threads_setting()


class PacketError(ValueError):
    """A datagram that is not a valid MFD packet; the message says what was wrong.

    ``reason`` names the :attr:`Reassembler.stats <mfd_core.reassembly.Reassembler.stats>`
    counter the refusal is counted under.
    """

    reason = "malformed"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class ChecksumError(PacketError):
    """The CRC32C does not match: the datagram was corrupted on the way."""

    reason = "corrupted"


class AuthError(PacketError):
    """The packet is unsigned, forged or replayed for a receiver that holds a fleet key.

    ``reason`` is ``"unsigned"``, ``"forged"`` or ``"replayed"``.
    """

    reason = "forged"


class LimitError(PacketError):
    """The packet is well formed but would take this receiver past one of its limits."""

    reason = "over_limit"


class Packet(NamedTuple):
    """One parsed datagram. ``payload`` is a read-only view into the received bytes.

    A named tuple rather than a dataclass: a receiver makes one per datagram, and a
    tuple is built ten times faster.
    """

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
    def is_control(self) -> bool:
        return self.encoding == ENCODING_CONTROL

    @property
    def element_count(self) -> int:
        return len(self.payload) // _ITEMSIZE[self.encoding]


_new_packet = tuple.__new__


@dataclass(frozen=True, slots=True)
class Fragment:
    """What the sender puts into one datagram, before the common header fields."""

    tensor_index: int
    encoding: int
    element_start: int
    payload: memoryview | bytes
    # int8 only: the datagram's quantisation extension; None sends int8 without one (its
    # elements then decode with the parameters of the manifest's tensors, see codec)
    scale: float | None = 1.0
    zero_point: int = 0


@dataclass(frozen=True, slots=True)
class Run:
    """Consecutive fragments of one tensor (or of the manifest stream), described once.

    The bytes ``payload`` are cut into fragments of ``chunk`` bytes (the last one takes
    the rest); fragment ``k`` starts at element ``element_start + k * chunk // itemsize``.
    :func:`build` writes a run's headers with numpy in one go instead of one object and
    one ``pack`` per datagram: that is what lets a sender keep up at MTU 1,400.
    """

    tensor_index: int
    encoding: int
    element_start: int
    payload: memoryview | bytes | np.ndarray
    chunk: int
    scale: float | None = 1.0  # as in Fragment: None = int8 without the extension
    zero_point: int = 0

    @property
    def count(self) -> int:
        return -(-_nbytes(self.payload) // self.chunk)


def _nbytes(payload) -> int:
    return payload.nbytes if isinstance(payload, (memoryview, np.ndarray)) else len(payload)


def _crc_list(bufs: Sequence[memoryview]) -> list[int]:
    """:func:`checksum_of` each datagram in ``bufs``; the GIL is released over every payload."""
    return list(map(checksum_of, bufs))


_crc_pool: ThreadPoolExecutor | None = None
_crc_pool_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """The module's CRC threads (``CRC_THREADS - 1``; the caller is the last), made on first use."""
    global _crc_pool
    if _crc_pool is None:
        with _crc_pool_lock:
            if _crc_pool is None:
                _crc_pool = ThreadPoolExecutor(max_workers=CRC_THREADS - 1, thread_name_prefix="mfd-crc")
    return _crc_pool


def _forget_pool() -> None:
    # A forked child inherits the executor but not its threads: work sent to it would wait forever.
    global _crc_pool, _crc_pool_lock
    _crc_pool, _crc_pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def spare_cpus() -> int:
    """CPUs with nothing to run, by the 1-minute load average (which counts this thread).

    A helper thread only pays on a CPU of its own. Where every CPU is busy (other jobs,
    a learner training next to the receiver) it waits for a turn, and the OS can preempt
    it while it holds the GIL, stalling the caller for a whole time slice: on 2 CPUs at
    load 4 a 4 MB model encoded 15-25% slower (median) with 2 threads than with one, and
    the slowest runs took milliseconds instead of 0.4. ``make -l`` holds back the same way.
    """
    try:
        load = os.getloadavg()[0]
    except OSError:  # no load average on this platform: assume the CPUs are free
        return _CPUS
    return max(0, round(_CPUS - load))


def _crc_into(out: list, bufs: Sequence[memoryview], order: Iterator[int]) -> None:
    """Take indices from ``order`` (shared by the threads of one batch) until none are left,
    and set ``out[i]`` to the CRC of ``bufs[i]``; the GIL is released over every payload."""
    for i in order:
        out[i] = checksum_of(bufs[i])


def _crc_threads(nbytes: int) -> int:
    """Threads, the caller's included, worth giving datagrams of ``nbytes`` bytes in all
    (each of ``PARALLEL_CRC_MIN_DATAGRAM`` or more): 1 below ``PARALLEL_CRC_MIN_BATCH``,
    else one per spare CPU besides the caller's, ``CRC_THREADS`` at most."""
    if CRC_THREADS < 2 or nbytes < PARALLEL_CRC_MIN_BATCH:
        return 1
    return min(CRC_THREADS, 1 + spare_cpus())


def _crcs(bufs: Sequence[memoryview], threads: int) -> list[int]:
    """:func:`checksum_of` each datagram in ``bufs`` (each at least a header long), in order.

    With ``threads`` > 1 (from :func:`_crc_threads`), the caller and ``threads - 1``
    helpers take the datagrams one at a time from a shared counter until none are left: a
    thread the OS does not run for a while holds up at most one datagram, and a helper that
    has not started by the time the caller runs out of work is called off. Each value
    depends on its datagram's bytes only and goes to its own index: which thread computes
    it changes nothing.
    """
    threads = min(threads, len(bufs))
    if threads < 2:
        return _crc_list(bufs)
    out: list = [None] * len(bufs)
    order = iter(range(len(bufs)))
    pool = _pool()
    helpers = [pool.submit(_crc_into, out, bufs, order) for _ in range(threads - 1)]
    _crc_into(out, bufs, order)
    for helper in helpers:
        if not helper.cancel():
            helper.result()
    # The GIL makes taking from a range iterator atomic; should an interpreter without one
    # let two threads skip an index, it is computed here rather than left unset.
    for i, crc in enumerate(out):
        if crc is None:
            out[i] = _crc_list(bufs[i:i + 1])[0]
    return out


def batch_checksums(datagrams: Sequence) -> Iterator[int | None]:
    """For a batch of received datagrams, in order, the CRC32C :func:`parse` would compute
    for each, computed ahead in parallel threads; ``None`` for those not worth it.

    Only byte strings of ``PARALLEL_CRC_MIN_DATAGRAM`` to ``MAX_DATAGRAM`` bytes are done,
    ``PARALLEL_CRC_WINDOW`` bytes of them at a time, when the next value is asked for (so
    that the caller places them while they are in cache), and only when a window holds
    ``PARALLEL_CRC_MIN_BATCH`` bytes and a CPU is spare (:func:`spare_cpus`). Anything
    else (small datagrams, busy CPUs, objects that are not byte strings) gets ``None`` and
    is checked by :func:`parse` as it would be alone. A value is a function of the
    datagram's bytes: they must not change before it is parsed.
    """
    count = len(datagrams)
    # The common cases cost little: busy CPUs a look at the load average, small datagrams
    # one pass over the lengths.
    spare = spare_cpus() if count >= 2 and CRC_THREADS >= 2 else 0
    if not spare:
        return itertools.repeat(None, count)
    try:
        sizes = list(map(len, datagrams))
    except (TypeError, ValueError):  # something without a length (parse will say what it is)
        sizes = [_length_or_zero(d) for d in datagrams]
    if max(sizes) < PARALLEL_CRC_MIN_DATAGRAM:
        return itertools.repeat(None, count)
    # len() counts elements, not bytes, for views of other formats: those are skipped later.
    low, high = PARALLEL_CRC_MIN_DATAGRAM, MAX_DATAGRAM
    candidates = [i for i, size in enumerate(sizes) if low <= size <= high]
    if len(candidates) < 2 or sum(sizes[i] for i in candidates) < PARALLEL_CRC_MIN_BATCH:
        return itertools.repeat(None, count)
    return _windowed_checksums(datagrams, sizes, candidates, min(CRC_THREADS, 1 + spare))


def _windowed_checksums(datagrams: Sequence, sizes: list[int], candidates: list[int],
                        threads: int) -> Iterator[int | None]:
    count = len(datagrams)
    done = 0  # datagrams answered so far
    windows: list[list[int]] = [[]]
    filled = 0
    for i in candidates:
        if filled >= PARALLEL_CRC_WINDOW:
            windows.append([])
            filled = 0
        windows[-1].append(i)
        filled += sizes[i]
    for members in windows:
        where, bufs = [], []
        for i in members:
            try:
                buf = memoryview(datagrams[i])
            except (TypeError, ValueError):
                continue
            if buf.format == "B" and buf.ndim == 1 and buf.c_contiguous:
                where.append(i)
                bufs.append(buf)
        worth = len(bufs) >= 2 and sum(b.nbytes for b in bufs) >= PARALLEL_CRC_MIN_BATCH
        known = dict(zip(where, _crcs(bufs, threads))) if worth else {}
        del bufs
        last = members[-1]
        for i in range(done, last + 1):
            yield known.get(i)
        done = last + 1
    for _ in range(done, count):
        yield None


# The fixed header as a numpy record (big-endian fields, in the order of _HEADER; the
# 24-bit fragment index and count split as there): what a batch path reads with one
# view over many headers instead of one ``unpack`` each.
HEADER_DTYPE = np.dtype([
    ("lead", ">u4"),  # magic, version/flags, header length, encoding
    ("message_id", ">u2"), ("tensor_index", ">u2"), ("family_id", ">u4"), ("model_version", ">u4"),
    ("origin", ">u4"), ("destination", ">u4"), ("fragment_index_hi", ">u2"), ("fragment_index_lo", "u1"),
    ("fragment_count_hi", ">u2"), ("fragment_count_lo", "u1"), ("element_start", ">u4"),
    ("payload_len", ">u2"), ("ttl", "u1"), ("hops", "u1"), ("checksum", ">u4")])
assert HEADER_DTYPE.itemsize == HEADER_SIZE
_HEADER_BYTES = np.arange(HEADER_SIZE, dtype=np.intp)
_PREFIX_BYTES = np.arange(_COVERED_PREFIX, dtype=np.intp)
# Where the checksummed prefix goes so that it runs straight into the payload.
_PREFIX_SHIFT = HEADER_SIZE - _COVERED_PREFIX
# At most this many stretches of evenly spaced datagrams are read through a strided view
# each (~2 us of array set-up a stretch); past it the bytes are gathered.
STRETCHES_MAX = 16


def checksum_of(datagram: memoryview) -> int:
    """The CRC32C of a datagram (a flat byte view, at least a header long) as :func:`parse`
    computes it: bytes 0..35 of the header, then everything after it."""
    return crc32c(datagram[HEADER_SIZE:], crc32c(datagram[:_COVERED_PREFIX]))


def lead_word(flags: int, encoding: int, *, quantised: bool = False) -> int:
    """The first 32 bits of a datagram: magic, version and ``flags``, header length, ``encoding``."""
    header_len = HEADER_SIZE + (QUANT_SIZE if quantised else 0)
    return (MAGIC << 24) | (((VERSION << 4) | flags) << 16) | (header_len << 8) | encoding


def _even_stretches(starts: np.ndarray, size: int | None) -> list[tuple[int, int, int]] | None:
    """``(first, stop, spacing)`` of each stretch of datagrams whose starts in a buffer lie
    ``spacing`` bytes apart, the first starting a new stretch; None where there are too
    many stretches for a strided view each to pay (a gather reads the bytes instead).

    A run's window is back-to-back datagrams of one size but for a tensor's last, shorter
    one, so it is a few long stretches: read through strided views, its headers cost ~10x
    less than gathered (a 1M model at MTU 1,400: 2 windows of 1,455-1,501 datagrams, each
    holding one short datagram)."""
    n = len(starts)
    if size is not None or n < 2:
        return [(0, n, size or 0)]
    gaps = np.diff(starts)
    changes = (np.flatnonzero(gaps[1:] != gaps[:-1]) + 1).tolist()
    if len(changes) > 2 * STRETCHES_MAX:
        return None
    stretches, first, k = [], 0, 0
    while first < n:
        while k < len(changes) and changes[k] <= first:
            k += 1
        stop = changes[k] + 1 if k < len(changes) else n  # datagram changes[k] ends the stretch
        stretches.append((first, stop, int(gaps[first]) if first < n - 1 else 0))
        first = stop
    return stretches if len(stretches) <= STRETCHES_MAX else None


def _rows(buf: np.ndarray, start: int, count: int, spacing: int, width: int) -> np.ndarray:
    """``count`` rows of ``width`` bytes from ``start`` of ``buf``, ``spacing`` bytes apart: a view."""
    return np.ndarray((count, width), dtype=np.uint8, buffer=buf, offset=start, strides=(spacing, 1))


def header_records(buf: np.ndarray, starts: np.ndarray, size: int | None = None) -> np.ndarray:
    """The fixed headers of the datagrams that start at ``starts`` in ``buf`` (uint8, each
    datagram at least :data:`HEADER_SIZE` long) as :data:`HEADER_DTYPE` records, copied.

    :param size: every datagram is this long and they lie back to back from ``starts[0]``
        (otherwise stretches of evenly spaced datagrams are found, see _even_stretches):
        the headers are read through one strided view a stretch instead of gathered.
    """
    stretches = _even_stretches(starts, size)
    if stretches is None:
        rows = buf[starts[:, None] + _HEADER_BYTES]
    else:
        rows = np.empty((len(starts), HEADER_SIZE), dtype=np.uint8)
        for first, stop, spacing in stretches:
            rows[first:stop] = _rows(buf, int(starts[first]), stop - first, spacing, HEADER_SIZE)
    return rows.view(HEADER_DTYPE).reshape(-1)


def checksums_in_place(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, size: int | None = None) -> np.ndarray:
    """The CRC32C :func:`parse` computes for each datagram ``buf[starts[k]:ends[k]]`` (uint32), one
    call each: bytes 0..35 of every header are first copied over bytes 6..41 (TTL, hops,
    checksum and the tail of the prefix), so that what the checksum covers lies in one
    piece. Those header bytes of ``buf`` are lost: read the headers first
    (:func:`header_records`). ``size`` as there."""
    count = len(starts)
    if not count:
        return np.empty(0, dtype=np.uint32)
    stretches = _even_stretches(starts, size)
    view = memoryview(buf)
    if stretches is None:
        where = starts[:, None] + _PREFIX_BYTES
        buf[where + _PREFIX_SHIFT] = buf[where]
        return np.fromiter((crc32c(view[a:b]) for a, b in zip((starts + _PREFIX_SHIFT).tolist(), ends.tolist())),
                           dtype=np.uint32, count=count)
    crcs = np.empty(count, dtype=np.uint32)
    for first, stop, spacing in stretches:
        rows = _rows(buf, int(starts[first]), stop - first, spacing, HEADER_SIZE)
        rows[:, _PREFIX_SHIFT:] = rows[:, :_COVERED_PREFIX].copy()
        # All but a stretch's last datagram are `spacing` bytes long (all of them, given
        # `size`): their covered bytes are the rows of a strided view, whose iteration
        # hands out row views at less cost than slicing a memoryview (~0.1 us a datagram).
        full = stop - first if size is not None else stop - first - 1
        if full > 0:
            crcs[first:first + full] = np.fromiter(
                map(crc32c, _rows(buf, int(starts[first]) + _PREFIX_SHIFT, full, spacing, spacing - _PREFIX_SHIFT)),
                dtype=np.uint32, count=full)
        for k in range(first + max(full, 0), stop):
            crcs[k] = crc32c(view[int(starts[k]) + _PREFIX_SHIFT:int(ends[k])])
    return crcs


def _length_or_zero(obj) -> int:
    try:
        return len(obj)
    except (TypeError, ValueError):
        return 0


def _tag(key: bytes, buf: memoryview, payload_end: int) -> bytes:
    mac = hmac.new(key, buf[:_COVERED_PREFIX], hashlib.sha256)
    mac.update(buf[HEADER_SIZE:payload_end])
    return mac.digest()[:TAG_SIZE]


def check_key(key: bytes | None) -> None:
    """A fleet key is None (no authentication) or a non-empty byte string."""
    if key is not None and (not isinstance(key, (bytes, bytearray)) or not key):
        raise ValueError("the fleet key must be None or a non-empty byte string")


def max_payload(mtu: int, *, quantised: bool, authenticated: bool) -> int:
    """Payload bytes that fit one datagram of ``mtu`` bytes."""
    check_mtu(mtu)
    return mtu - HEADER_SIZE - (QUANT_SIZE if quantised else 0) - (TAG_SIZE if authenticated else 0)


def check_mtu(mtu: int) -> None:
    if not isinstance(mtu, int) or isinstance(mtu, bool) or not MIN_MTU <= mtu <= MAX_MTU:
        raise ValueError(f"mtu must be an integer from {MIN_MTU} to {MAX_MTU} bytes, got {mtu!r}")


def check_node_id(name: str, value: int, *, special_ok: bool = False) -> None:
    limit = BROADCAST if special_ok else MAX_NODE_ID
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise ValueError(f"{name} must be a node id from 0 to {limit}, got {value!r}")


def _check_fragment(item: Fragment | Run) -> tuple[int, int]:
    """Validate what a sender asks :func:`build` to send; returns (payload bytes, chunk)."""
    enc = ENCODINGS.get(item.encoding)
    if enc is None:
        raise ValueError(f"unknown payload encoding {item.encoding!r}")
    itemsize = enc[2]
    nbytes = _nbytes(item.payload)
    chunk = item.chunk if isinstance(item, Run) else nbytes
    if nbytes == 0 or chunk <= 0:
        raise ValueError("every fragment carries at least one byte of payload")
    if nbytes % itemsize or chunk % itemsize:
        raise ValueError(f"payload is not a whole number of {enc[0]} elements")
    if item.encoding == ENCODING_CONTROL:
        raise ValueError("a control payload is a datagram of its own: see build_control")
    manifest = item.tensor_index == MANIFEST_TENSOR
    if manifest != (item.encoding == ENCODING_MANIFEST) or not 0 <= item.tensor_index <= MANIFEST_TENSOR:
        raise ValueError("tensor index 0xFFFF and the manifest encoding go together; tensors are 0..0xFFFE")
    if not 0 <= item.element_start or item.element_start + nbytes // itemsize > MAX_ELEMENTS:
        raise ValueError("element range must lie within 0 .. 2^32-1")
    if item.encoding == ENCODING_INT8 and item.scale is not None:
        scale = float(np.float32(item.scale))
        if not (0 < scale < math.inf) or scale != item.scale:
            raise ValueError(f"int8 scale must be a positive finite binary32 value, got {item.scale!r}")
        if not -128 <= item.zero_point <= 127:
            raise ValueError(f"int8 zero point must lie in -128..127, got {item.zero_point!r}")
    return nbytes, chunk


def build(
    fragments: Sequence[Fragment | Run],
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

    Fragments are numbered in the order given (a :class:`Run` counts as its fragments):
    the caller orders them, manifest first.
    :raises ValueError: for anything a receiver would refuse (sizes, ranges, ids).
    """
    check_key(key)
    check_node_id("origin", origin)
    check_node_id("destination", destination, special_ok=True)
    for name, value, bits in (("family_id", family_id, 32), ("model_version", model_version, 32),
                              ("message_id", message_id, 16), ("ttl", ttl, 8)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < (1 << bits):
            raise ValueError(f"{name} must fit {bits} bits unsigned, got {value!r}")
    tag_size = TAG_SIZE if key else 0
    # Plan: (item, nbytes, chunk, header_len, full fragments, last fragment's payload bytes)
    plan = []
    count = total = large = 0  # large: bytes in datagrams of PARALLEL_CRC_MIN_DATAGRAM or more
    for item in fragments:
        nbytes, chunk = _check_fragment(item)
        header_len = HEADER_SIZE + (QUANT_SIZE if item.encoding == ENCODING_INT8 and item.scale is not None else 0)
        if header_len + chunk + tag_size > MAX_MTU:
            raise ValueError(f"fragment of {header_len + chunk + tag_size} bytes exceeds the "
                             f"largest datagram ({MAX_MTU})")
        full, rest = divmod(nbytes, chunk)
        plan.append((item, nbytes, chunk, header_len, full, rest))
        count += full + (1 if rest else 0)
        total += nbytes + (full + (1 if rest else 0)) * (header_len + tag_size)
        for n, payload in ((full, chunk), (1 if rest else 0, rest)):
            if header_len + payload + tag_size >= PARALLEL_CRC_MIN_DATAGRAM:
                large += n * (header_len + payload + tag_size)
    if not 1 <= count <= MAX_FRAGMENTS:
        raise ValueError(f"a message has 1 to {MAX_FRAGMENTS} fragments, got {count}")
    # (block, offsets) of large datagrams, whose checksums are computed together at the
    # end, in parallel threads (see PARALLEL_CRC_MIN_DATAGRAM); the bytes are the same.
    # With one thread they are computed run by run, as the runs are written.
    threads = _crc_threads(large)
    if count <= SMALL_MESSAGE_FRAGMENTS and threads < 2:
        return _build_small(plan, total, count, family_id, model_version, origin, destination,
                            message_id, ttl, key)

    # Every byte of ``out`` is written below (header, extension, payload, tag, checksum),
    # so it need not be zeroed first, nor cleared when it is the spare (SpareBuffer).
    out = _OUTPUT.take(total)
    flat = memoryview(out)
    readonly = flat.toreadonly()
    datagrams: list[memoryview] = []
    mac = hmac.new(key, digestmod=hashlib.sha256) if key else None
    auth_flag = FLAG_AUTH if key else 0
    deferred: list[tuple[np.ndarray, range]] = []
    pos = index = 0
    for item, nbytes, chunk, header_len, full, rest in plan:
        itemsize = ENCODINGS[item.encoding][2]
        flags = auth_flag | (FLAG_QUANT if header_len > HEADER_SIZE else 0) | (
            FLAG_MANIFEST if item.encoding == ENCODING_MANIFEST else 0)
        source = np.frombuffer(item.payload, dtype=np.uint8) if not isinstance(item.payload, np.ndarray) \
            else item.payload.reshape(-1).view(np.uint8)
        # A long run is written a few MiB at a time, so that its checksums are computed
        # while what was just written is still in cache.
        per = max(1, BUILD_WINDOW // (header_len + chunk + tag_size))
        segments = [(min(per, full - done), chunk, done * chunk) for done in range(0, full, per)]
        if rest:
            segments.append((1, rest, full * chunk))
        for n, size_payload, first_byte in segments:
            size = header_len + size_payload + tag_size
            if n <= SHORT_SEGMENT and not (threads > 1 and size >= PARALLEL_CRC_MIN_DATAGRAM):
                # a few datagrams (a manifest, a bias, a tensor's last one): one pack_into each
                # costs less than the dozen array calls below
                start = item.element_start + first_byte // itemsize
                step = size_payload // itemsize
                lead = (VERSION << 4) | flags
                for k in range(n):
                    begin = first_byte + k * size_payload
                    _pack_one(out, flat, pos, lead, header_len, item, message_id, family_id, model_version,
                              origin, destination, index, count, start + k * step,
                              source[begin:begin + size_payload], ttl, key)
                    datagrams.append(readonly[pos:pos + size])
                    pos += size
                    index += 1
                continue
            template = bytearray(header_len)
            _HEADER.pack_into(template, 0, MAGIC, (VERSION << 4) | flags, header_len, item.encoding,
                              message_id, item.tensor_index, family_id, model_version, origin,
                              destination, 0, 0, count >> 8, count & 0xFF, 0, size_payload, ttl, 0, 0)
            if header_len > HEADER_SIZE:
                _QUANT.pack_into(template, HEADER_SIZE, item.scale, item.zero_point)
            block = out[pos:pos + n * size].reshape(n, size)
            header = np.frombuffer(template, dtype=np.uint8)
            index_bytes = np.arange(index, index + n, dtype=">u4").view(np.uint8).reshape(n, 4)[:, 1:]
            start_bytes = (item.element_start + first_byte // itemsize
                           + np.arange(n, dtype=np.int64) * (size_payload // itemsize)).astype(">u4")
            start_bytes = start_bytes.view(np.uint8).reshape(n, 4)
            parallel = threads > 1 and size >= PARALLEL_CRC_MIN_DATAGRAM
            if mac is not None or parallel:
                block[:, :header_len] = header
                block[:, 24:27] = index_bytes
                block[:, 30:34] = start_bytes
            else:  # the checksum below writes the header in two steps: only the rest here
                block[:, HEADER_SIZE:header_len] = header[HEADER_SIZE:]
            block[:, header_len:header_len + size_payload] = (
                source[first_byte:first_byte + n * size_payload].reshape(n, size_payload))
            offsets = range(pos, pos + n * size, size)
            if mac is not None:
                payload_end = header_len + size_payload
                for row, p in enumerate(offsets):
                    m = mac.copy()
                    m.update(flat[p:p + _COVERED_PREFIX])
                    m.update(flat[p + HEADER_SIZE:p + payload_end])
                    block[row, payload_end:] = np.frombuffer(m.digest()[:TAG_SIZE], dtype=np.uint8)
            if parallel:
                deferred.append((block, offsets))
            else:
                # The checksummed prefix (bytes 0..35) is written over bytes 6..41 first, where
                # it runs straight into what follows the header: one CRC32C call a datagram
                # covers both. The call is made over the whole datagram, through the view that
                # is handed out anyway (a slice per datagram costs as much as its CRC32C at
                # this size): bytes 0..5 ride along, the same in every datagram of the run, and
                # what they add is one constant (:func:`_leading_bytes_crc`). Then bytes 6..41
                # are written again (0..5 already hold what they should).
                shift = _PREFIX_SHIFT
                block[:, :shift] = header[:shift]
                block[:, shift:HEADER_SIZE] = header[:_COVERED_PREFIX]
                block[:, 24 + shift:27 + shift] = index_bytes
                block[:, 30 + shift:34 + shift] = start_bytes
                views = [readonly[p:p + size] for p in offsets]
                crcs = np.fromiter(map(crc32c, views), dtype=np.uint32, count=n)
                crcs ^= _leading_bytes_crc(template[:shift], size - shift)
                block[:, shift:HEADER_SIZE] = header[shift:HEADER_SIZE]
                block[:, 24:27] = index_bytes
                block[:, 30:34] = start_bytes
                block[:, _CHECKSUM_OFFSET:HEADER_SIZE] = crcs.astype(">u4").view(np.uint8).reshape(n, 4)
                datagrams.extend(views)
                pos += n * size
                index += n
                continue
            datagrams.extend([readonly[p:p + size] for p in offsets])
            pos += n * size
            index += n
    if deferred:  # every other byte is written: the checksums can now be computed
        crcs = _crcs([flat[p:p + block.shape[1]] for block, offsets in deferred for p in offsets], threads)
        done = 0
        for block, offsets in deferred:
            n = len(offsets)
            block[:, _CHECKSUM_OFFSET:HEADER_SIZE] = (
                np.array(crcs[done:done + n], dtype=">u4").view(np.uint8).reshape(n, 4))
            done += n
    return datagrams


# Buffers of this many bytes are kept for reuse (SpareBuffer): past the last-level cache.
SPARE_MIN_BYTES = 64 << 20
SPARE_MAX_BYTES = 512 << 20  # the most a slot holds on to unused: a model of 128M fp32 parameters


class SpareBuffer:
    """One large buffer kept for the next caller that needs about as many bytes, handed out
    again only once nothing else holds it.

    Fresh memory costs the kernel's zeroing of every page at its first write (100 MB here:
    ~11 ms, where a copy into memory already touched takes 4.5), and a node encodes (and
    receives) models of the same size again and again. Whatever holds the buffer, or a view
    of it (a datagram's memoryview, a tensor made from it), holds a reference to it; the
    buffer is free when the only references left are the slot's and the check's own.

    Only past the last-level cache: a fresh buffer that fits in it comes out of the
    kernel's zeroing still in cache, and writing it is then cheaper than writing memory
    touched long ago (measured in benchmarks/codec.py against the same code without spares:
    25M parameters encoded 1.15x / 1.35x and decoded 1.10x / 1.20x faster at MTU 1,400 / 64
    KiB, 1M parameters, 4 MB, 0.81-0.98x; 8-32 MB no better).
    """

    def __init__(self, min_bytes: int | None = None, max_bytes: int | None = None) -> None:
        # None: the module's SPARE_MIN_BYTES / SPARE_MAX_BYTES, read at each take
        self.min_bytes, self.max_bytes = min_bytes, max_bytes
        self._spare: np.ndarray | None = None
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> np.ndarray:
        """``nbytes`` uninitialised bytes: the spare when it fits (at most twice as long) and
        is free, else new memory, which becomes the spare if it is within the bounds."""
        with self._lock:
            spare = self._spare
            # free: held only by ``self._spare``, by ``spare`` and by getrefcount's argument
            if spare is not None and nbytes <= len(spare) <= 2 * nbytes and sys.getrefcount(spare) == 3:
                return spare[:nbytes]
            fresh = np.empty(nbytes, dtype=np.uint8)
            low = SPARE_MIN_BYTES if self.min_bytes is None else self.min_bytes
            high = SPARE_MAX_BYTES if self.max_bytes is None else self.max_bytes
            if low <= nbytes <= high:
                self._spare = fresh
            return fresh


# The encoder's output buffer (see SpareBuffer): its datagrams are views of it.
_OUTPUT = SpareBuffer()


def _leading_bytes_crc(lead: bytes | bytearray, length: int) -> int:
    """What ``lead`` in front of any ``length`` bytes does to their CRC32C: the value ``c``
    with ``crc32c(lead + data) == crc32c(data) ^ c`` for every ``data`` of that length.

    CRC32C is affine: after ``lead`` the register holds some value instead of the initial
    all-ones, and the difference that makes to the result depends on that value and on how
    many bytes follow, never on what they are (so zeros stand in for them).
    """
    zeros = bytes(length)
    return crc32c(bytes(lead) + zeros) ^ crc32c(zeros)


def _pack_one(out, flat: memoryview, pos: int, lead: int, header_len: int, item: Fragment | Run, message_id: int,
              family_id: int, model_version: int, origin: int, destination: int, index: int, count: int,
              element_start: int, payload, ttl: int, key: bytes | None) -> int:
    """Write one datagram at ``pos`` of ``out`` (``flat``: a writable byte view of it) with
    ``pack_into``: header, quantisation extension, payload, tag and checksum. Returns its end."""
    size_payload = len(payload)
    payload_end = pos + header_len + size_payload
    _HEADER.pack_into(out, pos, MAGIC, lead, header_len, item.encoding, message_id, item.tensor_index,
                      family_id, model_version, origin, destination, index >> 8, index & 0xFF,
                      count >> 8, count & 0xFF, element_start, size_payload, ttl, 0, 0)
    if header_len > HEADER_SIZE:
        _QUANT.pack_into(out, pos + HEADER_SIZE, item.scale, item.zero_point)
    flat[pos + header_len:payload_end] = payload
    end = payload_end
    if key:
        end += TAG_SIZE
        flat[payload_end:end] = _tag(key, flat[pos:end], payload_end - pos)
    _CRC.pack_into(out, pos + _CHECKSUM_OFFSET,
                   crc32c(flat[pos + HEADER_SIZE:end], crc32c(flat[pos:pos + _COVERED_PREFIX])))
    return end


def _build_small(plan: list, total: int, count: int, family_id: int, model_version: int, origin: int,
                 destination: int, message_id: int, ttl: int, key: bytes | None) -> list[memoryview]:
    """:func:`build` for a message of a few datagrams, one ``pack_into`` each: the same
    bytes as the numpy path, which costs ~10 us of array set-up per run and is for runs of
    many datagrams (a small model's message is a manifest and a few short datagrams)."""
    out = bytearray(total)
    flat = memoryview(out)
    auth_flag = FLAG_AUTH if key else 0
    pos = index = 0
    spans = []
    for item, nbytes, chunk, header_len, _full, _rest in plan:
        itemsize = _ITEMSIZE[item.encoding]
        quantised = header_len > HEADER_SIZE
        lead = (VERSION << 4) | auth_flag | (FLAG_QUANT if quantised else 0) | (
            FLAG_MANIFEST if item.encoding == ENCODING_MANIFEST else 0)
        payload = item.payload
        source = memoryview(payload.reshape(-1).view(np.uint8) if isinstance(payload, np.ndarray) else payload)
        if source.ndim != 1 or source.format != "B":
            source = source.cast("B")
        for first_byte in range(0, nbytes, chunk):
            end = _pack_one(out, flat, pos, lead, header_len, item, message_id, family_id, model_version, origin,
                            destination, index, count, item.element_start + first_byte // itemsize,
                            source[first_byte:first_byte + chunk], ttl, key)
            spans.append((pos, end))
            pos = end
            index += 1
    readonly = flat.toreadonly()
    return [readonly[start:end] for start, end in spans]


def build_control(payload: bytes | bytearray | memoryview, *, origin: int, destination: int, message_id: int,
                  model_version: int = 0, ttl: int = 0, key: bytes | None = None) -> bytes:
    """One control datagram: a whole message of ``payload`` bytes that the layer above
    defines (a hello, a pull, a resend request), with no manifest and no reassembly.

    The header is a model datagram's, with encoding ``control`` and ``tensor_index``,
    ``family_id``, ``fragment_index`` and ``element_start`` 0 and ``fragment_count`` 1;
    routing (destination, TTL), checksum and tag are the same (docs/packet-format.md §4.4).

    :param payload: 1 to :data:`MAX_CONTROL_PAYLOAD` bytes (16 fewer when signed); a
        link's MTU is the caller's to respect.
    :param destination: a node id, :data:`NEIGHBOURS` or :data:`BROADCAST`.
    :param ttl: forwards it may still take; 0 (the default) keeps it to the sender's links.
    :param key: the fleet key; when given, the datagram carries a tag.
    :raises ValueError: for anything a receiver would refuse.
    """
    check_key(key)
    check_node_id("origin", origin)
    check_node_id("destination", destination, special_ok=True)
    for name, value, bits in (("model_version", model_version, 32), ("message_id", message_id, 16), ("ttl", ttl, 8)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < (1 << bits):
            raise ValueError(f"{name} must fit {bits} bits unsigned, got {value!r}")
    try:
        body = memoryview(payload).cast("B")
    except TypeError:
        raise TypeError(f"a control payload is a byte string, got {type(payload).__name__}") from None
    tag_size = TAG_SIZE if key else 0
    size = len(body)
    if not 1 <= size <= MAX_CONTROL_PAYLOAD - tag_size:
        raise ValueError(f"a control payload holds 1 to {MAX_CONTROL_PAYLOAD - tag_size} bytes, got {size}")
    payload_end = HEADER_SIZE + size
    out = bytearray(payload_end + tag_size)
    _HEADER.pack_into(out, 0, MAGIC, (VERSION << 4) | (FLAG_AUTH if key else 0), HEADER_SIZE, ENCODING_CONTROL,
                      message_id, 0, 0, model_version, origin, destination, 0, 0, 0, 1, 0, size, ttl, 0, 0)
    out[HEADER_SIZE:payload_end] = body
    flat = memoryview(out)
    if key:
        out[payload_end:] = _tag(key, flat, payload_end)
    _CRC.pack_into(out, _CHECKSUM_OFFSET, crc32c(flat[HEADER_SIZE:], crc32c(flat[:_COVERED_PREFIX])))
    return bytes(out)


def _as_bytes_view(datagram) -> memoryview:
    """Any byte string (bytes, bytearray, memoryview, array, ndarray) as a flat byte view."""
    try:
        buf = memoryview(datagram)
        if buf.nbytes > MAX_DATAGRAM:
            raise PacketError(f"{buf.nbytes} bytes: longer than any datagram ({MAX_DATAGRAM})")
        if not buf.c_contiguous:
            buf = memoryview(buf.tobytes())
        if buf.ndim != 1 or buf.format != "B":
            buf = buf.cast("B")
    except (TypeError, ValueError, BufferError) as exc:
        if isinstance(exc, PacketError):
            raise
        raise PacketError(f"not a byte string: {type(datagram).__name__}") from None
    return buf


# The fast path of :func:`parse` reads magic, version/flags, header length and encoding
# as one 32-bit word and looks it up among the valid combinations, instead of testing
# them one by one: a receiver at MTU 1,400 parses ~100k datagrams per 100 MB of model.
_FAST_HEADER = struct.Struct(">IHHIIIIHBHBIHBBI")
assert _FAST_HEADER.size == HEADER_SIZE


def _fast_kinds() -> dict[int, tuple[int, int, int, bool, bool, bool]]:
    """lead word -> (itemsize, header length, tag size, manifest, quantised, control), valid ones only."""
    kinds = {}
    for encoding, (_, _, itemsize) in ENCODINGS.items():
        for flags in range(8):  # bit 3 is reserved
            manifest, quantised, auth = bool(flags & FLAG_MANIFEST), bool(flags & FLAG_QUANT), bool(flags & FLAG_AUTH)
            # int8 may travel without the extension: its parameters then come from the manifest
            if manifest != (encoding == ENCODING_MANIFEST) or (quantised and encoding != ENCODING_INT8):
                continue
            header_len = HEADER_SIZE + (QUANT_SIZE if quantised else 0)
            lead = (MAGIC << 24) | (((VERSION << 4) | flags) << 16) | (header_len << 8) | encoding
            kinds[lead] = (itemsize, header_len, TAG_SIZE if auth else 0, manifest, quantised,
                           encoding == ENCODING_CONTROL)
    return kinds


_FAST_KINDS = _fast_kinds()


def parse(datagram: bytes | bytearray | memoryview, key: bytes | None = None, *, crc: int | None = None) -> Packet:
    """Parse and check one datagram.

    :param key: the fleet key; when given, unsigned and forged packets are refused with
        :class:`AuthError` (replay needs state: the reassembler checks it).
    :param crc: the datagram's CRC32C as :func:`batch_checksums` computed it, compared in
        place of computing it again; None computes it.
    :raises PacketError: for anything that is not a well-formed, intact MFD packet.
    """
    return _parse(datagram, key, crc)


def _parse(datagram: bytes | bytearray | memoryview, key: bytes | None, crc: int | None) -> Packet:
    """:func:`parse`; ``crc``, when not None, is the datagram's CRC32C as :func:`checksum_of`
    computes it (from :func:`batch_checksums`), compared in place of computing it again."""
    # Fast path for the common, valid, unauthenticated packet. Anything it does not
    # accept outright goes to _parse_checked, which applies the same rules one by one
    # (in the order docs/packet-format.md gives) and says which one failed.
    kind_of = type(datagram)
    if key is None and (kind_of is bytes or kind_of is bytearray or kind_of is memoryview):
        try:
            buf = memoryview(datagram)
        except ValueError:  # a released view
            buf = None
        if buf is not None and buf.format == "B" and buf.ndim == 1 and buf.c_contiguous and len(buf) >= HEADER_SIZE:
            (lead, message_id, tensor_index, family_id, model_version, origin, destination, fidx_hi, fidx_lo,
             fcnt_hi, fcnt_lo, element_start, payload_len, ttl, hops, checksum) = _FAST_HEADER.unpack_from(buf)
            kind = _FAST_KINDS.get(lead)
            if kind is not None:
                itemsize, header_len, tag_size, manifest, quantised, control = kind
                fragment_index = (fidx_hi << 8) | fidx_lo
                fragment_count = (fcnt_hi << 8) | fcnt_lo
                payload_end = header_len + payload_len
                if (len(buf) == payload_end + tag_size <= MAX_DATAGRAM and fragment_index < fragment_count and payload_len
                        and not payload_len % itemsize and (tensor_index == MANIFEST_TENSOR) == manifest
                        and origin <= MAX_NODE_ID and element_start + payload_len // itemsize <= MAX_ELEMENTS
                        and not quantised
                        and (not control or not (tensor_index | family_id | element_start) and fragment_count == 1)):
                    if crc is None:
                        crc = crc32c(buf[HEADER_SIZE:], crc32c(buf[:_COVERED_PREFIX]))
                    if crc != checksum:
                        raise ChecksumError("checksum mismatch: the datagram was corrupted")
                    payload = buf[header_len:payload_end]
                    if not payload.readonly:
                        payload = payload.toreadonly()
                    return _new_packet(Packet, ((lead >> 16) & 0xF, lead & 0xFF, message_id, tensor_index,
                                                family_id, model_version, origin, destination, fragment_index,
                                                fragment_count, element_start, ttl, hops, payload, 1.0, 0))
    return _parse_checked(datagram, key, crc)


def _parse_checked(datagram: bytes | bytearray | memoryview, key: bytes | None = None,
                   crc: int | None = None) -> Packet:
    """:func:`parse`, every rule checked one by one in the specification's order."""
    buf = _as_bytes_view(datagram)
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
    quantised = flags & FLAG_QUANT
    expected_header = HEADER_SIZE + QUANT_SIZE if quantised else HEADER_SIZE
    if header_len != expected_header:
        raise PacketError(f"header length {header_len} does not match its flags (expected {expected_header})")
    payload_end = header_len + payload_len
    tag_size = TAG_SIZE if flags & FLAG_AUTH else 0
    if size != payload_end + tag_size:
        raise PacketError(
            f"length mismatch: datagram is {size} bytes, header says "
            f"{header_len} + payload {payload_len}{' + tag 16' if tag_size else ''}")
    if crc is None:
        crc = crc32c(buf[HEADER_SIZE:], crc32c(buf[:_COVERED_PREFIX]))
    if crc != checksum:
        raise ChecksumError("checksum mismatch: the datagram was corrupted")
    itemsize = _ITEMSIZE[encoding]
    if not itemsize:
        raise PacketError(f"unknown payload encoding {encoding}")
    if quantised and encoding != ENCODING_INT8:
        raise PacketError("quantisation extension present without int8 encoding")
    is_manifest = bool(flags & FLAG_MANIFEST)
    if is_manifest != (tensor_index == MANIFEST_TENSOR) or is_manifest != (encoding == ENCODING_MANIFEST):
        raise PacketError("manifest flag, tensor index 0xFFFF and manifest encoding must go together")
    fragment_index = (fidx_hi << 8) | fidx_lo
    fragment_count = (fcnt_hi << 8) | fcnt_lo
    if encoding == ENCODING_CONTROL and (fragment_index or fragment_count != 1 or tensor_index or family_id
                                         or element_start):
        raise PacketError("a control datagram is fragment 0 of 1, with tensor index, family id and element "
                          "start 0")
    if fragment_count == 0:
        raise PacketError("fragment count is zero")
    if fragment_index >= fragment_count:
        raise PacketError(f"fragment index {fragment_index} is beyond the count {fragment_count}")
    if payload_len == 0:
        raise PacketError("empty payload: every fragment carries at least one byte")
    if payload_len % itemsize:
        raise PacketError(f"payload of {payload_len} bytes is not a whole number of "
                          f"{ENCODINGS[encoding][0]} elements")
    if element_start + payload_len // itemsize > MAX_ELEMENTS:
        raise PacketError("element range runs past 2^32-1")
    if origin > MAX_NODE_ID:
        raise PacketError(f"origin {origin:#x} is a reserved address")
    scale, zero_point = 1.0, 0
    if quantised:
        scale, zero_point = _QUANT.unpack_from(buf, HEADER_SIZE)
        if not 0 < scale < math.inf:
            raise PacketError(f"int8 scale must be finite and positive, got {scale!r}")
        if not -128 <= zero_point <= 127:
            raise PacketError(f"int8 zero point {zero_point} is outside -128..127")
    if key is not None:
        if not key:
            raise ValueError("the fleet key must be a non-empty byte string")
        if not tag_size:
            raise AuthError("unsigned packet refused: this receiver requires the fleet key",
                            reason="unsigned")
        if not hmac.compare_digest(_tag(key, buf, payload_end), buf[payload_end:]):
            raise AuthError("forged packet refused: authentication tag does not match", reason="forged")
    payload = buf[header_len:payload_end]
    if not payload.readonly:
        payload = payload.toreadonly()
    return _new_packet(Packet, (flags, encoding, message_id, tensor_index, family_id, model_version,
                                origin, destination, fragment_index, fragment_count, element_start,
                                ttl, hops, payload, scale, zero_point))


def peek_route(datagram: bytes | memoryview) -> tuple[int, int, int]:
    """(destination, ttl, hops) without a full parse: what a forwarder needs per hop.

    Only magic and version are checked; the receiver's :func:`parse` checks the rest.
    """
    if type(datagram) is memoryview and datagram.format == "B" and datagram.c_contiguous and datagram.ndim == 1:
        # the simulated network's hot path: read the three fields in one unpack
        if HEADER_SIZE <= len(datagram) <= MAX_DATAGRAM:
            magic, version_flags, destination, ttl, hops = _ROUTE.unpack_from(datagram)
            if magic == MAGIC and version_flags >> 4 == VERSION:
                return destination, ttl, hops
    buf = _as_bytes_view(datagram)
    if len(buf) < HEADER_SIZE or buf[0] != MAGIC or buf[1] >> 4 != VERSION:
        raise PacketError(f"not an MFD version-{VERSION} packet")
    destination = int.from_bytes(buf[_DESTINATION_OFFSET:_DESTINATION_OFFSET + 4], "big")
    return destination, buf[_TTL_OFFSET], buf[_TTL_OFFSET + 1]


def forwarded(datagram: bytes | memoryview) -> bytes:
    """A copy of the datagram one hop further on: TTL - 1, hop count + 1 (saturating at 255).

    Checksum and tag skip these two bytes, so nothing is recomputed.
    :raises PacketError: when the TTL is already spent, or the packet was addressed to
        the sender's neighbours only (those are never forwarded).
    """
    destination, ttl, hops = peek_route(datagram)
    if ttl == 0:
        raise PacketError("TTL expired")
    if destination == NEIGHBOURS:
        raise PacketError("a packet for the sender's neighbours is never forwarded")
    out = bytearray(_as_bytes_view(datagram))
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
