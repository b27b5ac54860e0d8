"""Typed control and model records: one encode and one decode each; whatever a peer
sends decodes to a record or a MessageError, never anything else (issue 12)."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mfd_core.messages import (MAX_LABELS, Hello, MessageError, ModelHeader, Pull, Resend, Travel, decode,
                               decode_control)

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@given(score=finite, samples=st.integers(0, 2**32 - 1), compute=finite, memory=finite, width=finite,
       version=st.integers(0, 2**32 - 1), degree=st.integers(0, 0xFFFF), family=st.text(max_size=60),
       labels=st.lists(st.floats(0, 1, width=32), max_size=12))
def test_a_hello_round_trips(score, samples, compute, memory, width, version, degree, family, labels) -> None:
    hello = Hello(score, samples, compute, memory, family, width, version, tuple(labels), degree)
    back = decode_control(hello.encode())
    assert back == hello


def test_pull_and_resend_round_trip_and_a_resend_keeps_to_its_room() -> None:
    assert decode_control(Pull().encode()) == Pull()
    ranges = tuple((i * 10, i * 10 + 3) for i in range(300))
    request = Resend(4242, ranges)
    assert decode_control(request.encode()) == request
    small = decode_control(request.encode(max_bytes=101))
    assert small.message_id == 4242 and small.fragments == ranges[:12]  # 1 + 4 + 12 x 8 <= 101
    assert Resend.ranges([1, 2, 3, 7, 9, 10]) == ((1, 4), (7, 8), (9, 11))


@settings(max_examples=400)
@given(st.binary(max_size=300))
def test_any_bytes_decode_to_a_record_or_a_message_error(data: bytes) -> None:
    try:
        record = decode_control(data)
    except MessageError:
        return
    assert isinstance(record, (Hello, Pull, Resend))


def test_a_hello_with_a_non_finite_number_or_bad_name_is_refused() -> None:
    good = Hello(0.5, 1, 2.0, 3.0, "mlp", 1.0, 1).encode()
    nan = Hello(math.nan, 1, 2.0, 3.0, "mlp", 1.0, 1).encode()
    with pytest.raises(MessageError, match="finite"):
        decode_control(nan)
    bad_name = good[:42] + b"\x03\xff\xfe\xfd" + good[46:]
    with pytest.raises(MessageError):
        decode_control(bad_name)
    with pytest.raises(MessageError, match="unknown"):
        decode_control(b"Z")
    with pytest.raises(ValueError):
        Hello(0.5, 1, 2.0, 3.0, "mlp", 1.0, 1, labels=(0.1,) * (MAX_LABELS + 1)).encode()


def test_a_model_header_round_trips_and_refuses_wrong_fields() -> None:
    header = ModelHeader("travel", 120, "mlp", 0.5, score=0.75, travel=Travel(2, (1.0, 2.0), 3))
    assert decode(header.encode()) == header
    assert decode(ModelHeader("fedavg_update", 10, "mlp", 1.0, round=4).encode()).round == 4
    for bad in ({"kind": "model", "samples": "many"}, {"kind": "nonsense"}, {"kind": "model", "width": math.inf},
                {"kind": "model", "samples": True}, {"kind": "model", "family": "x" * 1000}, ["not", "a", "dict"]):
        with pytest.raises(MessageError):
            decode(bad)
