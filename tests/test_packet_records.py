"""The packet layer's batch helpers: headers as numpy records, checksums a window at a time.

They are what receive_many's runs read instead of parse(): each must agree with parse
on every field and every checksum, for datagrams of one size back to back and for
datagrams of any sizes.
"""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from mfd_core import codec, packet


def datagrams(mtu: int, *, precision: str = "fp32", seed: int = 0) -> list[bytes]:
    g = torch.Generator().manual_seed(seed)
    state = {"w": torch.randn(300, 70, generator=g), "b": torch.randn(70, generator=g),
             "steps": torch.tensor(seed)}
    return [bytes(d) for d in codec.to_datagrams(state, origin=7, destination=3, model_version=2, message_id=9,
                                                 mtu=mtu, precision=precision, ttl=5)]


def fields(p: packet.Packet) -> tuple:
    return (p.message_id, p.tensor_index, p.family_id, p.model_version, p.origin, p.destination,
            p.fragment_index, p.fragment_count, p.element_start, len(p.payload), p.ttl, p.hops)


def record_fields(r) -> tuple:
    return (int(r["message_id"]), int(r["tensor_index"]), int(r["family_id"]), int(r["model_version"]),
            int(r["origin"]), int(r["destination"]), (int(r["fragment_index_hi"]) << 8) | int(r["fragment_index_lo"]),
            (int(r["fragment_count_hi"]) << 8) | int(r["fragment_count_lo"]), int(r["element_start"]),
            int(r["payload_len"]), int(r["ttl"]), int(r["hops"]))


def joined(batch: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sizes = np.array([len(d) for d in batch], dtype=np.int64)
    ends = np.cumsum(sizes)
    return np.frombuffer(bytearray(b"".join(batch)), dtype=np.uint8), ends - sizes, ends


@pytest.mark.parametrize("mtu", [300, 1400, 65_535])
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_records_and_checksums_agree_with_parse(mtu, precision):
    batch = datagrams(mtu, precision=precision)
    rng = random.Random(mtu)
    rng.shuffle(batch)
    buf, starts, ends = joined(batch)
    records = packet.header_records(buf, starts)
    for d, r in zip(batch, records):
        p = packet.parse(d)
        assert record_fields(r) == fields(p)
        assert int(r["lead"]) == int.from_bytes(d[:4], "big")
        assert int(r["checksum"]) == packet.checksum_of(memoryview(d)) == int.from_bytes(d[38:42], "big")
    assert packet.checksums_in_place(buf, starts, ends).tolist() == [int(r["checksum"]) for r in records]


def test_one_size_back_to_back_reads_through_a_view():
    every = datagrams(1400)
    size = max(map(len, every))  # the full ones: 339 float32 elements, 1,398 bytes
    batch = [d for d in every if len(d) == size]
    assert len(batch) > 10
    buf, starts, ends = joined(batch)
    gathered = packet.header_records(buf, starts)
    strided = packet.header_records(buf, starts, size)
    assert gathered.tobytes() == strided.tobytes()
    expected = [int(r["checksum"]) for r in gathered]
    assert packet.checksums_in_place(buf, starts, ends, size).tolist() == expected
    # the helper moves each header's checksummed prefix next to its payload: bytes 6..41 change
    assert bytes(buf[6:42]) == batch[0][:36] and bytes(buf[42:size]) == batch[0][42:]


@pytest.mark.parametrize("stretches_max", [packet.STRETCHES_MAX, 0])
def test_a_window_of_stretches_reads_what_a_gather_reads(monkeypatch, stretches_max):
    # a run's window: full fragments back to back, a tensor's short last one between them
    every = datagrams(1400) + datagrams(1400, seed=1)[1:]
    sizes = {len(d) for d in every}
    assert len(sizes) > 2
    buf, starts, ends = joined(every)
    expected = [int.from_bytes(d[38:42], "big") for d in every]
    monkeypatch.setattr(packet, "STRETCHES_MAX", stretches_max)  # 0: every stretch gathered
    records = packet.header_records(buf, starts)
    assert [record_fields(r) for r in records] == [fields(packet.parse(d)) for d in every]
    assert packet.checksums_in_place(buf, starts, ends).tolist() == expected


def test_a_changed_byte_changes_the_checksum_computed():
    batch = datagrams(1400)[:8]
    damaged = [bytearray(d) for d in batch]
    damaged[3][500] ^= 1
    damaged[5][10] ^= 0x40  # in the header's checksummed prefix
    damaged[6][36] ^= 0xFF  # the TTL: not checksummed
    buf, starts, ends = joined([bytes(d) for d in damaged])
    got = packet.checksums_in_place(buf, starts, ends).tolist()
    want = [int.from_bytes(d[38:42], "big") for d in batch]
    assert [a == b for a, b in zip(got, want)] == [True, True, True, False, True, False, True, True]


def test_lead_words():
    for d in datagrams(1400, precision="int8"):
        p = packet.parse(d)
        assert int.from_bytes(d[:4], "big") == packet.lead_word(p.flags, p.encoding,
                                                                 quantised=bool(p.flags & packet.FLAG_QUANT))
