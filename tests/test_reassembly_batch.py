"""Reassembler.receive_many: a batch gives exactly what receive, one datagram at a time, gives.

The batch path checks the CRC32C of large datagrams ahead, in parallel threads, and then
places them one by one; every test here feeds the same datagrams both ways, to two fresh
receivers, and compares what came out, what was refused (where, how, and why), the stats
and what is left open.
"""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfd_core import codec, packet, reassembly
from mfd_core.packet import PacketError
from mfd_core.reassembly import Limits, Reassembler
from tests.helpers import KEY, big_model  # one 1.1 MB model (64 KiB datagrams) for both batch paths

# every test here exercises the helper threads, whatever the load
pytestmark = pytest.mark.usefixtures("idle_cpus")


def send(state, *, origin=1, message_id=1, version=1, mtu=65_535, key=None, **kw) -> list[bytes]:
    return [bytes(d) for d in codec.to_datagrams(state, origin=origin, destination=2, model_version=version,
                                                 message_id=message_id, mtu=mtu, key=key, **kw)]


def one_by_one(receiver: Reassembler, batch, now: float):
    out, errors = [], []
    for position, d in enumerate(batch):
        try:
            got = receiver.receive(d, now)
        except PacketError as exc:
            errors.append((position, exc))
            continue
        if got is not None:
            out.append(got)
    return out, errors


def assert_same_models(left: list[reassembly.ReceivedModel], right: list[reassembly.ReceivedModel]) -> None:
    assert len(left) == len(right)
    for a, b in zip(left, right):
        assert (a.origin, a.message_id, a.model_version, a.family_id, a.destination, a.fragments_received,
                a.fragment_count, a.hops, a.complete) == (
            b.origin, b.message_id, b.model_version, b.family_id, b.destination, b.fragments_received,
            b.fragment_count, b.hops, b.complete)
        assert a.manifest == b.manifest and list(a.state) == list(b.state)
        for name in a.state:
            assert a.state[name].dtype == b.state[name].dtype and torch.equal(a.state[name], b.state[name]), name
            if a.masks is not None:
                assert torch.equal(a.masks[name], b.masks[name]), name


def assert_same_errors(left, right) -> None:
    assert [(i, type(e), str(e), e.reason) for i, e in left] == [(i, type(e), str(e), e.reason) for i, e in right]


def compare(batches, *, key=None, limits=Limits(), expire_at=None):
    """Feed ``[(now, batch), ...]`` both ways; returns the batch receiver's deliveries."""
    single, many = Reassembler(key=key, limits=limits), Reassembler(key=key, limits=limits)
    delivered = []
    for now, batch in batches:
        out_single, errors_single = one_by_one(single, batch, now)
        errors_many: list = []
        out_many = many.receive_many(batch, now, errors=errors_many)
        assert_same_models(out_single, out_many)
        assert_same_errors(errors_single, errors_many)
        assert single.stats == many.stats
        assert (single.open_messages, single.buffered_bytes) == (many.open_messages, many.buffered_bytes)
        delivered += out_many
    if expire_at is not None:
        late_single, late_many = single.expire(expire_at), many.expire(expire_at)
        assert_same_models(late_single, late_many)
        assert single.stats == many.stats
        delivered += late_many
    assert many.open_messages == single.open_messages and many.buffered_bytes == single.buffered_bytes
    return delivered, many


@pytest.fixture
def parallel_used(monkeypatch):
    """Counts the datagrams whose CRC32C receive_many computed ahead (with the helper
    threads a user turns on with MFD_CRC_THREADS)."""
    monkeypatch.setattr(packet, "CRC_THREADS", 2)
    counted = []

    def spy(batch):
        crcs = list(packet.batch_checksums(batch))
        counted.append(sum(c is not None for c in crcs))
        return crcs

    monkeypatch.setattr(reassembly, "batch_checksums", spy)
    return counted


# -- the same outcome, case by case ---------------------------------------------------------


@pytest.mark.parametrize("mtu", [20_000, 65_535])
@pytest.mark.parametrize("key", [None, KEY])
def test_complete_message_in_one_batch(mtu, key, parallel_used):
    state = big_model()
    datagrams = send(state, mtu=mtu, key=key)
    (got,), receiver = compare([(0.0, datagrams)], key=key)
    assert got.complete and all(torch.equal(got.state[k], v) for k, v in state.items())
    assert receiver.stats["fragments"] == len(datagrams) and receiver.open_messages == 0
    assert parallel_used and parallel_used[0] >= 2  # the CRCs were checked ahead


def test_small_datagrams_take_the_one_by_one_path(parallel_used):
    datagrams = send(big_model(), mtu=1400)
    (got,), _ = compare([(0.0, datagrams)])
    assert got.complete and parallel_used == [0]


def test_reordered_duplicated_and_mixed_origins_across_batches(parallel_used):
    rng = random.Random(5)
    states, stream = {}, []
    for origin in (1, 2, 3):
        for version in (1, 2):
            states[(origin, version)] = big_model(origin * 10 + version)
            stream += send(states[(origin, version)], origin=origin, message_id=version, version=version,
                           mtu=rng.choice([1400, 20_000, 65_535]), precision=rng.choice(["fp32", "int8", "fp16"]))
    duplicates = rng.sample(stream, k=len(stream) // 3)
    stream += duplicates
    rng.shuffle(stream)
    cuts = sorted(rng.sample(range(1, len(stream)), k=6))
    batches = [(0.1 * i, stream[a:b]) for i, (a, b) in enumerate(zip([0, *cuts], [*cuts, len(stream)]))]
    delivered, receiver = compare(batches)
    assert sorted((m.origin, m.model_version) for m in delivered) == sorted(states)
    assert receiver.stats["duplicates"] + receiver.stats["late"] == len(duplicates)
    assert sum(parallel_used) > 0


def test_partial_messages_expire_the_same(parallel_used):
    rng = random.Random(2)
    stream = []
    for origin in (1, 2):
        datagrams = send(big_model(origin), origin=origin)
        stream += [d for d in datagrams if rng.random() > 0.3 or d[1] & packet.FLAG_MANIFEST]
    rng.shuffle(stream)
    delivered, receiver = compare([(0.0, stream[:len(stream) // 2]), (1.0, stream[len(stream) // 2:])],
                                  expire_at=100.0)
    assert len(delivered) == 2 and not any(m.complete for m in delivered)
    assert receiver.stats["partial"] == 2 and receiver.open_messages == 0


@pytest.mark.parametrize("key", [None, KEY])
def test_corrupted_truncated_and_junk_datagrams_in_a_batch(key, parallel_used):
    rng = random.Random(11)
    datagrams = send(big_model(), key=key)
    batch: list = list(datagrams)
    for i in (1, 3, 6):  # a bit flipped in the payload of large datagrams: caught by the CRCs checked ahead
        bad = bytearray(batch[i])
        bad[rng.randrange(packet.HEADER_SIZE, len(bad))] ^= 1 << rng.randrange(8)
        batch[i] = bytes(bad)
    header_flip = bytearray(datagrams[2])
    header_flip[10] ^= 0x10
    batch += [bytes(header_flip), datagrams[4][:-1], datagrams[5][:30], b"", None, 12345, "text",
              np.frombuffer(datagrams[7], dtype=np.uint8), bytearray(datagrams[7]), memoryview(datagrams[8])]
    rng.shuffle(batch)
    # last, so that it cannot open the message: signed datagrams carry less payload, so a
    # different fragment count (a contradiction), and without a key it parses; with one,
    # the unsigned datagram is refused
    batch.append(send(big_model(), key=None if key else KEY)[3])
    delivered, receiver = compare([(0.0, batch)], key=key, expire_at=100.0)
    assert receiver.stats["corrupted"] >= 4 and receiver.stats["malformed"] >= 3
    assert len(delivered) == 1 and not delivered[0].complete  # three fragments were corrupted
    assert parallel_used[0] >= 2


def test_corrupted_copy_then_intact_one_completes(parallel_used):
    datagrams = send(big_model())
    bad = bytearray(datagrams[4])
    bad[-1] ^= 0xFF
    delivered, receiver = compare([(0.0, [bytes(bad), *datagrams])])
    assert len(delivered) == 1 and delivered[0].complete and receiver.stats["corrupted"] == 1


def test_limits_and_evictions_the_same(parallel_used):
    stream = []
    for origin in (1, 2, 3):
        for version in (1, 2, 3):
            stream += send(big_model(origin + version), origin=origin, message_id=version, version=version)
    random.Random(4).shuffle(stream)
    limits = Limits(open_per_origin=2, open_total=4, bytes_per_origin=3_000_000, early_fragments=3)
    compare([(0.0, stream[:40]), (1.0, stream[40:])], limits=limits, expire_at=1e6)


def test_a_generator_and_an_empty_batch():
    datagrams = send(big_model())
    receiver = Reassembler()
    assert receiver.receive_many([], 0.0) == [] and receiver.receive_many(iter(()), 0.0) == []
    (got,) = receiver.receive_many((d for d in datagrams), 0.0)
    assert got.complete


def test_errors_are_counted_and_not_raised_without_a_list():
    datagrams = send(big_model())
    bad = bytearray(datagrams[3])
    bad[100] ^= 1
    receiver = Reassembler()
    (got,) = receiver.receive_many([bytes(bad), *datagrams[:3], *datagrams[4:], b"junk", datagrams[3]], 0.0)
    assert got.complete and receiver.stats["corrupted"] == 1 and receiver.stats["malformed"] == 1


def test_everything_checked_ahead_even_tiny_datagrams(monkeypatch):
    """With the thresholds at zero every datagram, junk included, has its CRC computed ahead."""
    monkeypatch.setattr(packet, "PARALLEL_CRC_MIN_DATAGRAM", 0)
    monkeypatch.setattr(packet, "PARALLEL_CRC_MIN_BATCH", 0)
    monkeypatch.setattr(packet, "CRC_THREADS", 3)
    rng = random.Random(8)
    stream = []
    for origin in (1, 2):
        for d in send(big_model(origin), origin=origin, mtu=256 + origin * 300, key=KEY):
            roll = rng.random()
            if roll < 0.1:
                d = bytearray(d)
                d[rng.randrange(len(d))] ^= 1 << rng.randrange(8)
            elif roll < 0.12:
                d = d[:rng.randrange(len(d))]
            stream.append(bytes(d))
    rng.shuffle(stream)
    assert all(c is not None for c in packet.batch_checksums(stream))
    monkeypatch.setattr(packet, "PARALLEL_CRC_WINDOW", 50_000)  # and in many windows
    compare([(0.0, stream)], key=KEY, expire_at=100.0)
    compare([(0.0, stream[:500]), (0.5, stream[500:])], key=KEY, expire_at=100.0)


PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
POOL = {key: send(big_model(3), origin=1, key=key) + send(big_model(4), origin=2, mtu=20_000, key=key,
                                                          precision="int8")
        for key in (None, KEY)}


@PROPERTY
@given(st.integers(0, 2**32), st.sampled_from([None, KEY]))
def test_any_stream_in_any_batches_gives_what_receive_gives(seed, key):
    rng = random.Random(seed)
    pool = POOL[key]
    stream = []
    for _ in range(rng.randint(10, 80)):
        d = bytearray(rng.choice(pool))
        roll = rng.random()
        if roll < 0.2:
            d[rng.randrange(len(d))] ^= 1 << rng.randrange(8)
        elif roll < 0.25:
            d = d[:rng.randrange(len(d))]
        stream.append(bytes(d))
    cuts = sorted(rng.sample(range(len(stream) + 1), k=3))
    bounds = [0, *cuts, len(stream)]
    limits = Limits(open_per_origin=rng.randint(1, 3), early_fragments=rng.randint(0, 6))
    compare([(0.5 * i, stream[a:b]) for i, (a, b) in enumerate(zip(bounds, bounds[1:]))], key=key,
            limits=limits, expire_at=1e6)
