"""Spare buffers: memory is written again only once nothing holds what was in it.

``packet.build`` keeps its last output buffer, and a Reassembler the block of the last model
it delivered (``packet.SpareBuffer``), so that a node encoding or receiving a model of the
same size again writes into memory the kernel has already handed over. A datagram still
held anywhere (a send queue, a caller's list), or a tensor of a received model, must never
change.
"""
from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

from mfd_core import codec, packet, reassembly


@pytest.fixture(autouse=True)
def small_spares(monkeypatch):
    """Spares from 1 MiB (64 MiB by default: past the last-level cache), so that a 2 MB model has one."""
    monkeypatch.setattr(packet, "SPARE_MIN_BYTES", 1 << 20)


def state(shift: float = 0.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"w": torch.randn(700, 700, generator=g) + shift, "b": torch.randn(700, generator=g) + shift}


def encode(model, version: int) -> list[memoryview]:
    return codec.to_datagrams(model, origin=1, destination=2, model_version=version, message_id=version, mtu=1400)


def address(datagrams) -> int:
    return np.frombuffer(datagrams[3], dtype=np.uint8).ctypes.data


def test_datagrams_still_held_are_never_written_over():
    first = encode(state(), 1)
    kept = [bytes(d) for d in first]
    second = encode(state(1.0), 2)  # the spare is first's buffer, which first still holds
    assert [bytes(d) for d in first] == kept
    assert address(second) != address(first)


def test_one_datagram_held_keeps_its_whole_buffer_from_reuse():
    first = encode(state(), 1)
    where, one_datagram, kept = address(first), first[10], bytes(first[10])
    del first
    gc.collect()
    second = encode(state(1.0), 2)
    assert address(second) != where
    assert bytes(one_datagram) == kept


def test_a_released_buffer_is_written_again_and_decodes_to_the_new_model():
    before = encode(state(), 1)
    where = address(before)
    del before
    gc.collect()
    model = state(5.0)
    after = encode(model, 2)
    assert address(after) == where  # reused: the same memory
    (received,) = reassembly.Reassembler().receive_many(after, 0.0)
    assert received.complete and all(torch.equal(received.state[k], model[k]) for k in model)


def receive(datagrams):
    (received,) = reassembly.Reassembler().receive_many(datagrams, 0.0)
    assert received.complete
    return received.state


def test_a_received_model_still_held_is_never_written_over():
    first = receive(encode(state(), 1))
    kept = {k: v.clone() for k, v in first.items()}
    second = receive(encode(state(1.0), 2))
    assert all(torch.equal(first[k], kept[k]) for k in kept)
    assert second["w"].data_ptr() != first["w"].data_ptr()
    weight = first["w"]  # one tensor held keeps the whole block
    del first
    gc.collect()
    third = receive(encode(state(2.0), 3))
    assert torch.equal(weight, kept["w"]) and third["w"].data_ptr() != weight.data_ptr()


def test_a_released_model_s_memory_takes_the_next_one():
    first = receive(encode(state(), 1))
    where = first["w"].data_ptr()
    del first
    gc.collect()
    model = state(7.0)
    second = receive(encode(model, 2))
    assert second["w"].data_ptr() == where
    assert all(torch.equal(second[k], model[k]) for k in model)


def test_a_spare_is_handed_out_only_within_its_bounds():
    spare = packet.SpareBuffer(min_bytes=1000, max_bytes=10_000)
    small = spare.take(500)  # under the bounds: never kept
    del small
    big = spare.take(5_000)
    address = big.ctypes.data
    del big
    assert spare.take(4_000).ctypes.data == address  # fits, at most twice as long, free
    assert spare.take(2_000).ctypes.data != address  # more than twice as long: not handed out
    assert spare.take(20_000).ctypes.data != address  # too long to keep
