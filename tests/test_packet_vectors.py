"""The test vectors of docs/packet-format.md, two ways.

1. The reference encoder (mfd_core) produces the documented datagrams byte for byte.
2. A second decoder, written here from the specification alone — struct, hmac, json and
   a bitwise CRC32C, nothing from mfd_core.packet or mfd_core.codec — decodes them to the
   documented tensors. (In the manner of h11's test against the stdlib's HTTP client: if
   the page and the code drift apart, one of these fails.)

The hex blocks are read out of the page itself, so the page cannot drift from the test.
"""
from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import math
import random
import re
import struct
import zlib
from pathlib import Path

import pytest

SPEC = Path(__file__).resolve().parent.parent / "docs" / "packet-format.md"
VECTOR_KEY = bytes(range(32))
MODEL = {"w": ([2, 3], [0.5, -1.25, 2.0, 3.0, -0.0625, 0.0]), "b": ([3], [-1.0, 0.25, 2.5])}
PARAMS = {
    "v1": dict(origin=1, destination=2, model_version=7, message_id=42, mtu=256, key=None,
               tensor_precision={"b": "int8"}, deflate_manifest=False),
    "v2": dict(origin=1, destination=0xFFFFFFFE, model_version=8, message_id=43, mtu=256, key=VECTOR_KEY,
               tensor_precision={"b": "int8"}, deflate_manifest=False),
    "v3": dict(origin=1, destination=2, model_version=9, message_id=44, mtu=256, key=None,  # packed
               deflate_manifest=False),
    "v4": dict(origin=1, destination=2, model_version=10, message_id=45, mtu=256, key=None,  # packed int8,
               precision="int8"),  # deflated manifest
}
CONTROL_PARAMS = {  # section 4.4: one datagram each, the payload opaque
    "v5": dict(payload=b"hello, neighbours", origin=1, destination=0xFFFFFFFE, model_version=10, message_id=46,
               ttl=0, key=None),
    "v6": dict(payload=b"\x01\x02\x03", origin=7, destination=0xFFFFFFFF, model_version=11, message_id=47,
               ttl=16, key=VECTOR_KEY),
}


def spec_vectors() -> dict[str, list[bytes]]:
    text = SPEC.read_text()
    found: dict[str, dict[int, bytes]] = {}
    for name, index, body in re.findall(r"```hex (v\d+)-(\d+)\n(.*?)```", text, re.S):
        found.setdefault(name, {})[int(index)] = bytes.fromhex(body)
    return {name: [blocks[i] for i in range(len(blocks))] for name, blocks in found.items()}


VECTORS = spec_vectors()


def test_the_page_has_all_six_vectors():
    assert set(VECTORS) == {"v1", "v2", "v3", "v4", "v5", "v6"}
    assert [len(d) for d in VECTORS["v1"]] == [256, 49, 66, 53]
    assert [len(d) for d in VECTORS["v2"]] == [256, 81, 82, 69]
    assert [len(d) for d in VECTORS["v3"]] == [217, 78]
    assert [len(d) for d in VECTORS["v4"]] == [202, 51]
    assert [len(d) for d in VECTORS["v5"]] == [59]
    assert [len(d) for d in VECTORS["v6"]] == [61]


# -- 1. the reference encoder reproduces the page ----------------------------------------


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_reference_encoder_matches_byte_for_byte(name):
    import torch

    from mfd_core import codec

    model = {k: torch.tensor(v, dtype=torch.float32).reshape(shape) for k, (shape, v) in MODEL.items()}
    datagrams = codec.to_datagrams(model, ttl=16, **PARAMS[name])
    assert [bytes(d).hex() for d in datagrams] == [d.hex() for d in VECTORS[name]]


@pytest.mark.parametrize("name", sorted(CONTROL_PARAMS))
def test_reference_encoder_matches_the_control_vectors(name):
    from mfd_core import packet

    assert [packet.build_control(**CONTROL_PARAMS[name]).hex()] == [d.hex() for d in VECTORS[name]]


@pytest.mark.parametrize("name", sorted(CONTROL_PARAMS))
def test_both_decoders_read_the_control_vectors(name):
    from mfd_core import reassembly

    params = CONTROL_PARAMS[name]
    [datagram] = VECTORS[name]
    ours = reassembly.Reassembler(key=params["key"]).receive(datagram, 0.0)
    theirs = read_datagram(datagram, params["key"])
    assert theirs["control"] and theirs["payload"] == ours.payload == params["payload"]
    for field in ("origin", "destination", "model_version", "message_id"):
        assert getattr(ours, field) == params[field]
    assert (theirs["origin"], theirs["destination"], theirs["version"], theirs["message"], theirs["ttl"]) == (
        params["origin"], params["destination"], params["model_version"], params["message_id"], params["ttl"])
    assert ours.hops == theirs["hops"] == 0


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_reference_decoder_reads_the_page(name):
    from mfd_core import reassembly

    key = PARAMS[name]["key"]
    receiver = reassembly.Reassembler(key=key)
    out = [m for d in reversed(VECTORS[name]) if (m := receiver.receive(d, 0.0)) is not None]
    assert len(out) == 1 and out[0].complete
    independent = independent_decode(VECTORS[name], key)
    assert out[0].state["w"].flatten().tolist() == independent["w"][1]
    assert out[0].state["b"].tolist() == independent["b"][1]


# -- 2. an independent decoder, from the page alone ----------------------------------------

def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def test_crc_check_value_from_the_page():
    assert crc32c(b"123456789") == 0xE3069283


class Refused(Exception):
    pass


ENCODINGS = {  # code: (name, size, struct code)
    0: ("fp32", 4, "f"), 1: ("fp16", 2, "e"), 2: ("bf16", 2, "H"), 3: ("int8", 1, "b"), 4: ("fp64", 8, "d"),
    5: ("int64", 8, "q"), 6: ("int32", 4, "i"), 7: ("int16", 2, "h"), 8: ("uint8", 1, "B"), 9: ("bool", 1, "B"),
    10: ("manifest", 1, "B"), 11: ("int8raw", 1, "b"), 12: ("control", 1, "B"),
}


def read_datagram(d: bytes, key: bytes | None) -> dict:
    """Section 1, 2 and 5.1 of the page."""
    if not 42 <= len(d) <= 65535:
        raise Refused("size")
    magic, vf, header_len, encoding, message_id, tensor_index, family_id, version, origin, destination = \
        struct.unpack(">BBBBHHIIII", d[:24])
    fragment_index = int.from_bytes(d[24:27], "big")
    fragment_count = int.from_bytes(d[27:30], "big")
    element_start, payload_len, ttl, hops, checksum = struct.unpack(">IHBBI", d[30:42])
    flags = vf & 0xF
    if magic != 0x4D or vf >> 4 != 2 or flags & 0x8:
        raise Refused("magic/version/reserved")
    if header_len != (50 if flags & 0x2 else 42):
        raise Refused("header_len")
    if len(d) != header_len + payload_len + (16 if flags & 0x4 else 0):
        raise Refused("length")
    if crc32c(d[:36] + d[42:]) != checksum:
        raise Refused("corrupted")
    if encoding not in ENCODINGS or (flags & 0x2 and encoding != 3):
        raise Refused("encoding")
    manifest = bool(flags & 0x1)
    if not manifest == (tensor_index == 0xFFFF) == (encoding == 10):
        raise Refused("manifest flag")
    control = encoding == 12  # section 4.4: one whole datagram
    if control and (fragment_index, fragment_count, tensor_index, family_id, element_start) != (0, 1, 0, 0, 0):
        raise Refused("control fields")
    size = ENCODINGS[encoding][1]
    if not fragment_index < fragment_count or payload_len == 0 or payload_len % size:
        raise Refused("fragment/payload")
    if element_start + payload_len // size > 2**32 - 1 or origin > 0xFFFFFFFD:
        raise Refused("range/origin")
    scale = zero_point = None
    if flags & 0x2:
        scale, zero_point = struct.unpack(">fi", d[42:50])
        if not (0 < scale < math.inf and -128 <= zero_point <= 127):
            raise Refused("quantisation")
    end = header_len + payload_len
    if key is not None:
        if not flags & 0x4:
            raise Refused("unsigned")
        tag = hmac.new(key, d[:36] + d[42:end], hashlib.sha256).digest()[:16]
        if not hmac.compare_digest(tag, d[end:]):
            raise Refused("forged")
    return dict(manifest=manifest, control=control, encoding=encoding, tensor=tensor_index, family=family_id, version=version,
                origin=origin, destination=destination, message=message_id, index=fragment_index,
                count=fragment_count, start=element_start, payload=d[header_len:end], scale=scale,
                zero_point=zero_point, ttl=ttl, hops=hops)


def family_id(tensors: list[dict]) -> int:
    """Section 4.3: SHA-256 over length-prefixed names, dimensions and dtypes."""
    records = bytearray()
    for t in tensors:
        name = t["name"].encode("utf-8")
        records += struct.pack(">H", len(name)) + name + struct.pack(">B", len(t["shape"]))
        records += b"".join(struct.pack(">I", d) for d in t["shape"])
        records += struct.pack(">B", len(t["dtype"])) + t["dtype"].encode("ascii")
    return int.from_bytes(hashlib.sha256(bytes(records)).digest()[:4], "big")


def test_family_id_bytes_from_the_page():
    text = SPEC.read_text()
    block = re.search(r"Family id \(§4.3\): the SHA-256 of the 36 bytes\n\n(.*?)\n\n", text, re.S).group(1)
    hashed = bytes.fromhex(block)
    assert len(hashed) == 36 and hashlib.sha256(hashed).digest()[:4] == bytes.fromhex("a97c5030")
    assert family_id([{"name": "w", "shape": [2, 3], "dtype": "float32"},
                      {"name": "b", "shape": [3], "dtype": "float32"}]) == 0xA97C5030


def binary32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def independent_decode(datagrams, key=None) -> dict[str, tuple[list[int], list]]:
    """Sections 3 and 4 of the page: a whole message -> {name: (shape, flat values)}."""
    packets = {}
    for d in datagrams:
        p = read_datagram(d, key)
        packets.setdefault(p["index"], p)
    first = next(iter(packets.values()))
    assert len(packets) == first["count"]
    assert all((p["origin"], p["message"], p["version"], p["family"], p["count"]) ==
               (first["origin"], first["message"], first["version"], first["family"], first["count"])
               for p in packets.values())
    stream = bytearray()
    for p in sorted((p for p in packets.values() if p["manifest"]), key=lambda p: p["start"]):
        assert p["start"] == len(stream)
        stream += p["payload"]
    (prefix,) = struct.unpack(">I", stream[:4])
    length = prefix & 0x7FFFFFFF
    assert length <= 512 << 10 and len(stream) == 4 + length
    body = bytes(stream[4:])
    if prefix & 0x80000000:  # section 4.2: deflated (zlib), at most 4 MiB once inflated, nothing after it
        inflater = zlib.decompressobj()
        body = inflater.decompress(body, (512 << 10) + 1)
        assert len(body) <= 512 << 10 and inflater.eof and not inflater.unused_data and not inflater.unconsumed_tail
    doc = json.loads(body.decode("utf-8"))
    assert doc["format"] == 1
    assert family_id(doc["tensors"]) == first["family"]
    tensors = doc["tensors"]
    values = [[None] * math.prod(t["shape"]) for t in tensors]
    for p in (p for p in packets.values() if not p["manifest"]):
        name, size, code = ENCODINGS[p["encoding"]]
        n = len(p["payload"]) // size
        raw = struct.unpack(f"<{n}{code}", p["payload"])
        if name == "int8" and p["scale"] is not None:  # with the extension: the manifest's parameters
            t = tensors[p["tensor"]]
            assert (p["scale"], p["zero_point"]) == (binary32(t["scale"]), t["zero_point"])
        elif name == "bf16":
            raw = [struct.unpack("<f", struct.pack("<I", h << 16))[0] for h in raw]
        # section 4.1: a range runs on into the next tensors that have elements
        i, at = p["tensor"], p["start"]
        assert at < len(values[i]), "starts past its tensor"
        for v in raw:
            while at == len(values[i]):
                i, at = i + 1, 0
                assert p["scale"] is None, "int8 with the extension never runs on"
            assert tensors[i]["encoding"] == name
            assert values[i][at] is None, "covered twice"
            if name == "int8":  # section 3: each element with its own tensor's scale and zero point
                v = binary32((v - tensors[i]["zero_point"]) * binary32(tensors[i]["scale"]))
            values[i][at] = v
            at += 1
    out = {}
    for t, got in zip(tensors, values):
        assert None not in got, "not covered"
        out[t["name"]] = (t["shape"], got)
    return out


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_independent_decoder_reads_the_vectors(name):
    key = PARAMS[name]["key"]
    datagrams = list(VECTORS[name])
    for order in (datagrams, datagrams[::-1], datagrams + datagrams[:2]):
        got = independent_decode(order, key)
        if name == "v4":  # w as int8 too, with its own parameters (section 6.4)
            w_scale = binary32(0.01666666753590107)
            assert got["w"] == ([2, 3], [binary32((q + 53) * w_scale) for q in (-23, -128, 67, 127, -57, -53)])
            assert all(abs(x - y) <= w_scale / 2 for x, y in zip(got["w"][1], MODEL["w"][1]))
        else:
            assert got["w"] == MODEL["w"]
        shape, b = got["b"]
        assert shape == [3]
        if name == "v3":  # fp32: exact
            assert b == MODEL["b"][1]
            continue
        assert b == [binary32((q + 55) * binary32(0.013725490309298038)) for q in (-128, -37, 127)]
        assert all(abs(x - y) <= 0.013725490309298038 / 2 for x, y in zip(b, MODEL["b"][1]))
    first = read_datagram(datagrams[0], key)
    assert (first["origin"], first["destination"], first["version"], first["message"]) == (
        PARAMS[name]["origin"], PARAMS[name]["destination"], PARAMS[name]["model_version"], PARAMS[name]["message_id"])
    assert (first["ttl"], first["hops"], first["family"]) == (16, 0, 0xA97C5030)


def test_independent_decoder_agrees_on_refusals():
    from mfd_core import packet

    for d in VECTORS["v1"]:
        with pytest.raises(Refused, match="unsigned"):
            read_datagram(d, VECTOR_KEY)
        with pytest.raises(packet.AuthError, match="unsigned"):
            packet.parse(d, VECTOR_KEY)
    signed = bytearray(VECTORS["v2"][2])
    signed[44] ^= 0x80  # a payload byte of w...
    end = len(signed) - 16
    struct.pack_into(">I", signed, 38, crc32c(bytes(signed[:36] + signed[42:])))  # ...with a fixed CRC
    with pytest.raises(Refused, match="forged"):
        read_datagram(bytes(signed), VECTOR_KEY)
    with pytest.raises(packet.AuthError, match="forged"):
        packet.parse(bytes(signed), VECTOR_KEY)
    assert read_datagram(bytes(signed), None)["payload"] == bytes(signed[42:end])  # no key: CRC only


def test_both_decoders_refuse_the_same_corruptions():
    """Every single-byte change of every vector datagram: both refuse, or both accept
    (only TTL and hop count may change freely)."""
    from mfd_core import packet

    rng = random.Random(5)
    for name, datagrams in VECTORS.items():
        key = {**PARAMS, **CONTROL_PARAMS}[name]["key"]
        for d, offset in itertools.product(datagrams, range(0, 256, 3)):
            if offset >= len(d):
                continue
            changed = bytearray(d)
            changed[offset] ^= rng.randrange(1, 256)
            try:
                read_datagram(bytes(changed), key)
                ours = True
            except Refused:
                ours = False
            try:
                packet.parse(bytes(changed), key)
                theirs = True
            except packet.PacketError:
                theirs = False
            assert ours == theirs == (offset in (36, 37)), (name, offset)


# -- where the page and the code once disagreed (issue 17, item 7) -----------------------------

def section(number: str) -> str:
    """The text of section ``number`` (e.g. "5.2") of the page, up to the next heading."""
    text = SPEC.read_text()
    start = re.search(rf"^#+ {re.escape(number)} .*$", text, re.M)
    end = re.search(r"^#+ ", text[start.end():], re.M)
    return text[start.end():start.end() + end.start()] if end else text[start.end():]


def test_the_timeout_counts_quiet_time_on_the_page_and_in_the_code():
    """7b: the page said a message expires 30 s after its first datagram; the code counts
    quiet time since the last new fragment, which a model streaming over a slow link needs."""
    import torch

    from mfd_core import codec, reassembly

    assert "counts quiet time" in " ".join(section("5.2").split())
    datagrams = codec.to_datagrams({"w": torch.ones(400)}, origin=1, destination=2, model_version=1, message_id=1,
                                   mtu=256)
    receiver = reassembly.Reassembler()
    receiver.receive(datagrams[0], 0.0)
    receiver.receive(datagrams[1], 25.0)
    receiver.receive(datagrams[1], 29.0)  # a duplicate brings nothing new: it does not count
    assert receiver.expire(54.9) == []  # 31 s after the first datagram: still streaming
    [partial] = receiver.expire(55.0)
    assert not partial.complete


def test_the_scale_is_written_as_the_page_says():
    """7d: the page said 'the shortest decimal that reads back as the 32-bit value'; the
    reference writes the binary64 repr of the binary32 value, as the vectors show."""
    import torch

    from mfd_core import codec

    row = " ".join(section("4.2").split())
    assert "shortest decimal that reads back as that binary64 value" in row
    assert '"scale":0.013725490309298038' in SPEC.read_text()  # vector 1's manifest
    rng = random.Random(7)
    for _ in range(200):
        values = torch.tensor([rng.uniform(-1e3, 1e3) * 10 ** rng.randint(-30, 30) for _ in range(3)])
        enc = codec.encode({"x": values}, "int8")
        scale = enc.manifest.tensors[0].scale
        assert binary32(scale) == scale
        assert f'"scale":{scale!r}' in enc.manifest.to_bytes().decode()
        assert binary32(float(repr(scale))) == scale  # what a receiver reads back


def test_the_shortest_datagram_is_43_bytes():
    """7e: section 1 said at least 43 bytes, check 1 of section 5.1 says 42: both hold, and
    section 1 now says which check refuses a 42-byte one."""
    from mfd_core import packet

    assert "at least 43" in " ".join(section("1.").split())
    shortest = packet.build_control(b"x", origin=1, destination=2, message_id=1)
    assert len(shortest) == 43 and read_datagram(shortest, None)["payload"] == b"x"
    empty = bytearray(shortest[:42])
    empty[34:36] = b"\0\0"
    struct.pack_into(">I", empty, 38, crc32c(bytes(empty[:36])))
    with pytest.raises(packet.PacketError, match="empty payload"):
        packet.parse(bytes(empty))
    with pytest.raises(Refused):
        read_datagram(bytes(empty), None)
    with pytest.raises(packet.PacketError, match="truncated"):
        packet.parse(shortest[:41])


def test_dimensions_past_32_bits_are_refused_even_with_no_elements():
    """7e: the code refused a dimension over 2^32-1 in a tensor of 0 elements, the page
    allowed any integer >= 0: the page now bounds each dimension (the family id writes
    each as a uint32)."""
    from mfd_core import codec, packet

    assert "each 0..2^32-1" in " ".join(section("4.2").split())
    doc = {"format": 1, "meta": {}, "scaling": {}, "tensors": [
        {"name": "e", "shape": [0, 2**32], "dtype": "float32", "encoding": "fp32"}]}
    with pytest.raises(packet.PacketError, match="shape") as err:
        codec.Manifest.from_bytes(json.dumps(doc).encode())
    assert err.value.reason == "malformed"


def test_the_limits_on_the_page_are_the_codes():
    from mfd_core import codec, packet, reassembly

    rows = {}
    for line in section("5.4").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] not in ("Limit", "-------"):
            rows[cells[0]] = cells[1]
    assert rows["manifest JSON (`L`, and inflated)"] == "512 KiB" and codec.MAX_MANIFEST_BYTES == 512 << 10
    assert rows["tensors per message"] == "2,048" and codec.MAX_MESSAGE_TENSORS == 2048
    assert rows["arrays and objects in a manifest's JSON"].startswith("16,384") and codec.MAX_MANIFEST_CONTAINERS == 16_384
    assert rows["tensor bytes per message"] == "1 GiB" and codec.MAX_MESSAGE_BYTES == 1 << 30
    assert rows["datagram size"] == "65,535 bytes" and packet.MAX_DATAGRAM == 65_535
    assert rows["open messages per origin"] == "8" and reassembly.MAX_OPEN_PER_ORIGIN == 8
    assert rows["bytes per origin"] == "256 MiB" and reassembly.MAX_BYTES_PER_ORIGIN == 256 << 20
    assert rows["open messages in all"] == "256" and reassembly.MAX_OPEN_TOTAL == 256
    assert rows["bytes in all"] == "1 GiB" and reassembly.MAX_BYTES_TOTAL == 1 << 30
    assert rows["fragments held before the manifest"] == "4,096 per message" and reassembly.MAX_EARLY_FRAGMENTS == 4096
    assert rows["finished messages remembered"] == "1,024" and reassembly.RECENT_MEMORY == 1024
    assert reassembly.REPLAY_WINDOW == 1024 and reassembly.DEFAULT_TIMEOUT_S == 30.0
    text = " ".join(section("5.4").split())
    for constant, words in ((reassembly.OPEN_MESSAGE_BYTES, "records (2 KiB)"),
                            (reassembly.EARLY_FRAGMENT_BYTES, "its payload and 256 bytes"),
                            (reassembly.STREAM_BYTES_PER_BYTE, "(3 bytes per byte)"),
                            (reassembly.PARSE_BYTES_PER_JSON_BYTE, "40 bytes per byte of JSON"),
                            (reassembly.TENSOR_BYTES, "entry (256 bytes)"), (reassembly.EXPIRE_WORK, "go past 2,048 tensors"),
                            (reassembly.QUIET_MISSING, "at most 4,096 missing")):
        assert words in text, words
    assert (reassembly.OPEN_MESSAGE_BYTES, reassembly.EARLY_FRAGMENT_BYTES, reassembly.STREAM_BYTES_PER_BYTE,
            reassembly.PARSE_BYTES_PER_JSON_BYTE, reassembly.TENSOR_BYTES, reassembly.EXPIRE_WORK,
            reassembly.QUIET_MISSING) == (2048, 256, 3, 40, 256, 2048, 4096)
