"""benchmarks/codec.py: its floor does the work any implementation of the wire format must do."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.codec import headline, measure, mlp_state  # noqa: E402

from mfd_core import codec, packet  # noqa: E402


def test_the_floors_checksums_are_the_ones_the_datagrams_carry():
    # the floor's CRC32C work is the real check: the value a receiver compares with the header
    state = mlp_state(3_000)
    for datagram in codec.to_datagrams(state, origin=1, destination=2, model_version=1, message_id=1, mtu=1400):
        view = memoryview(datagram)
        (header,) = np.frombuffer(view[:packet.HEADER_SIZE], dtype=packet.HEADER_DTYPE)
        assert packet.checksum_of(view) == header["checksum"]
        packet.parse(view)  # and the datagram is intact (parse checks that same value)


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
