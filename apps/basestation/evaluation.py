"""Every controller on every scenario and seed, and the report a person reads.

Controllers: the static configuration (full power, strongest cell), the
load-balancing heuristic (CIO offsets, sleep at low load), the tuned MLB rule (a local
load-ratio rule tuned on training seeds, :mod:`.rules`), the central search (the same
rule tuned per station by a central optimiser: the strong reference) and the trained agents:
isolated, FedAvg and MFD stations (each station acts with its own saved SB3 model)
and the central PPO controller. Station models trained on another scenario or layout
(``trained_on``) play by kind: each station runs the model of the trained station of its
kind that its twin scored best (:func:`kind_models`). Each plays the scenario's evaluation seeds greedily;
the figures are per-step means over the episode (rates, PF utility), totals
(energy, handovers) and bits per joule over the whole episode, plus the bytes of model
traffic its training cost.

The report a person reads is written by :mod:`apps.basestation.report`.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from envs.basestation import BaseStationParallelEnv
from envs.basestation.heuristics import LoadBalancingHeuristic, full_power_strongest_cell, run_episode

from .config import AppScenario
from .learner import StackedPolicies, policy_actions, single_thread
from .residual import RESIDUAL_FILE, Residual
from .rules import RULE_POLICIES, LoadRatioRule, load_rule_params

__all__ = ["POLICIES", "HEURISTICS", "LABELS", "COLOURS", "KPIS", "ENGINEER_KPIS", "episode_kpis", "evaluate",
           "aggregate", "load_controller", "kind_models"]

POLICIES = ("full_power", "heuristic", "tuned_rule", "isolated", "fedavg", "mfd", "central", "central_search")
# the fixed heuristics and the tuned rule: "best heuristic" is the best of these per scenario
HEURISTICS = ("full_power", "heuristic", "tuned_rule")
LABELS = {"full_power": "full power + strongest cell", "heuristic": "load-balancing heuristic",
          "tuned_rule": "tuned MLB rule", "isolated": "isolated RL", "fedavg": "FedAvg RL", "mfd": "MFD RL",
          "central": "central RL", "central_search": "central search (per-station rule)"}
COLOURS = {"full_power": "#8c564b", "heuristic": "#7f7f7f", "tuned_rule": "#17becf", "isolated": "#bcbd22",
           "fedavg": "#1f77b4", "mfd": "#2ca02c", "central": "#d62728", "central_search": "#9467bd"}
# (key, label, scale for display)
KPIS = (
    ("mean_user_rate_mbps", "mean user rate (Mbit/s)"),
    ("p5_user_rate_mbps", "5th-percentile user rate (Mbit/s)"),
    ("pf_utility", "PF utility (sum ln(rate / 1 Mbit/s), per step)"),
    ("energy_kj", "energy (kJ per episode)"),
    ("energy_efficiency_kbit_per_j", "energy efficiency (kbit/J)"),
    ("handovers", "handovers per episode"),
    ("pingpong_handovers", "ping-pong handovers per episode (back to the cell left within 1 s)"),
    ("model_mb", "model traffic in training (MB)"),
)
# What a radio engineer reads per scenario: ``aggregate`` gives each its median and range
# (min, max) over the evaluation seeds besides the mean.
ENGINEER_KPIS = ("mean_user_rate_mbps", "p5_user_rate_mbps", "pf_utility", "energy_kj",
                 "energy_efficiency_kbit_per_j", "handovers", "pingpong_handovers", "pingpong_rate")

Controller = Callable[[dict], dict]


def kind_models(folder: Path) -> dict[str, int]:
    """Which trained station's model plays every station of a kind on another layout:
    per kind (``"macro"``, ``"small"``), the station of that kind with the best test
    score (its twin, a training-side seed: never an evaluation seed) in the training's
    ``summary.json``, ties to the lowest index. A kind the training had none of takes
    the other kind's pick (the ``small_cell`` feature tells the model what it plays).

    Per kind and not per position: stations of one kind face the same choices (power,
    offset, sleep) with the same meaning, while a position (index, neighbours) does not
    exist on another layout; the best-scored one, because its model is the one whose
    departures from the rule its twin found worth most.

    :raises FileNotFoundError: without a summary naming the stations' kinds.
    """
    path = Path(folder) / "summary.json"
    doc = json.loads(path.read_text()) if path.is_file() else {}
    kinds, scores = doc.get("station_kinds"), doc.get("station_test_scores", {})
    if not kinds:
        raise FileNotFoundError(f"{path}: no station_kinds (trained before models could play by kind)")
    best: dict[str, tuple[float, int]] = {}
    for agent, kind in kinds.items():
        i = int(agent.removeprefix("bs_"))
        if not (Path(folder) / agent / "model.zip").is_file():
            continue
        key = (-float(scores.get(agent, -math.inf)), i)
        if kind not in best or key < best[kind]:
            best[kind] = key
    if not best:
        raise FileNotFoundError(f"{folder}: no station models (bs_<i>/model.zip)")
    picks = {k: i for k, (_, i) in best.items()}
    for kind, other in (("macro", "small"), ("small", "macro")):
        picks.setdefault(kind, picks.get(other))
    return picks


class StationController:
    """Each station acts greedily with its own saved SB3 PPO model (``bs_<i>/model.zip``).

    Residual stations (a ``residual.json`` beside the models, :mod:`.residual`) answer
    corrections to the tuned rule saved there, which plays beside them.

    :param by_kind: play models trained on another layout: every station that is on runs
        the model :func:`kind_models` picks for its kind (macro / small cell)."""

    def __init__(self, env: BaseStationParallelEnv, folder: Path, by_kind: bool = False) -> None:
        from stable_baselines3 import PPO

        net = env.network
        self.agents = list(env.possible_agents)
        self.residual: Residual | None = None
        spec = folder / RESIDUAL_FILE
        if spec.is_file():
            doc = json.loads(spec.read_text())
            self.residual = Residual(env, doc["rule_params"], int(doc["steps"]), bool(doc.get("raise_power", False)))
            self.default = self.residual.zeros()
            self.nvec = list(self.residual.nvec)
            obs_shape: tuple[int, ...] = (self.residual.obs_dim,)
        else:
            self.default = net.default_actions()
            self.nvec = [net.n_power_levels, net.n_cio, 2]
            obs_shape = env.observation_space(self.agents[0]).shape
        if by_kind:
            picks = kind_models(folder)
            self.stations = [i for i in range(net.n_stations) if not net.off[i]]
            source = [picks["macro" if net.layout.is_macro[i] else "small"] for i in self.stations]
        else:
            self.stations = [i for i in range(net.n_stations) if (folder / f"bs_{i}" / "model.zip").is_file()]
            source = list(self.stations)
        if not self.stations:
            raise FileNotFoundError(f"{folder}: no station models (bs_<i>/model.zip)")
        missing = [i for i in range(net.n_stations) if i not in self.stations and not net.off[i]]
        if missing:
            raise FileNotFoundError(f"{folder}: no model for stations {missing}")
        # the station's own disk, written by `mfd basestation train`: never network bytes
        loaded = {j: PPO.load(folder / f"bs_{j}" / "model.zip", device="cpu").policy for j in sorted(set(source))}
        policies = [loaded[j] for j in source]
        for p in policies:
            if p.observation_space.shape != obs_shape:
                raise ValueError(f"{folder}: models were trained for observations of shape "
                                 f"{p.observation_space.shape}, this scenario has {obs_shape}")
        self.stacked = StackedPolicies(policies)
        self.idx = np.asarray(self.stations)

    def __call__(self, obs: dict) -> dict:
        if self.residual is not None:
            full = self.residual.observe(obs)  # the rule plans; the stations see its plan
            o = torch.from_numpy(full[self.idx])
        else:
            o = torch.from_numpy(np.stack([obs[self.agents[i]] for i in self.stations]).astype(np.float32))
        a, _ = policy_actions(self.stacked.logits(o), self.nvec, None, greedy=True)
        actions = self.default.copy()
        actions[self.idx] = a
        if self.residual is not None:
            actions = self.residual.to_env(actions)
        return {ag: actions[i] for i, ag in enumerate(self.agents)}


class CentralController:
    """The central PPO controller (``central/model.zip``) driving every station."""

    def __init__(self, env: BaseStationParallelEnv, folder: Path) -> None:
        from stable_baselines3 import PPO

        path = folder / "model.zip"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no central model")
        self.model = PPO.load(path, device="cpu")
        self.agents = list(env.possible_agents)
        expected = len(self.agents) * env.network.obs_dim
        if self.model.observation_space.shape != (expected,):
            raise ValueError(f"{path}: trained for {self.model.observation_space.shape} observations, "
                             f"this scenario has ({expected},)")

    def __call__(self, obs: dict) -> dict:
        flat = np.concatenate([obs[a] for a in self.agents]).astype(np.float32)
        action, _ = self.model.predict(flat, deterministic=True)
        a = np.asarray(action).reshape(len(self.agents), 3)
        return {ag: a[i] for i, ag in enumerate(self.agents)}


def load_controller(policy: str, env: BaseStationParallelEnv, models: Path | None, scenario: str,
                    trained_on: str | None = None) -> Controller:
    """The controller of ``policy`` for ``env``; trained ones come from ``models/<scenario>/<policy>``.

    :param trained_on: play what was trained on this scenario instead
        (``models/<trained_on>/<policy>``), station models by kind (:func:`kind_models`).
    :raises FileNotFoundError: when a trained policy has no saved models.
    :raises ValueError: when saved models do not fit ``env`` (e.g. the central controller
        of another layout).
    """
    if policy == "full_power":
        return lambda obs: full_power_strongest_cell(env, obs)
    if policy == "heuristic":
        return LoadBalancingHeuristic(env)
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose from {', '.join(POLICIES)}")
    if models is None:
        raise FileNotFoundError(f"{policy}: no models folder given")
    folder = Path(models) / (trained_on or scenario) / policy
    if policy in RULE_POLICIES:
        # tuned on training seeds by `train` (apps.basestation.rules), saved beside the models
        return LoadRatioRule(env, load_rule_params(folder))
    if policy == "central":
        return CentralController(env, folder)
    return StationController(env, folder, by_kind=trained_on is not None)


def episode_kpis(env: BaseStationParallelEnv, controller: Controller, seed: int) -> dict[str, float]:
    """One greedy episode: per-step means, episode totals and bits per joule."""
    history = run_episode(env, controller, seed=seed)
    dt = env.config.step_duration_s
    col = {k: np.array([h[k] for h in history], dtype=float) for k in history[0]}
    energy = float(col["total_power_w"].sum() * dt)
    bits = float(col["throughput_bps"].sum() * dt)
    return {
        "steps": len(history),
        "mean_user_rate_mbps": float(col["mean_user_rate_bps"].mean() / 1e6),
        "p5_user_rate_mbps": float(col["p5_user_rate_bps"].mean() / 1e6),
        "pf_utility": float(col["pf_utility"].mean()),
        "energy_kj": energy / 1e3,
        "mean_power_w": float(col["total_power_w"].mean()),
        "energy_efficiency_kbit_per_j": bits / energy / 1e3 if energy > 0 else 0.0,
        "handovers": float(col["handovers"].sum()),
        "pingpong_handovers": float(col["pingpong_handovers"].sum()),
        # share of handovers that were ping-pongs (0 without handovers)
        "pingpong_rate": float(col["pingpong_handovers"].sum() / max(col["handovers"].sum(), 1.0)),
        "sleeping_stations": float(col["sleeping_stations"].mean()),
        "unserved_users": float(col["unserved_users"].mean()),
    }


def _training_summary(models: Path | None, scenario: str, policy: str) -> dict[str, Any]:
    if models is None:
        return {}
    path = Path(models) / scenario / policy / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def evaluate(scenarios: list[AppScenario], models: Path | None, policies: tuple[str, ...] = POLICIES,
             seeds: list[int] | None = None, progress: Callable[[str], None] | None = None,
             trained_on: str | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Play every policy on every scenario and seed.

    :param trained_on: play the trained policies of this scenario (``models/<trained_on>/``)
        on every scenario given, station models by kind (transfer; rows say ``trained_on``).
        The fixed heuristics play as always.
    :return: one row per (scenario, policy, seed), and notes on what was skipped (a
        trained policy without models is skipped with a note, not an error).
    """
    rows, notes = [], []
    with single_thread():
        for sc in scenarios:
            env = BaseStationParallelEnv(sc.env)
            for policy in policies:
                transfer = bool(trained_on) and policy not in ("full_power", "heuristic")
                source = trained_on if transfer else sc.name
                try:
                    controller = load_controller(policy, env, models, sc.name, trained_on=source if transfer else None)
                except (FileNotFoundError, ValueError) as err:
                    notes.append(f"{sc.name}/{policy}{f' trained on {source}' if transfer else ''}: skipped ({err})")
                    continue
                training = _training_summary(models, source, policy)
                for seed in (seeds or list(sc.training.eval_seeds)):
                    if progress:
                        progress(f"{sc.name} {policy} seed {seed}")
                    row = {"scenario": sc.name, "policy": policy, "seed": seed,
                           **episode_kpis(env, controller, seed),
                           "model_mb": training.get("model_bytes", 0) / 1e6,
                           "training_env_steps": training.get("env_steps", 0)}
                    if trained_on:
                        row["trained_on"] = source
                    if "measurement_bytes" in training:
                        row["measurement_mb"] = training["measurement_bytes"] / 1e6
                    rows.append(row)
    return rows, notes


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Means over seeds per (scenario, policy), in scenario then policy order; for each of
    :data:`ENGINEER_KPIS` also ``<kpi>_median``, ``<kpi>_min`` and ``<kpi>_max`` over the seeds."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["scenario"], r["policy"])].append(r)
    order = {p: i for i, p in enumerate(POLICIES)}
    scen_order = list(dict.fromkeys(r["scenario"] for r in rows))
    out = []
    for (scen, pol), group in sorted(groups.items(), key=lambda kv: (scen_order.index(kv[0][0]),
                                                                     order.get(kv[0][1], 99))):
        keys = [k for k, v in group[0].items() if isinstance(v, (int, float)) and k not in ("seed", "train_seed")]
        row = {"scenario": scen, "policy": pol, "seeds": len(group)}
        for k in keys:
            row[k] = float(np.mean([g.get(k, math.nan) for g in group]))
        for k in ENGINEER_KPIS:
            if k in keys:
                vals = [g.get(k, math.nan) for g in group]
                row[f"{k}_median"] = float(np.median(vals))
                row[f"{k}_min"], row[f"{k}_max"] = float(np.min(vals)), float(np.max(vals))
        out.append(row)
    return out
