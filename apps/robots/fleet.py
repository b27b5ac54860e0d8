"""A fleet of robot cells on a radio network, as an MFD :class:`~mfd_core.runtime.World`.

Each robot is one node: its own PyBullet cell (arm, table, goal region: its experience is
its own), its own SB3 agent (TD3 or SAC with HER) wrapped in
:class:`~mfd_core.learners.sb3.SB3Learner`, and a place in a random geometric radio
topology with lossy links. Robots that join later start absent (``up=False``) and come
up through a ``node_join`` fault, when the MFD policy makes them pull their neighbours'
policies. Every policy of the fleet starts from one initialisation (the reference
network of the seed, sliced to each robot's width), so that merges are meaningful from
the first share (McMahan et al. 2017).

Measurements: every ``eval_interval`` each present robot runs ``eval_episodes`` held-out
episodes (seeds apart from training and from the gate's) on its own cell; the fleet
records each robot's env steps beside the score, so that "steps to 90 % success" is
counted in the robot's own experience.
"""
from __future__ import annotations

import copy
import math
import multiprocessing
import signal
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

import gymnasium as gym
import networkx as nx
import numpy as np
import torch

import envs.robots  # noqa: F401  (registers mfd/*)
from envs.robots import CellConfig, silenced_output
from mfd_core import SimNetwork, World, policy_class
from mfd_core.learners.sb3 import SB3Learner, SB3PolicyFamily, flatten_obs
from mfd_core.learners.td3_batch import TD3Batcher
from mfd_core.network.topology import random_geometric
from mfd_core.scaling import merge_overlapping
from mfd_core.scenario import Fault

from .config import RobotsScenario

# Seeds of the three episode streams of a robot, far apart so they never overlap:
# training resets (SB3 seeds the env once, then it runs on), the gate's fixed scoring
# episodes (its "validation set") and the held-out measurement episodes ("test set").
_SCORE_SEED = 1_000_000
TEST_SEED = 2_000_000


def env_id(task: str) -> str:
    return {"reach": "mfd/ArmReach-v0", "push": "mfd/ArmPush-v0"}[task]


def make_env(task: str, cell: CellConfig, custom: str | None = None, **kwargs: Any) -> gym.Env:
    """The robot's cell, or the scenario's own gymnasium env (``env_id``: the cell unused)."""
    if custom is not None:
        return gym.make(custom, **{k: v for k, v in kwargs.items() if k == "render_mode"})
    with silenced_output():
        return gym.make(env_id(task), config=cell, **kwargs)


def is_goal_env(env: gym.Env) -> bool:
    """A goal-conditioned env (HER relabels its goals; its episodes end in success or not)."""
    space = env.observation_space
    return isinstance(space, gym.spaces.Dict) and "desired_goal" in space.spaces


def _widths(net_arch: tuple[int, ...], ratio: float) -> list[int]:
    # HeteroFL's rule (mfd_core.scaling): a sub-model of ratio r keeps ceil(r * C) units.
    return [max(1, math.ceil(ratio * c)) for c in net_arch]


def make_model(scenario: RobotsScenario, env: gym.Env, *, width: float, seed: int):
    """The robot's SB3 algorithm on its own training env."""
    from stable_baselines3 import SAC, TD3, HerReplayBuffer
    from stable_baselines3.common.noise import NormalActionNoise

    s = scenario.learner
    goal = is_goal_env(env)
    kwargs: dict[str, Any] = dict(
        replay_buffer_class=HerReplayBuffer if goal else None,
        replay_buffer_kwargs=({"n_sampled_goal": s.n_sampled_goal, "goal_selection_strategy": "future"}
                              if goal else None),
        policy_kwargs={"net_arch": _widths(s.net_arch, width)},
        learning_rate=s.learning_rate, batch_size=s.batch_size, gamma=s.gamma, tau=s.tau,
        learning_starts=s.learning_starts, buffer_size=s.buffer_size, train_freq=1, gradient_steps=s.gradient_steps,
        seed=seed, verbose=0, device="cpu",
    )
    if s.algo == "td3":
        dim = env.action_space.shape[0]
        noise = NormalActionNoise(np.zeros(dim), s.action_noise * np.ones(dim))
        return TD3("MultiInputPolicy" if goal else "MlpPolicy", env, action_noise=noise, **kwargs)
    return SAC("MultiInputPolicy" if goal else "MlpPolicy", env, **kwargs)


def family_name(scenario: RobotsScenario, node_id: int) -> str:
    """The family a robot's policy belongs to (``learner.family_by``): policies of one
    family merge weight by weight, the others teach by distillation."""
    base = f"{scenario.learner.algo}-mlp"
    by = scenario.learner.family_by
    if not scenario.policy.name.startswith("mfd"):
        # every robot runs the same network: the baselines average it as one architecture
        # (how policies of different arms share is MFD's choice, not theirs)
        return base
    if by == "arm":
        return f"{base}-{scenario.robots[node_id].arm}"
    if by == "robot":
        return f"{base}-robot{node_id}"
    return base


# --------------------------------------------------------------------------- measurements beside the fleet

_WORKER_ENVS: dict[tuple[str, CellConfig], gym.Env] = {}


def _worker_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the fleet's to handle
    torch.set_num_threads(1)


def _success_episodes(task: str, cell: CellConfig, mu: torch.nn.Module, layout: list, low: np.ndarray,
                      high: np.ndarray, episodes: int, seed: int) -> float:
    """A deterministic TD3 actor's success rate on ``episodes`` seeded episodes of a cell:
    what :meth:`SB3Learner.evaluate_episodes` measures (the same observations, actions and
    episodes), in a worker process."""
    env = _WORKER_ENVS.get((task, cell))
    if env is None:
        env = _WORKER_ENVS[(task, cell)] = make_env(task, cell)
    total = 0.0
    with torch.no_grad():
        for i in range(episodes):
            obs, info = env.reset(seed=seed + i)
            done = False
            while not done:
                action = mu(torch.from_numpy(flatten_obs(obs, layout))).numpy()
                action = low + (0.5 * (action + 1.0) * (high - low))  # SB3's unscale_action
                obs, _, terminated, truncated, info = env.step(action[0])
                done = terminated or truncated
            total += float(bool(info.get("is_success", False)))
    return total / episodes


class AsyncEpisodes:
    """Measurement episodes in worker processes, beside the fleet: a measurement submits a
    copy of each robot's actor and records NaN; :meth:`resolve` writes the scores into the
    run's record when they come. Only deterministic, squashed MLP actors (TD3) go there;
    :meth:`accepts` says which."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self.pending: list[tuple[int, int, Future]] = []

    @staticmethod
    def accepts(learner: SB3Learner) -> bool:
        from stable_baselines3.common.torch_layers import CombinedExtractor, FlattenExtractor

        policy = learner.policy
        actor = getattr(policy, "actor", None)
        return (learner.output_kind == "deterministic" and bool(policy.squash_output)
                and isinstance(getattr(actor, "mu", None), torch.nn.Sequential)
                and type(actor.features_extractor) in (CombinedExtractor, FlattenExtractor))

    def submit(self, row: int, col: int, task: str, cell: CellConfig, learner: SB3Learner, episodes: int,
               seed: int) -> None:
        if self._pool is None:
            # fork where there is one: the worker starts with everything imported, and a
            # script without a __main__ guard is not run again (spawn would)
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_worker_init)
        space = learner.model.action_space
        mu = copy.deepcopy(learner.policy.actor.mu)
        future = self._pool.submit(_success_episodes, task, cell, mu, learner.layout, space.low, space.high,
                                   episodes, seed)
        self.pending.append((row, col, future))

    def resolve(self, scores: list[list[float]], before: int | None = None) -> None:
        """Write the scores of rows before ``before`` (waiting for them; all rows if None)
        and of any other finished ones."""
        left = []
        for row, col, future in self.pending:
            if before is None or row < before or future.done():
                scores[row][col] = float(future.result())
            else:
                left.append((row, col, future))
        self.pending = left

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self.pending = []


@dataclass
class Fleet:
    """What a fleet run holds beside the world: the cells, the test envs and the record
    of each robot's env steps at each measurement."""

    scenario: RobotsScenario
    seed: int
    world: World
    cells: dict[int, CellConfig]
    test_envs: dict[int, gym.Env]
    env_steps: list[list[int]] = field(default_factory=list)  # [measurement][node]
    join_times: dict[int, float] = field(default_factory=dict)
    evaluator: AsyncEpisodes | None = None

    @property
    def learners(self) -> dict[int, SB3Learner]:
        return {n: node.learner for n, node in self.world.nodes.items()}

    def close(self) -> None:
        if self.evaluator is not None:
            self.evaluator.close()
        for env in self.test_envs.values():
            env.close()
        for learner in self.learners.values():
            learner.eval_env.close()
            learner.model.get_env().close()


def radio_graph(scenario: RobotsScenario, seed: int) -> nx.Graph:
    """Robots in the unit square, linked within radio range; the founders connected among
    themselves (a joiner must not be the only bridge of a fleet that runs without it)."""
    t = scenario.topology
    n = len(scenario.robots)
    founders = scenario.founders
    radius = t.radius
    for _ in range(40):
        graph = random_geometric(max(n, 2), radius, seed=seed, degrade=t.degrade, bandwidth=t.bandwidth,
                                 latency=t.latency, loss=t.loss, compute=25.0)
        if n == 1 or nx.is_connected(graph.subgraph(founders)):
            break
        radius *= 1.1
    if n == 1:
        graph.remove_node(1)
    for i, robot in enumerate(scenario.robots):
        attrs = graph.nodes[i]
        attrs["compute"] = float(robot.compute)
        attrs["arm"] = robot.arm
        if robot.join_at is not None:
            attrs["up"] = False
    return graph


def build_fleet(scenario: RobotsScenario, seed: int, policy: str | None = None) -> Fleet:
    """The world of a robots scenario under ``policy`` (default: the scenario's)."""
    s = scenario if policy is None or policy == scenario.policy.name else scenario.with_policy(policy)
    policy_class(s.policy.name)  # unknown names fail before anything is built
    graph = radio_graph(s, seed)
    if s.policy.name == "fedavg" and s.policy.fedavg.server is None:
        # FedAvg's server: the most central robot of those there from the start (one that
        # joins later would hold every round until it comes)
        closeness = nx.closeness_centrality(graph.subgraph(s.founders), distance="latency")
        server = max(sorted(closeness), key=lambda n: closeness[n])
        s = s.model_copy(update={"policy": s.policy.replace(server=int(server))})
    share = ("actor", "critic") if s.learner.share_critic else ("actor",)
    if s.learner.share_targets:
        share = share + tuple(f"{name}_target" for name in share)

    cells = {i: r.cell() for i, r in enumerate(s.robots)}
    learners: dict[int, SB3Learner] = {}
    # one batcher for the fleet: the robots' training chunks run side by side (learner.batched)
    batcher = TD3Batcher() if s.learner.batched and s.learner.algo == "td3" else None
    reference: dict[str, torch.Tensor] | None = None
    for i, robot in enumerate(s.robots):
        node_seed = seed * 1000 + i
        train_env = make_env(s.task, cells[i], s.env_id)
        model = make_model(s, train_env, width=robot.width, seed=node_seed)
        learner = SB3Learner(model, make_env(s.task, cells[i], s.env_id), eval_episodes=s.learner.score_episodes,
                             eval_seed=_SCORE_SEED + 1000 * i, metric=s.learner.score_metric, share=share,
                             family=family_name(s, i), width=robot.width,
                             seed=node_seed, distil_batch=s.learner.batch_size,
                             distil_lr=s.learner.distil_lr, distil_work=s.learner.distil_work,
                             actor_warmup=s.learner.actor_warmup, batcher=batcher)
        if reference is None:
            # One initialisation for the fleet: the full-width network of this seed.
            with torch.random.fork_rng(devices=[]):
                full = make_model(s, make_env(s.task, cells[i], s.env_id), width=1.0, seed=seed)
            reference = SB3Learner(full, full.get_env().envs[0], share=share).get_state()
            full.get_env().close()
        own = learner.get_state()
        # widths nest by prefix: every robot starts as a slice of the reference network
        learner.initialise(merge_overlapping(own, [(reference, 1.0)], base_weight=0.0))
        learners[i] = learner

    def policy_family(ratio: float):
        # only shapes and forward matter (a teacher's state is loaded into it); no seed, so
        # the env it is built on (robot 0's, never stepped by it) is not reseeded
        with torch.random.fork_rng(devices=[]):
            return make_model(s, learners[0].model.get_env(), width=ratio, seed=None).policy

    # every family of the fleet is the same architecture: one builder, one cache of shapes
    builder = SB3PolicyFamily(family_name(s, 0), policy_family, share=share)
    families = {}
    for i in range(len(s.robots)):
        name = family_name(s, i)
        if name not in families:
            families[name] = copy.copy(builder)
            families[name].name = name
    faults = [Fault(kind="node_join", at=r.join_at, nodes=(i,)) for i, r in enumerate(s.robots) if r.join_at is not None]
    test_envs = {i: make_env(s.task, cells[i], s.env_id) for i in learners}
    metric = "success" if is_goal_env(test_envs[0]) else "return"
    holder: dict[str, Any] = {}
    # the measuring processes build the arms' own cells: a fleet of a user's env (env_id)
    # is measured here, with the env it trains on
    evaluator = AsyncEpisodes(s.eval_workers) if s.eval_workers > 0 and not s.env_id else None

    def evaluate(node_id: int, learner: SB3Learner) -> float:
        world = holder["world"]
        if not world.network.is_up(node_id):
            return math.nan
        if evaluator is not None and evaluator.accepts(learner):
            # the row the world is about to record; the score arrives from the worker
            result = world.result
            evaluator.submit(len(result.times), result.node_ids.index(node_id), s.task, cells[node_id], learner,
                             s.eval_episodes, TEST_SEED + 1000 * node_id)
            return math.nan
        return learner.evaluate_episodes(test_envs[node_id], s.eval_episodes, TEST_SEED + 1000 * node_id,
                                         metric=metric)

    world = World(SimNetwork(graph, seed=seed), learners, policy=s.policy.make(), transport=s.policy.transport,
                  seed=seed, duration=s.duration,
                  eval_interval=s.eval_interval, local_steps=s.learner.local_steps, evaluate=evaluate,
                  families=families, faults=faults, name=s.name)
    holder["world"] = world
    fleet = Fleet(s, seed, world, cells, test_envs, evaluator=evaluator)
    for i, r in enumerate(s.robots):
        if r.join_at is not None:
            fleet.join_times[i] = r.join_at * s.duration
    return fleet


_ROWS = ("times", "scores", "bytes", "model_bytes", "data_bytes", "packets")


@contextmanager
def _first_rows(fleet: Fleet, n: int):
    """The run's record cut to its first ``n`` measurements for a while (a progress callback
    reads the last row; with measurements in workers, that is the last complete one)."""
    result = fleet.world.result
    lists = [getattr(result, name) for name in _ROWS] + list(result.node_metrics.values()) + [fleet.env_steps]
    cut = [values[n:] for values in lists]
    for values in lists:
        del values[n:]
    try:
        yield
    finally:
        for values, tail in zip(lists, cut):
            values.extend(tail)


def run_fleet(fleet: Fleet, progress: Callable[[float], None] | None = None):
    """Run the fleet's world; record each robot's env steps at every measurement.

    With measurements in worker processes, ``progress`` hears of each measurement once its
    scores are in (one measurement later: the record it sees ends there)."""
    world = fleet.world
    evaluator = fleet.evaluator
    told = [0]

    def tell(upto: int) -> None:
        # progress for measurements [told, upto) (rows complete by now)
        for k in range(told[0], upto):
            if progress is not None:
                with _first_rows(fleet, k + 1):
                    progress(world.result.times[k], fleet)
        told[0] = max(told[0], upto)

    def on_measure(t: float) -> None:
        fleet.env_steps.append([world.nodes[n].learner.env_steps for n in world.result.node_ids])
        rows = len(world.result.times)
        if evaluator is None:
            tell(rows)
            return
        evaluator.resolve(world.result.scores, before=rows - 1)
        tell(rows - 1)

    try:
        result = world.run(on_measure)
        # The nodes' last chunks (asked for at the end time, after the final measurement)
        # are still recorded in a batcher: train them here, on the run's one torch thread,
        # so that the run returns with every env step it counts taken (read later, they ran
        # outside the run, on the default thread count, and a timing of run_fleet missed them)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for node in world.nodes.values():
                node.learner.settle()
        finally:
            torch.set_num_threads(threads)
    finally:
        if evaluator is not None:
            measured = len(fleet.env_steps)
            evaluator.resolve(world.result.scores)
            tell(measured)
    if len(fleet.env_steps) < len(result.times):  # the final record after the loop
        fleet.env_steps.append([world.nodes[n].learner.env_steps for n in result.node_ids])
    result.extra["arms"] = [r.arm for r in fleet.scenario.robots]
    result.extra["join_times"] = {str(k): v for k, v in fleet.join_times.items()}
    return result


def steps_to(scores: list[float], steps: list[int], target: float, start: int = 0) -> int | None:
    """The robot's own env steps (after ``start``) at its first measurement at ``target`` or above."""
    for score, n in zip(scores, steps):
        if score is not None and not (isinstance(score, float) and math.isnan(score)) and score >= target:
            return int(n) - start
    return None
