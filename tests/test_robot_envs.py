"""Robot-arm cells (envs.robots): API checkers, seeding, task-space control, rewards,
rendering, silence, and that each CellConfig field changes the cell it claims to."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import envs.robots as robots
from envs.robots import ARMS, CellConfig

ARM_IDS = {"panda": "Panda", "kuka": "Kuka", "xarm6": "XArm6"}
NAMED_IDS = [f"mfd/{prefix}{task}-v0" for prefix in ARM_IDS.values() for task in ("Reach", "Push")]


def make(env_id: str = "mfd/ArmReach-v0", **kwargs):
    return gym.make(env_id, **kwargs)


@pytest.fixture(scope="module")
def push_envs():
    """One push env per arm, shared by the tests that only step them (built once: ~0.1 s each)."""
    made = {arm: make("mfd/ArmPush-v0", arm=arm, terminate_on_success=False) for arm in ARMS}
    yield made
    for env in made.values():
        env.close()


def test_every_arm_and_task_is_registered():
    assert set(NAMED_IDS) | {"mfd/ArmReach-v0", "mfd/ArmPush-v0"} == set(robots.ENV_IDS)
    for env_id in robots.ENV_IDS:
        assert env_id in gym.registry
        assert gym.registry[env_id].max_episode_steps == robots.MAX_EPISODE_STEPS


@pytest.mark.parametrize("env_id", NAMED_IDS)
def test_gymnasium_and_sb3_checkers_pass(env_id):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = make(env_id)
    with warnings.catch_warnings():
        # check_env also builds the "human" env; here, without a display, it runs headless
        # and says so in a warning.
        warnings.filterwarnings("ignore", message="render_mode='human'")
        check_env(env.unwrapped)
    sb3_check_env(env.unwrapped, warn=False)
    env.close()


@pytest.mark.parametrize("task", ["Reach", "Push"])
def test_spaces_are_the_same_on_every_arm(task):
    shapes = set()
    for arm in ARMS:
        env = make(f"mfd/Arm{task}-v0", arm=arm)
        obs, _ = env.reset(seed=0)
        assert env.observation_space.contains(obs)
        shapes.add((repr(env.action_space), tuple((k, v.shape) for k, v in sorted(obs.items()))))
        env.close()
    assert len(shapes) == 1
    action_space, obs_shapes = shapes.pop()
    assert action_space == repr(gym.spaces.Box(-1.0, 1.0, (3,), np.float32))
    assert dict(obs_shapes)["observation"] == ((6,) if task == "Reach" else (18,))


@pytest.mark.parametrize("arm", sorted(ARMS))
def test_every_arm_starts_with_its_tool_at_the_same_task_frame_point(arm):
    env = make(arm=arm)
    obs, _ = env.reset(seed=0)
    np.testing.assert_allclose(obs["achieved_goal"], robots.cell.START_EE, atol=2e-3)
    env.close()


def _trajectory(env, seed, steps=25):
    obs, _ = env.reset(seed=seed)
    actions = np.random.default_rng(7).uniform(-1, 1, size=(steps, 3))
    actions[:6, 2] = -1  # get down to the block so that contacts are part of the replay
    rows = [np.concatenate([obs["observation"], obs["desired_goal"]])]
    for a in actions:
        obs, *_ = env.step(a)
        rows.append(np.concatenate([obs["observation"], obs["desired_goal"]]))
    return np.array(rows)


@pytest.mark.parametrize("task", ["Reach", "Push"])
def test_seeded_resets_replay_exactly_and_seeds_differ(task):
    env = make(f"mfd/Arm{task}-v0", arm="kuka", terminate_on_success=False, action_noise=0.1)
    first = _trajectory(env, seed=3)
    _trajectory(env, seed=4)  # some history between the two runs of seed 3
    again = _trajectory(env, seed=3)
    np.testing.assert_array_equal(first, again)
    fresh = make(f"mfd/Arm{task}-v0", arm="kuka", terminate_on_success=False, action_noise=0.1)
    np.testing.assert_array_equal(first, _trajectory(fresh, seed=3))
    obs3, _ = env.reset(seed=3)
    obs4, _ = env.reset(seed=4)
    assert not np.array_equal(obs3["desired_goal"], obs4["desired_goal"])
    if task == "Push":
        assert not np.array_equal(obs3["achieved_goal"], obs4["achieved_goal"])
    env.close()
    fresh.close()


@pytest.mark.parametrize("arm", sorted(ARMS))
@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_task_space_action_moves_the_tool_that_way_on_every_arm(push_envs, arm, axis, sign):
    env = push_envs[arm]
    obs, _ = env.reset(seed=0)
    start = obs["observation"][:3].copy()
    action = np.zeros(3, dtype=np.float32)
    action[axis] = sign
    for _ in range(3):
        obs, *_ = env.step(action)
    moved = obs["observation"][:3] - start
    # 3 steps of 5 cm, minus the arm's lag (panda-gym's arm covers ~60 % of a step at once)
    assert sign * moved[axis] > 0.06, moved
    others = np.delete(moved, axis)
    assert np.abs(others).max() < 0.02, moved
    # the observed velocity points the same way
    assert sign * obs["observation"][3 + axis] > 0.05


@pytest.mark.parametrize("arm", sorted(ARMS))
def test_tool_stays_inside_the_workspace(arm, push_envs):
    env = push_envs[arm]
    env.reset(seed=1)
    for action in ([1, 1, 1], [-1, -1, -1]):
        for _ in range(15):  # 75 cm of commands: without the clip the tool would leave the box
            obs, *_ = env.step(np.array(action, dtype=np.float32))
        ee = obs["observation"][:3]
        # corners of the box lie a little past some arms' reach: IK settles within ~2 cm
        assert np.all(ee >= np.array(robots.WORKSPACE_LOW) - 0.03), ee
        assert np.all(ee <= np.array(robots.WORKSPACE_HIGH) + 0.03), ee


@pytest.mark.parametrize("arm", sorted(ARMS))
def test_a_scripted_policy_reaches_goals_anywhere_in_the_goal_region(arm):
    env = make(arm=arm)
    successes = 0
    for seed in range(4):
        obs, info = env.reset(seed=seed)
        for _ in range(robots.MAX_EPISODE_STEPS):
            a = np.clip((obs["desired_goal"] - obs["achieved_goal"]) / robots.MAX_DISPLACEMENT, -1, 1)
            obs, reward, terminated, truncated, info = env.step(a)
            if terminated or truncated:
                break
        successes += info["is_success"]
        assert reward == (0.0 if info["is_success"] else -1.0)
    assert successes == 4
    env.close()


@pytest.mark.parametrize("arm", sorted(ARMS))
def test_the_tool_pushes_the_block(push_envs, arm):
    env = push_envs[arm]
    obs, _ = env.reset(seed=2)
    block0 = obs["achieved_goal"].copy()
    # a block left alone does not creep (the 0.01 s physics step is stable at rest)
    for _ in range(10):
        obs, *_ = env.step(np.zeros(3, dtype=np.float32))
    assert np.abs(obs["achieved_goal"] - block0).max() < 1e-3
    # go behind the block (-x side), down to block height, then push along +x
    for target_z, push in ((0.12, False), (0.02, False), (0.02, True)):
        for _ in range(12):
            ee = obs["observation"][:3]
            target = block0 + np.array([0.08 if push else -0.09, 0.0, 0.0])
            target[2] = target_z
            obs, *_ = env.step(np.clip((target - ee) / robots.MAX_DISPLACEMENT, -1, 1))
    moved = obs["achieved_goal"] - block0
    assert moved[0] > 0.03, moved
    assert abs(obs["achieved_goal"][2] - robots.cell.BLOCK_SIZE / 2) < 0.005  # still on the table


@pytest.mark.parametrize("reward_type", ["sparse", "dense"])
@settings(max_examples=25, deadline=None)
@given(
    achieved=arrays(np.float32, (8, 3), elements=st.floats(-0.25, 0.25, width=32)),
    offset=arrays(np.float32, (8, 3), elements=st.floats(-0.0625, 0.0625, width=32)),
)
def test_compute_reward_is_vectorised_like_per_sample(reward_env_cache, reward_type, achieved, offset):
    env = reward_env_cache[reward_type]
    desired = achieved + offset
    batch = env.compute_reward(achieved, desired, [{}] * len(achieved))
    single = np.array([env.compute_reward(a, d, {}) for a, d in zip(achieved, desired)])
    assert batch.shape == (8,) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch, single)
    d = np.linalg.norm(achieved - desired, axis=-1)
    if reward_type == "sparse":
        np.testing.assert_array_equal(batch, np.where(d > robots.DISTANCE_THRESHOLD, -1.0, 0.0))
    else:
        np.testing.assert_allclose(batch, -d, rtol=1e-6)


@pytest.fixture(scope="module")
def reward_env_cache():
    made = {rt: make("mfd/PandaPush-v0", reward_type=rt).unwrapped for rt in ("sparse", "dense")}
    yield made
    for env in made.values():
        env.close()


@pytest.mark.parametrize("reward_type", ["sparse", "dense"])
def test_step_reward_and_success_agree_with_compute_reward(reward_type):
    env = make("mfd/KukaReach-v0", reward_type=reward_type)
    obs, _ = env.reset(seed=5)
    for _ in range(30):
        a = np.clip((obs["desired_goal"] - obs["achieved_goal"]) / 0.05, -1, 1)
        obs, reward, terminated, _, info = env.step(a)
        expected = env.unwrapped.compute_reward(obs["achieved_goal"], obs["desired_goal"], info)
        assert reward == pytest.approx(float(expected))
        d = np.linalg.norm(obs["achieved_goal"] - obs["desired_goal"])
        assert info["is_success"] == (d < robots.DISTANCE_THRESHOLD)
        if terminated:
            break
    assert terminated and info["is_success"]
    env.close()


def test_her_replay_buffer_trains_on_the_env():
    import torch
    from stable_baselines3 import SAC, HerReplayBuffer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny nets: threads only fight over the shared cores (0.2 s vs 8 s)
    try:
        env = make("mfd/XArm6Push-v0")
        model = SAC(
            "MultiInputPolicy",
            env,
            replay_buffer_class=HerReplayBuffer,
            replay_buffer_kwargs={"n_sampled_goal": 2, "goal_selection_strategy": "future"},
            buffer_size=1000,
            learning_starts=60,
            batch_size=16,
            policy_kwargs={"net_arch": [16]},
            seed=0,
        )
        model.learn(100)  # HER relabels through env.compute_reward from step 60 on
        assert model.replay_buffer.size() == 100
        env.close()
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("env_id", ["mfd/PandaPush-v0", "mfd/KukaReach-v0"])
def test_rgb_array_render_is_an_image_of_the_scene(env_id):
    env = make(env_id, render_mode="rgb_array", render_width=64, render_height=48)
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (48, 64, 3) and frame.dtype == np.uint8
    assert frame.std() > 10  # not a blank frame
    for _ in range(5):
        env.step(np.array([1.0, 0.0, -1.0], dtype=np.float32))
    assert not np.array_equal(frame, env.render())  # the arm moved in the picture
    env.close()


def test_nothing_is_printed(capfd):
    capfd.readouterr()
    for env_id in ("mfd/PandaPush-v0", "mfd/KukaReach-v0", "mfd/XArm6Push-v0"):
        env = make(env_id, render_mode="rgb_array", render_width=32, render_height=24)
        env.reset(seed=0)
        for _ in range(3):
            env.step(env.action_space.sample())
        env.render()
        env.close()
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_silenced_output_restores_the_descriptors(capfd):
    import os

    with robots.silenced_output():
        os.write(1, b"hidden\n")
        os.write(2, b"hidden\n")
    os.write(1, b"shown\n")
    out, err = capfd.readouterr()
    assert out == "shown\n" and err == ""


# ------------------------------------------------------------------- CellConfig


def test_cell_config_from_mapping_and_its_errors():
    cfg = CellConfig.from_mapping({"arm": "kuka", "goal_center": [0.05, -0.05], "block_mass": 2})
    assert cfg.arm == "kuka" and cfg.goal_center == (0.05, -0.05) and cfg.block_mass == 2.0
    with pytest.raises(ValueError, match="unknown cell field.*'blok_mass'"):
        CellConfig.from_mapping({"blok_mass": 1.0})
    with pytest.raises(ValueError, match="arm: unknown arm type 'ur5'"):
        CellConfig(arm="ur5")
    with pytest.raises(ValueError, match="goal region"):
        CellConfig(goal_center=(0.1, 0.0), goal_xy_range=0.3)
    with pytest.raises(ValueError, match="block_mass"):
        CellConfig(block_mass=0)
    with pytest.raises(ValueError, match="table_height"):
        CellConfig(table_height=0.5)
    with pytest.raises(ValueError, match="action_noise: expected a number"):
        CellConfig(action_noise="lots")
    with pytest.raises(Exception):
        cfg.arm = "panda"  # frozen


def test_env_kwargs_override_config_but_a_named_arm_must_agree():
    env = make(config=CellConfig(arm="kuka", block_mass=2.0), block_mass=3.0)
    assert env.unwrapped.config == CellConfig(arm="kuka", block_mass=3.0)
    env.close()
    with pytest.raises(ValueError, match="conflicts"):
        make("mfd/PandaReach-v0", config=CellConfig(arm="kuka"))
    with pytest.raises(TypeError, match="unknown cell field"):
        make(blockmass=1.0)


def test_goals_stay_in_the_configured_goal_region():
    env = make("mfd/ArmReach-v0", arm="xarm6", goal_center=(0.1, -0.1), goal_xy_range=0.1, goal_z_range=0.1)
    goals = np.array([env.reset(seed=s)[0]["desired_goal"] for s in range(40)])
    assert np.all(np.abs(goals[:, 0] - 0.1) <= 0.05 + 1e-6) and np.all(np.abs(goals[:, 1] + 0.1) <= 0.05 + 1e-6)
    assert np.all((goals[:, 2] >= 0) & (goals[:, 2] <= 0.1 + 1e-6))
    assert goals.std(axis=0).min() > 0.01
    env.close()


def test_block_and_table_settings_reach_the_physics():
    usual = make("mfd/ArmPush-v0", arm="panda").unwrapped
    env = make("mfd/ArmPush-v0", arm="panda", table_height=0.05, block_mass=0.3, block_friction=0.8).unwrapped
    client = env._client
    mass, friction, *_ = client.getDynamicsInfo(env._block, -1)
    assert mass == pytest.approx(0.3) and friction == pytest.approx(0.8)
    base_z = client.getBasePositionAndOrientation(env._robot)[0][2]
    usual_z = usual._client.getBasePositionAndOrientation(usual._robot)[0][2]
    assert base_z - usual_z == pytest.approx(-0.05)  # the table top is 5 cm higher on the arm
    obs, _ = env.reset(seed=0)  # ... and the task frame still starts at the table top
    np.testing.assert_allclose(obs["achieved_goal"][2], robots.cell.BLOCK_SIZE / 2, atol=1e-3)
    np.testing.assert_allclose(obs["observation"][:3], robots.cell.START_EE, atol=2e-3)
    assert not np.allclose(env._neutral, usual._neutral, atol=1e-3)  # another arm posture
    env.close()
    usual.close()


def test_heavier_slipperier_blocks_behave_differently():
    """The same pushing run ends elsewhere with another block: cells are really non-IID."""
    ends = []
    for mass, friction in ((1.0, 0.5), (0.2, 0.05)):
        env = make("mfd/ArmPush-v0", arm="kuka", block_mass=mass, block_friction=friction, terminate_on_success=False)
        obs, _ = env.reset(seed=2)
        block0 = obs["achieved_goal"].copy()
        for target_z, push in ((0.12, False), (0.02, False), (0.02, True)):
            for _ in range(12):
                target = block0 + np.array([0.08 if push else -0.09, 0.0, 0.0])
                target[2] = target_z
                obs, *_ = env.step(np.clip((target - obs["observation"][:3]) / 0.05, -1, 1))
        # then stop: a slippery light block keeps sliding
        for _ in range(3):
            obs, *_ = env.step(np.array([-1.0, 0.0, 0.0], dtype=np.float32))
        ends.append(obs["achieved_goal"][0])
        env.close()
    assert abs(ends[0] - ends[1]) > 0.005, ends


def test_action_noise_changes_the_path_but_stays_seeded():
    quiet = make(arm="panda", terminate_on_success=False)
    noisy = make(arm="panda", terminate_on_success=False, action_noise=0.3)
    a = _trajectory(quiet, seed=1, steps=10)
    b = _trajectory(noisy, seed=1, steps=10)
    assert np.abs(a - b).max() > 0.005
    np.testing.assert_array_equal(b, _trajectory(noisy, seed=1, steps=10))
    quiet.close()
    noisy.close()
