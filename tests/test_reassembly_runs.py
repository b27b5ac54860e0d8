"""receive_many's runs: in-order fragments of one message taken many at a time.

A run (small datagrams: a window joined and checked as arrays; large ones: a lean loop)
must give exactly what receive, one datagram at a time, gives: the same models, the same
refusals at the same positions, the same stats and the same state left open. Every test
feeds the same datagrams both ways and checks that runs did take datagrams, so that a
path that quietly declined everything would fail here.
"""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfd_core import codec, packet
from mfd_core.packet import PacketError
from mfd_core.reassembly import RUN_LARGE_DATAGRAM, RUN_MIN_DATAGRAMS, Limits, Reassembler
from tests.helpers import big_model


def send(state, *, origin=1, message_id=1, version=1, mtu=1400, **kw) -> list[bytes]:
    return [bytes(d) for d in codec.to_datagrams(state, origin=origin, destination=2, model_version=version,
                                                 message_id=message_id, mtu=mtu, **kw)]


def resealed(datagram: bytes | bytearray) -> bytes:
    """The datagram with its checksum made right again (after a change to its header)."""
    out = bytearray(datagram)
    out[38:42] = packet.checksum_of(memoryview(bytes(out))).to_bytes(4, "big")
    return bytes(out)


@pytest.fixture
def runs_taken(monkeypatch):
    """How many datagrams receive_many's runs took, attempt by attempt."""
    taken = []
    real = Reassembler._take_run

    def spy(self, *args):
        result = real(self, *args)
        taken.append(result)
        return result

    monkeypatch.setattr(Reassembler, "_take_run", spy)
    return taken


def same_outcome(batches, *, limits=Limits(), expire_at=None):
    """Feed ``[(now, batch), ...]`` to two fresh receivers, one datagram at a time and as
    batches; everything observable must agree. Returns the batch receiver's deliveries."""
    single, many = Reassembler(limits=limits), Reassembler(limits=limits)
    delivered = []
    for now, batch in batches:
        out_single, errors_single = [], []
        for position, d in enumerate(batch):
            try:
                got = single.receive(d, now)
            except PacketError as exc:
                errors_single.append((position, exc))
                continue
            if got is not None:
                out_single.append(got)
        errors_many: list = []
        out_many = many.receive_many(batch, now, errors=errors_many)
        assert [(i, type(e), str(e), e.reason) for i, e in errors_single] == \
            [(i, type(e), str(e), e.reason) for i, e in errors_many]
        assert single.stats == many.stats
        assert (single.open_messages, single.buffered_bytes) == (many.open_messages, many.buffered_bytes)
        if expire_at is not None and now == batches[-1][0]:
            out_single += single.expire(expire_at)
            out_many += many.expire(expire_at)
            assert single.stats == many.stats
        assert len(out_single) == len(out_many)
        for a, b in zip(out_single, out_many):
            assert (a.origin, a.message_id, a.model_version, a.fragments_received, a.fragment_count, a.hops,
                    a.complete) == (b.origin, b.message_id, b.model_version, b.fragments_received,
                                    b.fragment_count, b.hops, b.complete)
            assert a.manifest == b.manifest and list(a.state) == list(b.state)
            for name in a.state:
                assert torch.equal(a.state[name], b.state[name]), name
                if a.masks is not None:
                    assert torch.equal(a.masks[name], b.masks[name]), name
        delivered += out_many
    return delivered


@pytest.mark.parametrize("mtu", [1400, 4000, 20_000, 65_535])
@pytest.mark.parametrize("form", [bytes, memoryview, bytearray])
def test_an_in_order_stream_is_taken_in_runs(mtu, form, runs_taken):
    state = big_model()
    datagrams = [form(d) for d in send(state, mtu=mtu)]
    (got,) = same_outcome([(0.0, datagrams)])
    assert got.complete and all(torch.equal(got.state[k], v) for k, v in state.items())
    # all but the manifest, the two small tensors and the bool one went by runs
    assert sum(t for t in runs_taken if t > 0) >= len(datagrams) - 6


def test_a_run_starts_again_right_after_fragments_across_tensor_ends(runs_taken):
    # An MLP of 316-wide layers: its biases are shorter than a datagram, so the fragments
    # around them run across tensor ends (two in a row), which runs leave to receive.
    layers = torch.nn.Sequential(torch.nn.Linear(316, 316), torch.nn.ReLU(), torch.nn.Linear(316, 316))
    state = {k: v.detach().clone() for k, v in layers.state_dict().items()}
    datagrams = send(state, mtu=1400)
    numels = [v.numel() for v in state.values()]
    across = [k for k, d in enumerate(datagrams[1:], 1)
              if (p := packet.parse(d)).element_start + len(p.payload) // 4 > numels[p.tensor_index]]
    assert len(across) >= 2  # what this test is about
    (got,) = same_outcome([(0.0, datagrams)])
    assert got.complete and all(torch.equal(got.state[k], v) for k, v in state.items())
    # everything but the manifest and those went by runs: no quiet spell after them
    assert sum(t for t in runs_taken if t > 0) == len(datagrams) - 1 - len(across)


def test_views_of_one_buffer_as_a_sender_makes_them(runs_taken):
    state = big_model(3)
    datagrams = codec.to_datagrams(state, origin=4, destination=2, model_version=1, message_id=9, mtu=1400)
    (got,) = Reassembler().receive_many(datagrams, 0.0)
    assert got.complete and all(torch.equal(got.state[k], v) for k, v in state.items())
    assert max(runs_taken) >= RUN_MIN_DATAGRAMS


def test_hops_and_ttl_are_not_checksummed_but_counted(runs_taken):
    datagrams = send(big_model(), mtu=1400)
    changed = []
    for i, d in enumerate(datagrams):
        d = bytearray(d)
        d[36], d[37] = 200, i % 7  # TTL, hop count: outside the checksum
        changed.append(bytes(d))
    changed[500] = changed[500][:37] + bytes([9]) + changed[500][38:]
    (got,) = same_outcome([(0.0, changed)])
    assert got.complete and got.hops == 9


@pytest.mark.parametrize("mtu", [1400, 20_000])
def test_loss_duplicates_and_interleaving(mtu, runs_taken):
    rng = random.Random(mtu)
    first, second = send(big_model(1), origin=1, mtu=mtu), send(big_model(2), origin=2, mtu=mtu)
    stream = []
    for d in first:
        roll = rng.random()
        if roll < 0.02:
            continue  # lost
        stream.append(d)
        if roll > 0.98:
            stream.append(d)  # duplicated at once
    stream[300:300] = second[:len(second) // 2]  # another origin's message cuts in
    stream += second[len(second) // 2:] + first[:40]  # and late copies
    delivered = same_outcome([(0.0, stream[:len(stream) // 3]), (1.0, stream[len(stream) // 3:])],
                             expire_at=100.0)
    assert len(delivered) == 2 and sum(t for t in runs_taken if t > 0) > len(stream) // 3


def test_a_damaged_datagram_in_a_run_stops_it_there(runs_taken):
    datagrams = send(big_model(), mtu=1400)
    batch = list(datagrams)
    bad = bytearray(batch[100])
    bad[700] ^= 0x04  # payload: the checksum catches it
    batch[100] = bytes(bad)
    batch[200] = resealed(batch[200][:24] + bytes([batch[200][24] ^ 0x7F]) + batch[200][25:])  # fragment index
    batch[300] = resealed(batch[300][:30] + (10**6).to_bytes(4, "big") + batch[300][34:])  # element start
    batch[400] = resealed(batch[400][:6] + (3).to_bytes(2, "big") + batch[400][8:])  # tensor index
    batch[500] = batch[500][:-1]  # truncated
    batch[600] = resealed(batch[600][:20] + (7).to_bytes(4, "big") + batch[600][24:])  # destination
    batch.insert(700, batch[650])  # a duplicate out of order
    same_outcome([(0.0, batch)], expire_at=100.0)  # (a placement refused drops the message, as receive does)
    assert max(runs_taken) >= 90  # the run up to the first damaged datagram


def test_a_forged_overlap_is_caught_when_the_message_completes(runs_taken):
    """Fragments that land on each other's elements are only found out at completion: the
    run path must record the ranges as receive does."""
    datagrams = send(big_model(), mtu=1400)
    batch = list(datagrams)
    start = int.from_bytes(batch[50][30:34], "big")
    batch[51] = resealed(batch[51][:30] + (start + 1).to_bytes(4, "big") + batch[51][34:])
    same_outcome([(0.0, batch)], expire_at=100.0)


def test_odd_objects_in_a_batch(runs_taken):
    datagrams = send(big_model(), mtu=1400)
    batch: list = list(datagrams)
    batch[60] = memoryview(datagrams[60] + b"\0\0").cast("I")  # a view whose len() is not its bytes
    batch[61] = np.frombuffer(datagrams[61], dtype=np.uint8)
    batch[62] = None
    batch[63] = memoryview(datagrams[63])[::2]  # not contiguous
    batch[64] = "text"
    same_outcome([(0.0, batch)], expire_at=100.0)


PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
STREAMS = {mtu: send(big_model(5), mtu=mtu, origin=1) + send(big_model(6), mtu=mtu, origin=2, message_id=2)
           for mtu in (1400, RUN_LARGE_DATAGRAM + 500)}


@PROPERTY
@given(st.integers(0, 2**32), st.sampled_from(sorted(STREAMS)))
def test_any_damage_to_in_order_streams_gives_what_receive_gives(seed, mtu):
    rng = random.Random(seed)
    pool = STREAMS[mtu]
    stream = []
    for d in pool:
        roll = rng.random()
        if roll < 0.03:
            continue
        if roll < 0.06:  # a header field changed, its checksum made right: only the checks catch it
            d = bytearray(d)
            d[rng.randrange(packet.HEADER_SIZE - 6)] ^= 1 << rng.randrange(8)
            d = resealed(d)
        elif roll < 0.08:
            d = bytearray(d)
            d[rng.randrange(len(d))] ^= 1 << rng.randrange(8)
            d = bytes(d)
        elif roll < 0.09:
            d = d[:rng.randrange(len(d))]
        elif roll < 0.10:
            stream.append(rng.choice(pool))
        stream.append(d)
    cuts = sorted(rng.sample(range(len(stream) + 1), k=2))
    bounds = [0, *cuts, len(stream)]
    same_outcome([(0.5 * i, stream[a:b]) for i, (a, b) in enumerate(zip(bounds, bounds[1:]))],
                 limits=Limits(open_per_origin=rng.randint(1, 3)), expire_at=1e6)


@pytest.mark.usefixtures("idle_cpus")
def test_checksums_computed_ahead_are_used_and_handed_back(monkeypatch, runs_taken):
    """With every datagram's CRC32C computed ahead in threads (thresholds at zero), a run
    takes those values; the ones it read past a corrupted datagram go back, in order, to
    the datagrams taken one by one."""
    monkeypatch.setattr(packet, "PARALLEL_CRC_MIN_DATAGRAM", 0)
    monkeypatch.setattr(packet, "PARALLEL_CRC_MIN_BATCH", 0)
    monkeypatch.setattr(packet, "CRC_THREADS", 3)
    computed = []
    real = packet.checksums_in_place
    monkeypatch.setattr("mfd_core.reassembly.checksums_in_place",
                        lambda *args: computed.append(1) or real(*args))
    batch = send(big_model(), mtu=1400)
    bad = bytearray(batch[300])
    bad[900] ^= 0x10
    batch[300] = bytes(bad)
    batch.insert(301, batch[299])  # a duplicate right after the corrupted one
    assert all(c is not None for c in packet.batch_checksums(batch))
    same_outcome([(0.0, batch)], expire_at=100.0)
    assert max(runs_taken) >= 250 and not computed  # taken in runs, with the values from ahead


@pytest.mark.parametrize("mtu", [1400, 20_000])
def test_a_failure_inside_a_run_is_a_refusal_and_the_batch_goes_on(monkeypatch, mtu):
    """Should a run attempt fail (a bug of ours), receive_many raises nothing but counts it
    as ``internal``, drops the message it was placing and takes the rest one by one."""
    import mfd_core.reassembly as reassembly

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(reassembly, "header_records", broken)
    monkeypatch.setattr(reassembly, "checksum_of", broken)
    monkeypatch.setattr(packet, "spare_cpus", lambda: 0)  # no checksum computed ahead
    first, second = send(big_model(1), mtu=mtu), send(big_model(2), origin=2, mtu=mtu)
    receiver, errors = Reassembler(), []
    got = receiver.receive_many(first[:1] + second + first[1:], 0.0, errors=errors)
    assert receiver.stats["internal"] == 1 and [e.reason for _, e in errors] == ["internal"]
    # the second message, which the run was placing, is dropped (its later datagrams are
    # late); the first completes, one datagram at a time
    assert [m.origin for m in got] == [1] and got[0].complete and receiver.open_messages == 0
    assert receiver.stats["late"] == len(second) - 1  # all but its manifest
