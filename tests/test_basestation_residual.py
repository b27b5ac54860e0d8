"""Residual station agents: corrections on top of the tuned MLB rule (apps/basestation/residual.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from apps.basestation.config import load_app_scenario
from apps.basestation.evaluation import StationController, evaluate
from apps.basestation.learner import RadioCommons, StationLearner, StationView
from apps.basestation.residual import RESIDUAL_FILE, Residual
from apps.basestation.rules import RULE_START, LoadRatioRule
from apps.basestation.training import train_fleet
from envs.basestation import BaseStationParallelEnv

from test_basestation_app import TINY, one_thread  # noqa: F401 (autouse: one thread, as there)

# A rule that moves every head: power steps down on load, offsets follow the ratio, idle
# stations sleep, and the ratio has memory (the residual must keep the rule's state right).
BUSY_RULE = dict(RULE_START, hi_macro=0.25, slope_macro=0.5, lo=-0.5, light_down=2, sleep_users=3, sleep_nb=20,
                 ema=0.5, p5_sinr_db=10)


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    sc = load_app_scenario(path)
    assert sc.training.action == "residual"  # the default for station agents
    # small cells too: in the 7-macro wrap-around layout no awake macro may sleep
    return sc.with_env(n_small_cells=7)


def _rule_episode(sc, params, seed):
    env = BaseStationParallelEnv(sc.env)
    rule = LoadRatioRule(env, params)
    obs, _ = env.reset(seed=seed)
    out = []
    while env.agents:
        a = rule.actions(obs)
        out.append(a)
        obs, *_ = env.step({ag: a[i] for i, ag in enumerate(env.possible_agents)})
    return np.array(out)


def _controller_episode(sc, controller_of, seed):
    env = BaseStationParallelEnv(sc.env)
    controller = controller_of(env)
    obs, _ = env.reset(seed=seed)
    out = []
    while env.agents:
        d = controller(obs)
        out.append(np.stack([d[ag] for ag in env.possible_agents]))
        obs, *_ = env.step(d)
    return np.array(out)


def test_untrained_residual_stations_play_the_tuned_rule_exactly(tiny, tmp_path):
    commons = RadioCommons(tiny.env, tiny.training, seed=0, rule_params=BUSY_RULE)
    learners = [StationLearner(commons, i, tiny.training, seed=0) for i in range(commons.S) if not commons.off[i]]
    for learner in learners:
        learner.save(tmp_path / f"bs_{learner.station}" / "model.zip")
    (tmp_path / RESIDUAL_FILE).write_text(json.dumps({"rule_params": BUSY_RULE, "steps": 2}))
    rule = _rule_episode(tiny, BUSY_RULE, seed=5)
    played = _controller_episode(tiny, lambda env: StationController(env, tmp_path), seed=5)
    assert np.array_equal(played, rule)
    # the rule did move every head, so "exactly" says something
    assert len(np.unique(rule[:, :, 0])) > 1 and len(np.unique(rule[:, :, 1])) > 1 and rule[:, :, 2].any()
    # its twin scores it as the rule (1.0 by construction) and it runs that from the start
    assert learners[0].score() == 1.0 and learners[0].rule_start[1] == 1.0
    start = learners[0].rule_start[0]
    assert all(torch.equal(v, start[k]) for k, v in learners[0].deployed_state().items())


def _trained_station(tiny):
    commons = RadioCommons(tiny.env, tiny.training, seed=0, rule_params=BUSY_RULE)
    station = next(i for i in range(commons.S) if not commons.off[i])
    learner = StationLearner(commons, station, tiny.training.model_copy(update={"static_bias": 0.0}), seed=0)
    before = learner.get_state()
    learner.train(40)
    trained = learner.get_state()
    assert any(not torch.equal(trained[k], before[k]) for k in trained)  # the update moved it
    return learner, before, trained


def test_a_station_without_the_deploy_gate_runs_the_model_it_trains(tiny):
    # deploy = "always" and FedAvg's clients never call promote: they run what they train
    # (they used to run the untrained model, the rule, for the whole run)
    learner, _, trained = _trained_station(tiny)
    assert all(torch.equal(v, trained[k]) for k, v in learner.deployed_state().items())


def test_the_deploy_gate_first_compares_a_trained_model_with_the_rule(tiny):
    learner, before, trained = _trained_station(tiny)
    scored = learner.score()
    promoted = learner.promote()
    assert promoted == (scored >= 1.0)  # the rule scores 1.0 on the twin
    runs = learner.deployed_state()
    assert all(torch.equal(v, (trained if promoted else before)[k]) for k, v in runs.items())


def test_corrections_map_onto_the_rule_clipped_and_sleep_only_where_allowed(tiny):
    env = BaseStationParallelEnv(tiny.env)
    res = Residual(env, BUSY_RULE, steps=2)
    obs, _ = env.reset(seed=1)
    aug = res.observe(obs)
    assert aug.shape == (env.network.n_stations, res.obs_dim) and aug.dtype == np.float32
    assert ((aug >= 0) & (aug <= 1)).all()
    base = res.base.copy()
    assert np.array_equal(res.to_env(res.zeros()), base)
    net = env.network
    down = res.zeros()
    down[:, 0] -= 2
    down[:, 1] -= 2
    a = res.to_env(down)
    assert np.array_equal(a[:, 0], np.maximum(base[:, 0] - 2, 0))
    assert np.array_equal(a[:, 1], np.maximum(base[:, 1] - 2, 0))
    up = res.zeros()
    up[:, 0] += 1  # power may not be raised above the rule's by default
    with pytest.raises(ValueError, match="outside"):
        res.to_env(up)
    raising = Residual(env, BUSY_RULE, steps=2, raise_power=True)
    raising.observe(obs)  # the rule's memory is its own: the same plan as the first one's
    up = raising.zeros()
    up[:, 0] += 2
    up[:, 1] += 2
    a = raising.to_env(up)
    assert np.array_equal(a[:, 0], np.minimum(base[:, 0] + 2, net.n_power_levels - 1))
    assert np.array_equal(a[:, 1], np.minimum(base[:, 1] + 2, net.n_cio - 1))
    flip = res.zeros()
    flip[:, 2] = 1
    a = res.to_env(flip)
    asleep = base[:, 2] > 0
    assert (a[asleep, 2] == 0).all()  # waking is always allowed
    assert np.array_equal(a[~asleep, 2] > 0, res.eligible[~asleep])  # sleeping only where the rule may


def test_residual_view_is_a_gymnasium_env(tiny):
    from gymnasium.utils.env_checker import check_env

    env = BaseStationParallelEnv(tiny.env)
    view = StationView(env, station=2, residual=Residual(env, BUSY_RULE))
    check_env(view, skip_render_check=True)
    obs, _ = view.reset(seed=3)
    assert obs.shape == view.observation_space.shape == (env.network.obs_dim + 3 + env.network.n_slots,)


def test_difference_credit_is_against_the_rule(tiny):
    from apps.basestation.learner import _Fork

    sc = tiny.with_training(reward="difference", difference_steps=2)
    commons = RadioCommons(sc.env, sc.training, seed=0, rule_params=BUSY_RULE)
    stations = np.arange(1, commons.S)
    assert (commons._credits(commons.default.copy(), stations) == 0).all()
    actions = commons.default.copy()
    actions[3] = [0, 0, 0]  # station 3: two levels down and two offset steps down from the rule's
    credit = commons._credits(actions, stations)
    played = commons.residual_of(commons.env).to_env(actions)
    rule = commons.residual_of(commons.env).base
    alt = played.copy()
    alt[3] = rule[3]
    expected = _Fork(commons.env.network).step_total(played, 2) - _Fork(commons.env.network).step_total(alt, 2)
    assert credit[stations == 3][0] == pytest.approx(expected) and (credit[stations != 3] == 0).all()


def test_trained_residual_fleet_saves_its_rule_and_evaluation_plays_it(tiny, tmp_path):
    tiny = tiny.with_env(n_small_cells=0)  # the small cell of the station in outage would have no X2 link
    folder = tmp_path / "models" / tiny.name / "tuned_rule"
    folder.mkdir(parents=True)
    (folder / "params.json").write_text(json.dumps(BUSY_RULE))  # as `train` tunes it first
    summary = train_fleet(tiny.with_training(rounds=1), "mfd", 0, tmp_path / "models")
    assert summary["stations"] == 6
    saved = json.loads((tmp_path / "models" / tiny.name / "mfd" / RESIDUAL_FILE).read_text())
    assert saved == {"rule_params": BUSY_RULE, "steps": tiny.training.residual_steps, "raise_power": False}
    rows, notes = evaluate([tiny], tmp_path / "models", ("tuned_rule", "mfd"))
    assert not notes and {r["policy"] for r in rows} == {"tuned_rule", "mfd"}
    # a station model that was never trained away from "no correction" plays the rule
    for r in rows:
        assert np.isfinite(r["pf_utility"])


def test_absolute_stations_still_choose_outright(tiny):
    sc = tiny.with_training(action="absolute")
    commons = RadioCommons(sc.env, sc.training, seed=0)
    net = commons.env.network
    assert commons.residual_of(commons.env) is None and commons.obs_dim == net.obs_dim
    assert commons.nvec == [net.n_power_levels, net.n_cio, 2]
    learner = StationLearner(commons, 1, sc.training, seed=0)
    assert learner.deployed is None  # the first trained model is deployed, as before
    assert torch.isfinite(learner.outputs(torch.rand(3, net.obs_dim))).all()
