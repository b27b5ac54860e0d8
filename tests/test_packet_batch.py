"""Checksums of many large datagrams in parallel threads: the same bytes as one at a time.

``packet.build`` computes the CRC32C of datagrams of PARALLEL_CRC_MIN_DATAGRAM bytes or
more together, shared among threads; ``packet.batch_checksums`` does the same for a
receiver's batch. Neither may change a byte or a verdict.
"""
from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest
import torch
from fastcrc.crc32 import iscsi as crc32c
from test_packet_vectors import MODEL, PARAMS, VECTORS

from mfd_core import codec, packet

from tests.helpers import KEY, big_model

# every test here exercises the helper threads, whatever the load
pytestmark = pytest.mark.usefixtures("idle_cpus")


def datagrams(mtu: int, key=None, precision="fp32", state=None) -> list[bytes]:
    return [bytes(d) for d in codec.to_datagrams(state or big_model(), origin=1, destination=2, model_version=3,
                                                 message_id=9, mtu=mtu, key=key, precision=precision)]


def reference_crc(d: bytes) -> int:
    return crc32c(d[packet.HEADER_SIZE:], crc32c(d[:36]))


@pytest.fixture
def shared(monkeypatch):
    """Counts the datagrams whose checksum went through the shared (parallel) path."""
    counted = []
    real = packet._crcs

    def spy(bufs, threads):
        if threads > 1:
            counted.append(len(bufs))
        return real(bufs, threads)

    monkeypatch.setattr(packet, "_crcs", spy)
    return counted


@pytest.mark.parametrize("mtu", [20_000, 65_535])
@pytest.mark.parametrize("key", [None, KEY])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_parallel_build_is_byte_identical_to_sequential(monkeypatch, shared, mtu, key, precision):
    parallel = datagrams(mtu, key, precision)
    assert shared and shared[0] >= 2
    monkeypatch.setattr(packet, "PARALLEL_CRC_MIN_DATAGRAM", packet.MAX_MTU + 1)  # every CRC inline
    assert datagrams(mtu, key, precision) == parallel
    assert len(shared) == 1  # the second build did not take the shared path
    for d in parallel:
        packet.parse(d, key)
        assert int.from_bytes(d[38:42], "big") == reference_crc(d)


@pytest.mark.parametrize("threads", [1, 2, 3, 7])
def test_any_number_of_threads_gives_the_same_bytes(monkeypatch, threads):
    expected = datagrams(20_000)
    monkeypatch.setattr(packet, "CRC_THREADS", threads)
    monkeypatch.setattr(packet, "PARALLEL_CRC_MIN_BATCH", 0)
    assert datagrams(20_000) == expected


def test_the_page_vectors_with_every_checksum_shared(monkeypatch, shared):
    """The documented vectors (MTU 256) still come out with the thresholds at zero."""
    monkeypatch.setattr(packet, "PARALLEL_CRC_MIN_DATAGRAM", 0)
    monkeypatch.setattr(packet, "PARALLEL_CRC_MIN_BATCH", 0)
    monkeypatch.setattr(packet, "CRC_THREADS", 3)
    for name, params in PARAMS.items():
        model = {k: torch.tensor(v, dtype=torch.float32).reshape(shape) for k, (shape, v) in MODEL.items()}
        out = codec.to_datagrams(model, ttl=16, **params)
        assert [bytes(d) for d in out] == VECTORS[name]
    assert shared


def test_small_datagrams_keep_the_inline_path(shared):
    datagrams(1400)
    assert shared == []


def test_batch_checksums_match_parse_and_skip_what_is_not_worth_it():
    big = datagrams(65_535)
    crcs = list(packet.batch_checksums(big))
    for d, crc in zip(big, crcs):
        if len(d) >= packet.PARALLEL_CRC_MIN_DATAGRAM:
            assert crc == reference_crc(d)
        else:
            assert crc is None  # the manifest, the small tensors' datagrams
    assert list(packet.batch_checksums(datagrams(1400))) == [None] * len(datagrams(1400))
    large = [d for d in big if len(d) >= packet.PARALLEL_CRC_MIN_DATAGRAM]
    assert list(packet.batch_checksums(large[:1])) == [None]  # a lone datagram: nothing to share
    assert list(packet.batch_checksums([])) == []
    # views of other formats, non-contiguous views, junk: left to parse
    odd = [np.frombuffer(large[0][:-1], dtype=np.uint8)[::2], np.frombuffer(large[1][2:], dtype=np.float32),
           None, 3, "x" * 20_000, bytes(packet.MAX_DATAGRAM + 1)]
    crcs = list(packet.batch_checksums([*odd, *large]))
    assert crcs[:len(odd)] == [None] * len(odd)
    assert crcs[len(odd):] == [reference_crc(d) for d in large]
    # uint8 arrays, bytearrays and memoryviews are byte strings like any other
    mixed = [np.frombuffer(large[0], dtype=np.uint8), bytearray(large[1]), memoryview(large[2]), *large[3:]]
    assert list(packet.batch_checksums(mixed)) == [reference_crc(d) for d in large]


def test_a_precomputed_checksum_decides_like_the_computed_one():
    d = datagrams(65_535)[3]
    assert packet.parse(d, crc=reference_crc(d)) == packet.parse(d)
    with pytest.raises(packet.ChecksumError):
        packet.parse(d, crc=reference_crc(d) ^ 1)
    with pytest.raises(packet.ChecksumError):
        packet._parse_checked(d, None, reference_crc(d) ^ 1)
    with pytest.raises(packet.PacketError, match="length mismatch"):  # the order of checks is kept
        packet.parse(d[:-1], crc=reference_crc(d))


def test_busy_cpus_keep_the_caller_alone(monkeypatch, shared):
    """No helper runs; build computes the CRCs as before and a receiver leaves them to parse."""
    large = [d for d in datagrams(65_535) if len(d) >= packet.PARALLEL_CRC_MIN_DATAGRAM]
    expected = datagrams(65_535)
    shared.clear()
    monkeypatch.setattr(packet, "CRC_THREADS", 4)
    monkeypatch.setattr(packet, "spare_cpus", lambda: 0)
    monkeypatch.setattr(packet, "_pool", lambda: pytest.fail("no helper thread on busy CPUs"))
    assert list(packet.batch_checksums(large)) == [None] * len(large)
    assert datagrams(65_535) == expected and shared == []


def test_a_batch_is_checked_window_by_window_as_it_is_read(monkeypatch, shared):
    large = [d for d in datagrams(65_535) if len(d) >= packet.PARALLEL_CRC_MIN_DATAGRAM]
    batch = [*large, datagrams(1400)[5], *large, *large]  # 51 large datagrams, a small one
    shared.clear()
    monkeypatch.setattr(packet, "PARALLEL_CRC_WINDOW", 6 * 65_535)
    monkeypatch.setattr(packet, "PARALLEL_CRC_MIN_BATCH", 0)
    lazily = packet.batch_checksums(batch)
    assert shared == []  # nothing computed before it is asked for
    first = [next(lazily) for _ in range(3)]
    assert first == [reference_crc(d) for d in batch[:3]] and len(shared) == 1 and shared[0] <= 7
    rest = list(lazily)
    assert len(shared) > 5 and sum(shared) == len(batch) - 1
    assert [*first, *rest] == [None if len(d) < packet.PARALLEL_CRC_MIN_DATAGRAM else reference_crc(d)
                               for d in batch]


def test_spare_cpus_reads_the_load_average(monkeypatch):
    monkeypatch.undo()  # the real one
    monkeypatch.setattr(packet, "_CPUS", 2)
    for load, spare in ((0.0, 2), (1.05, 1), (1.7, 0), (4.4, 0)):
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        assert packet.spare_cpus() == spare


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_its_own_threads(monkeypatch):
    monkeypatch.setattr(packet, "CRC_THREADS", 2)
    monkeypatch.setattr(packet, "PARALLEL_CRC_MIN_BATCH", 0)
    large = [d for d in datagrams(65_535) if len(d) >= packet.PARALLEL_CRC_MIN_DATAGRAM]
    expected = [reference_crc(d) for d in large]
    assert list(packet.batch_checksums(large)) == expected
    parents = packet._crc_pool  # exists now; its threads will not exist in the child
    assert parents is not None
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        signal.alarm(20)  # a child stuck on the parent's dead threads dies instead of hanging
        ok = False
        try:
            ok = (packet._crc_pool is None and list(packet.batch_checksums(large)) == expected
                  and packet._crc_pool is not parents
                  and any(t.name.startswith("mfd-crc") for t in threading.enumerate()))
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
