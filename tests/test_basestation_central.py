"""The central look-ahead reference (apps/basestation/central.py; issue 15 item 2): causal,
greedy, and reported by benchmarks/basestation.py as the strongest central reference."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from gymnasium.utils import seeding

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import benchmarks.basestation as bench
from apps.basestation.central import CentralLookahead, future_rng
from apps.basestation.config import load_app_scenario
from apps.basestation.learner import fork_network
from envs.basestation import BaseStationParallelEnv, load_scenario

SMALL = {"episode_steps": 12, "initial_users": 30, "max_users": 60}


@pytest.fixture(scope="module")
def hotspot():
    return BaseStationParallelEnv(load_scenario("hotspot", **SMALL))


def _advance(env, seed, steps):
    env.reset(seed=seed)
    for _ in range(steps):
        env.step({})  # full power, offset 0
    return env.network


def test_futures_are_never_the_episodes_stream():
    for seed in (0, 100, 30000):
        episode = seeding.np_random(seed)[0].integers(0, 2**62, size=4)
        for t, f in ((0, 0), (1, 0), (0, 2), (57, 1)):
            assert (future_rng(seed, t, f).integers(0, 2**62, size=4) != episode).all()
        # why the last word is 7: numpy pads an episode seed's entropy with zeros
        assert (np.random.default_rng([seed, 0, 0, 0]).integers(0, 2**62, size=4) == episode).all()
    with pytest.raises(ValueError):
        future_rng(2**32, 0, 0)


def test_choice_does_not_change_with_the_episodes_future(hotspot):
    net = _advance(hotspot, 4, 3)
    other = fork_network(net)
    other.rng = np.random.default_rng(12345)  # same present, another future
    before = net.rng.bit_generator.state
    a = CentralLookahead(hotspot, horizon=2, futures=2, candidates="axes", seed=4).actions(net)
    b = CentralLookahead(hotspot, horizon=2, futures=2, candidates="axes", seed=4).actions(other)
    assert (a == b).all()
    assert net.rng.bit_generator.state == before  # never drawn from
    assert (a != net.default_actions()).any()  # it did decide something


def test_never_worse_than_no_change_on_its_own_forecast(hotspot):
    net = _advance(hotspot, 7, 2)
    ctrl = CentralLookahead(hotspot, horizon=2, futures=2, candidates="all", seed=7, energy_weight=1.0)
    start = net.default_actions()
    chosen = ctrl.actions(net)
    assert ctrl.decisions and all(d.chosen >= d.no_change for d in ctrl.decisions)
    # chained: the joint action's forecast is at least holding the start's
    assert ctrl.value(net, chosen, int(net.t)) >= ctrl.value(net, start, int(net.t)) - 1e-9


def test_axes_candidates_move_one_axis_and_include_sleep(hotspot):
    net = hotspot.network
    ctrl = CentralLookahead(hotspot, candidates="axes")
    cands = ctrl.station_candidates(net, np.array([1, 0, 0]))
    assert all(c[0] == 1 or c[1] == 0 for c in cands[:-1])
    assert cands[-1] == (net.n_power_levels - 1, net.default_cio_index, 1)
    assert len(cands) == net.n_power_levels + net.n_cio


def _rows(policy, pfs, scenarios=("a", "b"), train_seed=0):
    return [{"scenario": s, "policy": policy, "seed": 100, "train_seed": train_seed, "pf_utility": pf,
             "energy_kj": 10.0, "p5_user_rate_mbps": 1.0, "handovers": 5.0, "pingpong_rate": 0.0}
            for s, pf in zip(scenarios, pfs)]


@pytest.mark.parametrize("search, lookahead, strongest", [((10.2, 10.1), (11.0, 12.0), "central_lookahead"),
                                                           ((13.0, 12.5), (11.0, 12.0), "central_search")])
def test_gap_to_central_is_against_the_strongest_reference(search, lookahead, strongest):
    rows = (_rows("tuned_rule", (10.0, 10.0)) + _rows("mfd", (10.5, 10.5)) + _rows("central_search", search)
            + _rows("central_lookahead", lookahead, train_seed=None))
    out = bench.learning_figures(rows, ["a", "b"], {})
    f = out["figures"]
    assert f["central_reference"] == strongest == out["reference"]["central_reference"]
    ref = search if strongest == "central_search" else lookahead
    assert f["mfd_gap_to_central"] == pytest.approx(np.mean([(10.5 - r) / r for r in ref]))
    assert f["central_lookahead_pf_gain_vs_tuned_rule_mean"] == pytest.approx(np.mean([(x - 10) / 10 for x in lookahead]))
    # without the look-ahead, the search as before
    old = bench.learning_figures([r for r in rows if r["policy"] != "central_lookahead"], ["a", "b"], {})
    assert old["figures"]["central_reference"] == "central_search"
    assert old["figures"]["mfd_gap_to_central"] == pytest.approx(np.mean([(10.5 - r) / r for r in search]))


def test_benchmark_plays_a_central_lookahead_row(monkeypatch):
    tiny = load_app_scenario("outage").with_env(episode_steps=3, initial_users=12, max_users=24)
    tiny = tiny.with_training(eval_seeds=(100,))
    monkeypatch.setattr(bench, "_scenario", lambda *a, **k: tiny)
    rows, _ = bench._lookahead_task("outage", {"horizon": 1, "futures": 1, "candidates": "axes",
                                               "energy_weight": 1.0})
    assert [(r["policy"], r["seed"], r["train_seed"], r["steps"]) for r in rows] == [("central_lookahead", 100, None, 3)]
    out = bench.learning_figures(rows + [dict(rows[0], policy="tuned_rule", train_seed=0, pf_utility=1.0)],
                                 ["outage"], {})
    row = out["per_scenario"][0]
    assert "central_lookahead" in row["pf"] and "central_lookahead_pf_gain_vs_tuned_rule" in row
    assert out["figures"]["central_reference"] == "central_lookahead"
