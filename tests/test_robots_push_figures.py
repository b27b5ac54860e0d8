"""benchmarks/robots.py --task push: the figures issue 16 asks for, from run records."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.robots import push_task_figures  # noqa: E402


def _record(scores, steps, joins=(None, None, 10.0)):
    robots = [{"join_time": j, "env_steps": steps[-1][k], "final_success": scores[-1][k], "final_progress": 0.5}
              for k, j in enumerate(joins)]
    return {"robots": robots, "scores": scores, "env_steps": steps}


def test_push_figures_count_each_robots_own_steps_and_the_fleets_total():
    steps = [[0, 0, 0], [100, 100, 0], [200, 200, 50], [300, 300, 150]]
    iso = _record([[0, 0, None], [0.1, 0.0, None], [0.4, 0.5, 0.0], [0.6, 0.9, 0.6]], steps)
    mfd = _record([[0, 0, None], [0.5, 0.6, None], [0.9, 0.8, 0.5], [1.0, 1.0, 1.0]], steps)
    f = push_task_figures({("isolated", 0): iso, ("mfd", 0): mfd}, [0], ["isolated", "mfd"])
    # founders: MFD at 50 % after 100 steps each, isolated after 300 and 200
    assert f["founders_ratio_50"] == pytest.approx((100 / 300 + 100 / 200) / 2)
    # the joiner: 50 MFD steps, 150 isolated
    assert f["joiner_ratio_50"] == pytest.approx(50 / 150)
    # the fleet's total when the founders' mean first reaches 50 %: 200 steps, over one isolated robot's 250 (median)
    assert f["fleet_total_over_single_50"] == pytest.approx(200 / 250)
    assert f["censored_50"] is False
    # 90 %: isolated founder 0 never gets there: censored at its 300 steps
    assert f["censored_90"] is True


def test_a_policy_that_never_gets_there_is_censored_not_dropped():
    steps = [[0, 0, 0], [100, 100, 0], [200, 200, 100]]
    none = _record([[0, 0, None], [0, 0, None], [0, 0, 0]], steps)
    f = push_task_figures({("isolated", 0): none, ("mfd", 0): none}, [0], ["isolated", "mfd"])
    assert f["founders_ratio_50"] is None and f["joiner_ratio_50"] is None
    assert f["fleet_total_over_single_50"] is None
    assert f["mfd_final_success_median"] == 0
