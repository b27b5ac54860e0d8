"""benchmarks/robots_push_headroom.py: steps to a success rate on a curve, and its overrides."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.robots_push_headroom import parse_overrides, steps_to  # noqa: E402


def test_steps_to_is_the_first_measurement_at_or_above_the_rate():
    curve = [{"env_steps": 0, "success": 0.0}, {"env_steps": 2000, "success": 0.3},
             {"env_steps": 4000, "success": 0.5}, {"env_steps": 6000, "success": 0.4},
             {"env_steps": 8000, "success": 0.93}]
    assert steps_to(curve, 0.5) == 4000  # the first time, not the last: a dip after does not undo it
    assert steps_to(curve, 0.9) == 8000
    assert steps_to(curve, 0.95) is None  # not reached within the budget
    assert steps_to([{"env_steps": 0, "success": 0.0, "progress": 0.6}], 0.5, key="progress") == 0


def test_overrides_parse_numbers_tuples_and_words():
    assert parse_overrides(["learning_rate=1e-3", "net_arch=(256, 256)", "algo=sac"]) == {
        "learning_rate": 1e-3, "net_arch": (256, 256), "algo": "sac"}
    with pytest.raises(ValueError):
        parse_overrides(["learning_rate"])


def test_moved_share_counts_the_chunks_transitions_that_moved_the_block_across_the_wrap():
    import numpy as np

    from benchmarks.robots_push_headroom import moved_share

    class Buffer:
        buffer_size = 4
        observations = {"achieved_goal": np.zeros((4, 1, 3), dtype=np.float32)}
        next_observations = {"achieved_goal": np.zeros((4, 1, 3), dtype=np.float32)}

    b = Buffer()
    b.next_observations["achieved_goal"][3, 0, 0] = 0.01  # moved 1 cm
    b.next_observations["achieved_goal"][0, 0, 0] = 0.0005  # 0.5 mm: the block at rest
    assert moved_share(b, 2, 1) == 1 / 3  # positions 2, 3, 0 (the buffer wrapped)
    assert moved_share(b, 0, 2) == 0.0
    assert moved_share(b, 1, 1) is None


def test_episode_progress_is_half_the_distance_closed_or_one_on_success():
    import numpy as np

    from benchmarks.robots_push_headroom import episode_progress

    def obs(block):
        return {"achieved_goal": np.array(block, dtype=np.float32), "desired_goal": np.zeros(3, dtype=np.float32)}

    assert episode_progress(obs([0.2, 0, 0]), obs([0.1, 0, 0]), False) == pytest.approx(0.25)
    assert episode_progress(obs([0.2, 0, 0]), obs([0.3, 0, 0]), False) == 0.0  # pushed away: no credit
    assert episode_progress(obs([0.2, 0, 0]), obs([0.2, 0, 0]), True) == 1.0
