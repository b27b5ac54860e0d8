"""Stations that imitate the best look-ahead correction (apps/basestation/lookahead.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from apps.basestation.config import AppScenarioError, load_app_scenario
from apps.basestation.learner import RadioCommons, actor_logits, fork_network
from apps.basestation.lookahead import (LookaheadStationLearner, candidates, collect_labels, imitate, label_accuracy,
                                        label_episode, label_seeds)
from apps.basestation.residual import Residual
from apps.basestation.training import train_fleet
from envs.basestation import BaseStationParallelEnv

from test_basestation_app import TINY, one_thread  # noqa: F401 (autouse: one thread, as there)
from test_basestation_residual import BUSY_RULE


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return load_app_scenario(path).with_env(n_small_cells=7)


def _pf(net, actions, horizon):
    twin = fork_network(net)
    total = 0.0
    for _ in range(horizon):
        twin.step(actions)
        total += twin.kpis().pf_utility
    return total


def test_labels_are_the_best_lookahead_correction(tiny):
    env = BaseStationParallelEnv(tiny.env)
    res = Residual(env, BUSY_RULE, steps=2)
    cands = candidates(2)
    assert (cands[0] == res.zero).all() and len(cands) == 8
    lab = label_episode(env, res, seed=7, horizon=2, margin=0.0, cands=cands, steps=4)
    assert lab.labels.shape == (4, env.network.n_stations, 3) and lab.forks > 0
    # replay step 3 by hand: the label is the candidate whose fork gains most, none below the margin
    obs, _ = env.reset(seed=7)
    for t in range(4):
        o = res.observe(obs)
        rule = res.to_env(res.zeros())
        if t < 3:
            obs, *_ = env.step(res.actions_dict(rule))
    assert np.allclose(o, lab.obs[3])
    base = _pf(env.network, rule, 2)
    for s in np.flatnonzero(~env.network.off):
        values = []
        for c in cands:
            corr = res.zeros()
            corr[s] = c
            values.append(_pf(env.network, res.to_env(corr), 2) - base)
        best = int(np.argmax(values))
        if values[best] > 1e-12:
            assert np.array_equal(lab.labels[3, s], cands[best]), s
            assert np.isclose(lab.gains[3, s], values[best])
        else:
            assert np.array_equal(lab.labels[3, s], res.zero), s
    # a correction was labelled somewhere, and a margin above every gain labels none
    assert (lab.labels != res.zero).any()
    none = label_episode(env, res, seed=7, horizon=2, margin=1e9, cands=cands, steps=4)
    assert (none.labels == res.zero).all() and np.allclose(none.best_gain, lab.best_gain)


def test_label_seeds_never_evaluation_seeds():
    assert label_seeds(0, 3) == [30000, 30001, 30002]
    with pytest.raises(ValueError, match="evaluation"):
        label_seeds(0, 2, eval_seeds=(30001,))


def test_imitation_moves_the_policy_towards_the_labels(tiny):
    sc = tiny.with_training(learner="lookahead", n_epochs=20)
    commons = RadioCommons(sc.env, sc.training, seed=0, rule_params=BUSY_RULE)
    commons.labels = collect_labels(sc.env, BUSY_RULE, [7, 8], horizon=2, margin=0.0, steps=6)
    s = int(np.flatnonzero((commons.labels.labels != commons.default[0]).any(axis=2).any(axis=0))[0])
    learner = LookaheadStationLearner(commons, s, sc.training, seed=0)
    x, y = learner._rows(held_out=False)
    before = learner.held_out_accuracy()
    with torch.no_grad():
        logits0 = actor_logits(learner.policy, torch.from_numpy(x)).clone()
    for _ in range(30):
        learner.train(sc.training.chunk_steps)
    with torch.no_grad():
        logits1 = actor_logits(learner.policy, torch.from_numpy(x))
    assert not torch.allclose(logits0, logits1)
    fit = label_accuracy(learner.policy, x, y, commons.nvec, commons.default[s])
    # untrained it predicts "no correction" everywhere; trained it fits its labels
    assert fit["accuracy"] > fit["accuracy_no_correction"] and fit["correction_recall"] > 0.5
    assert before["predicted_correction_share"] == 0.0
    # the critic is not the imitation's business
    assert learner.samples > 0


def test_imitate_fits_a_fixed_rule(tiny):
    from apps.basestation.learner import StationView, make_ppo

    env = BaseStationParallelEnv(tiny.env)
    view = StationView(env, 1, residual=Residual(env, BUSY_RULE))
    model = make_ppo(view, tiny.training, seed=0)
    rng = np.random.default_rng(0)
    x = rng.random((200, view.observation_space.shape[0]), dtype=np.float32)
    y = np.tile([2, 2, 0], (200, 1))
    y[x[:, 0] > 0.5, 1] = 4  # offset up where the first feature is high
    loss = imitate(model.policy, x, y, [3, 5, 2], epochs=60, lr=1e-2)
    a = actor_logits(model.policy, torch.from_numpy(x))[:, 3:8].argmax(1).numpy()
    assert loss < 0.5 and (a == y[:, 1]).mean() > 0.8


def test_lookahead_needs_residual_actions(tiny):
    with pytest.raises(AppScenarioError, match="learner"):
        tiny.with_training(learner="lookahead", action="absolute")


def test_lookahead_fleet_trains_and_reports_its_labels(tmp_path):
    path = tmp_path / "fleet.toml"
    path.write_text(TINY)  # macros only: with the small cells the outage splits the X2 graph
    sc = load_app_scenario(path).with_training(learner="lookahead", lookahead_episodes=2, lookahead_horizon=2)
    summary = train_fleet(sc, "mfd", seed=0)
    look = summary["lookahead"]
    assert look["station_steps"] > 0 and 0 <= look["corrected_share"] <= 1
    assert look["seeds"] == [30000, 30001]
    assert summary["env_steps"] == 0  # no PPO experience: the labels are all it learned from
    assert set(look["held_out"]) == {f"bs_{i}" for i in range(sc.env.n_stations) if i not in sc.env.outage_stations}


def test_expected_labels_judge_every_candidate_on_the_same_other_futures(tiny):
    env = BaseStationParallelEnv(tiny.env)
    res = Residual(env, BUSY_RULE, steps=2)
    hind = label_episode(env, res, seed=7, horizon=2, margin=0.0, steps=3)
    exp1 = label_episode(env, res, seed=7, horizon=2, margin=0.0, steps=3, futures=2)
    exp2 = label_episode(env, res, seed=7, horizon=2, margin=0.0, steps=3, futures=2)
    # the same rule trajectory, other futures: other gains, deterministic given the seed
    assert np.allclose(hind.obs, exp1.obs) and not np.allclose(hind.best_gain, exp1.best_gain)
    assert np.array_equal(exp1.labels, exp2.labels) and np.allclose(exp1.table, exp2.table, equal_nan=True)
    assert exp1.forks == 2 * hind.forks
