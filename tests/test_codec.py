"""state_dict <-> message at every precision, and a manifest parser that refuses lies."""
from __future__ import annotations

import json
import math
import random
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfd_core import codec, packet, reassembly
from mfd_core.codec import Manifest, TensorSpec
from mfd_core.packet import PacketError

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32,
          torch.int16, torch.int8, torch.uint8, torch.bool]
FLOATS = {torch.float32, torch.float16, torch.bfloat16, torch.float64}


def make_tensor(dtype: torch.dtype, shape: tuple[int, ...], seed: int, magnitude: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if dtype in FLOATS:
        t = torch.randn(shape, generator=g, dtype=torch.float64) * magnitude
        if t.numel() > 2:  # exact zeros and negative zeros travel too
            t.view(-1)[0], t.view(-1)[1] = 0.0, -0.0
        return t.to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(info.min, info.max, shape, generator=g, dtype=torch.int64).to(dtype)


tensors = st.builds(
    make_tensor,
    st.sampled_from(DTYPES),
    st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple),  # () is a scalar; 0 makes it empty
    st.integers(0, 2**31),
    st.sampled_from([1e-3, 1.0, 300.0]),
)
states = st.dictionaries(st.text("abcdefgh.", min_size=1, max_size=6), tensors, max_size=5)


def send_and_receive(state, *, mtu, precision, key=None, seed=0):
    datagrams = codec.to_datagrams(state, origin=5, destination=6, model_version=3, message_id=77, mtu=mtu,
                                   precision=precision, key=key)
    assert all(len(d) <= mtu for d in datagrams)
    order = list(datagrams)
    random.Random(seed).shuffle(order)
    receiver = reassembly.Reassembler(key=key)
    out = [m for d in order if (m := receiver.receive(d, 0.0)) is not None]
    assert len(out) == 1 and out[0].complete
    return out[0]


def bits(t: torch.Tensor) -> torch.Tensor:
    """A float tensor's bit patterns, so that -0.0 and 0.0 differ."""
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


@PROPERTY
@given(states, st.integers(256, 65535), st.sampled_from(codec.PRECISIONS), st.integers(0, 99))
def test_round_trip(state, mtu, precision, seed):
    got = send_and_receive(state, mtu=mtu, precision=precision, seed=seed)
    assert list(got.state) == list(state)
    for name, original in state.items():
        result = got.state[name]
        spec = got.manifest.tensors[got.manifest.index(name)]
        assert result.dtype == original.dtype and result.shape == original.shape
        if original.dtype not in FLOATS:
            assert torch.equal(result, original)
        elif spec.encoding == "int8":
            # half a quantisation step, plus binary32 rounding of (q - zp) * scale and of the
            # final conversion to the tensor's own dtype
            x, y = original.double(), result.double()
            eps = torch.finfo(original.dtype).eps
            bound = spec.scale / 2 + (x.abs() + spec.scale) * max(eps, 2**-23)
            assert bool(((x - y).abs() <= bound).all()), (x, y, spec)
        else:
            # exactly the original rounded to the wire precision (exact at fp32 for float32
            # and narrower, and at fp64 for everything)
            wire = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}
            expected = original.to(wire[spec.encoding]).to(original.dtype)
            assert torch.equal(bits(result), bits(expected))
            if precision in ("fp32", "fp64") and original.dtype != torch.float64 or precision == "fp64":
                assert torch.equal(bits(result), bits(original))


@PROPERTY
@given(st.lists(st.floats(-1e30, 1e30, allow_nan=False), min_size=1, max_size=50),
       st.sampled_from([torch.float64, torch.float32, torch.float16, torch.bfloat16]))
def test_int8_error_is_at_most_half_a_step(values, dtype):
    x = torch.tensor(values, dtype=torch.float64).to(dtype)
    if not torch.isfinite(x).all():
        return  # the value did not fit the dtype
    q, scale, zero_point = codec.quantise_int8(x)
    assert q.dtype == torch.int8 and q.shape == x.shape
    assert -128 <= zero_point <= 127 and 0 < scale < math.inf
    assert float(np.float32(scale)) == scale  # a binary32 value: what the wire carries
    x64 = x.double()
    decoded = (q.double() - zero_point) * scale
    assert bool(((x64 - decoded).abs() <= scale / 2 * (1 + 1e-9)).all())
    assert bool((decoded[x64 == 0] == 0).all())  # zero stays exact


def test_quantisation_edge_cases():
    for values in ([0.0, 0.0], [5.0], [-5.0, -5.0], [1000.0, 1000.001], [1e-40, 2e-40], [3.0, -1e-30]):
        x = torch.tensor(values, dtype=torch.float64)
        q, scale, zp = codec.quantise_int8(x)
        assert ((x - (q.double() - zp) * scale).abs() <= scale / 2 * (1 + 1e-9)).all(), values
    assert codec.quantise_int8(torch.zeros(0))[1:] == (1.0, 0)
    for bad in (torch.tensor([1.0, float("nan")]), torch.tensor([float("inf")]),
                torch.tensor([-1e300, 1e300], dtype=torch.float64)):
        with pytest.raises(ValueError):
            codec.quantise_int8(bad)


def test_precision_is_never_raised_and_overrides_apply():
    state = {"h": torch.ones(3, dtype=torch.float16), "f": torch.ones(3), "i": torch.arange(3),
             "d": torch.ones(2, dtype=torch.float64)}
    enc = codec.encode(state, "fp32", tensor_precision={"f": "int8", "d": "fp64"})
    assert [t.encoding for t in enc.manifest.tensors] == ["fp16", "int8", "int64", "fp64"]
    assert [t.encoding for t in codec.encode(state, "bf16").manifest.tensors] == ["fp16", "bf16", "int64", "bf16"]
    with pytest.raises(ValueError, match="names tensors"):
        codec.encode(state, tensor_precision={"nope": "fp16"})
    with pytest.raises(ValueError, match="precision"):
        codec.encode(state, "fp8")


@pytest.mark.parametrize("state, error", [
    ({"": torch.ones(1)}, ValueError),
    ({"x" * 513: torch.ones(1)}, ValueError),
    ({3: torch.ones(1)}, ValueError),
    ({"x": [1.0]}, TypeError),
    ({"x": torch.ones(1, dtype=torch.complex64)}, TypeError),
    ({"x": torch.ones([1] * 17)}, ValueError),
])
def test_encode_refuses_what_cannot_travel(state, error):
    with pytest.raises(error):
        codec.encode(state)


def test_empty_state_is_a_manifest_only_message():
    got = send_and_receive({}, mtu=256, precision="fp32")
    assert got.state == {} and got.fragment_count == 1
    meta = {"kind": "hello", "score": 0.5}
    ds = codec.to_datagrams({}, origin=1, destination=2, model_version=1, message_id=1, meta=meta)
    assert reassembly.Reassembler().receive(ds[0], 0.0).manifest.meta == meta


def test_manifest_copies_repeat_the_manifest_datagrams():
    state = {"w": torch.randn(300)}
    ds = codec.to_datagrams(state, origin=1, destination=2, model_version=1, message_id=1, mtu=256,
                            manifest_copies=2, scaling={"ratio": 0.5}, meta={"note": "x" * 300})
    head = [d for d in ds if packet.parse(d).is_manifest]
    assert len(head) % 2 == 0 and [bytes(d) for d in head[: len(head) // 2]] == [bytes(d) for d in head[len(head) // 2:]]
    receiver = reassembly.Reassembler()
    # the first manifest datagram is lost; its repeat at the end still places the message
    out = [m for d in ds[1:] if (m := receiver.receive(d, 0.0))]
    assert len(out) == 1 and torch.equal(out[0].state["w"], state["w"])
    assert out[0].manifest.scaling == {"ratio": 0.5}
    with pytest.raises(ValueError):
        codec.to_datagrams(state, origin=1, destination=2, model_version=1, message_id=1, manifest_copies=0)


def test_fragments_hold_whole_elements_and_fill_the_mtu():
    enc = codec.encode({"w": torch.randn(1000), "q": torch.randn(10)}, tensor_precision={"q": "int8"})
    for frag in codec.fragments(enc, 256):
        size = packet.ENCODINGS[frag.encoding][2]
        assert len(frag.payload) % size == 0
    frags = codec.fragments(enc, 1400)
    w = [f for f in frags if f.tensor_index == 0]
    assert [f.element_start for f in w] == [0, 339, 678] and len(w[0].payload) == 1356


# -- the manifest parser ----------------------------------------------------------------


def good_doc():
    return json.loads(codec.encode({"w": torch.ones(2, 3), "b": torch.ones(3)}, tensor_precision={"b": "int8"})
                      .manifest.to_bytes())


def with_tensor(**changes):
    doc = good_doc()
    doc["tensors"][1].update(changes)
    return doc


@pytest.mark.parametrize("doc, message", [
    ([], "object"),
    ({**good_doc(), "format": 2}, "format"),
    ({**good_doc(), "format": True}, "format"),
    ({**good_doc(), "tensors": {}}, "list"),
    ({**good_doc(), "meta": []}, "objects"),
    (with_tensor(name=""), "name"),
    (with_tensor(name=7), "name"),
    (with_tensor(name="w"), "twice"),
    (with_tensor(shape=[-1]), "shape"),
    (with_tensor(shape=[True]), "shape"),
    (with_tensor(shape=[1.5]), "shape"),
    (with_tensor(shape=[1] * 17), "shape"),
    (with_tensor(shape=[2**16, 2**16]), "more than"),
    (with_tensor(shape=[2**31, 1]), "limit"),
    (with_tensor(dtype=["float32"]), "dtype"),
    (with_tensor(dtype="complex64"), "dtype"),
    (with_tensor(encoding={"a": 1}), "encoding"),
    (with_tensor(encoding="manifest"), "encoding"),
    (with_tensor(dtype="int64", encoding="fp32"), "encoding"),
    (with_tensor(scale=0), "scale"),
    (with_tensor(scale=-1.0), "scale"),
    (with_tensor(scale=1e-50), "scale"),  # underflows binary32
    (with_tensor(scale=1e39), "scale"),  # overflows binary32
    (with_tensor(scale=10**400), "scale"),
    (with_tensor(scale="1"), "scale"),
    (with_tensor(scale=True), "scale"),
    (with_tensor(zero_point=128), "zero_point"),
    (with_tensor(zero_point=0.5), "zero_point"),
    (with_tensor(zero_point=True), "zero_point"),
])
def test_manifest_lies_are_refused(doc, message):
    with pytest.raises(PacketError, match=message):
        Manifest.from_bytes(json.dumps(doc).encode())


@pytest.mark.parametrize("raw", [
    b"", b"\xff\xfe", b"{", b"[" * 100_000 + b"]" * 100_000, b'{"format": 1e400}', b"nul\x00",
    b'{"format":1,"tensors":[{"shape":[' + b"9" * 5000 + b"]}]}", b"x" * (codec.MAX_MANIFEST_BYTES + 1),
])
def test_manifest_garbage_is_refused(raw):
    with pytest.raises(PacketError):
        Manifest.from_bytes(raw)


@PROPERTY
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                        st.sampled_from(["format", "tensors", "name", "shape", "dtype", "encoding", "scale",
                                         "zero_point", "meta", "scaling", "x"]), inner, max_size=5),
                    max_leaves=30))
def test_any_json_gives_a_manifest_or_a_packet_error(doc):
    for candidate in (doc, {"format": 1, "tensors": [doc]}, {"format": 1, "tensors": doc}):
        try:
            raw = json.dumps(candidate).encode()
        except ValueError:
            continue
        try:
            manifest = Manifest.from_bytes(raw)
        except PacketError:
            continue
        assert all(isinstance(t, TensorSpec) for t in manifest.tensors)


def test_manifest_round_trips_and_scale_is_binary32():
    enc = codec.encode({"a": torch.tensor([0.1, 0.7])}, "int8", scaling={"ratio": 0.25}, meta={"k": [1, 2]})
    again = Manifest.from_bytes(enc.manifest.to_bytes())
    assert again.tensors == enc.manifest.tensors and again.family_id == enc.manifest.family_id
    assert float(np.float32(again.tensors[0].scale)) == again.tensors[0].scale


def test_a_tiny_model_travels_in_two_datagrams():
    g = torch.Generator().manual_seed(3)
    tiny = {"fc0.weight": torch.randn(8, 8, generator=g), "fc0.bias": torch.randn(8, generator=g),
            "empty": torch.zeros(0), "out.weight": torch.randn(2, 8, generator=g), "out.bias": torch.randn(2, generator=g)}

    def sent(state, **kw):
        return [bytes(d) for d in codec.to_datagrams(state, origin=1, destination=2, model_version=1,
                                                     message_id=1, mtu=1400, **kw)]

    datagrams = sent(tiny)
    assert len(datagrams) == 2  # the manifest, then all 90 elements in one fragment
    tensors = packet.parse(datagrams[1])
    assert (tensors.tensor_index, tensors.element_start, tensors.element_count) == (0, 0, 90)
    receiver = reassembly.Reassembler()
    [got] = [m for d in datagrams[::-1] if (m := receiver.receive(d, 0.0)) is not None]
    assert got.complete and all(torch.equal(got.state[k], v) for k, v in tiny.items())
    # int8 packs too: no quantisation extension, each tensor's parameters from the manifest
    assert len(sent(tiny, precision="int8")) == 2
    # one fragment per tensor where they do not all travel in one encoding
    assert len(sent({**tiny, "steps": torch.tensor(3)})) == 6
    # a packed run longer than one datagram runs on across datagrams: 390 floats in two
    assert len(sent({**tiny, "big": torch.zeros(300)})) == 3
    assert len(sent({**tiny, "fits": torch.zeros(249)})) == 2  # 339 floats: 1,356 of 1,358 payload bytes


def _outcome(raw: bytes, layouts: codec.LayoutCache | None = None):
    try:
        m = Manifest.from_bytes(raw, layouts=layouts)
    except PacketError as exc:
        return type(exc)
    return m.tensors, dict(m.scaling), dict(m.meta)


def test_a_layout_sent_again_reuses_its_validated_tensor_list():
    model = {"w": torch.zeros(3, 2), "b": torch.zeros(2)}
    layouts = codec.LayoutCache()
    first = Manifest.from_bytes(codec.encode(model, meta={"score": 0.5}).manifest.to_bytes(), layouts=layouts)
    again = Manifest.from_bytes(codec.encode(model, meta={"score": 0.75}).manifest.to_bytes(), layouts=layouts)
    assert again.tensors is first.tensors and again.meta == {"score": 0.75}
    assert again.family_id == codec.encode(model).manifest.family_id and again.nbytes == 32
    other = Manifest.from_bytes(codec.encode({"w": torch.zeros(3, 3)}).manifest.to_bytes(), layouts=layouts)
    assert [t.shape for t in other.tensors] == [(3, 3)] and len(layouts) == 2
    alone = Manifest.from_bytes(codec.encode(model).manifest.to_bytes())  # no cache: nothing is kept
    assert alone.tensors == first.tensors and alone.tensors is not first.tensors


def test_a_layout_cache_is_bounded_in_entries_and_bytes():
    layouts = codec.LayoutCache(entries=3, nbytes=10_000)
    for width in range(1, 8):
        Manifest.from_bytes(codec.encode({"w": torch.zeros(width)}).manifest.to_bytes(), layouts=layouts)
        assert len(layouts) <= 3 and 0 < layouts.nbytes <= 10_000
    big = {f"t{i}": torch.zeros(1) for i in range(30)}  # 30 tensors: 15 kB of charges, more than it may hold
    Manifest.from_bytes(codec.encode(big).manifest.to_bytes(), layouts=layouts)
    assert len(layouts) == 3 and layouts.nbytes <= 10_000
    assert layouts.shrink(1) > 0 and len(layouts) == 2
    layouts.clear()
    assert len(layouts) == 0 and layouts.nbytes == 0


@pytest.mark.parametrize("name_length, dims", [(1, 0), (40, 4), (200, 16)])
def test_a_layout_cache_charges_what_its_entries_hold(name_length, dims):
    """LayoutCache.cost covers what an entry keeps alive: the specs, their names and shapes."""
    import gc
    import tracemalloc

    raws = []
    for j in range(12):
        tensors = [{"name": f"{j}.{i}".ljust(name_length, "n"), "shape": [2**31 + i] * (dims - 1) + [0] if dims else [],
                    "dtype": "float32", "encoding": "fp32"} for i in range(40)]
        raws.append(json.dumps({"format": 1, "meta": {}, "scaling": {}, "tensors": tensors}, separators=(",", ":")).encode())
    layouts = codec.LayoutCache(tail_bytes=1 << 20, nbytes=1 << 30)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for raw in raws:
        Manifest.from_bytes(raw, layouts=layouts)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(layouts) == 12 and held <= layouts.nbytes, (held, layouts.nbytes)


def test_the_cached_tensor_list_is_only_taken_where_json_would_take_it():
    layouts = codec.LayoutCache()
    valid = codec.encode({"w": torch.zeros(3, 2)}, meta={"k": 1}).manifest.to_bytes()
    Manifest.from_bytes(valid, layouts=layouts)  # its tail is now cached
    tail = valid[valid.rfind(b',"tensors":'):]
    bad_list = tail[1:-1].replace(b"[3,2]", b"[3.0,2]")
    # two "tensors" keys: json keeps the last, so the cached valid one decides...
    assert _outcome(b'{"format":1,' + bad_list + tail, layouts)[0] == _outcome(valid)[0]
    # ...and where the invalid one is last, it is refused as without the cache
    with pytest.raises(PacketError, match="shape"):
        Manifest.from_bytes(valid[:-1] + b"," + bad_list + b"}", layouts=layouts)
    # the cached bytes inside a string are not a tensor list
    inside = b'{"format":1,' + bad_list + b',"x":"' + tail[:-1].replace(b'"', b'\\"') + b'"}'
    with pytest.raises(PacketError, match="shape"):
        Manifest.from_bytes(inside, layouts=layouts)


def test_mutated_manifests_decode_the_same_with_and_without_the_cache():
    rng = random.Random(5)
    valid = codec.encode({"w": torch.zeros(3, 2), "q": torch.zeros(4)}, tensor_precision={"q": "int8"},
                         meta={"kind": "gossip"}, scaling={"ratio": 0.5}).manifest.to_bytes()
    alphabet = b'{}[],:"0123456789.-etnsorawq\\ '
    for _ in range(400):
        raw = bytearray(valid)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(raw))
            edit = rng.choice(("replace", "insert", "delete"))
            if edit == "replace":
                raw[at] = rng.choice(alphabet)
            elif edit == "insert":
                raw.insert(at, rng.choice(alphabet))
            else:
                del raw[at]
        cold = _outcome(bytes(raw))
        layouts = codec.LayoutCache()
        Manifest.from_bytes(valid, layouts=layouts)  # warm: the valid tail is cached
        assert _outcome(bytes(raw), layouts) == cold


def test_family_id_follows_names_shapes_and_dtypes_not_encodings():
    a = codec.encode({"w": torch.ones(2, 3)}, "fp32").manifest.family_id
    assert a == codec.encode({"w": torch.ones(2, 3)}, "int8").manifest.family_id
    assert a != codec.encode({"w": torch.ones(3, 2)}).manifest.family_id
    assert a != codec.encode({"v": torch.ones(2, 3)}).manifest.family_id
    assert a != codec.encode({"w": torch.ones(2, 3, dtype=torch.float64)}).manifest.family_id
    assert a == codec.state_fingerprint({"w": torch.ones(2, 3)})


def test_family_ids_of_names_that_hold_the_old_separators_do_not_collide():
    """Issue 17, item 6: version 1 hashed 'name:dims:dtype' lines joined by newlines, so one
    tensor named 'w:2,3:float32\\nb' of shape [3] had the family id of {w: [2, 3], b: [3]}."""
    two = [("w", (2, 3), "float32"), ("b", (3,), "float32")]
    assert codec.layout_fingerprint([("w:2,3:float32\nb", (3,), "float32")]) != codec.layout_fingerprint(two)
    assert codec.layout_fingerprint([("a", (), "float32"), ("b", (), "float32")]) != codec.layout_fingerprint(
        [("a::float32\nb", (), "float32")])
    assert codec.layout_fingerprint([("a", (12,), "int8")]) != codec.layout_fingerprint([("a", (1, 2), "int8")])


def read_family_bytes(data: bytes) -> list[tuple[str, tuple[int, ...], str]]:
    """docs/packet-format.md §4.3 backwards: the records are length-prefixed, so they parse."""
    out, at = [], 0
    while at < len(data):
        (n,) = struct.unpack_from(">H", data, at)
        name = data[at + 2:at + 2 + n].decode("utf-8")
        at += 2 + n
        dims = struct.unpack_from(f">{data[at]}I", data, at + 1)
        at += 1 + 4 * len(dims)
        dtype = data[at + 1:at + 1 + data[at]].decode("ascii")
        at += 1 + data[at]
        out.append((name, dims, dtype))
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.text(alphabet=st.sampled_from("ab:,\n\u00e9\U0001f600"), min_size=1, max_size=6),
                          st.lists(st.integers(0, 2**32 - 1), max_size=3).map(tuple),
                          st.sampled_from(["float32", "int8", "bool"])), max_size=4))
def test_family_bytes_say_exactly_one_layout(layout):
    """Injective: the hashed bytes give back the layout they came from, so two layouts
    can only share a family id by a SHA-256 collision of 4 bytes (1 in 2^32), never by
    construction."""
    assert read_family_bytes(codec.family_bytes(layout)) == layout


def test_decode_refuses_buffers_that_do_not_fit():
    enc = codec.encode({"w": torch.ones(4), "m": torch.tensor([True, False])})
    assert torch.equal(codec.decode(enc.manifest, enc.buffers)["w"], torch.ones(4))
    with pytest.raises(PacketError, match="buffers"):
        codec.decode(enc.manifest, enc.buffers[:1])
    with pytest.raises(PacketError, match="bytes"):
        codec.decode(enc.manifest, [enc.buffers[0][:-1], enc.buffers[1]])
    with pytest.raises(PacketError, match="bool"):
        codec.decode(enc.manifest, [enc.buffers[0], np.array([1, 2], np.uint8)])
    decoded = codec.decode(enc.manifest, [bytes(enc.buffers[0]), bytes(enc.buffers[1])])  # read-only input
    decoded["w"] += 1  # is a copy, writable


def test_wire_is_little_endian():
    enc = codec.encode({"i": torch.tensor([1], dtype=torch.int32), "f": torch.tensor([1.0], dtype=torch.float16)})
    assert bytes(enc.buffers[0]) == struct.pack("<i", 1) and bytes(enc.buffers[1]) == struct.pack("<e", 1.0)


def test_model_manifests_are_deflated_and_control_manifests_are_not():
    g = torch.Generator().manual_seed(1)
    state = {f"layer{i}.{kind}": torch.randn(16, generator=g) for i in range(4) for kind in ("weight", "bias")}
    manifest = codec.encode(state, "int8", meta={"score": 0.5}).manifest
    stream = codec.manifest_stream(manifest)
    (prefix,) = struct.unpack(">I", stream[:4])
    assert prefix & codec.MANIFEST_ZLIB and len(stream) - 4 == prefix & ~codec.MANIFEST_ZLIB
    assert len(stream) < len(manifest.to_bytes()) / 2  # repeated keys deflate well
    assert codec.manifest_from_stream(stream) == manifest
    plain = codec.manifest_stream(manifest, deflate=False)
    assert plain[4:] == manifest.to_bytes() and codec.manifest_from_stream(plain) == manifest
    hello = codec.encode({}, meta={"kind": "hello", "note": "x" * 500}).manifest
    assert codec.manifest_stream(hello)[4:] == hello.to_bytes()  # no tensor bytes: sent as it is
    with pytest.raises(PacketError, match="declaring"):
        codec.manifest_from_stream(stream[:-1])
