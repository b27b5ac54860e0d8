"""A short run of benchmarks/fuzz.py (issue 17): the receive path, fed mutations of valid
messages, random headers with valid checksums, the attack shapes and checked valid
messages, raises nothing but PacketError, keeps within its limits, and delivers what was
sent. (The million-input run and its timings are the benchmark's.)"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent.parent / "benchmarks" / "fuzz.py"


@pytest.fixture(scope="module")
def fuzz():
    spec = importlib.util.spec_from_file_location("fuzz_benchmark", FUZZ)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("seed", [1, 2])
def test_a_short_fuzz_finds_nothing(fuzz, seed):
    figures = fuzz.run(4000, seed, quick=True, attacks=False)["fuzz"]
    assert figures["inputs"] >= 4000
    assert figures["other_exceptions"] == 0, figures["other_exception_samples"]
    assert figures["internal_refusals"] == 0
    assert figures["limit_breaches"] == 0, figures["breach_samples"]
    assert figures["wrong_deliveries"] == 0, figures["wrong_samples"]
    assert figures["checked_messages_delivered"] > 0
    assert {"mutation", "forged header", "checked", "valid", "large model"} <= set(figures["by_kind"])
    stats = figures["stats"]
    assert stats["unkeyed"]["complete"] > 0 and stats["keyed"]["complete"] > 0  # not all refused
    assert stats["tiny limits"]["evicted"] + stats["tiny limits"]["over_limit"] > 0  # its limits were reached


def test_the_attack_shapes_reach_the_receiver(fuzz):
    """Every attack shape is a list of well-formed datagrams (it gets past the parser to
    the reassembler's checks)."""
    import random

    from mfd_core import packet

    names = set()
    for name, datagrams in fuzz.attack_shapes(random.Random(0), scale=0.05):
        names.add(name)
        assert datagrams and all(isinstance(packet.parse(d), packet.Packet) for d in datagrams[:50]), name
    assert len(names) >= 12
