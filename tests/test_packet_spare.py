"""A build writes into the last large build's buffer only once no datagram of that build is left.

``packet.build`` keeps its last output buffer (SPARE_MIN_BYTES to SPARE_MAX_BYTES) so that a
node re-encoding a model of the same size writes into memory the kernel has already handed
over. A datagram still held anywhere (a send queue, a caller's list) must never change.
"""
from __future__ import annotations

import gc

import numpy as np
import torch

from mfd_core import codec, reassembly


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
