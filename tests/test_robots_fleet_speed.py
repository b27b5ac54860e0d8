"""The fast fleet path (issue 16) measures and learns what the plain one does: batched
training takes the same env steps and gradient updates, measurements in a worker process
give the very scores the fleet's own process gives, and progress sees complete rows."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3")

from apps.robots.config import from_dict  # noqa: E402
from apps.robots.fleet import build_fleet, run_fleet  # noqa: E402

torch.set_num_threads(1)


def tiny(**changes):
    doc = {"name": "tiny", "duration": 8.0, "eval_interval": 4.0, "eval_episodes": 2,
           "learner": {"net_arch": [32, 32], "batch_size": 32, "learning_starts": 60, "local_steps": 25,
                       "buffer_size": 5000, "gradient_steps": 2},
           "robots": [{"arm": "panda", "goal_center": [0.05, 0.05], "goal_xy_range": 0.2},
                      {"arm": "kuka", "goal_center": [-0.05, 0.0], "goal_xy_range": 0.2},
                      {"arm": "panda", "join_at": 0.5}]}
    doc.update(changes)
    return from_dict(doc)


def _run(scenario, policy="isolated"):
    fleet = build_fleet(scenario, 0, policy)
    rows = []
    try:
        result = run_fleet(fleet, lambda t, fl: rows.append((t, list(fl.world.result.scores[-1]))))
        updates = [int(lr.model._n_updates) for lr in fleet.learners.values()]
        steps = [lr.env_steps for lr in fleet.learners.values()]
    finally:
        fleet.close()
    return result, rows, updates, steps


def test_measurements_in_a_worker_are_the_fleets_own_and_progress_sees_them():
    inline, rows_inline, _, _ = _run(tiny(eval_workers=0))
    worker, rows_worker, _, _ = _run(tiny(eval_workers=1))
    assert np.array_equal(np.asarray(inline.scores), np.asarray(worker.scores), equal_nan=True)
    assert [t for t, _ in rows_inline] == [t for t, _ in rows_worker] == inline.times[: len(rows_inline)]
    # a robot that is there has a score in every row progress hears of (the joiner: NaN before it joins)
    for (t, row_i), (_, row_w) in zip(rows_inline, rows_worker):
        assert np.array_equal(np.asarray(row_i), np.asarray(row_w), equal_nan=True)
        assert not math.isnan(row_w[0]) and not math.isnan(row_w[1])


def test_batched_training_takes_the_same_steps_and_updates():
    _, _, updates_plain, steps_plain = _run(tiny(learner={**tiny().learner.model_dump(), "batched": False},
                                                 eval_workers=0), policy="mfd")
    _, _, updates_batched, steps_batched = _run(tiny(eval_workers=0), policy="mfd")
    assert steps_plain == steps_batched
    assert updates_plain == updates_batched and sum(updates_batched) > 0


def test_a_run_returns_with_every_chunk_it_counts_trained():
    """The nodes' last chunks (asked for at the end time) are trained inside run_fleet, not
    later when something reads the learners: a timing of run_fleet covers every env step."""
    fleet = build_fleet(tiny(eval_workers=0), 0, "isolated")
    try:
        run_fleet(fleet)
        learners = list(fleet.learners.values())
        assert all(lr.batcher is not None for lr in learners)
        assert not any(lr.batcher.pending(lr.model) for lr in learners)
    finally:
        fleet.close()


def test_the_wall_bound_spreads_the_new_paths_cpu_over_every_cpu():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.robots_speed import _wall_bound

    today = {"variant": "today", "wall_s": 9.0, "env_steps": 1000}
    new = {"variant": "new", "cpu_s": 2.5, "worker_cpu_s": 2.0, "env_steps": 1000}
    # 4.5 CPU seconds over 2 CPUs take at least 2.25 s: at most 4x today's 9 s
    assert _wall_bound([today, new], 2) == pytest.approx(4.0)
    assert _wall_bound([today, new], 1) == pytest.approx(2.0)
    # more env steps in the same CPU time raise it in proportion
    assert _wall_bound([today, dict(new, env_steps=2000)], 2) == pytest.approx(8.0)
