"""Robots scenario files (TOML) to a validated fleet description, with errors that name
the field (``robots.2.goal_center: ...``).

A robots scenario says which robots make the fleet (arm and cell of each, which of them
join later), the radio network between them, the SB3 learner every robot runs, the MFD
sharing settings (:class:`mfd_core.scenario.Policy`, the same table as the core's
scenarios) and how long to run. Simulated time is robot time: a robot takes one env step
per control period (0.04 s), so ``compute`` defaults to 25 env steps per simulated second.
"""
from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from envs.robots import CONTROL_PERIOD, CellConfig
from mfd_core.scenario import Policy, format_validation_error

SCENARIO_DIR = Path(__file__).resolve().parent.parent / "scenarios"
DEFAULT_SCENARIO = "robots"

# One env step per control period: simulated seconds are the robot's own seconds.
ROBOT_STEPS_PER_SECOND = 1.0 / CONTROL_PERIOD


class RobotsScenarioError(ValueError):
    """A robots scenario that cannot run; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Robot(_Strict):
    """One robot: its cell (every :class:`envs.robots.CellConfig` field), its learner's
    width and speed, and when it joins."""

    arm: Literal["panda", "kuka", "xarm6"] = "panda"
    table_height: float = 0.0
    goal_center: tuple[float, float] = (0.0, 0.0)
    goal_xy_range: float = 0.3
    goal_z_range: float = 0.3
    object_xy_range: float = 0.3
    block_mass: float = 1.0
    block_friction: float = 0.5
    action_noise: float = 0.0
    width: float = Field(1.0, gt=0, le=1, description="hidden widths relative to learner.net_arch (HeteroFL nesting)")
    compute: float = Field(ROBOT_STEPS_PER_SECOND, gt=0, description="env steps per simulated second")
    join_at: float | None = Field(None, ge=0, lt=1, description="joins at this fraction of the duration "
                                  "(absent until then); none: there from the start")

    @model_validator(mode="after")
    def _check_cell(self) -> "Robot":
        try:
            self.cell()
        except ValueError as err:
            raise ValueError(str(err)) from None
        return self

    def cell(self) -> CellConfig:
        names = {f.name for f in dataclasses.fields(CellConfig)}
        return CellConfig.from_mapping({k: v for k, v in self.model_dump().items() if k in names})


class Topology(_Strict):
    """A random geometric radio network over the fleet (``mfd_core.network.topology``)."""

    radius: float = Field(0.6, gt=0, le=2.0, description="radio range in the unit square")
    bandwidth: float = Field(1.25e6, gt=0, description="bytes per second per link direction")
    latency: float = Field(0.005, ge=0, description="seconds per hop")
    loss: float = Field(0.02, ge=0, le=1, description="base packet loss; links near the edge of range lose more")
    degrade: bool = Field(True, description="links lose rate and gain loss with distance")


class LearnerSettings(_Strict):
    """The SB3 agent every robot runs (TD3 or SAC, with HER).

    The defaults are the best settings the reach fleet has found (``benchmarks/robots.py``,
    ``benchmarks/robots_pooled.py``): a fleet file that omits ``[learner]`` runs them, and
    a shipped file writes only what differs. Push starts from the same settings with the
    wider network of ``robots_push.toml`` (:data:`TASK_LEARNER_DEFAULTS`): no push
    setting has been measured better yet.
    """

    algo: Literal["td3", "sac"] = "td3"
    net_arch: tuple[int, ...] = Field((64, 64), min_length=1)
    batch_size: int = Field(256, ge=1)
    learning_rate: float = Field(4e-3, gt=0, le=1, description=(
        "every policy alike; the best of 1e-3 / 2e-3 / 4e-3 for a robot alone as for the fleet (reach, seeds 0, "
        "1; 80 s): alone 875+1225 / 925+1025 / 675+1138 env steps to 90 %, MFD 725+1200 / 612+762 / 500+662"))
    gamma: float = Field(0.95, gt=0, le=1)
    tau: float = Field(0.005, gt=0, le=1)
    learning_starts: int = Field(100, ge=1)
    buffer_size: int = Field(100_000, ge=1000)
    action_noise: float = Field(0.2, ge=0, le=1, description="TD3 Gaussian exploration noise (std)")
    n_sampled_goal: int = Field(4, ge=0, description="HER: relabelled goals per real one")
    gradient_steps: int = Field(4, ge=1, le=64, description="gradient steps per env step (the update-to-data "
                                "ratio), for every policy alike: a robot does a gradient step of these "
                                "networks in ~2 ms of its 40 ms control period. At 1, reach learning was "
                                "bounded by updates (a robot alone: ~2,500 env steps to 90 %; at 4: ~950)")
    local_steps: int = Field(10, ge=1, description="env steps between sharing decisions: averaged every 10 "
                             "env steps, four reach robots track one learner on all their experience (founders' "
                             "mean steps to 90 %, seeds 0-2: 662 at 50, 564 at 10, 583 at 5)")
    score_episodes: int = Field(10, ge=1, description="the node's own fixed episodes for the gate (episode metrics)")
    score_metric: Literal["success", "progress", "critic"] = Field(
        "critic", description="what the gate and the share decision score: success rate or progress "
        "(success, else half the goal distance closed: ranks policies before any succeeds) on score_episodes "
        "episodes of the robot's cell, or critic (the robot's own critic values a policy's actions on its own "
        "replay states: no episodes, no robot time; on episodes an MFD reach founder ran ~10x its training "
        "steps in scoring)")
    share_critic: bool = Field(True, description="send the critic with the actor")
    share_targets: bool = Field(True, description="send the target networks with their networks (needed "
                                "when rounds are a few env steps apart: each robot's own targets, shifted "
                                "along, drift apart and TD learning stalls: averaged every 5 steps without, "
                                "nothing learnt in 2,000 steps)")
    actor_warmup: int = Field(0, ge=0, description="env steps after an installed policy during which only the "
                              "critic trains (it catches up with the new actor first)")
    distil_lr: float = Field(1e-3, gt=0, le=1, description="learning rate when a neighbour's policy teaches")
    distil_work: float = Field(0.05, ge=0, description="robot time of one distillation step, in control periods "
                               "(a gradient step of these networks takes ~2 ms against the 40 ms period)")
    batched: bool = Field(True, description="train the fleet's TD3 agents side by side, their gradient steps "
                          "batched into one computation (mfd_core.learners.td3_batch): the same learning per env "
                          "step as SB3's own loop, a fraction of the wall time; false: each robot's model.learn in turn")
    family_by: Literal["fleet", "arm", "robot"] = Field(
        "fleet", description="which policies count as one family (merged weight by weight); the others teach by "
        "distillation on the receiver's own states: fleet = all merge (observations and actions are in task "
        "space, the same on every arm), arm = robots of one arm type merge, robot = every policy teaches by "
        "distillation")

    @field_validator("net_arch")
    @classmethod
    def _positive(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(v < 1 for v in value):
            raise ValueError("layer widths must be >= 1")
        return value


# The sharing settings the reach fleet found best (``apps/scenarios/robots.toml``'s history,
# ``benchmarks/robots.py``): a round every 10 env steps (max_silence 0.4 s), the round's
# models merged together after a 0.4 s window (0.2 s: models arrived a round late, founders'
# ratio 0.87), plain data-parallel averaging, int8 packets (a round every 10 env steps, targets
# included, within 10 Mbit/s links), 3 hops (the founders' links can form a chain), and a gate
# that refuses what the robot's critic values 0.5 reward below its own policy (the untrained
# initial actor: 0.8 below after 600 steps; the fleet's round averages: none of ~1,200 refused).
DEFAULT_POLICY = Policy(name="mfd", precision="int8", share_margin=0.05, max_silence=0.4, fanout=3,
                        share_hops=3, merge_window=0.4, gate_tolerance=0.5, merge_weights="samples",
                        serve_blend=False, hello_interval=5.0,
                        # the settings this fleet was measured with, before the core's defaults became
                        # the digits scenarios' (bootstrap_hops 3, echo_window 2 s, a sparse node
                        # reaching 2 hops, a keep-alive stretched for a node with many neighbours or
                        # shortened for one on clean links)
                        bootstrap_hops=1, echo_window=0.0, sparse_share_hops=1, silence_density=0.0,
                        clean_silence=1.0)

# Learner settings of a task that differ from :class:`LearnerSettings`' (reach) defaults.
TASK_LEARNER_DEFAULTS: dict[str, dict[str, Any]] = {
    "reach": {},
    "push": {"net_arch": (128, 128)},  # a block and its pose: the wider network of robots_push.toml
}


def learner_defaults(task: str) -> LearnerSettings:
    """The learner a fleet file of ``task`` gets when it omits ``[learner]``."""
    return LearnerSettings(**TASK_LEARNER_DEFAULTS.get(task, {}))


class RobotsScenario(_Strict):
    name: str = "robots"
    description: str = ""
    task: Literal["reach", "push"] = "reach"
    env_id: str | None = Field(None, description="any registered gymnasium env instead of the robot cells "
                               "(e.g. \"Pendulum-v1\" or \"mymodule:MyEnv-v0\", which imports mymodule first): "
                               "goal-conditioned (Dict observation with desired_goal: HER, success rate) or plain "
                               "(episode return); the robots' cells are then not used")
    seeds: tuple[int, ...] = Field((0,), min_length=1)
    duration: float = Field(160.0, gt=0, description="simulated seconds")
    eval_interval: float = Field(6.0, gt=0, description="simulated seconds between measurements")
    eval_episodes: int = Field(20, ge=1, description="held-out episodes per robot per measurement")
    eval_workers: int = Field(1, ge=0, le=8, description="processes that run the measurement episodes beside "
                              "the fleet, off its critical path (the same episodes, the same scores); 0: in "
                              "the fleet's own process, between its training steps")
    target: float = Field(0.9, gt=0, le=1, description="success rate whose steps-to-reach the report quotes")
    topology: Topology = Topology()
    learner: LearnerSettings = LearnerSettings()
    policy: Policy = DEFAULT_POLICY
    robots: tuple[Robot, ...] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, doc: Any) -> Any:
        """A ``[learner]`` table fills in from the task's defaults, a ``[policy]`` table from
        :data:`DEFAULT_POLICY` (not from the core's :class:`Policy` defaults): a file
        writes only what differs from the best-known settings."""
        if not isinstance(doc, dict):
            return doc
        doc = dict(doc)
        task_learner = TASK_LEARNER_DEFAULTS.get(doc.get("task", "reach"), {})
        learner = doc.get("learner")
        if learner is None:
            if task_learner:
                doc["learner"] = dict(task_learner)
        elif isinstance(learner, dict):
            doc["learner"] = {**task_learner, **learner}
        if isinstance(doc.get("policy"), dict):
            try:
                doc["policy"] = DEFAULT_POLICY.replace(**doc["policy"])
            except ValueError as err:
                raise ValueError(str(err)) from None
        return doc

    @model_validator(mode="after")
    def _check(self) -> "RobotsScenario":
        if not any(r.join_at is None for r in self.robots):
            raise ValueError("robots: at least one robot must be there from the start (join_at absent)")
        if self.eval_interval > self.duration:
            raise ValueError("eval_interval: longer than the duration")
        server = self.policy.fedavg.server
        if server is not None and server >= len(self.robots):
            raise ValueError(f"policy.server: robot {server} does not exist")
        return self

    @property
    def founders(self) -> list[int]:
        return [i for i, r in enumerate(self.robots) if r.join_at is None]

    @property
    def joiners(self) -> list[int]:
        return [i for i, r in enumerate(self.robots) if r.join_at is not None]

    def replace(self, **changes: Any) -> "RobotsScenario":
        """A validated copy with nested changes, e.g. ``replace(learner={"local_steps": 100})``."""
        doc = self.model_dump(by_alias=True)
        for key, value in changes.items():
            if key == "policy" and isinstance(value, dict):
                doc[key] = self.policy.replace(**value).model_dump(by_alias=True)
            else:
                doc[key] = {**doc[key], **value} if isinstance(value, dict) and isinstance(doc.get(key), dict) \
                    else value
        return from_dict(doc)

    def with_policy(self, name: str) -> "RobotsScenario":
        return self.model_copy(update={"policy": self.policy.replace(name=name)})


def from_dict(doc: dict[str, Any]) -> RobotsScenario:
    try:
        return RobotsScenario.model_validate(doc)
    except ValidationError as err:
        raise RobotsScenarioError(format_validation_error(err)) from None


def resolve(name_or_path: str | Path) -> Path:
    """A path to a TOML file, or the name of a shipped one (``apps/scenarios/NAME.toml``)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    shipped = SCENARIO_DIR / f"{name_or_path}.toml"
    if shipped.exists():
        return shipped
    names = sorted(p.stem for p in SCENARIO_DIR.glob("robots*.toml"))
    raise RobotsScenarioError(f"no scenario file {str(name_or_path)!r} and no shipped one of that name "
                              f"(shipped robots scenarios: {', '.join(names) or 'none'})")


def load(name_or_path: str | Path = DEFAULT_SCENARIO) -> RobotsScenario:
    """Read and validate a robots scenario. :raises RobotsScenarioError: naming the field."""
    path = resolve(name_or_path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise RobotsScenarioError(f"{path}: not valid TOML: {err}") from None
    try:
        return from_dict(doc)
    except RobotsScenarioError as err:
        raise RobotsScenarioError(f"{path}: {err}") from None
