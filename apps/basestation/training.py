"""Training the stations: one MFD :class:`~mfd_core.runtime.World` over the X2 graph.

Every station that is on is a node with its own :class:`StationLearner`; the nodes'
graph is the X2 graph of the scenario (links with the backhaul's bandwidth and
latency), so a model shared with a neighbour crosses one X2 link and FedAvg's updates
cross every link on the way to the server (the most central station). The sharing
policy is swapped by name (``isolated``, ``fedavg``, ``mfd``, ``gossip``) and everything
else stays the same: one radio network, the same seed, the same initial models.

The central controller is the other way to coordinate: one SB3 PPO agent on
:class:`~envs.basestation.CentralControllerEnv`, given the same number of env steps.

What a run leaves on disk (``out/<scenario>/<policy>/``): each station's SB3 zip in
its own folder (``bs_<i>/model.zip``: the station's own disk), the run's measurements
(``run/``: metrics.jsonl, events.jsonl, summary.json, what ``mfd report`` reads) and
``summary.json`` with the bytes and the final scores.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import networkx as nx
import numpy as np
import torch

from mfd_core import (GossipPolicy, IsolatedPolicy, MFDPolicy, ModelHeader, Node, PolicySettings, SharingPolicy,
                      SimNetwork, World, policy_by_name)

from .config import AppScenario
from .learner import RadioCommons, StationLearner, bias_towards_static, make_ppo, single_thread
from .residual import RESIDUAL_FILE
from .rules import RULE_POLICIES, RULE_START, load_rule_params, train_rule

__all__ = ["SHARING_POLICIES", "RL_POLICIES", "RESIDUAL_FILE", "x2_topology", "build_world", "train_fleet",
           "train_central", "train_scenario", "residual_rule"]

SHARING_POLICIES = ("isolated", "fedavg", "mfd", "gossip")
# what `train` produces: the tuned MLB rule first (the central search starts from it),
# the learners, and the central references
RL_POLICIES = ("tuned_rule", "isolated", "fedavg", "mfd", "central", "central_search")

Progress = Callable[[float], None]


def x2_topology(commons: RadioCommons, scenario: AppScenario) -> nx.Graph:
    """The stations that are on, linked as their X2 graph; node ids are station indices.

    A station in outage runs no agent and its X2 links are down with it.
    """
    t = scenario.training
    # One chunk (act chunk_steps, then n_epochs passes over them) per simulated second.
    compute = float(t.chunk_steps * (1 + t.n_epochs))
    x2 = commons.env.x2_graph
    g = nx.Graph(name=f"x2-{scenario.name}")
    for node, attrs in x2.nodes(data=True):
        i = int(attrs["index"])
        if not commons.off[i]:
            g.add_node(i, compute=compute, memory=1 << 30, pos=tuple(float(v) for v in attrs["pos"]),
                       kind=attrs.get("kind", "macro"))
    link = scenario.x2.model_dump()
    for u, v in x2.edges:
        i, j = int(x2.nodes[u]["index"]), int(x2.nodes[v]["index"])
        if i in g and j in g:
            g.add_edge(i, j, **link)
    g.graph["link_defaults"] = dict(link)
    g.graph["node_defaults"] = {"compute": compute, "memory": 1 << 30}
    if g.number_of_nodes() > 1 and not nx.is_connected(g):
        # FedAvg would have no route to some clients: say so instead of a silent stall
        raise ValueError(f"{scenario.name}: the X2 graph of the stations that are on is not connected")
    return g


class _Deploying:
    """After each training chunk the station deploys the trained model if its twin
    scores it no worse than the running one (:meth:`StationLearner.promote`)."""

    def after_training(self, node: Node) -> None:
        super().after_training(node)  # type: ignore[misc]
        node.learner.promote()


class DeployingIsolated(_Deploying, IsolatedPolicy):
    name = "isolated"


class DeployingMFD(_Deploying, MFDPolicy):
    """MFD whose stations also keep each neighbour's latest complete model for their
    twins: a station then judges a model by how its neighbourhood, acting with the
    models they actually run, would fare (the models follow the data: no measurement
    leaves a station, the neighbours' models come to it)."""

    name = "mfd"

    def on_model(self, node: Node, message, header: ModelHeader, from_node: int | None) -> None:
        if header.kind == "model" and message.complete:
            if node.learner.observe_peer(message.origin, message.state):
                node.invalidate_score()
        super().on_model(node, message, header, from_node)


class DeployingGossip(_Deploying, GossipPolicy):
    name = "gossip"


def sharing_policy(name: str, deploy: str, settings: PolicySettings | None = None) -> SharingPolicy:
    """The core's policy of that name; with ``deploy="if_better"`` its stations deploy
    through their twins (FedAvg clients always run the global model, as in FL)."""
    if deploy == "if_better" and name != "fedavg":
        return {"isolated": DeployingIsolated, "mfd": DeployingMFD, "gossip": DeployingGossip}[name](settings)
    return policy_by_name(name, settings)


def build_world(scenario: AppScenario, policy: str, seed: int = 0,
                rule_params: dict[str, Any] | None = None) -> World:
    """The scenario's stations as MFD nodes under ``policy`` (one of :data:`SHARING_POLICIES`);
    with residual actions they correct the rule of ``rule_params`` (:class:`RadioCommons`)."""
    if policy not in SHARING_POLICIES:
        raise ValueError(f"unknown sharing policy {policy!r}; choose from {', '.join(SHARING_POLICIES)}")
    t = scenario.training
    commons = RadioCommons(scenario.env, t, seed=seed, rule_params=rule_params)
    graph = x2_topology(commons, scenario)
    # One initialisation for the fleet (seed): averages of models that started apart
    # mix unrelated features (McMahan et al. 2017, fig. 1).
    make = StationLearner
    if t.learner == "lookahead":
        from .lookahead import LookaheadStationLearner, collect_labels, label_seeds

        # one labelled trajectory of the rule serves every station (its own column)
        commons.labels = collect_labels(scenario.env, commons.rule_params,
                                        label_seeds(seed, t.lookahead_episodes, t.eval_seeds),
                                        t.residual_steps, t.lookahead_horizon, t.lookahead_margin,
                                        t.lookahead_heads, futures=t.lookahead_futures)
        make = LookaheadStationLearner
    learners = {i: make(commons, i, t, seed=seed) for i in sorted(graph.nodes)}
    world = World(SimNetwork(graph, seed=seed), learners, seed=seed, duration=float(t.rounds),
                  eval_interval=min(float(t.eval_interval), float(t.rounds)), local_steps=t.chunk_steps,
                  evaluate=lambda _node, learner: learner.test_score(), name=scenario.name,
                  policy=sharing_policy(policy, t.deploy, scenario.sharing.settings_for(policy)),
                  transport=scenario.sharing.transport)
    world.commons = commons  # type: ignore[attr-defined]
    return world


def _deployed_state(world: World, node_id: int) -> dict[str, torch.Tensor]:
    node = world.nodes[node_id]
    served = world.policy.served_state(node)
    return served if served is not None else node.learner.deployed_state()


def train_fleet(scenario: AppScenario, policy: str, seed: int = 0, out: Path | None = None,
                progress: Progress | None = None, observe: Callable[[Any], None] | None = None,
                checkpoint: Callable[[float, Callable[[], dict], bool], None] | None = None) -> dict[str, Any]:
    """Train every station under a sharing policy; save the stations' models and the run.

    :param observe: handed the run's live record (a ``RunResult`` that grows with every
        measurement) before the run starts, so a caller can stream it or keep it when
        the run is interrupted.
    :param checkpoint: as :meth:`mfd_core.World.run`'s: after every measurement and at the
        end, the time and a function giving every station's served model.
    :return: the run's summary (bytes, final scores, wall time).
    """
    started = time.perf_counter()
    rule = residual_rule(scenario, seed, out)
    with single_thread():
        world = build_world(scenario, policy, seed, rule_params=rule)
        if observe is not None:
            observe(world.result)
        result = world.run(progress, checkpoint)
        finals = {n: float(world.nodes[n].learner.test_score()) for n in world.nodes}
    commons: RadioCommons = world.commons  # type: ignore[attr-defined]
    summary = {
        "scenario": scenario.name, "policy": policy, "seed": seed,
        "stations": len(world.nodes), "rounds": scenario.training.rounds,
        "env_steps": commons.env_steps, "collections": commons.collections,
        "model_bytes": int(result.model_bytes[-1]) if result.model_bytes else 0,
        "total_bytes": int(result.bytes[-1]) if result.bytes else 0,
        "data_bytes": int(result.data_bytes[-1]) if result.data_bytes else 0,
        "final_test_score": float(np.mean(list(finals.values()))),
        "station_test_scores": {f"bs_{n}": s for n, s in finals.items()},
        # what a station is, so that its model can be played by one of its kind on another
        # layout (evaluation.kind_models)
        "station_kinds": {f"bs_{n}": "macro" if commons.env.network.layout.is_macro[n] else "small"
                          for n in world.nodes},
        "counters": {k: v for k, v in result.extra.items() if isinstance(v, (int, float))},
        "wall_seconds": round(time.perf_counter() - started, 2),
        "precision": scenario.sharing.mfd.precision if policy == "mfd" else "fp32",
    }
    labels = getattr(commons, "labels", None)
    if labels is not None:
        # what the labels said and how well each station's served model predicts the
        # held-out episode's labels (the trivial "never correct" scores accuracy_no_correction)
        with single_thread():
            held = {f"bs_{n}": world.nodes[n].learner.held_out_accuracy(_deployed_state(world, n))
                    for n in world.nodes}
        summary["lookahead"] = {**labels.stats(commons.default[0]), "held_out": held,
                                "held_out_mean": {k: float(np.nanmean([h[k] for h in held.values()]))
                                                  for k in next(iter(held.values()))}}
    if out is not None:
        folder = Path(out) / scenario.name / policy
        with single_thread():
            for n, node in world.nodes.items():
                learner: StationLearner = node.learner
                learner.set_state(_deployed_state(world, n))
                learner.save(folder / f"bs_{n}" / "model.zip")
        if rule is not None:
            # what the stations' corrections are applied to: evaluation plays the rule beside them
            (folder / RESIDUAL_FILE).write_text(json.dumps(
                {"rule_params": rule, "steps": scenario.training.residual_steps,
                 "raise_power": scenario.training.residual_raise_power}, indent=2))
        result.save(folder / "run")
        (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def residual_rule(scenario: AppScenario, seed: int, out: Path | None) -> dict[str, Any] | None:
    """The tuned rule residual stations correct (None with absolute actions): the one
    tuned for training seed ``seed`` in ``out/<scenario>/tuned_rule/`` (tuned there now,
    on the training seeds only, when there is none yet); without ``out`` the rule's
    starting parameters."""
    if scenario.training.action != "residual":
        return None
    if out is None:
        return dict(RULE_START)
    folder = Path(out) / scenario.name / "tuned_rule"
    if not (folder / "params.json").is_file():
        train_rule(scenario, "tuned_rule", seed, out)
    return load_rule_params(folder)


def train_central(scenario: AppScenario, seed: int = 0, out: Path | None = None,
                  progress: Progress | None = None) -> dict[str, Any]:
    """One PPO controller for all stations on the central env, the fleet's env steps.

    Its reward is the network's (PF utility of all users, energy efficiency, handovers),
    normalised by SB3's VecNormalize (reward only: the observations are already in
    [0, 1]). It needs every station's measurements every step: ``measurement_bytes``
    counts them (4 bytes a feature up, 3 bytes of actions down per station).
    """
    started = time.perf_counter()
    t = scenario.training
    steps = t.central_steps or t.rounds * t.chunk_steps
    with single_thread():
        model, net = _learn_central(scenario, seed, steps, progress)
    on = int((~net.off).sum())
    summary = {
        "scenario": scenario.name, "policy": "central", "seed": seed, "stations": net.n_stations,
        "env_steps": int(model.num_timesteps), "model_bytes": 0, "total_bytes": 0,
        "measurement_bytes": int(model.num_timesteps * on * (4 * net.obs_dim + 3)),
        "wall_seconds": round(time.perf_counter() - started, 2),
    }
    if out is not None:
        folder = Path(out) / scenario.name / "central"
        folder.mkdir(parents=True, exist_ok=True)
        model.save(folder / "model.zip")
        (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _learn_central(scenario: AppScenario, seed: int, steps: int, progress: Progress | None):
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from envs.basestation import CentralControllerEnv

    t = scenario.training
    env = CentralControllerEnv(scenario.env)
    net = env.network
    model = make_ppo(env, t, seed)
    model.set_env(VecNormalize(DummyVecEnv([lambda: env]), norm_obs=False, norm_reward=True, gamma=t.gamma))
    bias_towards_static(model.policy, [net.n_power_levels, net.n_cio, 2] * net.n_stations,
                        net.default_actions().reshape(-1), t.static_bias, t.pinned)

    class _Progress(BaseCallback):
        def _on_step(self) -> bool:
            if progress is not None and self.num_timesteps % t.chunk_steps == 0:
                progress(self.num_timesteps / t.chunk_steps)
            return True

    model.learn(total_timesteps=steps, callback=_Progress())
    return model, net


def train_scenario(scenario: AppScenario, policies: list[str], seed: int, out: Path,
                   quiet: bool = False) -> list[dict[str, Any]]:
    """Train each policy on the scenario with one progress bar (simulated seconds)."""
    import sys

    from tqdm import tqdm

    for p in policies:
        if p not in RL_POLICIES and p not in SHARING_POLICIES:
            raise ValueError(f"unknown policy {p!r}; choose from {', '.join(RL_POLICIES)}")
    rounds = scenario.training.rounds
    central_rounds = (scenario.training.central_steps or rounds * scenario.training.chunk_steps) \
        / scenario.training.chunk_steps
    total = sum(central_rounds if p == "central" else rounds for p in policies)
    summaries = []
    with tqdm(total=round(total), unit="round", disable=quiet, file=sys.stderr,
              bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} rounds [{elapsed}<{remaining}]") as bar:
        for p in policies:
            done = [0.0]
            bar.set_description(f"{scenario.name} {p}")

            def progress(x: float, done=done) -> None:
                bar.update(x - done[0])
                done[0] = x

            if p in RULE_POLICIES:
                summary = train_rule(scenario, p, seed, out, lambda x, progress=progress: progress(x * rounds))
                bar.update(rounds - done[0])
            elif p == "central":
                summary = train_central(scenario, seed, out, progress)
                bar.update(central_rounds - done[0])
            else:
                summary = train_fleet(scenario, p, seed, out, progress)
                bar.update(rounds - done[0])
            summaries.append(summary)
    return summaries
