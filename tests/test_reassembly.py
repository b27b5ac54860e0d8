"""Datagrams back into models: loss, reordering, duplicates, lies, limits and keys."""
from __future__ import annotations

import hashlib
import hmac
import json
import random
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
import torch
from fastcrc.crc32 import iscsi as crc32c
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfd_core import codec, packet, reassembly
from mfd_core.packet import AuthError, Fragment, LimitError, PacketError
from mfd_core.reassembly import Limits, Reassembler, merge_partial

KEY = b"fleet-key"
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FP32, INT8, UINT8, BOOL, MANIFEST = 0, 3, 8, 9, 10


def model(seed: int = 0, width: int = 40) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"layer.weight": torch.randn(width, 30, generator=g), "layer.bias": torch.randn(width, generator=g),
            "steps": torch.tensor(seed), "flags": torch.rand(7, generator=g) > 0.5}


def send(state, *, origin=1, message_id=1, version=1, mtu=256, key=None, **kw) -> list[bytes]:
    return [bytes(d) for d in codec.to_datagrams(state, origin=origin, destination=2, model_version=version,
                                                 message_id=message_id, mtu=mtu, key=key, **kw)]


def feed(receiver: Reassembler, datagrams, now: float = 0.0) -> list[reassembly.ReceivedModel]:
    return [m for d in datagrams if (m := receiver.receive(d, now)) is not None]


def assert_same(state: dict, other: dict) -> None:
    assert list(state) == list(other)
    for name in state:
        assert torch.equal(state[name], other[name]), name


def check_accounting(receiver: Reassembler) -> None:
    assert receiver.buffered_bytes == sum(m.nbytes for m in receiver._open.values()) >= 0
    assert receiver.buffered_bytes == sum(receiver._bytes_by_origin.values())


def is_manifest(d: bytes) -> bool:
    return bool(d[1] & packet.FLAG_MANIFEST)


# -- the normal cases -------------------------------------------------------------------


def test_in_order_delivery_is_complete_and_exact():
    state = model()
    receiver = Reassembler()
    datagrams = send(state)
    out = feed(receiver, datagrams)
    assert len(out) == 1
    got = out[0]
    assert got.complete and got.masks is None and got.received_fraction == 1.0
    assert (got.origin, got.message_id, got.model_version, got.destination) == (1, 1, 1, 2)
    assert got.family_id == codec.state_fingerprint(state) and got.fragment_count == len(datagrams)
    assert_same(state, got.state)
    assert receiver.stats["complete"] == 1 and receiver.stats["fragments"] == len(datagrams)
    assert receiver.open_messages == 0 and receiver.buffered_bytes == 0


@PROPERTY
@given(st.integers(0, 2**32), st.sampled_from([256, 300, 1400]), st.sampled_from([None, KEY]),
       st.sampled_from(["fp32", "int8"]))
def test_reorder_and_duplicates_give_the_exact_model(seed, mtu, key, precision):
    rng = random.Random(seed)
    state = model(seed % 7)
    datagrams = send(state, mtu=mtu, key=key, precision=precision)
    stream = datagrams + rng.sample(datagrams, k=rng.randint(0, len(datagrams)))
    rng.shuffle(stream)
    receiver = Reassembler(key=key)
    out = feed(receiver, stream)
    assert len(out) == 1 and out[0].complete
    reference = feed(Reassembler(key=key), datagrams)[0]
    assert_same(reference.state, out[0].state)  # the same model whatever the order
    if precision == "fp32":
        assert_same(state, out[0].state)
    assert receiver.stats["duplicates"] + receiver.stats["late"] == len(stream) - len(datagrams)
    check_accounting(receiver)


def test_interleaved_messages_from_many_origins():
    rng = random.Random(3)
    states, stream = {}, []
    for origin in range(1, 41):
        for version in (1, 2):
            states[(origin, version)] = model(origin * 10 + version, width=5 + origin % 4)
            stream += send(states[(origin, version)], origin=origin, message_id=version, version=version,
                           mtu=rng.choice([256, 512]))
    rng.shuffle(stream)
    receiver = Reassembler()
    out = feed(receiver, stream)
    assert len(out) == len(states)
    for got in out:
        assert_same(states[(got.origin, got.model_version)], got.state)
    assert receiver.open_messages == 0 and receiver.buffered_bytes == 0


def test_forwarded_datagrams_reassemble_and_report_hops():
    datagrams = send(model(), key=KEY)
    travelled = [packet.forwarded(packet.forwarded(d)) if i % 2 else packet.forwarded(d)
                 for i, d in enumerate(datagrams)]
    [got] = feed(Reassembler(key=KEY), travelled)
    assert got.complete and got.hops == 2


# -- loss: partial delivery and merging ---------------------------------------------------


def expected_masks(state, kept) -> dict[str, np.ndarray]:
    names = list(state)
    masks = {name: np.zeros(t.numel(), dtype=bool) for name, t in state.items()}
    for d in kept:
        p = packet.parse(d)
        if not p.is_manifest:
            masks[names[p.tensor_index]][p.element_start:p.element_start + p.element_count] = True
    return masks


@pytest.mark.parametrize("seed", range(4))
def test_thirty_percent_loss_arrives_partial_and_merges_only_what_arrived(seed):
    rng = random.Random(seed)
    state = model(seed, width=60)
    datagrams = send(state, mtu=300)
    tensor_datagrams = [d for d in datagrams if not is_manifest(d)]
    lost = set(map(bytes, rng.sample(tensor_datagrams, k=round(0.3 * len(datagrams)))))
    kept = [d for d in datagrams if d not in lost]
    rng.shuffle(kept)
    receiver = Reassembler(limits=Limits(timeout_s=5.0))
    assert feed(receiver, kept, now=100.0) == []
    assert receiver.expire(104.9) == [] and receiver.open_messages == 1
    [got] = receiver.expire(105.0)
    assert not got.complete and receiver.stats["partial"] == 1 and receiver.open_messages == 0
    assert got.fragments_received == len(kept) and got.received_fraction == pytest.approx(len(kept) / len(datagrams))
    want = expected_masks(state, kept)
    local = {name: torch.full_like(t, 7) if t.dtype != torch.bool else torch.ones_like(t) for name, t in state.items()}
    merged = merge_partial(local, got)
    for name, original in state.items():
        mask = got.masks[name]
        assert mask.dtype == torch.bool and mask.shape == original.shape
        assert np.array_equal(mask.flatten().numpy(), want[name])
        assert torch.equal(got.state[name][mask], original[mask])
        assert torch.equal(merged[name][mask], original[mask])  # what arrived replaces...
        assert torch.equal(merged[name][~mask], local[name][~mask])  # ...and nothing else changes
        assert merged[name] is not local[name]
    assert sum(int(m.sum()) for m in got.masks.values()) < sum(t.numel() for t in state.values())
    assert feed(receiver, list(lost)) == [] and receiver.stats["late"] == len(lost)  # too late now


def test_merge_partial_with_complete_and_mismatched_models():
    state = model()
    [got] = feed(Reassembler(), send(state))
    local = {"layer.weight": torch.zeros(40, 30, dtype=torch.float64), "layer.bias": torch.zeros(3),
             "other": torch.ones(2)}
    merged = merge_partial(local, got)
    assert merged["layer.weight"].dtype == torch.float64
    assert torch.equal(merged["layer.weight"], state["layer.weight"].double())
    assert torch.equal(merged["layer.bias"], local["layer.bias"]) and torch.equal(merged["other"], local["other"])


def test_lost_manifest_is_dropped_unless_the_layout_is_known():
    state = model()
    datagrams = [d for d in send(state) if not is_manifest(d)]
    receiver = Reassembler()
    assert feed(receiver, datagrams) == [] and receiver.expire(1e9) == []
    assert receiver.stats["lost_manifest"] == 1 and receiver.buffered_bytes == 0
    layout = codec.encode(model(seed=99)).manifest  # same family, other values
    knowing = Reassembler(known_layouts={layout.family_id: layout})
    assert feed(knowing, datagrams[:-1]) == []
    [got] = knowing.expire(1e9)
    assert not got.complete
    for name, original in state.items():
        assert torch.equal(got.state[name][got.masks[name]], original[got.masks[name]])
    assert not got.masks["flags"].all() or not got.masks["layer.weight"].all()


def test_a_lost_manifest_is_not_placed_by_a_layout_whose_names_it_imitates():
    """Issue 17, item 6: a tensor named 'w:2,3:float32\\nb' had the family id of {w, b}, so
    a receiver that knew {w, b} placed the message, manifest lost, as w = [7, 7, 7, 0, 0, 0]."""
    known = codec.encode({"w": torch.zeros(2, 3), "b": torch.zeros(3)}).manifest
    receiver = Reassembler(known_layouts={known.family_id: known})
    datagrams = send({"w:2,3:float32\nb": torch.full((3,), 7.0)})
    assert feed(receiver, [d for d in datagrams if not is_manifest(d)]) == []
    assert receiver.expire(1e9) == [] and receiver.stats["lost_manifest"] == 1


# -- one error type, and a batch is never lost ----------------------------------------------

SURROGATE = {"name": "\ud800", "shape": [1], "dtype": "float32", "encoding": "fp32"}


def test_a_name_with_a_lone_surrogate_is_a_packet_error_and_the_batch_goes_on():
    """Issue 17, item 3: '\\ud800' in a name raised UnicodeEncodeError from receive() when the
    family id was computed; receive_many lost the rest of its batch and the message stayed open."""
    raw = b'{"format":1,"meta":{},"scaling":{},"tensors":[{"dtype":"float32","encoding":"fp32","name":"\\ud800",' \
          b'"shape":[1]}]}'
    assert json.loads(raw)["tensors"][0]["name"] == "\ud800"
    [bad] = craft([SURROGATE], [], fam=0, manifest_frags=stream_fragments(raw, chunk=1000))
    receiver = Reassembler()
    with pytest.raises(PacketError, match="surrogate") as err:
        receiver.receive(bad, 0.0)
    assert err.value.reason == "malformed" and receiver.open_messages == 0
    [again] = craft([SURROGATE], [], fam=0, manifest_frags=stream_fragments(raw, chunk=1000), message_id=2)
    errors = []
    out = receiver.receive_many([again] + send(model(), origin=5), 0.0, errors=errors)
    assert len(out) == 1 and out[0].origin == 5 and [p for p, _ in errors] == [0]
    with pytest.raises(ValueError, match="UTF-8"):
        codec.encode({"\udfff": torch.ones(1)})


def test_any_other_exception_is_refused_as_internal_and_costs_nothing_else(monkeypatch):
    """A bug of ours (here made on purpose) is a refusal like any other: counted, the message
    it hit dropped, the batch taken on, expire() delivering the other messages."""
    receiver = Reassembler()
    feed(receiver, send(model(1), origin=1, message_id=1)[:2])
    feed(receiver, send(model(2), origin=2, message_id=1)[:2])

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(Reassembler, "_open_buffers", broken)
    errors = []
    out = receiver.receive_many(send(model(3), origin=3) + [control(b"still here", origin=4)], 0.0, errors=errors)
    assert [type(m).__name__ for m in out] == ["ReceivedControl"]
    assert errors and all(e.reason == "internal" for _, e in errors) and receiver.stats["internal"] == len(errors)
    assert (3, 1) not in receiver._open
    check_accounting(receiver)
    monkeypatch.setattr(Reassembler, "_finish", broken)
    assert receiver.expire(1e9) == [] and receiver.open_messages == 0
    assert receiver.stats["internal"] == len(errors) + 2


# -- lies: manifests and fragments that contradict each other ------------------------------


def stream_fragments(raw: bytes, *, chunk: int = 200, prefix_length: int | None = None) -> list[Fragment]:
    stream = struct.pack(">I", len(raw) if prefix_length is None else prefix_length) + raw
    return [Fragment(0xFFFF, MANIFEST, off, stream[off:off + chunk]) for off in range(0, len(stream), chunk)]


def manifest_raw(tensors: list[dict]) -> bytes:
    return json.dumps({"format": 1, "tensors": tensors, "scaling": {}, "meta": {}}).encode()


def family(tensors: list[dict]) -> int:
    return codec.layout_fingerprint((t["name"], t["shape"], t["dtype"]) for t in tensors)


def craft(tensors, tensor_frags, *, fam=None, manifest_frags=None, origin=1, message_id=1, version=1,
          key=None) -> list[bytes]:
    """A message whose manifest and fragments we choose freely (each datagram well formed)."""
    frags = (manifest_frags if manifest_frags is not None else stream_fragments(manifest_raw(tensors))) + tensor_frags
    return [bytes(d) for d in packet.build(frags, family_id=family(tensors) if fam is None else fam,
                                           model_version=version, origin=origin, destination=2,
                                           message_id=message_id, key=key)]


W = {"name": "w", "shape": [2, 3], "dtype": "float32", "encoding": "fp32"}
Q = {"name": "q", "shape": [4], "dtype": "float32", "encoding": "int8", "scale": 0.5, "zero_point": 3}


def f32(start, *values):
    return Fragment(0, FP32, start, np.array(values, "<f4").tobytes())


def refused(receiver, datagrams, match, reason="contradictions"):
    """Feed until one is refused; check the error, its reason and that it was counted."""
    before = receiver.stats[reason]
    with pytest.raises(PacketError, match=match) as err:
        feed(receiver, datagrams)
    assert err.value.reason == reason and receiver.stats[reason] == before + 1
    check_accounting(receiver)
    return err.value


def test_crafting_helper_makes_a_valid_message():
    [got] = feed(Reassembler(), craft([W, Q], [f32(0, 1, 2, 3), f32(3, 4, 5, 6),
                                               Fragment(1, INT8, 0, b"\x03\x05\x01\x04", 0.5, 3)]))
    assert got.state["w"].tolist() == [[1, 2, 3], [4, 5, 6]] and got.state["q"].tolist() == [0, 1, -1, 0.5]


@pytest.mark.parametrize("tensors, frags, match", [
    ([W], [f32(0, 1, 2, 3), f32(4, 4, 5, 6)], "run past"),  # element range beyond numel
    ([W], [f32(0, 1, 2, 3, 4, 5, 6), Fragment(1, FP32, 0, bytes(4))], "beyond the manifest"),
    ([W], [Fragment(0, 6, 0, bytes(24))], "encoding"),  # int32 bytes for an fp32 tensor
    ([W, Q], [f32(0, 1, 2, 3, 4, 5, 6), Fragment(1, INT8, 0, b"\0" * 4, 0.25, 3)], "quantisation"),
    ([W, Q], [f32(0, 1, 2, 3, 4, 5, 6), Fragment(1, INT8, 0, b"\0" * 4, 0.5, 2)], "quantisation"),
    ([W], [f32(0, 1, 2, 3), f32(2, 4, 5, 6)], "exactly once"),  # overlap
    ([W], [f32(0, 1, 2), f32(3, 4, 5, 6)], "exactly once"),  # gap
    ([W], [f32(0, 1, 2, 3), f32(0, 1, 2, 3)], "exactly once"),  # the same range twice, no second half
    ([{**W, "shape": [2, 4]}], [f32(0, 1, 2, 3), f32(3, 4, 5, 6)], "exactly once"),  # shape says more
])
def test_fragments_that_contradict_the_manifest(tensors, frags, match):
    receiver = Reassembler()
    datagrams = craft(tensors, frags)
    refused(receiver, datagrams, match)
    assert receiver.open_messages == 0 and receiver.buffered_bytes == 0
    assert feed(receiver, datagrams) == [] and receiver.stats["late"] == len(datagrams)  # dropped for good


@pytest.mark.parametrize("key", [None, KEY])
def test_one_datagram_control_messages_take_a_short_path_to_the_same_results(monkeypatch, key):
    """Hellos and pulls (a manifest, no tensors, one datagram) skip opening a message; what
    comes out and what is counted must be what the general path gives."""
    def control(origin, message_id, version, meta):
        return send({}, origin=origin, message_id=message_id, version=version, key=key, meta=meta)

    stream = (control(1, 1, 5, {"kind": "hello", "score": 0.5}) + control(1, 1, 5, {"kind": "hello"})  # duplicate
              + control(2, 7, 3, {"kind": "pull"}) + control(1, 2, 4, {"kind": "hello"})  # older version
              + send({"w": torch.zeros(0)}, origin=3, key=key, meta={"kind": "empty tensor"})
              + control(1, 3, 6, {"kind": "x" * 2000})  # a manifest over two datagrams
              + [d[:-1] for d in control(4, 1, 1, {})])  # truncated

    def run():
        receiver = Reassembler(key=key)
        out = []
        for d in stream:
            try:
                m = receiver.receive(d, 0.0)
            except PacketError as exc:
                out.append(exc.reason)
                continue
            if m is not None:
                out.append((m.origin, m.message_id, m.model_version, dict(m.manifest.meta), list(m.state),
                            m.complete, m.hops))
        check_accounting(receiver)
        return out, dict(receiver.stats), receiver.open_messages

    taken = []
    whole = Reassembler._whole_control_message
    monkeypatch.setattr(Reassembler, "_whole_control_message",
                        lambda self, pkt: taken.append(whole(self, pkt)) or taken[-1])
    short = run()
    assert sum(m is not None for m in taken) == (4 if key is None else 3)  # all but the refused and the long
    monkeypatch.setattr(Reassembler, "_whole_control_message", lambda self, pkt: None)
    assert short == run()
    assert [m[3]["kind"] for m in short[0] if isinstance(m, tuple)][:3] == ["hello", "pull", "hello" if not key else
                                                                            "empty tensor"]


def control(payload=b"hello", *, origin=1, message_id=1, version=1, key=None, destination=packet.NEIGHBOURS,
            ttl=0) -> bytes:
    return packet.build_control(payload, origin=origin, destination=destination, message_id=message_id,
                                model_version=version, ttl=ttl, key=key)


@pytest.mark.parametrize("key", [None, KEY])
def test_a_control_datagram_comes_out_as_it_arrives_and_holds_nothing(key):
    receiver = Reassembler(key=key)
    got = receiver.receive(control(b"\x00hello", origin=9, message_id=77, version=3, key=key), 0.0)
    assert got == reassembly.ReceivedControl(origin=9, destination=packet.NEIGHBOURS, message_id=77, model_version=3,
                                             payload=b"\x00hello", hops=0)
    assert type(got.payload) is bytes
    with pytest.raises(AttributeError):
        got.origin = 1  # frozen
    assert receiver.open_messages == 0 and receiver.buffered_bytes == 0
    assert receiver.stats == {"control": 1}
    assert receiver.receive(control(b"\x00hello", origin=9, message_id=77, version=3, key=key), 1.0) is None
    assert receiver.stats["late"] == 1  # a copy of what was delivered is not delivered again
    hopped = packet.forwarded(packet.forwarded(control(b"x", origin=9, message_id=78, version=3, key=key,
                                                       destination=packet.BROADCAST, ttl=5)))
    assert receiver.receive(hopped, 2.0).hops == 2


def test_control_datagrams_and_models_in_one_batch():
    receiver = Reassembler()
    stream = [control(b"a", origin=2, message_id=1)] + send(model(), message_id=5) + [b"junk",
                                                                                     control(b"b", origin=2, message_id=2)]
    errors = []
    out = receiver.receive_many(stream, 0.0, errors=errors)
    assert [type(m).__name__ for m in out] == ["ReceivedControl", "ReceivedModel", "ReceivedControl"]
    assert [m.payload for m in out if isinstance(m, reassembly.ReceivedControl)] == [b"a", b"b"]
    assert [position for position, _ in errors] == [len(stream) - 2]


def test_control_datagrams_are_checked_like_any_with_a_key():
    receiver = Reassembler(key=KEY)
    refused(receiver, [control()], "unsigned", "unsigned")
    refused(receiver, [control(key=b"another key")], "forged", "forged")
    forged = bytearray(control(b"pull", key=KEY))
    forged[43] ^= 1
    refused(receiver, [reseal(forged)], "forged", "forged")
    assert receiver.receive(control(b"new", version=5, message_id=2, key=KEY), 0.0).model_version == 5
    refused(receiver, [control(b"old", version=4, message_id=3, key=KEY)], "replayed", "replayed")
    assert receiver.stats["control"] == 1


def test_a_control_datagram_naming_an_open_message():
    receiver = Reassembler()
    datagrams = send(model(), message_id=4, version=2)
    feed(receiver, datagrams[:2])
    refused(receiver, [control(message_id=4, version=2)], "names an open message")
    assert receiver.open_messages == 1  # the open message is not harmed
    assert receiver.receive(control(b"newer", message_id=4, version=3), 0.0).payload == b"newer"
    assert receiver.open_messages == 0 and receiver.stats["superseded"] == 1


def test_receive_packet_takes_control_datagrams_too():
    receiver = Reassembler()
    assert receiver.receive_packet(packet.parse(control(b"p")), 0.0).payload == b"p"


B = {"name": "b", "shape": [3], "dtype": "float32", "encoding": "fp32"}
EMPTY = {"name": "e", "shape": [0], "dtype": "float32", "encoding": "fp32"}
COUNTER = {"name": "n", "shape": [], "dtype": "int64", "encoding": "int64"}


def test_a_fragment_runs_on_into_the_next_tensors():
    """A packed fragment (a tiny model in one datagram) fills its tensor, then the next
    ones that have elements, in manifest order; before or after the manifest."""
    for frags in ([f32(0, *range(9))], [f32(0, 0, 1, 2, 3), f32(4, 4, 5, 6, 7, 8)]):
        datagrams = craft([W, EMPTY, B], frags)
        for order in (datagrams, datagrams[::-1]):
            [got] = feed(Reassembler(), order)
            assert got.complete and got.state["w"].tolist() == [[0, 1, 2], [3, 4, 5]]
            assert got.state["b"].tolist() == [6, 7, 8] and got.state["e"].numel() == 0


def test_a_lost_packed_fragment_leaves_every_tensor_it_carried_masked():
    datagrams = craft([W, B], [f32(0, 0, 1, 2, 3), f32(4, 4, 5, 6, 7, 8)])
    receiver = Reassembler(limits=Limits(timeout_s=1.0))
    assert feed(receiver, datagrams[:2]) == []  # the manifest and w[0..3]; w[4..5] and b are lost
    [got] = receiver.expire(5.0)
    assert got.masks["w"].flatten().tolist() == [True] * 4 + [False] * 2
    assert got.masks["b"].tolist() == [False] * 3


@pytest.mark.parametrize("tensors, frags, match", [
    ([W, COUNTER], [f32(0, *range(7))], "another encoding"),  # into an int64 tensor
    ([W, Q], [f32(0, *range(7))], "another encoding"),  # into an int8 tensor
    ([Q, W], [Fragment(0, INT8, 0, bytes(5), 0.5, 3)], "run past"),  # int8 never runs on: per-tensor scale
    ([W, B], [f32(0, *range(6)), f32(6, 1, 2, 3)], "run past"),  # starts past its own tensor
    ([W, B], [f32(0, *range(10))], "past the last tensor"),
    ([W, B], [f32(0, *range(9)), Fragment(1, FP32, 0, bytes(12))], "exactly once"),  # b twice
])
def test_packed_fragments_that_contradict_the_manifest(tensors, frags, match):
    receiver = Reassembler()
    refused(receiver, craft(tensors, frags), match)
    assert receiver.open_messages == 0 and receiver.buffered_bytes == 0


def test_fragments_before_the_manifest_are_checked_when_it_arrives():
    datagrams = craft([W], [f32(0, 1, 2, 3), f32(4, 4, 5, 6)])
    receiver = Reassembler()
    assert feed(receiver, datagrams[1:]) == []  # held: no manifest yet
    refused(receiver, datagrams[:1], "run past")


def test_manifest_that_contradicts_the_header_family():
    refused(Reassembler(), craft([W], [f32(0, 1, 2, 3, 4, 5, 6)], fam=family([W]) ^ 1), "family")


@pytest.mark.parametrize("manifest_frags, match, reason", [
    # the length prefix claims more than the slices hold: all fragments arrive, no manifest
    (stream_fragments(manifest_raw([W]), prefix_length=len(manifest_raw([W])) + 50), "make up a manifest",
     "contradictions"),
    # overlapping slices
    ([Fragment(0xFFFF, MANIFEST, 0, struct.pack(">I", 90) + manifest_raw([W])[:60]),
      Fragment(0xFFFF, MANIFEST, 40, manifest_raw([W])[36:])], "overlap", "contradictions"),
    # two slices at the same offset
    ([Fragment(0xFFFF, MANIFEST, 0, struct.pack(">I", len(manifest_raw([W]))) + manifest_raw([W])),
      Fragment(0xFFFF, MANIFEST, 0, b"xx")], "same|offset", "contradictions"),
    # a slice far beyond any manifest
    ([Fragment(0xFFFF, MANIFEST, 5 << 20, b"x")] + stream_fragments(manifest_raw([W])), "runs past",
     "contradictions"),
    # a slice after the manifest is complete that does not agree with it
    (stream_fragments(manifest_raw([W])) + [Fragment(0xFFFF, MANIFEST, 4, b"x")], "contradicts",
     "contradictions"),
    # a declared manifest length over the limit
    ([Fragment(0xFFFF, MANIFEST, 0, struct.pack(">I", codec.MAX_MANIFEST_BYTES + 1))], "exceeds", "over_limit"),
    # not JSON at all
    (stream_fragments(b"\xff" * 30), "JSON", "malformed"),
])
def test_lying_manifest_streams(manifest_frags, match, reason):
    receiver = Reassembler()
    refused(receiver, craft([W], [f32(0, 1, 2, 3, 4, 5, 6)], manifest_frags=manifest_frags), match, reason)
    assert receiver.buffered_bytes == 0


def test_fragment_count_must_fit_the_manifest():
    # a manifest with 24 bytes of tensors cannot need 5,000 fragments...
    many = craft([W], [f32(0, 1, 2, 3, 4, 5, 6)] + [Fragment(0, UINT8, 0, b"x")] * 0)
    lie = bytearray(many[0])
    lie[27:30] = (5000).to_bytes(3, "big")
    lie = reseal(lie)
    refused(Reassembler(), [lie], "empty")
    # ...and 3 fragments cannot carry 1 GB
    big = [{"name": "g", "shape": [250_000_000], "dtype": "float32", "encoding": "fp32"}]
    refused(Reassembler(), craft(big, [f32(0, 1.0)]), "can carry")


def test_lying_manifest_declaring_a_gigantic_tensor_allocates_nothing():
    huge = [{"name": "g", "shape": [200_000_000], "dtype": "float32", "encoding": "fp32"}]  # 800 MB
    datagrams = craft(huge, [f32(0, 1.0)])
    lie = [reseal(bytes(d[:27]) + (20_000).to_bytes(3, "big") + bytes(d[30:])) for d in datagrams]
    tracemalloc.start()
    try:
        receiver = Reassembler()
        refused(receiver, lie, "allowed", "over_limit")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak  # refused before anything near 800 MB was allocated
    assert receiver.buffered_bytes == 0 and receiver.open_messages == 0
    beyond = [{"name": "g", "shape": [2**31], "dtype": "float32", "encoding": "fp32"}]  # 8 GiB
    # issue 17, item 7e: past the format's 1 GiB a limit is reached (§5.4), nothing malformed
    refused(Reassembler(), craft(beyond, [f32(0, 1.0)]), "over the limit", "over_limit")
    many = [{"name": f"g{i}", "shape": [(1 << 27) + i], "dtype": "float32", "encoding": "fp32"} for i in range(2)]
    refused(Reassembler(), craft(many, [f32(0, 1.0)]), "over the limit", "over_limit")  # 1 GiB and 4 bytes


def test_first_datagram_claiming_2_to_the_24_fragments_is_refused():
    d = bytearray(send(model())[0])
    d[24:30] = (0).to_bytes(3, "big") + packet.MAX_FRAGMENTS.to_bytes(3, "big")
    receiver = Reassembler()
    refused(receiver, [reseal(d)], "bookkeeping", "over_limit")
    assert receiver.open_messages == 0 and receiver.buffered_bytes == 0


def test_bool_bytes_other_than_0_and_1_are_refused():
    b = {"name": "m", "shape": [3], "dtype": "bool", "encoding": "bool"}
    refused(Reassembler(), craft([b], [Fragment(0, BOOL, 0, b"\x01\x02\x00")]), "bool", "malformed")


def test_contradicting_header_does_not_kill_the_open_message():
    state = model()
    datagrams = send(state, version=5)
    receiver = Reassembler()
    feed(receiver, datagrams[:3])
    for field, value in ((slice(27, 30), (999).to_bytes(3, "big")), (slice(8, 12), b"\0\0\0\1"),
                         (slice(12, 16), (4).to_bytes(4, "big"))):
        liar = bytearray(datagrams[3])
        liar[field] = value
        refused(receiver, [reseal(liar)], "contradicts")
    [got] = feed(receiver, datagrams[3:])
    assert_same(state, got.state)


@pytest.mark.parametrize("other", [packet.BROADCAST, packet.NEIGHBOURS, 3])
def test_every_datagram_of_a_message_names_its_one_destination(other):
    """Issue 17, item 7c: fragments saying 2 and 0xFFFFFFFF were delivered as one message,
    reporting 2. A datagram naming another destination is refused; the message goes on."""
    state = model()
    to_two = send(state, version=5)
    elsewhere = [bytes(d) for d in codec.to_datagrams(state, origin=1, destination=other, model_version=5,
                                                      message_id=1, mtu=256)]
    receiver = Reassembler()
    feed(receiver, to_two[:3])
    for d in elsewhere[3:6]:
        refused(receiver, [d], "destination")
    [got] = feed(receiver, to_two[3:])
    assert got.destination == 2 and got.complete
    assert_same(state, got.state)


def test_reused_message_id_with_a_newer_version_supersedes():
    old, new = model(1), model(2)
    receiver = Reassembler()
    feed(receiver, send(old, version=1)[:4])
    [got] = feed(receiver, send(new, version=2))
    assert got.model_version == 2 and receiver.stats["superseded"] == 1
    assert_same(new, got.state)
    assert feed(receiver, send(old, version=1)[4:]) == [] and receiver.stats["late"] > 0
    check_accounting(receiver)


# -- limits: bounded memory, oldest evicted first -----------------------------------------


def test_open_messages_per_origin_evict_the_oldest():
    receiver = Reassembler(limits=Limits(open_per_origin=2))
    streams = [send(model(i), message_id=i, version=i) for i in (1, 2, 3)]
    for s in streams:
        feed(receiver, s[:2])
    assert receiver.open_messages == 2 and receiver.stats["evicted"] == 1
    assert feed(receiver, streams[0][2:]) == []  # the oldest is gone: its rest is late
    assert len(feed(receiver, streams[1][2:] + streams[2][2:])) == 2
    assert receiver.buffered_bytes == 0


def test_open_messages_in_all_evict_the_oldest():
    receiver = Reassembler(limits=Limits(open_total=3))
    streams = {origin: send(model(origin), origin=origin) for origin in range(1, 6)}
    for s in streams.values():
        feed(receiver, s[:1])
    assert receiver.open_messages == 3 and receiver.stats["evicted"] == 2
    assert sorted(k[0] for k in receiver._open) == [3, 4, 5]


def test_bytes_per_origin_and_in_all():
    state = model(width=400)  # ~50 KB
    probe = Reassembler()
    feed(probe, send(state, mtu=1400)[:2])
    size = probe.buffered_bytes  # what one such message is charged, its manifest parsed
    receiver = Reassembler(limits=Limits(bytes_per_origin=int(size * 1.5)))
    first, second = send(state, message_id=1, mtu=1400), send(state, message_id=2, mtu=1400)
    feed(receiver, first[:2])
    feed(receiver, second[:2])  # no room for both: the older is evicted
    assert receiver.open_messages == 1 and receiver.stats["evicted"] == 1
    assert len(feed(receiver, second[2:])) == 1
    total = Reassembler(limits=Limits(bytes_total=int(size * 2.5)))
    for origin in (1, 2, 3):
        feed(total, send(state, origin=origin, mtu=1400)[:2])
    assert total.open_messages == 2 and sorted(k[0] for k in total._open) == [2, 3]
    check_accounting(total)
    small = Reassembler(limits=Limits(bytes_per_origin=size // 2))
    refused(small, send(state, mtu=1400), "allowed", "over_limit")
    assert small.buffered_bytes == 0


def test_fragments_before_the_manifest_are_bounded():
    datagrams = send(model(width=100), mtu=256)
    receiver = Reassembler(limits=Limits(early_fragments=5))
    tensor_part = [d for d in datagrams if not is_manifest(d)]
    feed(receiver, tensor_part[:5])
    assert receiver.buffered_bytes > 0
    refused(receiver, tensor_part[5:6], "before the manifest", "over_limit")
    assert receiver.buffered_bytes == 0 and receiver.open_messages == 0


def test_limits_are_validated():
    for bad in (dict(timeout_s=0), dict(open_total=0), dict(bytes_per_origin=-1), dict(early_fragments=-1)):
        with pytest.raises(ValueError):
            Limits(**bad)
    with pytest.raises(ValueError):
        Reassembler(key=b"")


# -- authentication -----------------------------------------------------------------------


def reseal(datagram, key=None) -> bytes:
    b = bytearray(datagram)
    if key is not None and b[1] & packet.FLAG_AUTH:
        end = b[2] + int.from_bytes(b[34:36], "big")
        b[end:end + 16] = hmac.new(key, bytes(b[:36]) + bytes(b[42:end]), hashlib.sha256).digest()[:16]
    struct.pack_into(">I", b, 38, crc32c(bytes(b[42:]), crc32c(bytes(b[:36]))))
    return bytes(b)


def test_unsigned_forged_and_replayed_are_refused_and_counted():
    receiver = Reassembler(key=KEY)
    refused(receiver, send(model())[:1], "unsigned", "unsigned")
    forged = bytearray(send(model(), key=KEY)[-1])
    forged[50] ^= 0x40
    refused(receiver, [reseal(forged)], "forged", "forged")
    refused(receiver, send(model(), key=b"not the fleet key")[:1], "forged", "forged")
    [got] = feed(receiver, send(model(2), key=KEY, version=2, message_id=10))
    assert got.model_version == 2
    err = refused(receiver, send(model(1), key=KEY, version=1, message_id=11)[:1], "replayed", "replayed")
    assert isinstance(err, AuthError)
    assert feed(receiver, send(model(2), key=KEY, version=2, message_id=10)) == []  # a replay of the last: late
    assert (receiver.stats["unsigned"], receiver.stats["forged"], receiver.stats["replayed"]) == (1, 2, 1)
    assert feed(receiver, send(model(3), key=KEY, version=3, message_id=12))[0].model_version == 3


def test_reordering_across_versions_is_not_a_replay():
    receiver = Reassembler(key=KEY)
    older, newer = send(model(1), key=KEY, version=1, message_id=1), send(model(2), key=KEY, version=2, message_id=2)
    feed(receiver, older[:3])
    assert len(feed(receiver, newer)) == 1
    [got] = feed(receiver, older[3:])  # started before the newer one: still welcome
    assert got.model_version == 1 and receiver.stats["replayed"] == 0


def tiny(seed: int = 0) -> dict[str, torch.Tensor]:
    return {"w": torch.full((3,), float(seed))}


def test_a_replay_is_refused_however_many_messages_finished_since():
    """Issue 17, item 5: a signed message replayed once 1,024 others had finished was
    delivered again: its version equalled the origin's newest, and only older were refused."""
    receiver = Reassembler(key=KEY)
    first = send(tiny(), key=KEY, version=5, message_id=1)
    assert len(feed(receiver, first)) == 1
    for message_id in range(2, 2 + reassembly.RECENT_MEMORY + 1):
        feed(receiver, send(tiny(message_id), key=KEY, version=5, message_id=message_id))
    refused(receiver, first[:1], "replayed packet refused", "replayed")
    hello = control(b"hi", message_id=2000, version=5, key=KEY)
    assert receiver.receive(hello, 0.0) is not None
    for message_id in range(2001, 2001 + reassembly.RECENT_MEMORY + 1):
        receiver.receive(control(b"x", message_id=message_id, version=5, key=KEY), 0.0)
    refused(receiver, [hello], "replayed packet refused", "replayed")


def test_the_replay_window_takes_reordering_and_wrapping_ids():
    receiver = Reassembler(key=KEY)
    got = lambda message_id, version=1: receiver.receive(control(b"x", message_id=message_id, version=version,
                                                                 key=KEY), 0.0)
    assert got(10) and got(7) and got(9) and got(65_530)  # 65,530 is 16 behind 10 (mod 2^16)
    for message_id in (10, 7, 65_530):
        receiver._recent.clear()  # as if 1,024 messages had finished since: only the window remembers
        refused(receiver, [control(b"x", message_id=message_id, version=1, key=KEY)], "accepted already", "replayed")
    assert got(8) and got(10 + 32_767)  # one not seen yet in the window; the furthest ahead that is newer
    refused(receiver, [control(b"x", message_id=10 + 32_767 - reassembly.REPLAY_WINDOW, version=1, key=KEY)],
            "past the window", "replayed")
    assert got(5, version=2)  # a newer version starts a new window
    refused(receiver, [control(b"x", message_id=11, version=1, key=KEY)], "older", "replayed")
    assert got(3, version=2) and got(65_535, version=2) and got(4, version=2)  # below 5, wrapped, each once


def test_receive_packet_checks_the_tag_flag_too():
    receiver = Reassembler(key=KEY)
    with pytest.raises(AuthError, match="unsigned"):
        receiver.receive_packet(packet.parse(send(model())[0]), 0.0)
    assert receiver.stats["unsigned"] == 1


# -- the reassembler never misbehaves -----------------------------------------------------


@PROPERTY
@given(st.integers(0, 2**32), st.sampled_from([None, KEY]))
def test_any_stream_gives_models_or_packet_errors(seed, key):
    rng = random.Random(seed)
    pool = []
    for origin in (1, 2):
        for version in (1, 2):
            pool += send(model(origin + version, width=6), origin=origin, version=version, message_id=version,
                         key=key if rng.random() < 0.9 else None, precision=rng.choice(["fp32", "int8"]))
    pool += craft([W, Q], [f32(0, 1, 2, 3), f32(2, 4, 5, 6), Fragment(1, INT8, 1, b"\x03\x05\x01\x04", 0.5, 3)],
                  origin=3, key=key)
    pool += [packet.build_control(b"hi", origin=origin, destination=2, message_id=message_id, model_version=version,
                                  key=key) for origin, message_id, version in ((1, 1, 1), (1, 3, 2), (4, 1, 1))]
    limits = Limits(open_per_origin=rng.randint(1, 3), open_total=rng.randint(1, 4),
                    bytes_per_origin=rng.choice([2_000, 50_000]), early_fragments=rng.randint(0, 4))
    receiver = Reassembler(key=key, limits=limits)
    for step in range(rng.randint(20, 120)):
        d = bytearray(rng.choice(pool))
        roll = rng.random()
        if roll < 0.2:
            d[rng.randrange(len(d))] ^= 1 << rng.randrange(8)
            if rng.random() < 0.7:
                d = bytearray(reseal(d, key if rng.random() < 0.5 else None))
        elif roll < 0.25:
            d = d[:rng.randrange(len(d))]
        elif roll < 0.3:
            d[24:30] = rng.randrange(1 << 24).to_bytes(3, "big") + rng.randrange(1 << 24).to_bytes(3, "big")
            d = bytearray(reseal(d, key))
        try:
            got = receiver.receive(bytes(d), step * 0.5)
            assert got is None or isinstance(got, (reassembly.ReceivedModel, reassembly.ReceivedControl))
        except PacketError as exc:
            assert receiver.stats[exc.reason] > 0
        check_accounting(receiver)
        assert receiver.open_messages <= limits.open_total
        if rng.random() < 0.05:
            receiver.expire(step * 0.5)
    for got in receiver.expire(1e12):
        assert isinstance(got, reassembly.ReceivedModel) and got.masks is not None
    assert receiver.open_messages == 0 and receiver.buffered_bytes == 0


# -- packed int8: one run for the whole model, parameters from the manifest ------------------


def mlp(seed: int = 0, hidden: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"fc0.weight": torch.randn(hidden, 64, generator=g), "fc0.bias": torch.randn(hidden, generator=g),
            "fc1.weight": torch.randn(hidden, hidden, generator=g) * 3, "fc1.bias": torch.randn(hidden, generator=g),
            "out.weight": torch.randn(10, hidden, generator=g) / 5, "out.bias": torch.randn(10, generator=g)}


def steps_off(got: dict, state: dict, manifest: codec.Manifest) -> float:
    """The largest error of any element, in quantisation steps of its own tensor."""
    return max(float((got[name].double() - state[name].double()).abs().max()) / spec.scale
               for name, spec in ((spec.name, spec) for spec in manifest.tensors))


@pytest.mark.parametrize("mtu", [256, 1400])
def test_packed_int8_runs_across_datagrams_within_half_a_step(mtu):
    state = mlp()
    datagrams = send(state, precision="int8", mtu=mtu)
    tensor_datagrams = [packet.parse(d) for d in datagrams if not is_manifest(d)]
    # one run: every datagram full but the last, no quantisation extension, and ranges
    # that start in one tensor and run on into the next
    nbytes = sum(t.numel() for t in state.values())
    assert len(tensor_datagrams) == -(-nbytes // (mtu - packet.HEADER_SIZE))
    assert all(not p.flags & packet.FLAG_QUANT and p.encoding == INT8 for p in tensor_datagrams)
    for order in (datagrams, datagrams[::-1], random.Random(mtu).sample(datagrams, len(datagrams))):
        [got] = feed(Reassembler(), order)
        assert got.complete
        assert [spec.name for spec in got.manifest.tensors] == list(state)
        assert steps_off(got.state, state, got.manifest) <= 0.5 + 1e-4  # half a step, plus binary32 rounding


def test_a_lost_middle_datagram_of_a_packed_int8_run_merges_only_what_arrived():
    state = mlp()
    datagrams = send(state, precision="int8", mtu=256)
    tensor_datagrams = [d for d in datagrams if not is_manifest(d)]
    assert len(tensor_datagrams) >= 5
    lost = packet.parse(tensor_datagrams[4])
    # it starts in fc0.weight and runs on through fc0.bias into fc1.weight: three tensors lose elements
    assert lost.tensor_index == 0 and lost.element_start + lost.element_count > 1024 + 16
    receiver = Reassembler(limits=Limits(timeout_s=1.0))
    assert feed(receiver, [d for d in datagrams if d is not tensor_datagrams[4]]) == []
    [got] = receiver.expire(5.0)
    # the elements the lost datagram held, by the flat order of the packed run
    flat_before = sum(state[name].numel() for name in list(state)[:lost.tensor_index]) + lost.element_start
    missing = set(range(flat_before, flat_before + lost.element_count))
    flat = 0
    local = {name: torch.full_like(value, 7.0) for name, value in state.items()}
    merged = merge_partial(local, got)
    for name, value in state.items():
        want = np.array([flat + i not in missing for i in range(value.numel())]).reshape(value.shape)
        assert np.array_equal(got.masks[name].numpy(), want), name
        mask = got.masks[name]
        spec = got.manifest.tensors[got.manifest.index(name)]
        error = torch.cat([(got.state[name][mask] - value[mask]).abs(), torch.zeros(1)]).max()
        assert float(error) <= spec.scale * (0.5 + 1e-4)
        assert torch.equal(merged[name][~mask], local[name][~mask])
        assert torch.equal(merged[name][mask], got.state[name][mask])
        flat += value.numel()
    assert sum(int(m.sum()) for m in got.masks.values()) == flat - len(missing)


@pytest.mark.parametrize("tensors, frags, match", [
    # without the extension int8 runs on, but only into int8 tensors...
    ([Q, W], [Fragment(0, INT8, 0, bytes(5), None)], "another encoding"),
    # ...and not past the last tensor
    ([Q, {**Q, "name": "r"}], [Fragment(0, INT8, 0, bytes(9), None)], "past the last tensor"),
    # with the extension, a range running on is refused even into int8 tensors
    ([Q, {**Q, "name": "r"}], [Fragment(0, INT8, 0, bytes(8), 0.5, 3)], "run past"),
    # an int8 fragment for an fp32 tensor, extension or not
    ([W], [Fragment(0, INT8, 0, bytes(6), None)], "encoding"),
    # covering an element twice
    ([Q, {**Q, "name": "r"}], [Fragment(0, INT8, 0, bytes(6), None), Fragment(1, INT8, 0, bytes(4), None)],
     "exactly once"),
])
def test_packed_int8_fragments_that_contradict_the_manifest(tensors, frags, match):
    receiver = Reassembler()
    refused(receiver, craft(tensors, frags), match)
    assert receiver.open_messages == 0 and receiver.buffered_bytes == 0


def test_packed_int8_elements_take_their_own_tensors_parameters():
    R = {"name": "r", "shape": [3], "dtype": "float32", "encoding": "int8", "scale": 0.25, "zero_point": -1}
    q = bytes([3, 5, 1, 4]) + bytes([255, 7, 0xFF])  # q: 3 5 1 4 | -1 7 -1
    for frags in ([Fragment(0, INT8, 0, q, None)], [Fragment(0, INT8, 0, q[:3], None), Fragment(0, INT8, 3, q[3:], None)]):
        [got] = feed(Reassembler(), craft([Q, R], frags))
        assert got.state["q"].tolist() == [0, 1, -1, 0.5]  # (q - 3) * 0.5
        assert got.state["r"].tolist() == [0, 2, 0]  # (q + 1) * 0.25


def test_a_remembered_layout_does_not_place_int8_without_its_manifest():
    state = mlp()
    datagrams = [d for d in send(state, precision="int8") if not is_manifest(d)]
    layout = codec.encode(mlp(seed=5), "int8").manifest  # same family, other scales
    receiver = Reassembler(known_layouts={layout.family_id: layout})
    assert feed(receiver, datagrams) == [] and receiver.expire(1e9) == []
    assert receiver.stats["lost_manifest"] == 1 and receiver.buffered_bytes == 0


# -- deflated manifests ------------------------------------------------------------------------


def deflated_stream(raw: bytes, *, level: int = 9, tail: bytes = b"", cut: int = 0) -> bytes:
    body = zlib.compress(raw, level)
    body = (body[:-cut] if cut else body) + tail
    return struct.pack(">I", codec.MANIFEST_ZLIB | len(body)) + body


def test_a_deflated_manifest_is_inflated_and_placed():
    stream = deflated_stream(manifest_raw([W]))
    [got] = feed(Reassembler(), craft([W], [f32(0, 1, 2, 3, 4, 5, 6)],
                                      manifest_frags=[Fragment(0xFFFF, MANIFEST, 0, stream[:20]),
                                                      Fragment(0xFFFF, MANIFEST, 20, stream[20:])]))
    assert got.complete and got.state["w"].tolist() == [[1, 2, 3], [4, 5, 6]]


@pytest.mark.parametrize("stream, match, reason", [
    # a bomb: 5 MiB of spaces after the JSON deflate to ~5 kB, past the 4 MiB bound once inflated
    (deflated_stream(manifest_raw([W]) + b" " * (5 << 20)), "inflates past", "over_limit"),
    (deflated_stream(manifest_raw([W]), cut=3), "truncated", "malformed"),
    (deflated_stream(manifest_raw([W]), tail=b"\0garbage"), "follow", "malformed"),
    (struct.pack(">I", codec.MANIFEST_ZLIB | 12) + b"not zlib....", "corrupt", "malformed"),
    (struct.pack(">I", codec.MANIFEST_ZLIB | (codec.MAX_MANIFEST_BYTES + 1)) + b"x", "exceeds", "over_limit"),
])
def test_lying_deflated_manifests_are_refused(stream, match, reason):
    receiver = Reassembler()
    frags = [Fragment(0xFFFF, MANIFEST, off, stream[off:off + 1000]) for off in range(0, len(stream), 1000)]
    tracemalloc.start()
    try:
        refused(receiver, craft([W], [f32(0, 1, 2, 3, 4, 5, 6)], manifest_frags=frags), match, reason)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak  # the bomb was cut off at the bound, not inflated whole
    assert receiver.buffered_bytes == 0
