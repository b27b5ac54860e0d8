"""TD3Batcher: robots' TD3 chunks side by side with their gradient steps batched (issue 16).

What must hold: the same learning per env step as SB3's own ``TD3.train`` (same update
count, same minibatches, same numbers to float rounding for one robot), deferred chunks
that start from the state the learner had, and robots that do not leak into each other.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3")
from stable_baselines3 import SAC, TD3, HerReplayBuffer  # noqa: E402

import envs.robots  # noqa: E402,F401  (registers mfd/*)
from mfd_core.learners.sb3 import SB3Learner  # noqa: E402
from mfd_core.learners.td3_batch import TD3Batcher, supports  # noqa: E402

torch.set_num_threads(1)

ENV = "mfd/PandaReach-v0"


def _model(seed=0, algo=TD3, gradient_steps=2, width=32, env_id=ENV):
    env = gym.make(env_id)
    return algo("MultiInputPolicy", env, replay_buffer_class=HerReplayBuffer, policy_kwargs={"net_arch": [width, width]},
                learning_starts=60, seed=seed, buffer_size=5000, batch_size=64, gamma=0.95,
                gradient_steps=gradient_steps, learning_rate=2e-3)


def _max_diff(a, b) -> float:
    sa, sb = a.policy.state_dict(), b.policy.state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[k] - sb[k]).abs().max()) for k in sa)


def test_one_robot_learns_what_sb3_learns_to_rounding():
    """From one seed, SB3's learn and the batcher take the same env steps and the same
    updates (same minibatches: presample off draws them as SB3 does) to float rounding."""
    steps = 66  # 6 env steps past learning_starts: 12 updates, 6 of the actor (policy_delay 2)
    sb3 = _model(seed=3)
    sb3.learn(steps)
    batched = _model(seed=3)  # built after sb3 learned: the same global seeding before its chunk
    batcher = TD3Batcher(presample=False)
    batcher.submit(batched, steps)
    batcher.flush()
    assert sb3.num_timesteps == batched.num_timesteps == steps
    assert sb3._n_updates == batched._n_updates == 2 * (steps - 60)
    assert _max_diff(sb3, batched) < 1e-5
    assert np.allclose(sb3.replay_buffer.actions[:steps], batched.replay_buffer.actions[:steps], atol=1e-5)
    # the optimiser state comes back too: a later SB3 step continues from it
    for opt_a, opt_b in ((sb3.actor.optimizer, batched.actor.optimizer), (sb3.critic.optimizer, batched.critic.optimizer)):
        sa, sb = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
        assert sa.keys() == sb.keys() and all(float(sa[k]["step"]) == float(sb[k]["step"]) for k in sa)
        assert all(torch.allclose(sa[k]["exp_avg_sq"], sb[k]["exp_avg_sq"], atol=1e-7) for k in sa)
    before = batched.policy.state_dict()["actor.mu.0.weight"].clone()
    batched.learn(2, reset_num_timesteps=False)  # SB3's own loop after a flush: the modules own their storage
    assert not torch.equal(before, batched.policy.state_dict()["actor.mu.0.weight"])


def test_several_robots_train_together_and_each_learns():
    models = [_model(seed=s) for s in range(3)]
    batcher = TD3Batcher()
    starts = [m.policy.state_dict()["critic.qf0.0.weight"].clone() for m in models]
    for m, n in zip(models, (80, 70, 64)):  # chunks of different lengths end apart
        batcher.submit(m, n)
    batcher.flush()
    assert [m.num_timesteps for m in models] == [80, 70, 64]
    assert [m._n_updates for m in models] == [40, 20, 8]
    assert batcher.batched_steps > 0 and batcher.gradient_steps == 68
    for m, start in zip(models, starts):
        assert not torch.equal(start, m.policy.state_dict()["critic.qf0.0.weight"])
        assert all(torch.isfinite(v).all() for v in m.policy.state_dict().values())
    # each robot's networks are its own again (no shared storage with the others)
    w = [m.policy.actor.mu[0].weight for m in models]
    assert len({t.data_ptr() for t in w}) == 3


def test_a_robot_alone_is_not_changed_by_another_that_waits():
    """A robot that is not past learning_starts rides along on zeros: nothing of it moves
    but its env steps."""
    a, b = _model(seed=0), _model(seed=1)
    batcher = TD3Batcher()
    batcher.submit(a, 65)
    batcher.flush()
    b_before = {k: v.clone() for k, v in b.policy.state_dict().items()}
    batcher.submit(a, 10)
    batcher.submit(b, 10)  # b stays before learning_starts (60)
    batcher.flush()
    assert b._n_updates == 0 and b.num_timesteps == 10
    assert all(torch.equal(b_before[k], v) for k, v in b.policy.state_dict().items())
    assert a._n_updates == 2 * 15


def test_a_learner_defers_its_chunk_and_any_use_flushes_it():
    batcher = TD3Batcher()
    learners = [SB3Learner(_model(seed=s), lambda: gym.make(ENV), eval_episodes=2, seed=s, batcher=batcher)
                for s in range(2)]
    for learner in learners:
        assert learner.train(70) == 70
    assert batcher.pending(learners[0].model) and batcher.pending(learners[1].model)
    assert learners[0].model.num_timesteps == 0  # nothing ran yet
    state = learners[0].get_state()  # any use runs every waiting chunk
    assert not batcher.pending(learners[1].model)
    assert [lr.env_steps for lr in learners] == [70, 70]
    assert torch.equal(state["actor.mu.0.weight"], learners[0].get_state()["actor.mu.0.weight"])
    # a chunk after a merge starts from the merged state
    learners[1].set_state(state)
    learners[1].train(5)
    assert learners[1].env_steps == 75 and learners[1].work_done == 75


def test_what_does_not_batch_trains_as_before():
    assert not supports(_model(algo=SAC))
    learner = SB3Learner(_model(algo=SAC), lambda: gym.make(ENV), eval_episodes=2, batcher=TD3Batcher())
    assert learner.batcher is None
    assert learner.train(65) == 65 and learner.env_steps == 65
    with pytest.raises(ValueError, match="does not batch"):
        TD3Batcher().submit(_model(algo=SAC), 5)


def test_replay_draws_what_sb3_samples():
    """The flat draws of the batched step are SB3's ``HerReplayBuffer.sample``: the same
    rows, relabelled goals and rewards from the same random numbers."""
    from mfd_core.learners.replay import draw

    model = _model(seed=5)
    model.learn(130)  # a few complete episodes and one under way
    buffer = model.replay_buffer
    keys = list(model.observation_space.spaces)
    np.random.seed(11)
    ours = draw(buffer, 300, keys, model.gamma)
    after_ours = np.random.random()  # the same random numbers used up
    np.random.seed(11)
    theirs = buffer.sample(300)
    assert after_ours == np.random.random()
    flat = lambda d: torch.cat([d[k].reshape(len(d[k]), -1) for k in keys], dim=1).numpy()  # noqa: E731
    assert np.array_equal(ours.obs, flat(theirs.observations))
    assert np.array_equal(ours.next_obs, flat(theirs.next_observations))
    assert np.array_equal(ours.actions, theirs.actions.numpy())
    assert np.array_equal(ours.rewards, theirs.rewards.numpy())
    assert np.allclose(ours.not_done_discount, ((1 - theirs.dones) * model.gamma).numpy())


def test_a_draw_of_several_minibatches_gives_each_hers_share_of_real_transitions():
    """Presampled minibatches are each made as SB3 makes one: real transitions first, then
    the relabelled ones, in HER's proportion (one draw split afterwards would put every real
    transition in the first)."""
    from mfd_core.learners.replay import draw

    model = _model(seed=6)
    model.learn(130)
    buffer = model.replay_buffer
    keys = list(model.observation_space.spaces)
    for obs in (buffer.observations, buffer.next_observations):
        obs["desired_goal"][:] = 99.0  # a goal no relabelling picks: it marks the real rows
    parts, m = 4, 64
    batch = draw(buffer, parts * m, keys, model.gamma, parts=parts)
    g = sum(int(np.prod(model.observation_space[k].shape)) for k in keys[: keys.index("desired_goal")])
    real = (batch.obs[:, g] == 99.0).reshape(parts, m)
    expected = m - int(buffer.her_ratio * m)
    assert (real[:, :expected].all()) and not real[:, expected:].any()
    assert np.array_equal(batch.obs[:, g] == 99.0, batch.next_obs[:, g] == 99.0)
