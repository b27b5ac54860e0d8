"""Time-domain power patterns agreed over X2 (benchmarks/basestation_patterns.py, a headroom study's rule
family: measured, not a heuristic of the product)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.basestation_patterns import PATTERN_START, PatternRule, pattern_slots, tune_pattern, x2_colouring
from apps.basestation.rules import RULE_START, LoadRatioRule, play
from envs.basestation import BaseStationParallelEnv, load_scenario

SMALL = {"episode_steps": 12, "initial_users": 30, "max_users": 60}


@pytest.fixture(scope="module")
def hotspot():
    return BaseStationParallelEnv(load_scenario("hotspot", **SMALL))


def _edges(net):
    g = net.x2_graph
    return [(g.nodes[u]["index"], g.nodes[v]["index"]) for u, v in g.edges]


@pytest.mark.parametrize("scenario", ["hotspot", "uniform", "outage", "night"])
def test_x2_neighbours_never_share_a_colour_nor_a_slot(scenario):
    net = BaseStationParallelEnv(load_scenario(scenario)).network
    colour = x2_colouring(net)
    edges = _edges(net)
    assert edges and all(colour[i] != colour[j] for i, j in edges)
    k = int(colour.max()) + 1
    for period in (k, k + 1, 8):
        slot = pattern_slots(net, 0, period)
        assert all(slot[i] != slot[j] for i, j in edges)
        assert ((0 <= slot) & (slot < period)).all()
    assert (x2_colouring(net) == colour).all()  # the same on every call


def test_layer_mode_puts_macros_and_small_cells_in_different_slots(hotspot):
    net = hotspot.network
    slot = pattern_slots(net, 1, 4)
    assert (slot[net.layout.is_macro] == 0).all() and (slot[~net.layout.is_macro] == 1).all()


@pytest.mark.parametrize("pattern", [dict(PATTERN_START), dict(PATTERN_START, period=3),
                                     dict(PATTERN_START, period=0, macro_down=2, small_down=1)])
def test_pattern_without_depth_or_period_is_the_tuned_rule_exactly(hotspot, pattern):
    params = dict(RULE_START, hi_macro=0.5, ema=0.5)
    a, b = LoadRatioRule(hotspot, params), PatternRule(hotspot, params, pattern)
    obs_a, _ = hotspot.reset(seed=4)
    acts_a = []
    while hotspot.agents:
        x = a.actions(obs_a)
        acts_a.append(x)
        obs_a, *_ = hotspot.step({f"bs_{i}": x[i] for i in range(len(x))})
    obs_b, _ = hotspot.reset(seed=4)
    for x in acts_a:
        y = b.actions(obs_b)
        assert (x == y).all()
        obs_b, *_ = hotspot.step({f"bs_{i}": y[i] for i in range(len(y))})
    assert play(hotspot, a, 4) == play(hotspot, b, 4)


def test_stations_step_down_only_in_their_slot(hotspot):
    net = hotspot.network
    params = dict(RULE_START, hi_macro=99, hi_small=99, lo=-99, p5_sinr_db=99)  # the rule: full power
    pat = dict(PATTERN_START, period=4, macro_down=2, small_down=1)
    rule = PatternRule(hotspot, params, pat)
    slot = pattern_slots(net, 0, 4)
    full = net.n_power_levels - 1
    obs, _ = hotspot.reset(seed=5)
    for _ in range(8):
        a = rule.actions(obs)
        turn = (net.t + 1) % 4 == slot
        want = np.where(turn, full - np.where(net.layout.is_macro, 2, 1), full)
        assert (a[:, 0] == want).all()
        obs, *_ = hotspot.step({f"bs_{i}": a[i] for i in range(len(a))})
    # a trigger no station meets: no pattern at all
    never = PatternRule(hotspot, params, dict(pat, trigger=-99))
    obs, _ = hotspot.reset(seed=5)
    assert (never.actions(obs)[:, 0] == full).all()
    with pytest.raises(ValueError, match="unknown pattern"):
        PatternRule(hotspot, params, {"depth": 1})


def test_tune_pattern_never_returns_a_pattern_worse_than_the_rule_on_its_seeds(hotspot):
    params = dict(RULE_START)
    base_pf = np.mean([play(hotspot, LoadRatioRule(hotspot, params), s)[0] for s in (1, 2)])
    pattern, pf, e, tried, on = tune_pattern(hotspot, params, (1, 2), e_max=1e9, passes=1)
    assert pf >= base_pf - 1e-9 and tried > 10
    assert set(on["pattern"]) == set(PATTERN_START)
    assert "fixed" in on and on["fixed"]["pattern"]["trigger"] == 99
    assert on["pattern"]["period"] > 0 and on["pattern"]["macro_down"] + on["pattern"]["small_down"] > 0
    if pattern["period"] == 0 or (pattern["macro_down"] == 0 and pattern["small_down"] == 0):
        assert pf == pytest.approx(base_pf)
