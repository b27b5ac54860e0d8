"""What makes one robot cell differ from another, as one small frozen value.

A fleet is non-IID because each cell has its own arm, table, goal region, block and
actuation noise; the apps build a ``CellConfig`` per robot from a scenario file with
``CellConfig.from_mapping`` and pass it to the env (``gymnasium.make(id, config=...)``).

All lengths are metres in the task frame: origin at the centre of the table top, x away
from the arm, z up.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from envs.robots.arms import ARMS

# The box every arm reaches with its tool pointing down (checked by an IK sweep for each
# arm in ARMS at table_height 0); commanded end-effector targets are clipped into it.
WORKSPACE_LOW = (-0.25, -0.25, 0.0)
WORKSPACE_HIGH = (0.25, 0.25, 0.3)
# Goals and blocks stay 5 cm (a block and a bit) inside the workspace in x/y, so the tool
# can always get behind a block to push it.
_XY_LIMIT = 0.2
# Moving the table more than 10 cm against the arm's mount takes parts of the workspace out
# of reach for some arms.
_TABLE_HEIGHT_LIMIT = 0.1


@dataclass(frozen=True)
class CellConfig:
    """One robot cell.

    :param arm: arm type, a key of ``envs.robots.ARMS`` ("panda", "kuka", "xarm6").
    :param table_height: height of the table top above the arm's mounting plane (m), in
        [-0.1, 0.1]; observations stay in the table frame, so only reachability and joint
        configurations change.
    :param goal_center: (x, y) centre of the square goal region on the table.
    :param goal_xy_range: side of the square goal region (panda-gym: 0.3).
    :param goal_z_range: reach only: goal heights are drawn in [0, goal_z_range].
    :param object_xy_range: push only: side of the square, centred on the table, where
        the block starts.
    :param block_mass: push only: block mass (kg).
    :param block_friction: push only: block-table friction coefficient (the table's own
        coefficient is 1, and PyBullet multiplies the two).
    :param action_noise: standard deviation of Gaussian noise added to each action
        component (action units, before the [-1, 1] clip), drawn from the env's seeded RNG.
    """

    arm: str = "panda"
    table_height: float = 0.0
    goal_center: tuple[float, float] = (0.0, 0.0)
    goal_xy_range: float = 0.3
    goal_z_range: float = 0.3
    object_xy_range: float = 0.3
    block_mass: float = 1.0
    block_friction: float = 0.5
    action_noise: float = 0.0

    def __post_init__(self) -> None:
        if self.arm not in ARMS:
            raise ValueError(f"arm: unknown arm type {self.arm!r}; known: {sorted(ARMS)}")
        center = tuple(self.goal_center)
        if len(center) != 2:
            raise ValueError(f"goal_center: expected (x, y), got {self.goal_center!r}")
        object.__setattr__(self, "goal_center", (float(center[0]), float(center[1])))
        for name in (
            "table_height", "goal_xy_range", "goal_z_range", "object_xy_range",
            "block_mass", "block_friction", "action_noise",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name}: expected a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name}: expected a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if not all(math.isfinite(c) for c in self.goal_center):
            raise ValueError(f"goal_center: expected finite numbers, got {self.goal_center!r}")
        if abs(self.table_height) > _TABLE_HEIGHT_LIMIT:
            raise ValueError(
                f"table_height: {self.table_height} m is outside [-{_TABLE_HEIGHT_LIMIT}, "
                f"{_TABLE_HEIGHT_LIMIT}] (parts of the workspace would be out of reach)"
            )
        for name in ("goal_xy_range", "goal_z_range", "object_xy_range", "action_noise"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        for axis, c in zip("xy", self.goal_center):
            if abs(c) + self.goal_xy_range / 2 > _XY_LIMIT + 1e-9:
                raise ValueError(
                    f"goal_center/goal_xy_range: the goal region reaches {axis} = "
                    f"{abs(c) + self.goal_xy_range / 2:.3f} m, past the limit of {_XY_LIMIT} m"
                )
        if self.object_xy_range / 2 > _XY_LIMIT + 1e-9:
            raise ValueError(f"object_xy_range: must be <= {2 * _XY_LIMIT}, got {self.object_xy_range}")
        if self.goal_z_range > WORKSPACE_HIGH[2]:
            raise ValueError(f"goal_z_range: must be <= {WORKSPACE_HIGH[2]}, got {self.goal_z_range}")
        if self.block_mass <= 0:
            raise ValueError(f"block_mass: must be > 0, got {self.block_mass}")
        if self.block_friction < 0:
            raise ValueError(f"block_friction: must be >= 0, got {self.block_friction}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> CellConfig:
        """Build from a scenario-file table; unknown keys are an error that names them.

        :param data: field name -> value (lists are accepted for ``goal_center``).
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown cell field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**dict(data))

    def replace(self, **changes: Any) -> CellConfig:
        """A copy with some fields changed (validated like a new one)."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(f"unknown cell field(s) {unknown}; known fields: {sorted(known)}")
        return dataclasses.replace(self, **changes)
