"""The arm types a cell can hold, as data: URDF, end-effector link, mounting, joint limits.

Every arm is mounted on the -x side of the table, pointing its tool straight down, so that
the same task-space command (move the tool 5 cm along +x of the table) means the same on
each.  The mounting distance ``base_x`` is per arm: it is the one that lets that arm reach
the whole shared workspace (``config.WORKSPACE_LOW``/``HIGH``) with the tool pointing down,
found by sweeping IK over a grid of the workspace (Panda at panda-gym's -0.6 m cannot
reach x > 0.1 m with a vertical tool, hence -0.45 m).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArmSpec:
    """One arm type.

    :param name: key used in ``CellConfig.arm`` and env kwargs.
    :param urdf: path inside ``pybullet_data``.
    :param ee_link: link index whose frame is the end effector (the point IK places).
    :param base_x: x of the arm's base in the task frame (table-top centre), metres.
    :param seed_pose: joint angles per movable joint (URDF order) to start IK from, so the
        neutral pose found at start-up is the elbow-up one.
    :param max_forces: motor force/torque per movable joint, or empty for the URDF limits.
    :param locked_joints: movable joints held at a fixed value (e.g. closed fingers).
    """

    name: str
    urdf: str
    ee_link: int
    base_x: float
    seed_pose: tuple[float, ...]
    max_forces: tuple[float, ...] = ()
    locked_joints: tuple[tuple[int, float], ...] = ()


ARMS: dict[str, ArmSpec] = {
    "panda": ArmSpec(
        name="panda",
        urdf="franka_panda/panda.urdf",
        ee_link=11,  # panda_grasptarget, between the fingertips
        base_x=-0.45,
        seed_pose=(0.0, 0.41, 0.0, -1.85, 0.0, 2.26, 0.79, 0.0, 0.0),  # panda-gym's neutral
        # panda-gym's forces: the URDF's 12 Nm on joints 6-7 sag under a pushed block.
        max_forces=(87.0, 87.0, 87.0, 87.0, 12.0, 120.0, 120.0, 170.0, 170.0),
        locked_joints=((9, 0.0), (10, 0.0)),  # gripper closed, as panda-gym's Reach/Push
    ),
    "kuka": ArmSpec(
        name="kuka",
        urdf="kuka_iiwa/model.urdf",
        ee_link=6,  # lbr_iiwa_link_7 (flange)
        base_x=-0.5,
        seed_pose=(0.0, 0.5, 0.0, -1.6, 0.0, 1.0, 0.0),
    ),
    "xarm6": ArmSpec(
        name="xarm6",
        urdf="xarm/xarm6_robot.urdf",
        ee_link=6,  # link6 (flange)
        base_x=-0.4,
        seed_pose=(0.0, -0.3, -0.9, 0.0, 1.2, 0.0),
    ),
}
