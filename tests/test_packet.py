"""The datagram layer: build/parse, forwarding, and a parser that never does anything but
return a Packet or raise PacketError, whatever bytes it is given."""
from __future__ import annotations

import array
import hashlib
import hmac
import random
import struct

import numpy as np
import pytest
import torch
from fastcrc.crc32 import iscsi as crc32c
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfd_core import codec, packet
from mfd_core.packet import (BROADCAST, NEIGHBOURS, AuthError, ChecksumError, Fragment, PacketError, Run,
                             build, forwarded, parse, peek_route)

KEY = b"fleet-key"
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def small_model() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"w": torch.randn(4, 5, generator=g), "b": torch.randn(5, generator=g),
            "steps": torch.tensor(7), "mask": torch.tensor([True, False, True])}


def datagrams(key=None, precision="fp32", mtu=256, **kw) -> list[bytes]:
    args = dict(origin=3, destination=4, model_version=2, message_id=9, mtu=mtu, precision=precision, key=key)
    args.update(kw)
    return [bytes(d) for d in codec.to_datagrams(small_model(), **args)]


def reseal(datagram: bytes | bytearray, key: bytes | None = None) -> bytes:
    """Recompute tag (when ``key`` is given and AUTH is set) and CRC after a deliberate change."""
    b = bytearray(datagram)
    header_len, payload_len = b[2], int.from_bytes(b[34:36], "big")
    if key is not None and b[1] & packet.FLAG_AUTH:
        end = header_len + payload_len
        mac = hmac.new(key, bytes(b[:36]) + bytes(b[42:end]), hashlib.sha256).digest()[:16]
        b[end:end + 16] = mac
    struct.pack_into(">I", b, 38, crc32c(bytes(b[42:]), crc32c(bytes(b[:36]))))
    return bytes(b)


def parse_or_error(data, key=None):
    """parse() must give a Packet or a PacketError, never anything else."""
    try:
        return parse(data, key)
    except PacketError as exc:
        assert str(exc), "a PacketError must say what was wrong"
        return exc


# -- build / parse ----------------------------------------------------------------------


def test_header_is_42_bytes_and_fields_round_trip():
    assert packet.HEADER_SIZE == 42
    frag = Fragment(3, packet.ENCODING_CODE["fp32"], 1000, np.arange(5, dtype="<f4").tobytes())
    [d] = build([frag], family_id=0xDEADBEEF, model_version=77, origin=12, destination=BROADCAST,
                message_id=65535, ttl=5)
    assert d.readonly and len(d) == 42 + 20
    p = parse(d)
    assert (p.tensor_index, p.encoding, p.element_start, p.element_count) == (3, 0, 1000, 5)
    assert (p.family_id, p.model_version, p.origin, p.destination, p.message_id) == (0xDEADBEEF, 77, 12, BROADCAST, 65535)
    assert (p.fragment_index, p.fragment_count, p.ttl, p.hops) == (0, 1, 5, 0)
    assert bytes(p.payload) == np.arange(5, dtype="<f4").tobytes() and p.payload.readonly
    assert not p.is_manifest and not p.authenticated


def test_big_fragment_counts_use_24_bits():
    run = Run(0, packet.ENCODING_CODE["uint8"], 0, bytes(range(256)) * 273 + b"\x01" * 112, chunk=1)
    ds = build([run], family_id=1, model_version=1, origin=1, destination=2, message_id=1)
    assert len(ds) == run.count == 70_000 and bytes(parse(ds[300]).payload) == bytes([300 % 256])
    last = parse(ds[-1])
    assert (last.fragment_index, last.fragment_count, last.element_start) == (69_999, 70_000, 69_999)
    assert bytes(ds[-1][24:30]) == (69_999).to_bytes(3, "big") + (70_000).to_bytes(3, "big")


def test_runs_and_fragments_build_the_same_bytes():
    enc = codec.encode(small_model(), "int8")
    for mtu in (256, 300, 1400):
        for key in (None, KEY):
            via_runs = build(codec.runs(enc, mtu, authenticated=key is not None), family_id=5, model_version=1,
                             origin=1, destination=2, message_id=3, key=key)
            via_frags = build(codec.fragments(enc, mtu, authenticated=key is not None), family_id=5,
                              model_version=1, origin=1, destination=2, message_id=3, key=key)
            assert [bytes(d) for d in via_runs] == [bytes(d) for d in via_frags]
            assert all(len(d) <= mtu for d in via_runs)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
@pytest.mark.parametrize("key", [None, KEY])
@pytest.mark.parametrize("mtu", [256, 300, 1400])
def test_small_messages_build_the_same_bytes_as_the_array_path(monkeypatch, precision, key, mtu):
    """A message of a few datagrams is written one pack_into at a time; the bytes must be
    those of the numpy path that builds large messages (a manifest cut over several
    slices, several fragments per tensor, int8 extensions, tags)."""
    model = {**small_model(), "big": torch.randn(300, generator=torch.Generator().manual_seed(2))}
    args = dict(origin=3, destination=NEIGHBOURS, model_version=2, message_id=9, mtu=mtu, precision=precision,
                key=key, meta={"kind": "gossip", "score": 0.25})
    small = codec.to_datagrams(model, **args)
    assert 4 < len(small) <= packet.SMALL_MESSAGE_FRAGMENTS
    monkeypatch.setattr(packet, "SMALL_MESSAGE_FRAGMENTS", 0)
    arrays = codec.to_datagrams(model, **args)
    assert [bytes(d) for d in small] == [bytes(d) for d in arrays]
    assert all(d.readonly for d in small)
    assert [parse(d, key).fragment_index for d in small] == list(range(len(small)))


@pytest.mark.parametrize("kwargs, message", [
    (dict(origin=BROADCAST), "origin"),
    (dict(destination=-1), "destination"),
    (dict(message_id=1 << 16), "message_id"),
    (dict(ttl=256), "ttl"),
    (dict(family_id=1 << 32), "family_id"),
    (dict(key=b""), "key"),
])
def test_build_refuses_bad_header_fields(kwargs, message):
    args = dict(family_id=1, model_version=1, origin=1, destination=2, message_id=1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        build([Fragment(0, 8, 0, b"x")], **args)


@pytest.mark.parametrize("frag, message", [
    (Fragment(0, 8, 0, b""), "at least one byte"),
    (Fragment(0, 0, 0, b"abc"), "whole number"),
    (Fragment(0, 99, 0, b"abc"), "unknown payload encoding"),
    (Fragment(packet.MANIFEST_TENSOR, 8, 0, b"abc"), "0xFFFF"),
    (Fragment(0, packet.ENCODING_MANIFEST, 0, b"abc"), "0xFFFF"),
    (Fragment(0, 8, 2**32 - 2, b"abc"), "element range"),
    (Fragment(0, packet.ENCODING_INT8, 0, b"abc", scale=0.0), "scale"),
    (Fragment(0, packet.ENCODING_INT8, 0, b"abc", scale=0.1), "binary32"),  # 0.1 is not a binary32 value
    (Fragment(0, packet.ENCODING_INT8, 0, b"abc", scale=0.5, zero_point=200), "zero point"),
    (Fragment(0, 8, 0, bytes(65_535 - 41)), "exceeds"),
    (Run(0, 8, 0, b"abcdef", 0), "at least one byte"),
])
def test_build_refuses_what_a_receiver_would_refuse(frag, message):
    with pytest.raises(ValueError, match=message):
        build([frag], family_id=1, model_version=1, origin=1, destination=2, message_id=1)


def test_build_needs_a_fragment():
    with pytest.raises(ValueError, match="1 to"):
        build([], family_id=1, model_version=1, origin=1, destination=2, message_id=1)


def test_authenticated_packets_need_the_right_key():
    signed = datagrams(key=KEY)
    for d in signed:
        assert parse(d, KEY).authenticated
        assert parse(d).authenticated  # a receiver without a key checks only the CRC
        with pytest.raises(AuthError, match="forged") as err:
            parse(d, b"another key")
        assert err.value.reason == "forged"
    for d in datagrams():
        with pytest.raises(AuthError, match="unsigned") as err:
            parse(d, KEY)
        assert err.value.reason == "unsigned"


def test_forged_payload_with_fixed_crc_is_refused():
    d = bytearray(datagrams(key=KEY)[-1])
    d[45] ^= 0x01  # a payload byte
    forged = reseal(d)  # the CRC matches again, the tag cannot be fixed without the key
    assert isinstance(parse(forged), packet.Packet)
    with pytest.raises(AuthError, match="forged"):
        parse(forged, KEY)
    with pytest.raises(AuthError, match="forged"):  # nor can a tag of another key
        parse(reseal(d, b"attacker"), KEY)


# -- forwarding -----------------------------------------------------------------------


def test_forwarding_rewrites_only_ttl_and_hops():
    for key in (None, KEY):
        d = datagrams(key=key, destination=BROADCAST, ttl=2)[0]
        assert peek_route(d) == (BROADCAST, 2, 0)
        once = forwarded(d)
        assert peek_route(once) == (BROADCAST, 1, 1)
        assert once[:36] == d[:36] and once[38:] == d[38:]
        p = parse(forwarded(once), key)  # checksum and tag skip TTL and hops
        assert (p.ttl, p.hops) == (0, 2)
        with pytest.raises(PacketError, match="TTL"):
            forwarded(forwarded(once))


def test_peek_route_reads_views_and_bytes_alike():
    rng = random.Random(3)
    views = codec.to_datagrams(small_model(), origin=3, destination=77, model_version=2, message_id=9, ttl=9)
    for view in views:
        assert peek_route(view) == peek_route(bytes(view)) == (77, 9, 0)
        for _ in range(20):  # whatever the bytes, a view and its bytes get the same answer or error
            junk = bytearray(view)
            junk[rng.randrange(min(len(junk), 40))] = rng.randrange(256)
            answers = []
            for form in (memoryview(bytes(junk)), bytes(junk)):
                try:
                    answers.append(peek_route(form))
                except PacketError:
                    answers.append("refused")
            assert answers[0] == answers[1]
    for short in (memoryview(b"M\x20"), memoryview(bytes(views[0])[:41])):
        with pytest.raises(PacketError):
            peek_route(short)


def test_hops_saturate_and_neighbour_packets_are_not_forwarded():
    d = bytearray(datagrams(destination=BROADCAST, ttl=200)[0])
    d[37] = 255
    assert peek_route(forwarded(bytes(d))) == (BROADCAST, 199, 255)
    with pytest.raises(PacketError, match="neighbours"):
        forwarded(datagrams(destination=NEIGHBOURS)[0])
    for junk in (b"", b"\x00" * 50, b"M" * 10, "text", None, 3):
        with pytest.raises(PacketError):
            peek_route(junk)


# -- the parser never misbehaves --------------------------------------------------------


def test_every_single_bit_flip_is_caught():
    """Flipping any one bit is a ChecksumError (or an earlier structural error) —
    except in TTL and hop count, which the CRC deliberately leaves to forwarders."""
    for key in (None, KEY):
        for d in datagrams(key=key, precision="int8")[:4]:
            original = parse(d, key)
            for bit in range(len(d) * 8):
                flipped = bytearray(d)
                flipped[bit // 8] ^= 1 << (bit % 8)
                result = parse_or_error(bytes(flipped), key)
                if bit // 8 in (36, 37):
                    assert isinstance(result, packet.Packet)
                    assert result._replace(ttl=original.ttl, hops=original.hops) == original
                else:
                    assert isinstance(result, PacketError), bit


def test_truncations_and_extensions_are_refused():
    for d in datagrams(key=KEY, precision="int8"):
        for cut in range(len(d)):
            assert isinstance(parse_or_error(d[:cut]), PacketError)
        for extra in (b"\x00", b"\xff" * 17):
            assert isinstance(parse_or_error(d + extra), PacketError)


@pytest.mark.parametrize("junk", [
    None, 3, 2.5, "M" * 60, ["M"], object(), b"", bytearray(41), memoryview(b"\x4d" * 10),
    array.array("I", [0x4D21_2A0A] * 20), np.zeros((7, 9), np.uint8), np.zeros(100, np.uint8)[::2],
    memoryview(bytes(200))[::3], bytes(70_000),
])
def test_parse_non_datagrams(junk):
    assert isinstance(parse_or_error(junk), PacketError)
    assert isinstance(parse_or_error(junk, KEY), PacketError)


def test_released_and_exotic_views():
    good = datagrams()[0]
    view = memoryview(bytearray(good))
    assert isinstance(parse_or_error(view), packet.Packet)
    view.release()
    assert isinstance(parse_or_error(view), PacketError)
    assert len(good) % 4 == 0
    words = np.frombuffer(good, dtype="<u4")  # any buffer is read as its bytes
    assert parse(words) == parse(good) == parse(memoryview(good).cast("c"))
    assert isinstance(parse_or_error(words[:-1]), PacketError)  # four bytes short
    strided = np.frombuffer(good, np.uint8).repeat(2)[::2]  # same bytes, not contiguous
    assert parse(strided) == parse(good)


@FUZZ
@given(st.binary(max_size=1500))
def test_random_bytes(data):
    assert isinstance(parse_or_error(data), (PacketError, packet.Packet))
    assert isinstance(parse_or_error(data, KEY), (PacketError, packet.Packet))


def forge(magic=0x4D, version_flags=0x20, header_len=42, encoding=0, message_id=1, tensor_index=0,
          family_id=1, model_version=1, origin=1, destination=2, fragment_index=0, fragment_count=1,
          element_start=0, payload_len=None, ttl=16, hops=0, payload=b"\0\0\0\0", extension=b"", tag=b""):
    """A datagram from raw field values, with a correct CRC: it gets past the checksum to
    whatever semantic check the values break."""
    if payload_len is None:
        payload_len = len(payload)
    head = struct.pack(">BBBBHHIIII", magic, version_flags, header_len, encoding, message_id, tensor_index,
                       family_id, model_version, origin, destination)
    head += fragment_index.to_bytes(3, "big") + fragment_count.to_bytes(3, "big")
    head += struct.pack(">IHBB", element_start, payload_len, ttl, hops)
    rest = extension + payload + tag
    return head + struct.pack(">I", crc32c(rest, crc32c(head[:36]))) + rest


def test_int8_without_the_extension_parses_and_says_so():
    # a fragment of a packed int8 run: no extension, its parameters are the manifest's
    p = parse(forge(encoding=3, payload=b"\x01\xff"))
    assert p.encoding == 3 and not p.flags & packet.FLAG_QUANT and bytes(p.payload) == b"\x01\xff"
    assert p.element_count == 2


@pytest.mark.parametrize("fields, message", [
    (dict(magic=0x4E), "magic"),
    (dict(version_flags=0x10), "version 1"),  # version 1 is refused (docs: version 2)
    (dict(version_flags=0x30), "version 3"),
    (dict(version_flags=0x28), "reserved"),
    (dict(header_len=50), "header length"),
    (dict(payload_len=8), "length mismatch"),
    (dict(payload_len=2), "length mismatch"),
    (dict(encoding=13), "unknown payload encoding"),
    (dict(version_flags=0x22, header_len=50, extension=struct.pack(">fi", 1.0, 0)), "quantisation"),
    (dict(version_flags=0x21, encoding=10), "manifest"),
    (dict(tensor_index=0xFFFF), "manifest"),
    (dict(encoding=10), "manifest"),
    (dict(fragment_count=0), "count is zero"),
    (dict(fragment_index=5, fragment_count=5), "beyond the count"),
    (dict(fragment_index=0xFFFFFF, fragment_count=3), "beyond the count"),
    (dict(payload=b""), "empty payload"),
    (dict(payload=b"\0" * 6), "whole number"),
    (dict(element_start=2**32 - 1), "runs past"),
    (dict(origin=BROADCAST), "reserved address"),
    (dict(origin=NEIGHBOURS), "reserved address"),
    (dict(version_flags=0x22, header_len=50, encoding=3, payload=b"\0",
          extension=struct.pack(">fi", float("nan"), 0)), "scale"),
    (dict(version_flags=0x22, header_len=50, encoding=3, payload=b"\0",
          extension=struct.pack(">fi", -1.0, 0)), "scale"),
    (dict(version_flags=0x22, header_len=50, encoding=3, payload=b"\0",
          extension=struct.pack(">fi", float("inf"), 0)), "scale"),
    (dict(version_flags=0x22, header_len=50, encoding=3, payload=b"\0",
          extension=struct.pack(">fi", 0.5, 128)), "zero point"),
    (dict(version_flags=0x24, tag=b"\0" * 15), "length mismatch"),
    (dict(encoding=12, family_id=0, fragment_count=2), "control"),
    (dict(encoding=12, family_id=0, tensor_index=1), "control"),
    (dict(encoding=12, family_id=7), "control"),
    (dict(encoding=12, family_id=0, element_start=4), "control"),
    (dict(encoding=12, family_id=0, payload=b""), "empty payload"),
    (dict(version_flags=0x21, encoding=12, family_id=0), "manifest"),
    (dict(version_flags=0x22, header_len=50, encoding=12, family_id=0, extension=struct.pack(">fi", 1.0, 0)),
     "quantisation"),
])
def test_lying_fields_say_what_is_wrong(fields, message):
    with pytest.raises(PacketError, match=message) as err:
        parse(forge(**fields))
    assert type(err.value) is PacketError and err.value.reason == "malformed"


def test_forged_fields_that_are_valid_parse():
    p = parse(forge(version_flags=0x22, header_len=50, encoding=3, payload=b"\x01\x02",
                    extension=struct.pack(">fi", 0.5, -3), fragment_index=2, fragment_count=3))
    assert (p.scale, p.zero_point, p.element_count, p.fragment_index) == (0.5, -3, 2, 2)
    signed = forge(version_flags=0x24, tag=bytes(16))
    assert parse(signed).authenticated
    with pytest.raises(AuthError, match="forged"):
        parse(signed, KEY)


header_fields = st.fixed_dictionaries({
    "magic": st.sampled_from([0x4D, 0x4D, 0x4D, 0]),
    "version_flags": st.sampled_from([0x20, 0x21, 0x22, 0x24, 0x25, 0x26, 0x28, 0x10, 0x30]),
    "header_len": st.sampled_from([42, 42, 50, 0, 255]),
    "encoding": st.integers(0, 13),
    "tensor_index": st.sampled_from([0, 1, 0xFFFE, 0xFFFF]),
    "origin": st.sampled_from([0, 1, packet.MAX_NODE_ID, NEIGHBOURS, BROADCAST]),
    "fragment_index": st.integers(0, 0xFFFFFF),
    "fragment_count": st.integers(0, 0xFFFFFF),
    "element_start": st.sampled_from([0, 1, 2**31, 2**32 - 9, 2**32 - 1]),
    "payload": st.binary(max_size=40),
    "payload_len": st.one_of(st.none(), st.integers(0, 0xFFFF)),
    "extension": st.sampled_from([b"", struct.pack(">fi", 0.25, 3), struct.pack(">fi", -0.0, 0), b"\xff" * 8]),
    "tag": st.sampled_from([b"", bytes(16)]),
})


@FUZZ
@given(header_fields)
def test_crafted_headers_with_valid_crc(fields):
    """Headers whose CRC is right but whose fields lie: always a Packet that keeps every
    invariant, or a PacketError — and the fast path agrees with the checked one."""
    data = forge(**fields)
    result = parse_or_error(data)
    try:
        reference = packet._parse_checked(data)
    except PacketError as exc:
        reference = exc
    assert type(result) is type(reference)
    if isinstance(result, PacketError):
        assert str(result) == str(reference)
        return
    assert result == reference
    assert result.fragment_index < result.fragment_count
    size = packet.ENCODINGS[result.encoding][2]
    assert len(result.payload) and len(result.payload) % size == 0
    assert result.element_start + result.element_count <= packet.MAX_ELEMENTS
    assert result.origin <= packet.MAX_NODE_ID
    assert result.is_manifest == (result.tensor_index == packet.MANIFEST_TENSOR)


@FUZZ
@given(st.integers(0, 2**32 - 1), st.data())
def test_random_mutations_of_valid_packets(seed, data):
    rng = random.Random(seed)
    key = data.draw(st.sampled_from([None, KEY]))
    ds = datagrams(key=key, precision=data.draw(st.sampled_from(codec.PRECISIONS)))
    d = bytearray(rng.choice(ds))
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(3)
        if op == 0:
            d[rng.randrange(len(d))] = rng.randrange(256)
        elif op == 1:
            del d[rng.randrange(len(d)):]
        else:
            d[rng.randrange(len(d) + 1):0] = rng.randbytes(rng.randint(1, 5))
        if len(d) < 42:
            break
    candidate = bytes(d)
    if data.draw(st.booleans()) and len(candidate) >= 42:
        candidate = reseal(candidate, key)  # get past the CRC (and the tag) to the semantic checks
    for k in (None, key):
        result = parse_or_error(candidate, k)
        assert isinstance(result, (packet.Packet, PacketError))


def test_parse_accepts_bytes_bytearray_and_views_alike():
    for d in datagrams(precision="int8", key=KEY):
        expected = parse(d, KEY)
        for form in (bytearray(d), memoryview(d), memoryview(bytearray(d)), np.frombuffer(d, np.uint8)):
            got = parse(form, KEY)
            assert got == expected and got.payload.readonly
            assert packet._parse_checked(form, KEY) == expected


def test_iter_parse_yields_errors_in_place():
    ds = datagrams()
    out = list(packet.iter_parse([ds[0], b"junk", ds[1]]))
    assert isinstance(out[0], packet.Packet) and isinstance(out[1], PacketError) and isinstance(out[2], packet.Packet)


def test_checksum_error_is_a_packet_error_with_its_reason():
    d = bytearray(datagrams()[0])
    d[50] ^= 0xFF
    with pytest.raises(ChecksumError) as err:
        parse(bytes(d))
    assert isinstance(err.value, PacketError) and err.value.reason == "corrupted"


# -- control datagrams ------------------------------------------------------------------


def test_a_control_datagram_is_one_whole_datagram():
    for key in (None, KEY):
        d = packet.build_control(b"hello", origin=5, destination=NEIGHBOURS, message_id=65535, model_version=9,
                                 key=key)
        assert type(d) is bytes and len(d) == 42 + 5 + (16 if key else 0)
        p = parse(d, key)
        assert p.is_control and not p.is_manifest and p.authenticated == (key is not None)
        assert (p.origin, p.destination, p.message_id, p.model_version, p.ttl, p.hops) == (
            5, NEIGHBOURS, 65535, 9, 0, 0)
        assert (p.tensor_index, p.family_id, p.fragment_index, p.fragment_count, p.element_start) == (0, 0, 0, 1, 0)
        assert bytes(p.payload) == b"hello"
        assert p == packet._parse_checked(d, key)  # the fast path and the checked one agree
    with pytest.raises(AuthError, match="unsigned"):
        parse(packet.build_control(b"x", origin=1, destination=2, message_id=1), KEY)
    with pytest.raises(AuthError, match="forged"):
        parse(packet.build_control(b"x", origin=1, destination=2, message_id=1, key=b"other"), KEY)


def test_control_datagrams_are_forwarded_like_any():
    d = packet.build_control(b"pull", origin=1, destination=BROADCAST, message_id=2, ttl=3, key=KEY)
    assert peek_route(d) == (BROADCAST, 3, 0)
    p = parse(forwarded(forwarded(d)), KEY)
    assert (p.ttl, p.hops, bytes(p.payload)) == (1, 2, b"pull")
    with pytest.raises(PacketError, match="TTL"):
        forwarded(packet.build_control(b"x", origin=1, destination=BROADCAST, message_id=2))  # ttl 0: one hop
    with pytest.raises(PacketError, match="neighbours"):
        forwarded(packet.build_control(b"x", origin=1, destination=NEIGHBOURS, message_id=2, ttl=5))


def test_control_payloads_fill_the_largest_datagram_and_no_more():
    for key in (None, KEY):
        most = packet.MAX_CONTROL_PAYLOAD - (16 if key else 0)
        d = packet.build_control(bytes(most), origin=1, destination=2, message_id=1, key=key)
        assert len(d) == packet.MAX_DATAGRAM and len(parse(d, key).payload) == most
        with pytest.raises(ValueError, match="1 to"):
            packet.build_control(bytes(most + 1), origin=1, destination=2, message_id=1, key=key)
    assert parse(packet.build_control(memoryview(b"abc"), origin=1, destination=2, message_id=1)).payload == b"abc"


@pytest.mark.parametrize("payload, kwargs, error", [
    (b"", {}, "1 to"),
    ("text", {}, "byte string"),
    (b"x", dict(origin=BROADCAST), "origin"),
    (b"x", dict(destination=1 << 32), "destination"),
    (b"x", dict(message_id=1 << 16), "message_id"),
    (b"x", dict(model_version=-1), "model_version"),
    (b"x", dict(ttl=256), "ttl"),
    (b"x", dict(key=b""), "key"),
])
def test_build_control_refuses_what_a_receiver_would_refuse(payload, kwargs, error):
    args = dict(origin=1, destination=2, message_id=1)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=error):
        packet.build_control(payload, **args)


def test_a_control_payload_never_rides_in_a_model_message():
    with pytest.raises(ValueError, match="build_control"):
        build([Fragment(0, packet.ENCODING_CONTROL, 0, b"x")], family_id=1, model_version=1, origin=1,
              destination=2, message_id=1)


def test_every_single_bit_flip_of_a_control_datagram_is_caught():
    for key in (None, KEY):
        d = packet.build_control(b"hello, neighbours", origin=3, destination=NEIGHBOURS, message_id=4, key=key)
        for bit in range(len(d) * 8):
            flipped = bytearray(d)
            flipped[bit // 8] ^= 1 << (bit % 8)
            result = parse_or_error(bytes(flipped), key)
            assert isinstance(result, packet.Packet) == (bit // 8 in (36, 37)), bit
