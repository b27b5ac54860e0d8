"""Robot-arm cells in PyBullet with task-space control: reach and push, several arm types.

Pure gymnasium (knows nothing of MFD).  Importing this package registers:

- ``mfd/PandaReach-v0``, ``mfd/PandaPush-v0``   Franka Panda
- ``mfd/KukaReach-v0``, ``mfd/KukaPush-v0``     KUKA iiwa
- ``mfd/XArm6Reach-v0``, ``mfd/XArm6Push-v0``   UFactory xArm6
- ``mfd/ArmReach-v0``, ``mfd/ArmPush-v0``       any arm: ``arm="kuka"`` or ``config=CellConfig(...)``

all with a 50-step time limit.  Every env has the same spaces on every arm: action = tool
displacement in [-1, 1]^3 (x 5 cm), Dict observation (``observation``, ``achieved_goal``,
``desired_goal``; 6 + 3 + 3 floats for reach, 18 + 3 + 3 for push) in the table frame,
``compute_reward`` vectorised for HER, ``info["is_success"]``.  Constructor kwargs:
``config`` (a ``CellConfig``), any ``CellConfig`` field by name, ``render_mode``,
``reward_type`` ("sparse" | "dense"), ``terminate_on_success``, ``render_width``,
``render_height``.  Physics and speed choices are in ``envs.robots.cell``'s docstring.
"""

from __future__ import annotations

import gymnasium as gym

from envs.robots.arms import ARMS, ArmSpec
from envs.robots.cell import (
    CONTROL_PERIOD,
    DISTANCE_THRESHOLD,
    MAX_DISPLACEMENT,
    N_SUBSTEPS,
    TIMESTEP,
    ArmCellEnv,
    ArmPushEnv,
    ArmReachEnv,
)
from envs.robots.config import WORKSPACE_HIGH, WORKSPACE_LOW, CellConfig
from envs.robots.quiet import silenced_output

MAX_EPISODE_STEPS = 50

# id prefix -> arm key
_NAMED_ARMS = {"Panda": "panda", "Kuka": "kuka", "XArm6": "xarm6"}


def _register() -> dict[str, str]:
    ids: dict[str, str] = {}
    for task, cls in (("Reach", "ArmReachEnv"), ("Push", "ArmPushEnv")):
        entry = f"envs.robots.cell:{cls}"
        for prefix, arm in _NAMED_ARMS.items():
            ids[f"mfd/{prefix}{task}-v0"] = entry
            if f"mfd/{prefix}{task}-v0" not in gym.registry:
                gym.register(f"mfd/{prefix}{task}-v0", entry, max_episode_steps=MAX_EPISODE_STEPS, kwargs={"arm": arm})
        ids[f"mfd/Arm{task}-v0"] = entry
        if f"mfd/Arm{task}-v0" not in gym.registry:
            gym.register(f"mfd/Arm{task}-v0", entry, max_episode_steps=MAX_EPISODE_STEPS)
    return ids


ENV_IDS: tuple[str, ...] = tuple(_register())

__all__ = [
    "ARMS",
    "CONTROL_PERIOD",
    "DISTANCE_THRESHOLD",
    "ENV_IDS",
    "MAX_DISPLACEMENT",
    "MAX_EPISODE_STEPS",
    "N_SUBSTEPS",
    "TIMESTEP",
    "WORKSPACE_HIGH",
    "WORKSPACE_LOW",
    "ArmCellEnv",
    "ArmPushEnv",
    "ArmReachEnv",
    "ArmSpec",
    "CellConfig",
    "silenced_output",
]
