"""The arm types a cell can hold, as data: URDF, end-effector link, mounting, joint limits.

Every arm is mounted on the -x side of the table with its tool pointing down at the start,
so that the same task-space command (move the tool 5 cm along +x of the table) means the
same on each.  Mounting (``base_x``, ``base_z``) is per arm: the one that let that arm,
stepping the real dynamics, put its tool within 2 mm of every point of a grid over the
goal/block limit (|x|, |y| <= 0.2 m, 0 <= z <= 0.3 m) and within ~2 cm of the workspace
box's outer edges.  (Panda at panda-gym's -0.6 m cannot reach x > 0.1 m with a vertical
tool, hence -0.5 m.)
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
    :param base_z: height of the arm's mounting plane relative to the table top, metres
        (``CellConfig.table_height`` moves the table from there).
    :param seed_pose: joint angles per movable joint (URDF order) to start IK from, so the
        neutral pose found at start-up is the elbow-up one.
    :param tool_down: end-effector orientation (quaternion x, y, z, w) with the tool pointing
        down and the arm's last joint mid-range: the same "down" needs a different roll per
        arm (KUKA's flange reaches (1, 0, 0, 0) only with joint 7 at its 3.05 rad limit,
        where it sticks as soon as the arm turns).
    :param hold_tool_down: IK keeps ``tool_down`` in every step (else: position-only IK,
        the tool starts down and tilts where the arm must).
    :param max_forces: motor force/torque per movable joint, or empty for the URDF limits.
    :param locked_joints: movable joints held at a fixed value (e.g. closed fingers).
    """

    name: str
    urdf: str
    ee_link: int
    base_x: float
    base_z: float
    seed_pose: tuple[float, ...]
    tool_down: tuple[float, float, float, float] = (1.0, 0.0, 0.0, 0.0)
    hold_tool_down: bool = True
    max_forces: tuple[float, ...] = ()
    locked_joints: tuple[tuple[int, float], ...] = ()


ARMS: dict[str, ArmSpec] = {
    "panda": ArmSpec(
        name="panda",
        urdf="franka_panda/panda.urdf",
        ee_link=11,  # panda_grasptarget, between the fingertips
        base_x=-0.5,
        base_z=0.0,
        seed_pose=(0.0, 0.41, 0.0, -1.85, 0.0, 2.26, 0.79, 0.0, 0.0),  # panda-gym's neutral
        # panda-gym's forces: the URDF's 12 Nm on joints 6-7 sag under a pushed block.
        max_forces=(87.0, 87.0, 87.0, 87.0, 12.0, 120.0, 120.0, 170.0, 170.0),
        locked_joints=((9, 0.0), (10, 0.0)),  # gripper closed, as panda-gym's Reach/Push
    ),
    "kuka": ArmSpec(
        name="kuka",
        urdf="kuka_iiwa/model.urdf",
        ee_link=6,  # lbr_iiwa_link_7 (flange)
        base_x=-0.6,
        base_z=-0.2,
        seed_pose=(0.0, 0.5, 0.0, -1.6, 0.0, 1.0, 0.0),
        tool_down=(0.0, 1.0, 0.0, 0.0),
        # Its elbow (joint 4, +-120 deg) keeps a vertical tool >= 0.41 m from the shoulder and
        # the arm reaches ~0.8 m: no mounting gives it the 0.5 m deep workspace tool-down.
        hold_tool_down=False,
    ),
    "xarm6": ArmSpec(
        name="xarm6",
        urdf="xarm/xarm6_robot.urdf",
        ee_link=6,  # link6 (flange)
        base_x=-0.4,
        base_z=0.0,
        seed_pose=(0.0, -0.3, -0.9, 0.0, 1.2, 0.0),
    ),
}
