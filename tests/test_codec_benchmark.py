"""benchmarks/codec.py: its floor does no more than the least any implementation of the wire format must do."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import codec as bench  # noqa: E402
from benchmarks.codec import headline, measure, mlp_state  # noqa: E402

from mfd_core import codec, packet  # noqa: E402


def test_the_floor_checksums_every_byte_the_spec_covers_with_one_call_a_datagram(monkeypatch):
    # a lower bound on any codec's CRC32C work: a call per datagram, over no fewer bytes than
    # the spec's checksum covers (all but bytes 36..41)
    calls = []
    monkeypatch.setattr(bench, "crc32c", lambda view: calls.append(len(view)) or 0)
    state = mlp_state(3_000)
    measure(state, 1400, repeats=1, warmup=0)
    datagrams = codec.to_datagrams(state, origin=1, destination=2, model_version=1, message_id=1, mtu=1400)
    assert len(calls) == 2 * len(datagrams)  # once while encoding, once while decoding
    assert sum(calls) // 2 >= sum(len(d) - 6 for d in datagrams)
    for datagram in datagrams:  # and those are the bytes parse checks
        view = memoryview(datagram)
        (header,) = np.frombuffer(view[:packet.HEADER_SIZE], dtype=packet.HEADER_DTYPE)
        assert packet.checksum_of(view) == header["checksum"]


def test_a_row_reports_the_floor_beside_ours_and_torch():
    state = mlp_state(3_000)
    rows = {"tiny": {"1400": measure(state, 1400, repeats=7), "64KiB": measure(state, 65_535, repeats=7)}}
    for row in rows["tiny"].values():
        assert len(row["times_s"]["crc_decode"]) == 7 and len(row["times_s"]["crc_encode"]) == 7
        # a codec that only checksums and copies does less than ours, which does both and more
        assert row["decode_floor_mb_s"] > 0 and row["encode_floor_mb_s"] > 0
    figures = headline(rows)
    for name in ("encode_floor_mb_s_1400", "decode_floor_mb_s_1400", "decode_floor_vs_torch_64k",
                 "decode_vs_torch_64k_without_crc", "decode_vs_torch_64k", "encode_mb_s_1400"):
        assert figures[name] > 0, name
