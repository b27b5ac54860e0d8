#!/usr/bin/env python3
"""The receive path against a hostile peer (issue 17): a million inputs, and the attack shapes.

Two parts, both fed to long-lived ``Reassembler`` objects (unkeyed, keyed, and one with
tiny limits, whose evictions are then exercised all the time), timing every call with the
thread's CPU clock (``time.thread_time``):

1. **The fuzz**: ``--inputs`` datagrams, drawn from mutations of valid messages (bit
   flips, byte writes, truncations, extensions, header fields spliced from other
   datagrams, the checksum and, for the keyed receiver, the tag made valid again half the
   time), random headers with valid checksums, control datagrams, the attack shapes, and
   untouched valid messages whose deliveries are checked against what was sent, and 4 MB
   models that fill the receivers' byte budgets. Every so often ``expire`` and ``quiet``
   run on a clock that moves on.
2. **Attack shapes**, each on a fresh receiver: the issue's seven defects as they were
   reported (68 manifests of 65,535 one-element tensors, 150 manifest-only messages with
   new layouts, a lone surrogate, 1,000 fragments running on across empty tensors,
   expire() over many-tensor messages, a replay after 1,024 messages, colliding family
   ids, short first slices, the timeout, mixed destinations, the scale's text, the 1 GiB
   limit), the same shapes at this version's limits (2,048 tensors), and a byte budget
   filled with real bytes. For each: what the receiver did, its slowest call, the bytes
   it charged, and the process's RSS growth against its configured byte limit.

It reports the inputs run, exceptions other than ``PacketError`` (and refusals counted
``internal``: bugs), limit breaches (a receiver over its byte or message limits, RSS
growth past 1.2x the receivers' configured limits), wrong deliveries, and the slowest
call per datagram, per expire() and per quiet(), with the garbage collector's pauses
within them. ``--before FILE`` merges the attack figures of an earlier run (e.g. of the
code before issue 17: ``git archive <commit> mfd_core | tar -x -C /tmp/base`` and
``PYTHONPATH=/tmp/base python benchmarks/fuzz.py --attacks-only --out /tmp/before.json``).

Results go to ``benchmarks/results/fuzz.json``.
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import hmac
import json
import os
import random
import resource
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, write_results  # noqa: E402

from mfd_core import codec, packet, reassembly  # noqa: E402
from mfd_core.packet import BROADCAST, NEIGHBOURS, Fragment, PacketError, Run, crc32c  # noqa: E402
from mfd_core.reassembly import Limits, Reassembler  # noqa: E402

KEY = b"fuzz-fleet-key"
MANIFEST = packet.ENCODING_CODE["manifest"]
BOOL = packet.ENCODING_CODE["bool"]
FP32 = packet.ENCODING_CODE["fp32"]
PAGE = os.sysconf("SC_PAGE_SIZE")
# The issue's targets.
CPU_LIMIT_S = 0.050
RSS_OVER_LIMIT = 1.2
VERSION = packet.VERSION
CONTROL = hasattr(packet, "build_control")  # the code before issue 17 had none


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


# -- building datagrams, without the sender's caches of codec ------------------------------

def entry(name: str, shape=(1,), dtype: str = "bool", encoding: str = "bool") -> dict:
    return {"dtype": dtype, "encoding": encoding, "name": name, "shape": list(shape)}


def family_id(tensors: list[dict]) -> int:
    """docs/packet-format.md §4.3, for this version (version 1 hashed joined text)."""
    if VERSION == 1:
        text = "\n".join(f"{t['name']}:{','.join(map(str, t['shape']))}:{t['dtype']}" for t in tensors)
        return int.from_bytes(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:4], "big")
    out = bytearray()
    for t in tensors:
        name = t["name"].encode("utf-8", "surrogatepass")
        out += struct.pack(">H", len(name)) + name + struct.pack(">B", len(t["shape"]))
        out += b"".join(struct.pack(">I", d) for d in t["shape"]) + bytes([len(t["dtype"])]) + t["dtype"].encode()
    return int.from_bytes(hashlib.sha256(bytes(out)).digest()[:4], "big")


def manifest_stream(tensors: list[dict], meta: Any = None, *, deflate: bool = True, raw: bytes | None = None) -> bytes:
    if raw is None:
        raw = json.dumps({"format": 1, "meta": meta or {}, "scaling": {}, "tensors": tensors},
                         separators=(",", ":"), sort_keys=True).encode()
    if deflate:
        packed = zlib.compress(raw, 9)
        return struct.pack(">I", (1 << 31) | len(packed)) + packed
    return struct.pack(">I", len(raw)) + raw


def message(tensors: list[dict], tensor_frags=(), *, meta: Any = None, origin: int = 1, message_id: int = 1,
            version: int = 1, destination: int = 2, key: bytes | None = None, slice_bytes: int | None = None,
            deflate: bool = True, manifest_frags: list | None = None, fam: int | None = None) -> list[bytes]:
    """A message's datagrams: its manifest stream cut into slices (as large as a datagram
    allows by default), then ``tensor_frags``."""
    if manifest_frags is None:
        stream = manifest_stream(tensors, meta, deflate=deflate)
        chunk = slice_bytes or packet.MAX_MTU - packet.HEADER_SIZE - (packet.TAG_SIZE if key else 0)
        manifest_frags = [Run(packet.MANIFEST_TENSOR, MANIFEST, 0, stream, chunk)]
    return [bytes(d) for d in packet.build(list(manifest_frags) + list(tensor_frags),
                                           family_id=family_id(tensors) if fam is None else fam,
                                           model_version=version, origin=origin, destination=destination,
                                           message_id=message_id, key=key)]


def reseal(datagram: bytes | bytearray, key: bytes | None = None) -> bytes:
    """The checksum (and, with ``key`` and AUTH, the tag) made right again after a change."""
    b = bytearray(datagram)
    if len(b) < packet.HEADER_SIZE:
        return bytes(b)
    if key is not None and b[1] & packet.FLAG_AUTH:
        end = len(b) - packet.TAG_SIZE
        if end >= packet.HEADER_SIZE:
            b[end:] = hmac.new(key, bytes(b[:36]) + bytes(b[42:end]), hashlib.sha256).digest()[:packet.TAG_SIZE]
    struct.pack_into(">I", b, 38, packet.checksum_of(memoryview(b)))
    return bytes(b)


def signed(datagram: bytes, key: bytes) -> bytes:
    """An unsigned datagram made a signed one (AUTH set, a tag of ``key`` appended): what
    an insider holding the fleet key could send, so that the keyed receiver's checks
    beyond the tag are fuzzed too."""
    if len(datagram) < packet.HEADER_SIZE or datagram[1] & packet.FLAG_AUTH:
        return datagram
    b = bytearray(datagram) + bytes(packet.TAG_SIZE)
    b[1] |= packet.FLAG_AUTH
    return reseal(b, key)


def forge(rng: random.Random) -> bytes:
    """A header of random (mostly plausible) fields with a valid checksum: it gets past the
    CRC to whatever semantic check its fields break."""
    version_flags = (VERSION << 4) | rng.choice([0, 0, 1, 2, 4, 5, 6, 8, 3, 7])
    if rng.random() < 0.05:
        version_flags = rng.randrange(256)
    quant = version_flags & packet.FLAG_QUANT
    header_len = rng.choice([42, 50] if quant else [42, 42, 42, 50])
    encoding = rng.choice([0, 1, 2, 3, 4, 8, 9, 10, 11, 12, 12, 13, rng.randrange(256)])
    payload = rng.randbytes(rng.choice([0, 1, 2, 3, 4, 8, 17, 64, 300]))
    count = rng.choice([1, 1, 2, 3, 10, 1000, 0xFFFFFF, rng.randrange(1 << 24)])
    fields = dict(
        message_id=rng.randrange(1 << 16), tensor_index=rng.choice([0, 1, 2, 4095, 4096, 0xFFFE, 0xFFFF]),
        family_id=rng.choice([0, rng.randrange(1 << 32)]), model_version=rng.randrange(4),
        origin=rng.choice([rng.randrange(64), packet.MAX_NODE_ID, NEIGHBOURS, BROADCAST]),
        destination=rng.choice([2, NEIGHBOURS, BROADCAST, rng.randrange(1 << 32)]),
        fragment_index=rng.randrange(count) if rng.random() < 0.9 else rng.randrange(1 << 24),
        fragment_count=count if rng.random() < 0.95 else 0,
        element_start=rng.choice([0, 0, 1, 7, 1 << 20, (1 << 32) - 1, rng.randrange(1 << 32)]))
    head = struct.pack(">BBBBHHIIII", 0x4D, version_flags, header_len, encoding, fields["message_id"],
                       fields["tensor_index"], fields["family_id"], fields["model_version"], fields["origin"],
                       fields["destination"])
    head += fields["fragment_index"].to_bytes(3, "big") + fields["fragment_count"].to_bytes(3, "big")
    payload_len = len(payload) if rng.random() < 0.95 else rng.randrange(1 << 16)
    head += struct.pack(">IHBB", fields["element_start"], payload_len, rng.randrange(256), rng.randrange(256))
    extension = struct.pack(">fi", rng.choice([0.5, 1e-3, -1.0, float("nan"), 1e38]),
                            rng.choice([0, -55, 127, 300])) if header_len == 50 else b""
    tag = rng.randbytes(16) if version_flags & packet.FLAG_AUTH else b""
    rest = extension + payload + tag
    return head + struct.pack(">I", crc32c(rest, crc32c(head[:36]))) + rest


# -- the corpus: valid messages, and the attack shapes -------------------------------------

def valid_models(rng: random.Random) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(rng.randrange(1 << 30))
    return [
        {"w": torch.randn(4, 5, generator=g), "b": torch.randn(5, generator=g)},
        {"fc0.weight": torch.randn(16, 8, generator=g), "fc0.bias": torch.randn(16, generator=g),
         "steps": torch.tensor(3), "mask": torch.rand(6, generator=g) > 0.5},
        {"big": torch.randn(900, generator=g), "h": torch.randn(7, generator=g).half(),
         "bf": torch.randn(5, generator=g).to(torch.bfloat16), "i": torch.arange(9, dtype=torch.int32)},
        {"empty": torch.zeros(0, 3), "scalar": torch.tensor(2.5), "d": torch.randn(3, generator=g).double()},
    ]


def corpus(rng: random.Random) -> list[tuple[bytes, bytes | None]]:
    """(datagram, key it is signed with) of valid messages and control datagrams."""
    out = []
    message_id = 0
    for model in valid_models(rng):
        for precision in codec.PRECISIONS:
            for mtu in (256, 700, 1400):
                for key in (None, KEY):
                    message_id += 1
                    for d in codec.to_datagrams(model, origin=rng.randrange(1, 40), destination=rng.choice([2, NEIGHBOURS]),
                                                model_version=rng.randrange(1, 4), message_id=message_id, mtu=mtu,
                                                precision=precision, key=key, meta={"kind": "model", "n": message_id}):
                        out.append((bytes(d), key))
    if CONTROL:
        for key in (None, KEY):
            for size in (1, 17, 200, 1300):
                message_id += 1
                out.append((packet.build_control(rng.randbytes(size), origin=rng.randrange(1, 40), destination=NEIGHBOURS,
                                                 message_id=message_id, model_version=1, key=key), key))
    return out


def attack_shapes(rng: random.Random, scale: float = 1.0) -> Iterator[tuple[str, list[bytes]]]:
    """(name, datagrams) of the attack shapes, at this version's limits (and past them)."""
    tensors_cap = getattr(codec, "MAX_MESSAGE_TENSORS", 65_535)
    n = max(16, int(tensors_cap * scale))
    origin = lambda: rng.randrange(100, 4000)  # noqa: E731
    many = [entry(f"t{i}") for i in range(n)]
    yield "many one-element tensors, one missing", message(many, [Fragment(0, BOOL, 0, b"\0")],
                                                          origin=origin())[:-1]
    empties = [entry(f"e{j}.{i}", (0,)) for j in [rng.randrange(1 << 20)] for i in range(n)]
    yield "manifest-only, a new layout", message(empties, origin=origin(), message_id=rng.randrange(1 << 16))
    run_on = [entry("a")] + [entry(f"e{i}", (0,)) for i in range(n - 2)] + [entry("z")]
    ds = message(run_on, [Fragment(0, BOOL, 0, b"\1\1") for _ in range(int(200 * scale) + 2)], origin=origin())
    yield "packed fragments running on across empty tensors", ds[:-1]
    yield "over the tensor limit", message(many + [entry("extra")], [Fragment(0, BOOL, 0, b"\0")],
                                           origin=origin())[:-1]
    big = int(400_000 * scale)
    containers = getattr(codec, "MAX_MANIFEST_CONTAINERS", 1 << 30) - 16  # within the limit: the rest is the tensor's
    for label, item in (("nested objects", '{"":{"":{"":{}}}}'), ("nested lists", "[[[]]]"), ("scalars", "1.5"),
                        ("lists past the container limit", "[]")):
        count = big // (len(item) + 1)
        if "past" not in label and item.count("[") + item.count("{"):
            count = min(count, containers // (item.count("[") + item.count("{")))
        raw = ('{"format":1,"meta":{"x":[' + ",".join([item] * count) + ']},"scaling":{},"tensors":[' +
               json.dumps(entry("a"), separators=(",", ":")) + "]}").encode()
        frags = [Run(packet.MANIFEST_TENSOR, MANIFEST, 0, manifest_stream([], raw=raw), 65_000)]
        yield f"meta of {label}", message([entry("a")], [Fragment(0, BOOL, 0, b"\1")], manifest_frags=frags,
                                          origin=origin())[:-1]
    small = [entry(f"t{i}") for i in range(int(300 * scale) + 3)]
    whole = manifest_stream(small, deflate=False)
    one_byte = [Fragment(0xFFFF, MANIFEST, at, whole[at:at + 1]) for at in range(len(whole))]
    rng.shuffle(one_byte)
    yield "a manifest a byte a datagram", message(small, [Fragment(0, BOOL, 0, b"\1")],
                                                  manifest_frags=one_byte, origin=origin())[:-2]
    early = [Fragment(1, BOOL, 0, b"\1")] * int(4000 * scale)
    yield "fragments before the manifest", message(small, early, origin=origin())[1:]
    bomb = zlib.compress(b'{"format":1,"meta":{"x":"' + b"a" * (8 << 20) + b'"},"scaling":{},"tensors":[]}', 9)
    yield "deflate bomb", message([], manifest_frags=[Fragment(0xFFFF, MANIFEST, 0, struct.pack(
        ">I", (1 << 31) | len(bomb)) + bomb)], origin=origin())
    yield "2^24 fragments declared", [reseal(bytearray(d[:27]) + (0xFFFFFF).to_bytes(3, "big") + d[30:])
                                      for d in message(small, [Fragment(0, BOOL, 0, b"\1")], origin=origin())[:1]]
    surrogate = (b'{"format":1,"meta":{},"scaling":{},"tensors":[{"dtype":"float32","encoding":"fp32",'
                 b'"name":"\\ud800","shape":[1]}]}')
    yield "lone surrogate", message([], manifest_frags=[Fragment(0xFFFF, MANIFEST, 0, manifest_stream(
        [], raw=surrogate, deflate=False))], fam=0, origin=origin())
    two = [entry("w", (2, 3), "float32", "fp32"), entry("b", (3,), "float32", "fp32")]
    yield "mixed destinations", (message(two, [Fragment(0, FP32, 0, bytes(36))], origin=origin(),
                                         destination=2)[:1] +
                                 message(two, [Fragment(0, FP32, 0, bytes(36))], origin=origin(),
                                         destination=BROADCAST)[1:])


def attack_reassembler() -> Reassembler:
    return Reassembler(limits=Limits(bytes_total=64 << 20, bytes_per_origin=32 << 20))


# -- timing calls -----------------------------------------------------------------------------

class Calls:
    """Each call's thread CPU time, the slowest per kind, and the garbage collector's
    pauses (a full collection scans every object of the process, whoever made it)."""

    def __init__(self) -> None:
        self.slowest: dict[str, dict] = {}
        self.count: dict[str, int] = {}
        self.over: dict[str, int] = {}
        self.other: list[str] = []
        self._gc_started = 0.0
        self._gc_in_call = 0.0
        self.gc_pauses: list[tuple[int, float]] = []
        gc.callbacks.append(self._gc)

    def _gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_started = time.thread_time()
        else:
            pause = time.thread_time() - self._gc_started
            self._gc_in_call += pause
            self.gc_pauses.append((info["generation"], pause))

    def close(self) -> None:
        gc.callbacks.remove(self._gc)

    def __call__(self, kind: str, what: str, fn: Callable, *args) -> Any:
        self._gc_in_call = 0.0
        began = time.thread_time()
        try:
            result = fn(*args)
        except PacketError as exc:
            result = exc
        except Exception as exc:  # noqa: BLE001 - what the issue asks to count
            self.other.append(f"{kind} on {what}: {type(exc).__name__}: {exc}"[:300])
            result = exc
        spent = time.thread_time() - began
        self.count[kind] = self.count.get(kind, 0) + 1
        if spent > CPU_LIMIT_S:
            self.over[kind] = self.over.get(kind, 0) + 1
        if spent > self.slowest.get(kind, {}).get("cpu_ms", -1) / 1e3:
            self.slowest[kind] = {"cpu_ms": round(spent * 1e3, 3), "of_which_gc_ms": round(self._gc_in_call * 1e3, 3),
                                  "input": what}
        return result


# -- part 1: the attack shapes ----------------------------------------------------------------

def attack_plans(rng: random.Random, quick: bool) -> dict[str, Callable[[Calls], tuple]]:
    """Each defect of issue 17 as it was reported, and at this version's limits, by name: a
    function that builds (title, receiver, feed, byte limit), feed() feeding the receiver
    the shape and saying what it saw. Each runs in a process of its own (see
    :func:`issue_shapes`): the memory one frees would hide the next one's growth."""
    reps = 4 if quick else 1
    cap = getattr(codec, "MAX_MESSAGE_TENSORS", 65_535 // reps)
    plans: dict[str, Callable[[Calls], tuple]] = {}

    # 1. manifests of 65,535 one-element tensors, 68 of them open (the issue's), and at the limit
    def many_tensors(n: int, count: int) -> Callable[[Calls], tuple]:
        def plan(calls: Calls) -> tuple:
            tensors = [entry(f"t{i}") for i in range(n)]
            messages = [message(tensors, [Fragment(0, BOOL, 0, b"\0")], origin=o)[:-1] for o in range(count)]
            receiver = Reassembler()

            def feed():
                for ds in messages:
                    for d in ds:
                        calls("datagram", "many-tensor manifest", receiver.receive, d, 0.0)
                return {"tensors": n, "messages": len(messages), "datagrams_each": len(messages[0]),
                        "stream_bytes": sum(len(d) for d in messages[0])}
            return f"item 1: {count} x {n}-tensor manifests", receiver, feed, receiver.limits.bytes_total
        return plan

    for n in dict.fromkeys((65_535 // reps, cap)):
        plans[f"item1_{n}_tensor_manifests_x{68 // reps}"] = many_tensors(n, 68 // reps)

    # 2. 150 manifest-only messages with new layouts, delivered and discarded
    def layouts(n: int) -> Callable[[Calls], tuple]:
        def plan(calls: Calls) -> tuple:
            messages = [message([entry(f"m{j}.{i}", (0,)) for i in range(n)], origin=j % 100, message_id=j)
                        for j in range(150 // reps)]
            receiver = Reassembler()

            def feed():
                delivered = 0
                for ds in messages:
                    for d in ds:
                        got = calls("datagram", "manifest-only message", receiver.receive, d, 0.0)
                        delivered += isinstance(got, reassembly.ReceivedModel)
                return {"tensors": n, "messages": len(messages), "delivered": delivered,
                        "stream_bytes": sum(len(d) for d in messages[0])}
            return f"item 2: {150 // reps} manifest-only x {n} tensors", receiver, feed, receiver.limits.bytes_total
        return plan

    for n in dict.fromkeys((20_000 // reps, min(4096, cap))):
        plans[f"item2_{n}_tensor_layouts_x{150 // reps}"] = layouts(n)

    # 4. expire() over open many-tensor messages; 1,000 packed fragments across empty tensors
    def cpu(n: int) -> Callable[[Calls], tuple]:
        def plan(calls: Calls) -> tuple:
            tensors = [entry(f"t{i}") for i in range(n)]
            messages = [message(tensors, [Fragment(0, BOOL, 0, b"\0")], origin=o)[:-1] for o in range(2)]
            run_on = [entry("a")] + [entry(f"e{i}", (0,)) for i in range(n - 2)] + [entry("z")]
            runs = message(run_on, [Fragment(0, BOOL, 0, b"\1\1") for _ in range(1001)], origin=9)
            receiver = Reassembler()

            def feed():
                for ds in messages:
                    for d in ds:
                        calls("datagram", "many-tensor manifest", receiver.receive, d, 0.0)
                got = calls("expire", "2 many-tensor messages", receiver.expire, 1e6)
                calls("datagram", "run-on manifest", receiver.receive, runs[0], 0.0)
                began = time.thread_time()
                for d in runs[1:-1]:
                    calls("run-on", "a 44-byte fragment across empty tensors", receiver.receive, d, 0.0)
                return {"tensors": n, "expire_delivered": len(got) if isinstance(got, list) else str(got),
                        "run_on_fragments": len(runs) - 2, "run_on_bytes": len(runs[1]),
                        "run_on_total_cpu_s": round(time.thread_time() - began, 3)}
            return f"item 4: CPU at {n} tensors", receiver, feed, receiver.limits.bytes_total
        return plan

    for n in dict.fromkeys((65_535 // reps, cap)):
        plans[f"item4_cpu_{n}_tensors"] = cpu(n)

    # the byte budget filled with bytes that are really held: 4 MB messages from 40 origins,
    # a tenth of each lost, none expired
    def budget(limit: int) -> Callable[[Calls], tuple]:
        def plan(calls: Calls) -> tuple:
            large = Large(rng)
            messages = [large.datagrams(rng) for _ in range(40 // reps)]
            receiver = Reassembler(limits=Limits(bytes_total=limit, bytes_per_origin=limit))

            def feed():
                for ds in messages:
                    for d in ds:
                        calls("datagram", "4 MB model", receiver.receive, d, 0.0)
                return {"messages": len(messages), "datagrams_each": len(messages[0])}
            return f"a {limit >> 20} MiB budget filled with 4 MB models", receiver, feed, limit
        return plan

    for limit in (64 << 20, 16 << 20):
        plans[f"budget_filled_{limit >> 20}_mib"] = budget(limit)
    return plans


def measure_attack(name: str, seed: int, quick: bool, freeze: bool) -> dict:
    """One attack shape, in this process: what the receiver did, its slowest calls, what
    it charged, and how much this process's RSS grew meanwhile."""
    calls = Calls()
    try:
        if name == "other_defects":
            return other_defects(calls)
        title, receiver, feed, limit = attack_plans(random.Random(seed), quick)[name](calls)
        gc.collect()
        if freeze:
            gc.freeze()  # the datagrams made to be fed are no full collection's to scan
        before = rss()
        try:
            detail = feed()
        finally:
            if freeze:
                gc.unfreeze()
        gc.collect()
        growth = rss() - before
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
        return {"title": title, "slowest": calls.slowest, "charged_mib": round(
            (receiver.buffered_bytes + getattr(receiver, "cached_bytes", 0)) / 2**20, 2),
            "open": receiver.open_messages, "rss_growth_mib": round(growth / 2**20, 1),
            "rss_peak_growth_mib": round(peak / 2**20, 1), "limit_mib": round(limit / 2**20, 1),
            "rss_peak_over_limit": round(peak / limit, 3), "stats": dict(receiver.stats), **(detail or {})}
    finally:
        calls.close()


def issue_shapes(seed: int, quick: bool, freeze: bool = True) -> dict[str, dict]:
    """Every attack shape in a fresh process of this interpreter and environment (so with
    whichever mfd_core PYTHONPATH names): its RSS is its own."""
    out = {}
    for name in [*attack_plans(random.Random(seed), quick), "other_defects"]:
        command = [sys.executable, str(Path(__file__).resolve()), "--attack", name, "--seed", str(seed)]
        command += ["--quick"] if quick else []
        command += [] if freeze else ["--no-gc-freeze"]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            out[name] = {"failed": done.stderr[-2000:]}
        else:
            out[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"  {name}: {json.dumps(out[name])}", flush=True)
    return out


def other_defects(calls: Calls) -> dict[str, Any]:
    """Items 3, 5, 6 and 7 of issue 17, as they were reported: what the receiver does."""
    out: dict[str, Any] = {}

    def outcome(fn, *args) -> str:
        try:
            got = fn(*args)
        except PacketError as exc:
            return f"refused ({exc.reason})"
        except Exception as exc:  # noqa: BLE001 - what the issue reported
            return f"{type(exc).__name__} escaped"
        return "delivered" if got else "nothing yet"

    # 3: a name with a lone surrogate, alone and first in a batch
    surrogate = (b'{"format":1,"meta":{},"scaling":{},"tensors":[{"dtype":"float32","encoding":"fp32",'
                 b'"name":"\\ud800","shape":[1]}]}')
    [bad] = message([], manifest_frags=[Fragment(0xFFFF, MANIFEST, 0, manifest_stream([], raw=surrogate,
                                                                                       deflate=False))], fam=0, origin=9)
    good = [bytes(d) for d in codec.to_datagrams({"w": torch.ones(3)}, origin=5, destination=2, model_version=1,
                                                 message_id=1)]
    receiver = Reassembler()
    alone = outcome(receiver.receive, bad, 0.0)
    receiver = Reassembler()
    try:
        batch = f"{len(receiver.receive_many([bad] + good, 0.0))} of the 1 model after it delivered"
    except Exception as exc:  # noqa: BLE001
        batch = f"{type(exc).__name__} escaped: the rest of the batch lost"
    out["item3_lone_surrogate"] = {"receive": alone, "receive_many": batch, "left_open": receiver.open_messages}
    # 5: a signed message replayed after 1,025 others of its version
    key = b"k" * 16
    receiver = Reassembler(key=key)
    send = lambda i: [bytes(d) for d in codec.to_datagrams({"w": torch.ones(3)}, origin=1, destination=2,  # noqa
                                                           model_version=5, message_id=i, key=key)]
    first = send(1)
    for d in first:
        receiver.receive(d, 0.0)
    for i in range(2, 2 + 1025):
        for d in send(i):
            receiver.receive(d, 0.0)
    out["item5_replay_after_1025_messages"] = outcome(lambda: [receiver.receive(d, 0.0) for d in first][-1])
    # 6: a tensor named 'w:2,3:float32\nb' of shape [3] against a known {w: [2, 3], b: [3]}
    one = [entry("w:2,3:float32\nb", (3,), "float32", "fp32")]
    two = [entry("w", (2, 3), "float32", "fp32"), entry("b", (3,), "float32", "fp32")]
    known = codec.Manifest.from_bytes(json.dumps({"format": 1, "tensors": two}).encode())
    receiver = Reassembler(known_layouts={known.family_id: known})
    for d in codec.to_datagrams({"w:2,3:float32\nb": torch.full((3,), 7.0)}, origin=1, destination=2,
                                model_version=1, message_id=1):
        if not d[1] & packet.FLAG_MANIFEST:
            receiver.receive(d, 0.0)
    placed = receiver.expire(1e6)
    out["item6_colliding_family_ids"] = {
        "same_family_id": family_id(one) == family_id(two),
        "lost_manifest_placed_as": {k: v.flatten().tolist() for k, v in placed[0].state.items()} if placed else None}
    # 7a: a manifest cut whose first slice is 2 bytes
    encoded = codec.encode({"w": torch.ones(3)})
    stream = codec.manifest_stream(encoded.manifest, deflate=False)
    cut = [Fragment(0xFFFF, MANIFEST, 0, stream[:2]), Fragment(0xFFFF, MANIFEST, 2, stream[2:]),
           Fragment(0, FP32, 0, encoded.buffers[0].tobytes())]
    receiver = Reassembler()
    datagrams = packet.build(cut, family_id=encoded.manifest.family_id, model_version=1, origin=1, destination=2,
                             message_id=1)
    out["item7a_first_slice_of_2_bytes"] = outcome(lambda: [receiver.receive(d, 0.0) for d in datagrams][-1])
    # 7b: a message whose first datagram came at 0 s and another at 25 s, at 31 s
    datagrams = codec.to_datagrams({"w": torch.ones(400)}, origin=1, destination=2, model_version=1, message_id=2,
                                   mtu=256)
    receiver = Reassembler()
    receiver.receive(datagrams[0], 0.0)
    receiver.receive(datagrams[1], 25.0)
    out["item7b_expired_31s_after_its_first_datagram"] = len(receiver.expire(31.0)) == 1
    # 7c: fragments of one message saying destination 2 and 0xFFFFFFFF
    to_two = codec.to_datagrams({"w": torch.ones(400)}, origin=1, destination=2, model_version=1, message_id=3,
                                mtu=256)
    to_all = codec.to_datagrams({"w": torch.ones(400)}, origin=1, destination=BROADCAST, model_version=1,
                                message_id=3, mtu=256)
    receiver = Reassembler()
    results = [outcome(receiver.receive, d, 0.0) for d in list(to_two[:3]) + list(to_all[3:])]
    out["item7c_mixed_destinations"] = "refused" if any(r.startswith("refused") for r in results) else "delivered"
    # 7d: the scale as the manifest writes it
    enc = codec.encode({"b": torch.tensor([-1.0, 0.25, 2.5])}, "int8")
    out["item7d_scale_text"] = json.loads(enc.manifest.to_bytes())["tensors"][0]["scale"].__repr__()
    # 7e: over 1 GiB of tensors; a dimension past 2^32-1 in a tensor of no elements
    for label, shape in (("item7e_over_1GiB", [1 << 30]), ("item7e_dimension_past_2^32_of_0_elements", [0, 1 << 33])):
        doc = {"format": 1, "tensors": [{"name": "a", "shape": shape, "dtype": "float32", "encoding": "fp32"}]}
        out[label] = outcome(codec.Manifest.from_bytes, json.dumps(doc).encode())
    out["version_byte"] = VERSION
    return out


# -- part 2: the fuzz ---------------------------------------------------------------------------

def mutate(rng: random.Random, datagram: bytes, pool: list[tuple[bytes, bytes | None]]) -> bytes:
    d = bytearray(datagram)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        if op == 0 and d:
            d[rng.randrange(len(d))] ^= 1 << rng.randrange(8)
        elif op == 1 and d:
            d[rng.randrange(len(d))] = rng.randrange(256)
        elif op == 2:
            del d[rng.randrange(len(d) + 1):]
        elif op == 3:
            d[rng.randrange(len(d) + 1):0] = rng.randbytes(rng.randint(1, 8))
        elif op == 4 and len(d) >= 42:  # a header field from another datagram
            other = rng.choice(pool)[0]
            at, size = rng.choice([(2, 2), (4, 2), (6, 2), (8, 4), (12, 4), (16, 4), (20, 4), (24, 3), (27, 3),
                                   (30, 4), (34, 2)])
            d[at:at + size] = other[at:at + size]
        elif op == 5 and len(d) >= 42:  # a plausible lie in one field
            at, size = rng.choice([(6, 2), (24, 3), (27, 3), (30, 4), (34, 2), (3, 1)])
            value = rng.choice([0, 1, 2, 255, 4095, 4096, 65_535, (1 << (8 * size)) - 1])
            d[at:at + size] = (value % (1 << (8 * size))).to_bytes(size, "big")
        elif op == 6 and len(d) >= 42:  # a payload of other bytes, same length
            d[42:] = rng.randbytes(len(d) - 42)
    return bytes(d)


# What the fuzz's inputs are made of, in shares of their number.
SHARES = {"mutation": 0.35, "forged header": 0.15, "attack shape": 0.20, "valid": 0.10, "checked": 0.10,
          "large model": 0.10}


class Large:
    """Messages of 4 MB in datagrams of 64 KiB, a tenth of them lost, from 40 origins: what
    fills the receivers' byte budgets with bytes that are really held, so that their RSS
    is measured against those budgets where it counts."""

    def __init__(self, rng: random.Random) -> None:
        g = torch.Generator().manual_seed(rng.randrange(1 << 30))
        state = {"w": torch.randn(1000, 1000, generator=g), "b": torch.randn(1000, generator=g)}
        self.template = [bytes(d) for d in codec.to_datagrams(state, origin=1, destination=2, model_version=1,
                                                              message_id=1, mtu=packet.MAX_MTU)]
        self.next_id = 0

    def datagrams(self, rng: random.Random) -> list[bytes]:
        self.next_id = (self.next_id + 1) & 0xFFFF
        header = struct.pack(">H", self.next_id)
        origin = struct.pack(">I", 7000 + rng.randrange(40))
        out = []
        for d in self.template:
            if rng.random() < 0.1 and not d[1] & packet.FLAG_MANIFEST:
                continue
            b = bytearray(d)
            b[4:6], b[16:20] = header, origin
            out.append(reseal(b))
        return out


class Checked:
    """Untouched valid messages fed among the rest: whatever comes out for them must be what
    was sent (complete), or agree with it wherever its masks say an element arrived."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.expected: dict[tuple[int, int, int], dict[str, torch.Tensor]] = {}
        self.next_id = 0
        self.wrong: list[str] = []
        self.delivered = 0

    def datagrams(self, key: bytes | None) -> list[bytes]:
        rng = self.rng
        model = rng.choice(valid_models(rng))
        self.next_id = (self.next_id + 1) & 0xFFFF
        origin = 5000 + rng.randrange(50)
        # fp64: every tensor travels at its own precision, so what arrives is what was sent
        ds = [bytes(d) for d in codec.to_datagrams(model, origin=origin, destination=2, model_version=7,
                                                   message_id=self.next_id, mtu=rng.choice([256, 1400]),
                                                   precision="fp64", key=key, meta={"kind": "checked"})]
        self.expected[(origin, self.next_id, 7)] = model
        rng.shuffle(ds)
        return ds

    def check(self, got) -> None:
        while len(self.expected) > 4096:  # never delivered (evicted, refused): forgotten in time
            del self.expected[next(iter(self.expected))]
        if not isinstance(got, reassembly.ReceivedModel):
            return
        expected = self.expected.pop((got.origin, got.message_id, got.model_version), None)
        if expected is None or got.manifest.meta.get("kind") != "checked":
            return
        self.delivered += 1
        for name, value in expected.items():
            have = got.state.get(name)
            if have is None or have.shape != value.shape or have.dtype != value.dtype:
                self.wrong.append(f"{name}: {None if have is None else (have.shape, have.dtype)}")
                continue
            mask = torch.ones_like(value, dtype=torch.bool) if got.masks is None else got.masks[name]
            if not torch.equal(have[mask], value[mask]):
                self.wrong.append(f"{name}: values differ")


def fuzz(inputs: int, seed: int, calls: Calls, *, quick: bool, freeze: bool = True) -> dict:
    rng = random.Random(seed)
    pool = corpus(rng)
    receivers = {
        "unkeyed": Reassembler(limits=Limits(bytes_total=64 << 20, bytes_per_origin=32 << 20)),
        "keyed": Reassembler(key=KEY, limits=Limits(bytes_total=64 << 20, bytes_per_origin=32 << 20)),
        "tiny limits": Reassembler(limits=Limits(bytes_total=1 << 20, bytes_per_origin=256 << 10, open_total=8,
                                                 open_per_origin=2, early_fragments=8)),
    }
    budget = sum(r.limits.bytes_total for r in receivers.values())
    checked = Checked(rng)
    shapes = [(name, ds) for name, ds in attack_shapes(rng, scale=0.25 if quick else 1.0)]
    large = Large(rng)
    breaches: list[str] = []
    kinds: dict[str, int] = {}
    shares_done: dict[str, int] = {}
    now = 0.0
    queue: list[tuple[str, bytes]] = []
    gc.collect()
    if freeze:
        gc.freeze()  # what start-up made (modules, the corpus) is no full collection's to scan again
    try:
        baseline = rss()
        peak_growth = 0
        began = time.perf_counter()
        done = 0
        while done < inputs:
            if not queue:
                # the kind furthest below its share of the inputs so far goes next
                so_far = max(1, sum(shares_done.values()))
                kind = min(SHARES, key=lambda k: shares_done.get(k, 0) / so_far - SHARES[k])
                if kind == "mutation":
                    d, key = rng.choice(pool)
                    d = mutate(rng, d, pool)
                    if rng.random() < 0.5:
                        d = reseal(d, key if rng.random() < 0.8 else None)
                    queue = [("mutation", d)]
                elif kind == "forged header":
                    queue = [("forged header", forge(rng))]
                elif kind == "valid":
                    queue = [("valid", d) for d, _ in rng.sample(pool, 8)]
                elif kind == "checked":
                    queue = [("checked", d) for d in checked.datagrams(rng.choice([None, KEY]))]
                elif kind == "large model":
                    queue = [("large model", d) for d in large.datagrams(rng)]
                else:
                    name, ds = rng.choice(shapes)
                    if len(ds) > 64 and rng.random() < 0.99:  # a window of a long shape, mostly
                        start = rng.randrange(len(ds))
                        ds = ds[start:start + 64]
                    queue = [(name, d) for d in ds]
                shares_done[kind] = shares_done.get(kind, 0) + len(queue)
            batch = queue[:rng.choice([1, 1, 1, 8, 32])]
            queue = queue[len(batch):]
            insider = rng.random() < 0.7
            for label, receiver in receivers.items():
                datagrams = [d for _, d in batch]
                if receiver.key is not None and insider:
                    datagrams = [signed(d, receiver.key) for d in datagrams]
                if len(batch) == 1:
                    got = calls("datagram", batch[0][0], receiver.receive, datagrams[0], now)
                    results = [got]
                else:
                    got = calls("batch", f"{len(batch)} of {batch[0][0]}", receiver.receive_many, datagrams, now)
                    results = got if isinstance(got, list) else []
                for item in results:
                    checked.check(item)
                limits = receiver.limits
                held = receiver.buffered_bytes + getattr(receiver, "cached_bytes", 0)
                if held > limits.bytes_total or receiver.open_messages > limits.open_total:
                    breaches.append(f"{label}: {held} bytes, {receiver.open_messages} open")
            for name, _ in batch:
                kinds[name] = kinds.get(name, 0) + 1
            done += len(batch)
            now += 0.01 * len(batch)
            if rng.random() < 0.01:
                now += rng.choice([1.0, 10.0, 31.0])
                for receiver in receivers.values():
                    got = calls("expire", "expire", receiver.expire, now)
                    for item in got if isinstance(got, list) else []:
                        checked.check(item)
                    calls("quiet", "quiet", receiver.quiet, now, 1.0)
            if done % 5000 < len(batch):
                growth = rss() - baseline
                peak_growth = max(peak_growth, growth)
                if growth > RSS_OVER_LIMIT * budget:
                    breaches.append(f"RSS grew {growth} bytes past {RSS_OVER_LIMIT} x {budget}")
                if not quick and done % 100_000 < len(batch):
                    print(f"  {done:,} inputs, {time.perf_counter() - began:.0f} s, RSS +{growth / 2**20:.0f} MiB, "
                          f"slowest datagram {calls.slowest.get('datagram', {}).get('cpu_ms')} ms", flush=True)
        for receiver in receivers.values():
            while receiver.open_messages:
                for item in receiver.expire(now + 1e6):
                    checked.check(item)
    finally:
        if freeze:
            gc.unfreeze()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline  # at most: since start
    if peak > RSS_OVER_LIMIT * budget:
        breaches.append(f"peak RSS {peak} bytes past {RSS_OVER_LIMIT} x {budget}")
    internal = sum(r.stats.get("internal", 0) for r in receivers.values())
    return {"inputs": done, "by_kind": kinds, "wall_s": round(time.perf_counter() - began, 1),
            "other_exceptions": len(calls.other), "other_exception_samples": calls.other[:10],
            "internal_refusals": internal, "limit_breaches": len(breaches), "breach_samples": breaches[:10],
            "checked_messages_delivered": checked.delivered, "wrong_deliveries": len(checked.wrong),
            "wrong_samples": checked.wrong[:10], "rss_growth_sampled_max_mib": round(peak_growth / 2**20, 1),
            "rss_peak_growth_mib": round(peak / 2**20, 1), "gc_frozen_after_setup": freeze,
            "receivers_byte_limits_mib": round(budget / 2**20, 1),
            "stats": {label: dict(r.stats) for label, r in receivers.items()}}


def run(inputs: int, seed: int = 0, *, quick: bool = False, attacks: bool = True, freeze: bool = True) -> dict:
    """Everything but the printing and the file: what the test suite's short run calls."""
    calls = Calls()
    try:
        figures: dict[str, Any] = {"version": VERSION}
        if inputs:  # first: its peak RSS is measured from its start
            print(f"fuzzing {inputs:,} inputs:", flush=True)
            result = fuzz(inputs, seed, calls, quick=quick, freeze=freeze)
            result["calls"] = dict(calls.count)
            result["slowest"] = calls.slowest
            result["calls_over_50ms"] = dict(calls.over)
            full = [pause for generation, pause in calls.gc_pauses if generation == 2]
            result["gc"] = {"collections": len(calls.gc_pauses), "full_collections": len(full),
                            "slowest_full_ms": round(max(full, default=0.0) * 1e3, 2),
                            "objects_tracked_at_end": len(gc.get_objects())}
            figures["fuzz"] = result
        if attacks:
            print("attack shapes of issue 17, each in a process of its own:", flush=True)
            figures["attacks"] = issue_shapes(seed, quick, freeze)
        return figures
    finally:
        calls.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=1_000_000, help="fuzz inputs (default 1,000,000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--attacks-only", action="store_true", help="only the attack shapes (e.g. on older code)")
    parser.add_argument("--quick", action="store_true", help="smaller attack shapes (a quarter)")
    parser.add_argument("--before", type=Path, help="a JSON of an earlier run whose attack figures to include")
    parser.add_argument("--no-gc-freeze", action="store_true",
                        help="leave the objects made at start-up to every full garbage collection (by default "
                             "gc.freeze() puts them aside before the fuzz, as a long-running node would)")
    parser.add_argument("--attack", default=None, help=argparse.SUPPRESS)  # one shape, in this process
    parser.add_argument("--note", default=None, help="recorded with the results (e.g. which mfd_core was measured)")
    parser.add_argument("--out", type=Path, default=RESULTS / "fuzz.json")
    args = parser.parse_args(argv)
    if args.inputs < 0:
        parser.error("--inputs must be at least 0")
    if args.attack:  # a child of issue_shapes: one shape, its figures as the last line
        print(json.dumps(measure_attack(args.attack, args.seed, args.quick, not args.no_gc_freeze)))
        return 0
    load_start = os.getloadavg()[0]
    began = time.perf_counter()
    figures = run(0 if args.attacks_only else args.inputs, args.seed, quick=args.quick, freeze=not args.no_gc_freeze)
    if args.before:
        earlier = json.loads(args.before.read_text())
        figures["before"] = {"command": earlier.get("command"), "note": earlier.get("note"),
                             "timestamp": earlier.get("timestamp"), "machine": earlier.get("machine"),
                             **earlier["figures"]}
    fuzz_result = figures.get("fuzz", {})
    if fuzz_result:
        print(f"\ninputs {fuzz_result['inputs']:,}; other exceptions {fuzz_result['other_exceptions']}; internal "
              f"refusals {fuzz_result['internal_refusals']}; limit breaches {fuzz_result['limit_breaches']}; wrong "
              f"deliveries {fuzz_result['wrong_deliveries']} of {fuzz_result['checked_messages_delivered']} checked")
        for kind, figure in fuzz_result["slowest"].items():
            print(f"slowest {kind}: {figure}")
        print(f"calls over 50 ms: {fuzz_result['calls_over_50ms']}; GC: {fuzz_result['gc']}")
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent).stdout.strip()
    except OSError:
        commit = None
    command = " ".join(["python", "benchmarks/fuzz.py", *(argv if argv is not None else sys.argv[1:])])
    path = write_results("fuzz", figures, path=args.out, issue=17, command=command, commit=commit, note=args.note,
                         load_average_1m_at_start=round(load_start, 2),
                         load_average_1m_at_end=round(os.getloadavg()[0], 2),
                         wall_s=round(time.perf_counter() - began, 1), targets={
                             "cpu_per_call_ms": CPU_LIMIT_S * 1e3, "rss_growth_over_limit": RSS_OVER_LIMIT,
                             "other_exceptions": 0, "limit_breaches": 0, "inputs": 1_000_000})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
