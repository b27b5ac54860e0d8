"""One robot cell in PyBullet: an arm, a table, a goal and (for push) a block.

The policy sees and commands the table, not the arm: an action is an end-effector
displacement in [-1, 1]^3 times 5 cm, turned into joint targets by PyBullet's IK inside the
env (tool pointing down: held on the Panda and xArm6; the KUKA's tilts where its elbow
limit demands, see arms.py); observations and goals are positions and velocities
in the task frame (origin at the centre of the table top).  So one policy means the same on
a Panda, a KUKA iiwa or an xArm6, which is what lets different robots share what they learn.

Physics (the choices that make the env fast; figures from benchmarks/robot_envs.py on a
busy 2-core machine: 3.5x panda-gym's steps/s on reach, 3.7x on push, same 0.04 s period):

- Control period 0.04 s as panda-gym, but 4 substeps of 0.01 s instead of 20 of 0.002 s.
  Joint position gains are raised so that a joint closes the same share of its error per
  control period as panda-gym's (1 - 0.9**20 with kp 0.1 over 20 substeps, hence
  kp = 1 - 0.9**5 over 4): the arm's response to an action matches panda-gym's.  While
  choosing, a scripted push moved the block to within 1-2 cm of where 40 substeps of
  0.001 s moved it (0.02 s x 2 was further off, so 0.01 s keeps a margin); the tests check
  that a block at rest stays put and that a push moves it.  Bullet's 50 solver iterations
  stay: 20 would buy ~15 % more speed, but the joint motors are solved by the same
  iterations.
- Robot-table collisions are filtered out (commanded targets are clipped above the table
  instead), so reach steps a world with no contacts at all and push only checks the block.
- reset() restores a saved world snapshot (restoreState, ~4 us: clears contact caches so a
  seed replays exactly) and puts joints, motor targets and the block back by
  resetJointState / resetBasePositionAndOrientation; URDFs are loaded once per env.  The
  neutral joint configuration (tool at START_EE, pointing down) is solved by IK once at
  construction.
- Each env owns its PyBullet client (``BulletClient`` in DIRECT mode).  One world shared by
  several cells would step every cell whenever any env steps, so it only pays inside a
  vectorised env that steps all cells together, and even there it gains little: with 4
  Panda cells one world made 1.01, 1.01 and 1.08 times the arm-steps/s of a client per
  cell in three runs (Bullet's cost is per body and contact, not per world).  Separate clients keep seeding,
  resets and rendering per cell, and cells can step in separate processes.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from functools import partial
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
import pybullet_data
from gymnasium import spaces

from envs.robots.arms import ARMS, ArmSpec
from envs.robots.config import WORKSPACE_HIGH, WORKSPACE_LOW, CellConfig
from envs.robots.quiet import BulletClient, pybullet, silenced_output

TIMESTEP = 0.01
N_SUBSTEPS = 4
CONTROL_PERIOD = TIMESTEP * N_SUBSTEPS  # 0.04 s, panda-gym's
# Same per-period joint response as panda-gym's kp 0.1 over 20 substeps (see module doc).
POSITION_GAIN = 1.0 - 0.9 ** (20 / N_SUBSTEPS)
MAX_DISPLACEMENT = 0.05  # metres per step at |action| = 1, panda-gym's
DISTANCE_THRESHOLD = 0.05  # metres, panda-gym's
BLOCK_SIZE = 0.04  # edge of the cube, panda-gym's
START_EE = (0.0, 0.0, 0.2)  # tool position at reset, task frame (panda-gym's neutral pose)
OBS_LIMIT = 10.0

_TABLE_HALF = (0.35, 0.4, 0.2)
_FLOOR_Z = -0.4
# Collision groups: the block touches the robot and the table; the robot never touches
# the table (targets are clipped above it), which keeps reach free of contacts.
_ROBOT, _TABLE, _BLOCK = 1, 2, 4


def _display_available() -> bool:
    return not sys.platform.startswith("linux") or bool(os.environ.get("DISPLAY"))


def goal_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distance over the last axis (works on one goal or a batch)."""
    return np.linalg.norm(np.asarray(a) - np.asarray(b), axis=-1)


class ArmCellEnv(gym.Env):
    """A robot cell; ``ArmReachEnv`` and ``ArmPushEnv`` choose the task.

    :param config: the cell (arm type, table, goal region, block, action noise).
    :param render_mode: None, "rgb_array" (TinyRenderer, headless) or "human" (PyBullet GUI).
    :param reward_type: "sparse" (0 on success, -1 otherwise, as panda-gym) or "dense"
        (minus the distance to the goal).
    :param terminate_on_success: end the episode when the goal is reached (panda-gym v3);
        False runs every episode to the time limit.
    :param render_width: width of ``render()`` frames in pixels.
    :param render_height: height of ``render()`` frames in pixels.
    :param cell: ``CellConfig`` fields given one by one (``arm="kuka"``,
        ``block_mass=0.5``, ...); they override ``config``'s.
    """

    metadata = {"render_modes": ["human", "rgb_array"], "render_fps": round(1 / CONTROL_PERIOD)}
    task = "reach"

    def __init__(
        self,
        config: CellConfig | None = None,
        *,
        render_mode: str | None = None,
        reward_type: str = "sparse",
        terminate_on_success: bool = True,
        render_width: int = 480,
        render_height: int = 360,
        **cell: Any,
    ) -> None:
        if config is not None and "arm" in cell and cell["arm"] != config.arm:
            raise ValueError(
                f"arm={cell['arm']!r} conflicts with config.arm={config.arm!r}; use "
                f"mfd/Arm{self.task.capitalize()}-v0 to take the arm from the config"
            )
        self.config = (config or CellConfig()).replace(**cell)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode: expected one of {self.metadata['render_modes']}, got {render_mode!r}")
        if reward_type not in ("sparse", "dense"):
            raise ValueError(f"reward_type: expected 'sparse' or 'dense', got {reward_type!r}")
        self.render_mode = render_mode
        self.reward_type = reward_type
        self.terminate_on_success = bool(terminate_on_success)
        self.render_width = int(render_width)
        self.render_height = int(render_height)
        self.distance_threshold = DISTANCE_THRESHOLD
        self.arm: ArmSpec = ARMS[self.config.arm]

        obs_size = 6 if self.task == "reach" else 18
        box = partial(spaces.Box, -OBS_LIMIT, OBS_LIMIT, dtype=np.float32)
        self.observation_space = spaces.Dict(
            {"observation": box(shape=(obs_size,)), "achieved_goal": box(shape=(3,)), "desired_goal": box(shape=(3,))}
        )
        self.action_space = spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)

        self._ik_orientation = (list(self.arm.tool_down),) if self.arm.hold_tool_down else ()
        self._ws_low = np.array(WORKSPACE_LOW)
        self._ws_high = np.array(WORKSPACE_HIGH)
        self._goal = np.zeros(3, dtype=np.float32)
        self._ee_pos = np.array(START_EE)
        self._last_frame_time = 0.0
        self._client: BulletClient | None = None
        self._build_world()

    # ----------------------------------------------------------------- world
    def _build_world(self) -> None:
        cfg, arm = self.config, self.arm
        mode = pybullet.DIRECT
        if self.render_mode == "human":
            if _display_available():
                mode = pybullet.GUI
            else:  # PyBullet's GUI connect blocks forever without an X display
                warnings.warn("render_mode='human': no display (DISPLAY unset), running headless", stacklevel=3)
        with silenced_output():
            self._client = client = BulletClient(connection_mode=mode)
            if mode == pybullet.GUI:
                client.configureDebugVisualizer(pybullet.COV_ENABLE_GUI, 0)
                client.resetDebugVisualizerCamera(1.4, 45, -30, [-0.15, 0, 0.15])
            client.setTimeStep(TIMESTEP)
            client.setGravity(0, 0, -9.81)
            client.setPhysicsEngineParameter(deterministicOverlappingPairs=1)
            self._robot = client.loadURDF(
                os.path.join(pybullet_data.getDataPath(), arm.urdf),
                basePosition=[arm.base_x, 0.0, arm.base_z - cfg.table_height],
                useFixedBase=True,
            )
        self._build_scenery(client)
        robot = self._robot
        n_joints = client.getNumJoints(robot)
        infos = [client.getJointInfo(robot, j) for j in range(n_joints)]
        self._movable = [j for j, info in enumerate(infos) if info[2] != pybullet.JOINT_FIXED]
        forces = arm.max_forces or tuple(infos[j][10] for j in self._movable)
        if len(forces) != len(self._movable) or len(arm.seed_pose) != len(self._movable):
            raise RuntimeError(f"arm {arm.name}: spec does not match the URDF's {len(self._movable)} movable joints")
        self._locked = [(self._movable.index(j), v) for j, v in arm.locked_joints]
        for link in range(-1, n_joints):
            client.setCollisionFilterGroupMask(robot, link, _ROBOT, _BLOCK)

        # Hot-path calls bound once: BulletClient builds a new partial on every attribute access.
        self._ik = partial(client.calculateInverseKinematics, robot, arm.ee_link)
        self._drive = partial(
            client.setJointMotorControlArray,
            robot,
            self._movable,
            pybullet.POSITION_CONTROL,
            forces=list(forces),
            positionGains=[POSITION_GAIN] * len(self._movable),
        )
        self._step_simulation = client.stepSimulation
        self._ee_state = partial(client.getLinkState, robot, arm.ee_link, 1, 1)
        self._reset_joint = partial(client.resetJointState, robot)
        self._block_pose = partial(client.getBasePositionAndOrientation, self._block) if self._block >= 0 else None
        self._block_velocity = partial(client.getBaseVelocity, self._block) if self._block >= 0 else None
        self._euler = client.getEulerFromQuaternion
        self._neutral = self._solve_neutral()
        self._drive(targetPositions=self._neutral)
        # Teleporting the block leaves Bullet's contact cache (warm-start impulses) from the
        # last episode behind, and the same seed then gives another trajectory (by ~1e-6 m
        # after one step).  Restoring this snapshot first (about 4 us) makes every episode
        # start from the same world; it is taken after one step so that the block-table
        # contact already exists in it and is overwritten, not kept, by the restore.
        self._step_simulation()
        self._snapshot = client.saveState()

    def _build_scenery(self, client: BulletClient) -> None:
        """Table (collides with the block only), visual-only floor, pedestal and goal marker."""
        cfg, arm = self.config, self.arm
        table_shape = client.createCollisionShape(pybullet.GEOM_BOX, halfExtents=_TABLE_HALF)
        table_look = client.createVisualShape(
            pybullet.GEOM_BOX, halfExtents=_TABLE_HALF, rgbaColor=[0.85, 0.85, 0.85, 1]
        )
        self._table = client.createMultiBody(0, table_shape, table_look, [0, 0, -_TABLE_HALF[2]])
        client.changeDynamics(self._table, -1, lateralFriction=1.0)
        client.setCollisionFilterGroupMask(self._table, -1, _TABLE, _BLOCK)

        floor_look = client.createVisualShape(
            pybullet.GEOM_BOX, halfExtents=[1.5, 1.5, 0.005], rgbaColor=[0.45, 0.5, 0.55, 1]
        )
        client.createMultiBody(0, -1, floor_look, [0, 0, _FLOOR_Z - 0.005])
        mount_z = arm.base_z - cfg.table_height
        pedestal_half = max((mount_z - _FLOOR_Z) / 2, 0.01)
        pedestal_look = client.createVisualShape(
            pybullet.GEOM_BOX, halfExtents=[0.09, 0.09, pedestal_half], rgbaColor=[0.3, 0.3, 0.3, 1]
        )
        client.createMultiBody(0, -1, pedestal_look, [arm.base_x, 0, mount_z - pedestal_half])

        if self.task == "push":
            half = [BLOCK_SIZE / 2] * 3
            block_shape = client.createCollisionShape(pybullet.GEOM_BOX, halfExtents=half)
            block_look = client.createVisualShape(pybullet.GEOM_BOX, halfExtents=half, rgbaColor=[0.1, 0.8, 0.1, 1])
            self._block = client.createMultiBody(cfg.block_mass, block_shape, block_look, [0, 0, BLOCK_SIZE / 2])
            client.changeDynamics(self._block, -1, lateralFriction=cfg.block_friction)
            client.setCollisionFilterGroupMask(self._block, -1, _BLOCK, _ROBOT | _TABLE)
            goal_look = client.createVisualShape(pybullet.GEOM_BOX, halfExtents=half, rgbaColor=[0.1, 0.8, 0.1, 0.35])
        else:
            self._block = -1
            goal_look = client.createVisualShape(pybullet.GEOM_SPHERE, radius=0.02, rgbaColor=[0.1, 0.8, 0.1, 0.35])
        self._goal_marker = client.createMultiBody(0, -1, goal_look, [0, 0, 0])
        self._move_marker = partial(client.resetBasePositionAndOrientation, self._goal_marker)

    def _solve_neutral(self) -> list[float]:
        """Joint angles that put the tool at START_EE pointing down, from the arm's seed pose."""
        for j, value in zip(self._movable, self.arm.seed_pose):
            self._reset_joint(j, value)
        for _ in range(200):
            q = self._constrain(self._ik(START_EE, self.arm.tool_down))
            for j, value in zip(self._movable, q):
                self._reset_joint(j, value)
            error = math.dist(self._ee_state()[4], START_EE)
            if error < 1e-4:
                break
        if error > 5e-3:
            raise RuntimeError(
                f"arm {self.arm.name}: cannot place the tool at {START_EE} (off by {error:.3f} m) "
                f"with table_height={self.config.table_height}"
            )
        return q

    def _constrain(self, q: tuple[float, ...]) -> list[float]:
        q = list(q)
        for i, value in self._locked:
            q[i] = value
        return q

    # ------------------------------------------------------------- gym API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        self._client.restoreState(self._snapshot)
        for j, value in zip(self._movable, self._neutral):
            self._reset_joint(j, value, 0.0)
        self._drive(targetPositions=self._neutral)
        cfg, rng = self.config, self.np_random
        half = cfg.goal_xy_range / 2
        cx, cy = cfg.goal_center
        if self.task == "reach":
            goal = rng.uniform([cx - half, cy - half, 0.0], [cx + half, cy + half, cfg.goal_z_range])
        else:
            goal = np.array([*rng.uniform([cx - half, cy - half], [cx + half, cy + half]), BLOCK_SIZE / 2])
            block_half = cfg.object_xy_range / 2
            for _ in range(100):  # a block that starts on its goal teaches nothing
                block_xy = rng.uniform(-block_half, block_half, size=2)
                if math.dist(block_xy, goal[:2]) > self.distance_threshold:
                    break
            client = self._client
            client.resetBasePositionAndOrientation(self._block, [*block_xy, BLOCK_SIZE / 2], [0, 0, 0, 1])
            client.resetBaseVelocity(self._block, [0, 0, 0], [0, 0, 0])
        self._goal = goal.astype(np.float32)
        self._move_marker(goal.tolist(), [0, 0, 0, 1])
        obs = self._observe()
        info = {"is_success": bool(goal_distance(obs["achieved_goal"], obs["desired_goal"]) < self.distance_threshold)}
        return obs, info

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], SupportsFloat, bool, bool, dict[str, Any]]:
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(3), -1.0, 1.0)
        if self.config.action_noise > 0:
            a = np.clip(a + self.np_random.normal(0.0, self.config.action_noise, 3), -1.0, 1.0)
        target = np.clip(self._ee_pos + MAX_DISPLACEMENT * a, self._ws_low, self._ws_high)
        q = self._ik(target.tolist(), *self._ik_orientation)
        self._drive(targetPositions=self._constrain(q) if self._locked else q)
        for _ in range(N_SUBSTEPS):
            self._step_simulation()
        obs = self._observe()
        distance = float(goal_distance(obs["achieved_goal"], obs["desired_goal"]))
        success = distance < self.distance_threshold
        if self.reward_type == "sparse":
            reward = -1.0 if distance > self.distance_threshold else 0.0
        else:
            reward = -distance
        info = {"is_success": success}
        return obs, reward, success and self.terminate_on_success, False, info

    def compute_reward(self, achieved_goal: np.ndarray, desired_goal: np.ndarray, info: Any) -> np.ndarray:
        """Reward for one goal pair or a batch (last axis = xyz), as HER relabelling needs.

        :param achieved_goal: shape (3,) or (n, 3).
        :param desired_goal: same shape as ``achieved_goal``.
        :param info: unused (the reward depends on the goals only).
        """
        d = goal_distance(achieved_goal, desired_goal)
        if self.reward_type == "sparse":
            return np.where(d > self.distance_threshold, -1.0, 0.0).astype(np.float32)
        return -d.astype(np.float32)

    def _observe(self) -> dict[str, np.ndarray]:
        state = self._ee_state()
        ee_pos, ee_vel = state[4], state[6]
        self._ee_pos = np.array(ee_pos)
        if self.task == "reach":
            values = ee_pos + ee_vel
            achieved = ee_pos
        else:
            block_pos, block_quat = self._block_pose()
            block_vel, block_spin = self._block_velocity()
            values = ee_pos + ee_vel + block_pos + self._euler(block_quat) + block_vel + block_spin
            achieved = block_pos
        observation = np.clip(np.array(values, dtype=np.float32), -OBS_LIMIT, OBS_LIMIT)
        return {
            "observation": observation,
            "achieved_goal": np.clip(np.array(achieved, dtype=np.float32), -OBS_LIMIT, OBS_LIMIT),
            "desired_goal": self._goal.copy(),
        }

    # ------------------------------------------------------------- render
    def render(self) -> np.ndarray | None:
        """An RGB frame (H x W x 3 uint8) in "rgb_array" mode; in "human" mode the GUI is
        live already, and this only paces the loop to real time."""
        if self.render_mode == "rgb_array":
            width, height = self.render_width, self.render_height
            view = pybullet.computeViewMatrixFromYawPitchRoll([-0.15, 0, 0.15], 1.4, 45, -30, 0, 2)
            proj = pybullet.computeProjectionMatrixFOV(60, width / height, 0.05, 5.0)
            with silenced_output():
                _, _, rgba, _, _ = self._client.getCameraImage(
                    width, height, view, proj, renderer=pybullet.ER_TINY_RENDERER
                )
            return np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)[:, :, :3].copy()
        if self.render_mode == "human":
            wait = CONTROL_PERIOD - (time.perf_counter() - self._last_frame_time)
            if wait > 0:
                time.sleep(wait)
            self._last_frame_time = time.perf_counter()
        return None

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.disconnect()
            except pybullet.error:  # already gone (e.g. GUI window closed)
                pass
            self._client = None
        super().close()


class ArmReachEnv(ArmCellEnv):
    """Move the tool to a goal point above the table (goal = tool position)."""

    task = "reach"


class ArmPushEnv(ArmCellEnv):
    """Push a 4 cm block across the table to a goal spot (goal = block position)."""

    task = "push"
