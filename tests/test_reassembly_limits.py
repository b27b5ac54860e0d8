"""What a hostile peer can make a receiver hold and do (issue 17, items 1, 2, 4 and 7a).

Memory is checked with tracemalloc against what the reassembler charges: every byte a
peer makes it hold (parsed manifests, tables, early fragments, caches) must be charged
before it is made. Work is checked by what a call may touch, never by timing it (the
timings are benchmarks/fuzz.py's).
"""
from __future__ import annotations

import gc
import json
import random
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
import torch

from mfd_core import codec, packet, reassembly
from mfd_core.packet import Fragment, PacketError
from mfd_core.reassembly import Limits, Reassembler

MANIFEST, BOOL, FP32 = packet.ENCODING_MANIFEST, packet.ENCODING_CODE["bool"], packet.ENCODING_CODE["fp32"]
# What a receiver holds that no message is charged for: its table of recently finished
# names (1,024 of them), the replay record, its counters: a fixed few hundred kB.
RECEIVER_BYTES = 512 << 10


def entry(name: str, shape=(1,), dtype: str = "bool", encoding: str = "bool") -> dict:
    return {"dtype": dtype, "encoding": encoding, "name": name, "shape": list(shape)}


def family(tensors: list[dict]) -> int:
    return codec.layout_fingerprint((t["name"], t["shape"], t["dtype"]) for t in tensors)


def stream(tensors: list[dict], meta: dict | None = None, *, deflate: bool = True) -> bytes:
    raw = json.dumps({"format": 1, "meta": meta or {}, "scaling": {}, "tensors": tensors},
                     separators=(",", ":")).encode()
    if deflate:
        packed = zlib.compress(raw, 9)
        return struct.pack(">I", codec.MANIFEST_ZLIB | len(packed)) + packed
    return struct.pack(">I", len(raw)) + raw


def message(tensors, tensor_frags, *, meta=None, origin=1, message_id=1, slice_bytes=65_000,
            manifest_frags=None) -> list[bytes]:
    """A message with its manifest stream cut into slices, then ``tensor_frags``."""
    whole = stream(tensors, meta)
    frags = manifest_frags if manifest_frags is not None else [
        Fragment(0xFFFF, MANIFEST, at, whole[at:at + slice_bytes]) for at in range(0, len(whole), slice_bytes)]
    return [bytes(d) for d in packet.build(frags + list(tensor_frags), family_id=family(tensors), model_version=1,
                                           origin=origin, destination=2, message_id=message_id)]


class Watch:
    """Feeds a receiver while tracemalloc watches: what is held never exceeds what is
    charged (now), and no moment's peak exceeds the most ever charged (plus the receiver's
    fixed few hundred kB)."""

    def __init__(self, receiver: Reassembler) -> None:
        self.receiver = receiver
        self.most = 0
        charge = receiver._charge

        def watched(msg, nbytes):
            charge(msg, nbytes)
            self.most = max(self.most, receiver.buffered_bytes + receiver.cached_bytes)

        receiver._charge = watched

    def __enter__(self) -> "Watch":
        gc.collect()
        tracemalloc.start()
        self.base = tracemalloc.get_traced_memory()[0]
        return self

    def __exit__(self, *exc) -> None:
        tracemalloc.stop()

    def feed(self, datagrams, now: float = 0.0) -> list:
        out = []
        for d in datagrams:
            try:
                got = self.receiver.receive(d, now)
            except PacketError:
                got = None
            if got is not None:
                out.append(got)
            self.check()
        return out

    def check(self) -> None:
        receiver = self.receiver
        held, peak = (value - self.base for value in tracemalloc.get_traced_memory())
        charged = receiver.buffered_bytes + receiver.cached_bytes
        assert charged <= receiver.limits.bytes_total
        assert held <= charged + RECEIVER_BYTES, (held, charged)
        assert peak <= self.most + RECEIVER_BYTES, (peak, self.most)
        tracemalloc.reset_peak()


def test_many_tensor_manifests_are_charged_what_they_cost():
    """Issue 17, item 1: a manifest of 65,535 one-element tensors (3 datagrams) cost ~41 MiB
    and was charged 0.23 MiB; 68 such open messages took 2.8 GiB while 15.9 MiB was charged.
    Now such a manifest is refused (2,048 tensors at most), and those at the limit are
    charged what they hold: the receiver stays within its budget."""
    refusing = Reassembler()
    too_many = [entry(f"t{i}") for i in range(codec.MAX_MESSAGE_TENSORS + 1)]
    with pytest.raises(packet.LimitError, match="tensors"):
        for d in message(too_many, [Fragment(0, BOOL, 0, b"\0")])[:-1]:
            refusing.receive(d, 0.0)
    assert refusing.open_messages == 0 and refusing.buffered_bytes == 0
    at_limit = [entry(f"t{i}") for i in range(codec.MAX_MESSAGE_TENSORS)]
    messages = [message(at_limit, [Fragment(0, BOOL, 0, b"\0")], origin=origin)[:-1] for origin in range(4)]
    receiver = Reassembler(limits=Limits(bytes_total=12 << 20))
    with Watch(receiver) as watch:
        for datagrams in messages:
            watch.feed(datagrams)
        assert 0 < receiver.open_messages < 4 and receiver.stats["evicted"] > 0  # the budget, not the count, binds
        assert receiver.buffered_bytes >= receiver.open_messages * 8 * len(at_limit)


@pytest.mark.parametrize("meta", [
    {"x": [{"": {"": {"": {}}}}] * 4_000},  # nested one-key objects: ~37 bytes held per byte of JSON
    {"x": [[[]]] * 5_000},
    {"x": [1.5, "ab", None, True, 2**40] * 12_000},
], ids=["nested objects", "nested lists", "scalars"])
def test_a_manifest_is_charged_its_parsed_objects(meta):
    tensors = [entry("a")]
    messages = [message(tensors, [Fragment(0, BOOL, 0, b"\0")], meta=meta, origin=origin)[:-1] for origin in range(6)]
    receiver = Reassembler(limits=Limits(bytes_total=48 << 20))
    with Watch(receiver) as watch:
        for datagrams in messages:
            watch.feed(datagrams)
        assert receiver.open_messages >= 1


def test_a_manifest_of_too_many_containers_is_refused():
    """Each JSON array or object is a Python object the garbage collector scans until it is
    freed: a manifest may hold 16,384, counted as '[' and '{' bytes before it is parsed."""
    receiver = Reassembler()
    meta = {"x": [[]] * codec.MAX_MANIFEST_CONTAINERS}
    with pytest.raises(packet.LimitError, match="'\\[' and '\\{'"):
        for d in message([entry("a")], [Fragment(0, BOOL, 0, b"\1")], meta=meta)[:-1]:
            receiver.receive(d, 0.0)
    assert receiver.open_messages == 0 and receiver.stats["over_limit"] == 1
    with pytest.raises(ValueError, match="nested"):
        codec.to_datagrams({"a": torch.ones(1)}, origin=1, destination=2, model_version=1, message_id=1, meta=meta)


def test_early_fragments_and_manifest_slices_are_charged():
    """What a message holds before its manifest is whole: fragments copied aside, and a
    manifest sent a byte a datagram, in any order."""
    tensors = [entry(f"t{i}") for i in range(150)]
    whole = stream(tensors, deflate=False)
    one_byte = [Fragment(0xFFFF, MANIFEST, at, whole[at:at + 1]) for at in range(len(whole))]
    random.Random(1).shuffle(one_byte)
    early = [Fragment(0, BOOL, 0, b"\1" * 150)] * 3 + [Fragment(5, BOOL, 0, b"\1")] * 3000
    datagrams = message(tensors, early, manifest_frags=one_byte, origin=1)
    count = len(one_byte)
    receiver = Reassembler(limits=Limits(bytes_total=64 << 20, early_fragments=4096))
    with Watch(receiver) as watch:
        watch.feed(datagrams[count:])  # the tensor fragments first: held early
        assert len(receiver._open[(1, 1)].early) == 3003
        watch.feed(datagrams[:count - 1])  # then a byte of the manifest at a time, in any order, but one
        assert receiver.open_messages == 1 and receiver._open[(1, 1)].manifest is None


def test_two_hundred_and_fifty_six_first_datagrams_are_charged():
    tensors = [entry("w", (100,), "float32", "fp32")]
    firsts = [message(tensors, [Fragment(0, FP32, 0, bytes(400))], origin=origin)[-1:] for origin in range(256)]
    receiver = Reassembler(limits=Limits(bytes_total=64 << 20))
    with Watch(receiver) as watch:
        for datagrams in firsts:
            watch.feed(datagrams)
        assert receiver.open_messages == 256


def test_a_partial_delivery_makes_no_more_than_was_charged():
    """expire() decodes into new memory (int8 to float32, masks): charged beforehand."""
    state = {f"w{i}": torch.randn(64, 64) for i in range(20)}
    datagrams = [bytes(d) for d in codec.to_datagrams(state, origin=1, destination=2, model_version=1, message_id=1,
                                                      mtu=1400, precision="int8")]
    receiver = Reassembler(limits=Limits(bytes_total=8 << 20))
    with Watch(receiver) as watch:
        watch.feed(datagrams[::2])
        charged = receiver.buffered_bytes + receiver.cached_bytes
        [partial] = receiver.expire(1e9)
        held, peak = (value - watch.base for value in tracemalloc.get_traced_memory())
        assert peak <= charged + RECEIVER_BYTES  # while delivering: what was charged for it
        assert not partial.complete and partial.state["w0"].dtype == torch.float32
    missing = ~partial.masks["w0"]
    assert missing.any() and (partial.state["w0"][missing] == 0).all()  # what did not arrive reads 0


def test_a_receiver_keeps_nothing_of_delivered_layouts_but_its_bounded_cache():
    """Issue 17, item 2: caches keyed by layout, module-wide and shared by every receiver,
    held 1.34 GiB after 150 manifest-only messages of ~50 KB were delivered and discarded."""
    messages = [message([entry(f"m{j}.{i}", (0,)) for i in range(500)], [], origin=j % 8, message_id=j)
                for j in range(24)]
    receiver = Reassembler(limits=Limits(bytes_total=64 << 20))
    with Watch(receiver) as watch:
        for datagrams in messages:
            [got] = watch.feed(datagrams)
            assert got.complete and len(got.state) == 500
            del got
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - watch.base
        assert receiver.open_messages == 0 and receiver.buffered_bytes == 0
        assert receiver.cached_bytes <= (64 << 20) // 16 and held <= receiver.cached_bytes + RECEIVER_BYTES, held
    other = Reassembler()
    assert other.cached_bytes == 0  # one receiver's layouts are its own


# -- what one call may do ------------------------------------------------------------------


def test_a_packed_fragment_steps_over_empty_tensors_at_no_cost():
    """Issue 17, item 4: a 44-byte fragment running on across 65,533 empty tensors took
    14-23 ms (each empty tensor a step); now a packed fragment's steps are the tensors it
    puts elements in, whatever lies between."""
    tensors = [entry("a")] + [entry(f"e{i}", (0,)) for i in range(2000)] + [entry("z")]
    frags = [Fragment(0, BOOL, 0, b"\1\1") for _ in range(200)]
    datagrams = message(tensors, frags)
    receiver = Reassembler()
    receiver.receive(datagrams[0], 0.0)
    msg = receiver._open[(1, 1)]

    class Counted(list):
        reads = 0

        def __getitem__(self, index):
            Counted.reads += 1
            return super().__getitem__(index)

    msg.tensors = Counted(msg.tensors)
    for d in datagrams[1:-1]:
        receiver.receive(d, 0.0)
    assert len(msg.ranges) == 3 * 2 * 199  # two tensors reached each
    assert Counted.reads <= 4 * 199, Counted.reads  # its own (twice: the fast path's look), the two it reaches


def test_expire_delivers_a_bounded_amount_per_call():
    """Issue 17, item 4: one expire() over 2 open 65,535-tensor messages took 2.3-2.6 s. Now
    a message has at most 2,048 tensors, and one call delivers at most 2,048 tensors' worth
    (one message at least); the rest wait, due, for the next call."""
    tensors = [entry(f"t{i}") for i in range(800)]
    receiver = Reassembler()
    for origin in range(3):
        for d in message(tensors, [Fragment(0, BOOL, 0, b"\1")], origin=origin)[:-1]:
            receiver.receive(d, 0.0)
    delivered = [len(receiver.expire(100.0)) for _ in range(4)]
    assert delivered == [2, 1, 0, 0] and receiver.open_messages == 0
    assert receiver.stats["partial"] == 3


def test_quiet_names_a_bounded_number_of_missing_fragments():
    receiver = Reassembler()
    run = packet.Run(0, FP32, 0, bytes(4 * 30_000), chunk=4)
    datagrams = packet.build([run], family_id=1, model_version=1, origin=1, destination=2, message_id=1)
    receiver.receive(datagrams[5], 0.0)
    [(origin, message_id, missing)] = receiver.quiet(10.0, 1.0)
    assert (origin, message_id) == (1, 1) and len(missing) == reassembly.QUIET_MISSING
    assert missing[:6] == [0, 1, 2, 3, 4, 6]


# -- any cut of the manifest (item 7a) ---------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_any_cut_of_the_manifest_stream_into_slices_is_taken(seed):
    """Issue 17, item 7a: a cut whose first slice was under 4 bytes was refused as malformed,
    though section 4.1 allows any cut into slices of at least a byte."""
    rng = random.Random(seed)
    state = {"w": torch.randn(3, 4), "b": torch.randn(4)}
    encoded = codec.encode(state)
    whole = codec.manifest_stream(encoded.manifest, deflate=bool(seed % 2))
    cuts = sorted(rng.sample(range(1, len(whole)), rng.randint(1, 12)) + [1, 2, 3])
    bounds = [0, *sorted(set(cuts)), len(whole)]
    slices = [Fragment(0xFFFF, MANIFEST, a, whole[a:b]) for a, b in zip(bounds, bounds[1:])]
    tensors = [Fragment(i, FP32, 0, buf.tobytes()) for i, buf in enumerate(encoded.buffers)]
    datagrams = [bytes(d) for d in packet.build(slices + tensors, family_id=encoded.manifest.family_id,
                                                model_version=1, origin=1, destination=2, message_id=1)]
    rng.shuffle(datagrams)
    receiver = Reassembler()
    out = [m for d in datagrams if (m := receiver.receive(d, 0.0)) is not None]
    assert len(out) == 1 and out[0].complete
    assert all(torch.equal(out[0].state[k], v) for k, v in state.items())


def test_manifest_slices_that_overlap_or_run_past_are_refused_as_they_arrive():
    whole = stream([entry("a")], deflate=False)
    cases = [
        ([Fragment(0xFFFF, MANIFEST, 0, whole[:2]), Fragment(0xFFFF, MANIFEST, 1, whole[1:10])], "overlaps"),
        ([Fragment(0xFFFF, MANIFEST, 4, whole[4:]), Fragment(0xFFFF, MANIFEST, 0, whole[:5])], "overlaps"),
        ([Fragment(0xFFFF, MANIFEST, 4, whole[4:] + b"  "), Fragment(0xFFFF, MANIFEST, 0, whole[:4])], "past"),
        ([Fragment(0xFFFF, MANIFEST, 0, whole[:4]), Fragment(0xFFFF, MANIFEST, len(whole), b"x")], "past"),
    ]
    for frags, match in cases:
        datagrams = [bytes(d) for d in packet.build(frags + [Fragment(0, BOOL, 0, b"\1")], family_id=family([entry("a")]),
                                                    model_version=1, origin=1, destination=2, message_id=1)]
        receiver = Reassembler()
        with pytest.raises(PacketError, match=match) as err:
            for d in datagrams:
                receiver.receive(d, 0.0)
        assert err.value.reason == "contradictions" and receiver.open_messages == 0
