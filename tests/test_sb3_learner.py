"""SB3Learner: the stable-baselines3 adapter behind the Learner interface."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3")
from stable_baselines3 import SAC, TD3, HerReplayBuffer  # noqa: E402

import envs.robots  # noqa: E402,F401  (registers mfd/*)
from mfd_core import codec, knowledge  # noqa: E402
from mfd_core.learners.sb3 import SB3Learner, SB3PolicyFamily, flatten_obs, obs_layout, unflatten_obs  # noqa: E402
from mfd_core.reassembly import Reassembler  # noqa: E402

torch.set_num_threads(1)

ENV = "mfd/PandaReach-v0"


def _model(algo=TD3, seed=0, width=32, env_id=ENV):
    env = gym.make(env_id)
    kwargs = dict(policy_kwargs={"net_arch": [width, width]}, learning_starts=50, seed=seed, buffer_size=5000,
                  batch_size=64, gamma=0.95)
    if isinstance(env.observation_space, gym.spaces.Dict):
        return algo("MultiInputPolicy", env, replay_buffer_class=HerReplayBuffer, **kwargs)
    return algo("MlpPolicy", env, **kwargs)


def _learner(algo=TD3, seed=0, width=32, steps=120, **kw):
    learner = SB3Learner(_model(algo, seed, width), lambda: gym.make(ENV), eval_episodes=3, seed=seed, **kw)
    if steps:
        learner.train(steps)
    return learner


@pytest.fixture(scope="module")
def td3():
    return _learner(TD3)


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_flat_layout_round_trips_dict_observations():
    env = gym.make(ENV)
    obs, _ = env.reset(seed=3)
    layout = obs_layout(env.observation_space)
    flat = flatten_obs(obs, layout)
    back = unflatten_obs(torch.from_numpy(flat), layout)
    for key in obs:
        assert np.array_equal(back[key][0].numpy(), obs[key])


def test_get_set_state_round_trip_exactly(td3):
    state = td3.get_state()
    assert state and all(k.split(".")[0] in ("actor", "critic") for k in state)
    other = {k: torch.randn_like(v) for k, v in state.items()}
    td3.set_state(other)
    assert _equal(td3.get_state(), other)
    td3.set_state(state)
    assert _equal(td3.get_state(), state)


def test_set_state_shifts_targets_with_the_network(td3):
    policy = td3.policy
    target_before = {k: v.clone() for k, v in policy.actor_target.state_dict().items()}
    state = td3.get_state()
    shifted = {k: v + 1.0 for k, v in state.items()}
    td3.set_state(shifted)
    for k, v in policy.actor_target.state_dict().items():
        assert torch.allclose(v, target_before[k] + 1.0)
    td3.set_state(state)
    for k, v in policy.actor_target.state_dict().items():
        assert torch.allclose(v, target_before[k], atol=1e-6)


def test_masked_set_state_writes_only_the_mask(td3):
    state = td3.get_state()
    key = "actor.mu.0.weight"
    mask = torch.zeros_like(state[key], dtype=torch.bool)
    mask[0] = True
    td3.set_state({key: torch.zeros_like(state[key])}, {key: mask})
    now = td3.get_state()[key]
    assert torch.all(now[0] == 0) and torch.equal(now[1:], state[key][1:])
    td3.set_state(state)


def test_score_of_a_candidate_leaves_the_learner_alone(td3):
    state = td3.get_state()
    own = td3.score()
    td3.score({k: torch.randn_like(v) for k, v in state.items()})
    assert _equal(td3.get_state(), state)
    assert td3.score() == own  # fixed seeded episodes: the same policy scores the same


def test_train_counts_env_steps_and_trainable_freezes_the_rest():
    learner = _learner(TD3, steps=0)
    assert learner.train(60) == 60 and learner.env_steps == 60 and learner.work_done == 60
    before = learner.get_state()
    learner.train(60, trainable={"actor.mu.0.weight", "actor.mu.0.bias"})
    after = learner.get_state()
    assert not torch.equal(before["actor.mu.0.weight"], after["actor.mu.0.weight"])
    assert torch.equal(before["actor.mu.2.weight"], after["actor.mu.2.weight"])
    assert torch.equal(before["critic.qf0.0.weight"], after["critic.qf0.0.weight"])


def test_local_inputs_come_from_own_experience(td3):
    x = td3.local_inputs(50)
    assert x.shape == (50, td3.input_dim)
    fresh = _learner(TD3, steps=0)
    assert len(fresh.local_inputs(20)) == 20  # start states of its own env


def test_clone_is_independent_and_distils_towards_a_teacher(td3):
    teacher = _learner(TD3, seed=5, steps=60)
    trial = td3.clone()
    state = td3.get_state()
    x = td3.local_inputs(256)
    gap = float(((trial.outputs(x) - teacher.outputs(x)) ** 2).mean())
    loss = trial.distil_from(teacher.outputs, 150, "deterministic")
    assert loss < gap / 4
    assert _equal(td3.get_state(), state)  # the original did not move


def test_sac_outputs_gaussian_and_takes_a_deterministic_teacher(td3):
    sac = _learner(SAC, steps=60)
    assert sac.output_kind == "gaussian"
    mean, log_std = sac.outputs(sac.local_inputs(8))
    assert mean.shape == log_std.shape == (8, 3)
    loss = sac.clone().distil_from(td3.outputs, 20, "gaussian")
    assert np.isfinite(loss)


def test_policy_packet_loads_into_another_learner(td3):
    receiver = _learner(TD3, seed=9, steps=0)
    state = td3.get_state()
    datagrams = codec.to_datagrams(state, origin=1, destination=2, model_version=3, message_id=7, mtu=1400,
                                   precision="fp32")
    reassembler = Reassembler()
    message = None
    for d in reversed(datagrams):  # out of order on purpose
        message = reassembler.receive(d, 0.0) or message
    assert message is not None and message.complete
    receiver.set_state(message.state, message.masks)
    assert _equal(receiver.get_state(), state)


def test_another_family_teaches_through_absorb(td3):
    family = SB3PolicyFamily("sac-mlp", lambda r: _model(SAC, width=max(1, round(32 * r))).policy)
    sac = _learner(SAC, seed=3, steps=60)
    student = td3.clone()
    incoming = knowledge.IncomingModel(family="sac-mlp", state=sac.get_state(), ratio=1.0)
    result = knowledge.absorb_knowledge(student, incoming, gate=knowledge.Gate(tolerance=1.0, trial_steps=10),
                                        families={"sac-mlp": family})
    assert result.outcomes[0].action in ("distilled", "refused")
    assert result.outcomes[0].decision.reason  # built, scored and decided: no crash on the layout


def test_save_writes_an_sb3_zip(td3, tmp_path):
    path = td3.save(tmp_path / "policy")
    loaded = TD3.load(path, env=gym.make(ENV))  # HER models load with an env
    obs, _ = gym.make(ENV).reset(seed=0)
    a, _ = loaded.predict(obs, deterministic=True)
    assert np.allclose(a, td3.act(obs), atol=1e-6)


def test_actor_warmup_trains_only_the_critic_after_an_install():
    learner = SB3Learner(_model(TD3), lambda: gym.make(ENV), eval_episodes=2, actor_warmup=60)
    learner.train(60)
    learner.set_state(learner.get_state())  # the same state: nothing installed, no warm-up
    assert learner._warmup_left == 0
    learner.initialise({k: v + 0.01 for k, v in learner.get_state().items()})  # a start, not an install
    assert learner._warmup_left == 0
    installed = {k: v + 0.01 if k.startswith("actor.") else v for k, v in learner.get_state().items()}
    learner.set_state(installed)
    learner.train(60)
    after = learner.get_state()
    assert all(torch.equal(after[k], installed[k]) for k in after if k.startswith("actor."))
    assert not torch.equal(after["critic.qf0.0.weight"], installed["critic.qf0.0.weight"])
    learner.train(60)  # warm-up over: the actor learns again
    assert not torch.equal(learner.get_state()["actor.mu.0.weight"], installed["actor.mu.0.weight"])


def test_critic_metric_runs_no_episode_and_refuses_a_random_actor():
    learner = _learner(TD3, steps=200, metric="critic")
    state = learner.get_state()
    own = learner.score()
    random_actor = {k: (torch.randn_like(v) * 0.3 if k.startswith("actor") else v) for k, v in state.items()}
    decision = knowledge.Gate(0.1).check(learner, random_actor)
    assert not decision.accepted and decision.candidate_score < own - 0.1
    assert learner.score_env_steps == 0  # judged on its own replay states, not in episodes
    assert _equal(learner.get_state(), state) and learner.score() == own


def test_critic_metric_judges_with_the_own_critic_not_the_candidates():
    learner = _learner(TD3, steps=120, metric="critic")
    state = learner.get_state()
    # a candidate cannot talk itself up: its critic, however optimistic, is not asked
    boastful = {k: (v + 100.0 if k.startswith("critic") and k.endswith("bias") else v) for k, v in state.items()}
    assert learner.score(boastful) == learner.score()


def test_critic_metric_needs_a_critic():
    from stable_baselines3 import PPO

    with pytest.raises(ValueError, match="critic"):
        SB3Learner(PPO("MlpPolicy", gym.make("Pendulum-v1"), n_steps=64, batch_size=64), lambda: gym.make("Pendulum-v1"),
                   metric="critic")


def test_shared_targets_travel_and_install_as_sent():
    sender = _learner(TD3, steps=0, share=("actor", "critic", "actor_target", "critic_target"))
    receiver = _learner(TD3, seed=1, steps=0, share=("actor", "critic", "actor_target", "critic_target"))
    state = sender.get_state()
    assert any(k.startswith("critic_target.") for k in state)
    sent = {k: v + 0.5 for k, v in state.items()}  # targets apart from their networks' shift
    receiver.set_state(sent)
    targets = receiver.policy.critic_target.state_dict()
    for k, v in targets.items():
        assert torch.equal(v, sent[f"critic_target.{k}"])  # written as sent, not shifted again
    with pytest.raises(ValueError, match="without their networks"):
        _learner(TD3, steps=0, share=("actor", "critic_target"))
