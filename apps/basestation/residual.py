"""Residual station actions: a learned correction on top of the tuned MLB rule.

With ``training.action = "residual"`` (the default) a station's policy does not choose
its power level, offset and sleep outright: the tuned MLB rule (:mod:`.rules`) proposes
them from the station's own figures and its X2 neighbours' reports, and the policy
answers a *correction*:

- power: ``-k..0`` levels on the rule's level (``-k..+k`` with ``raise_power``), clipped
  to the levels there are: the station may give up power the rule would use, not spend
  more than the rule would (the target is PF *at no more energy*: on hotspot, seed 0, 20
  rounds, corrections that could raise power gave +1.0 % PF at +1.6 % energy);
- CIO: ``-k..+k`` steps of the offset list on the rule's offset (clipped);
- sleep: keep the rule's choice, or flip it (to sleep only where the rule may put the
  station to sleep, :func:`~envs.basestation.heuristics.sleep_eligible`).

The "static" choice of every head is "no correction", so an untrained station (its
logits biased towards it, :func:`~apps.basestation.learner.bias_towards_static`) plays
the tuned rule's actions exactly, and the learner only has to find where departing from
the rule pays: e.g. a station stepping its power down while its neighbours carry the
load (time-domain coordination), which a per-station constant rule cannot express.

The policy sees, besides the env's observation, what the rule plans this step: its own
planned power level, offset and sleep, and the planned power level of each X2 neighbour
slot (what X2 carries as a planned power / ABS pattern; 0 on padding), in the env's slot
order (:meth:`~envs.basestation.CellularNetwork.neighbour_slots`: most loaded first, a
fixed number of slots whatever the layout). All in [0, 1].

Measured on hotspot (training seed 0, its tuned rule, MFD, eval seeds 100-102,
2026-12-06, busy machine), PF against the tuned rule: with the defaults (logit bias 2
towards "no correction", the scenario's pinned heads) the stations play the rule exactly
after 6 and after 20 rounds, also with every head free: PPO's updates never move the
greedy choice off "no correction". With a weaker bias (0.5) and every head free they do,
and lose: -1.8 % PF at +2.8 % energy (one twin episode), +1.0 % at +1.6 % energy (three
twin episodes, power may rise), -3.5 % at -3.6 % energy (three episodes, power only
down); offsets alone -0.6 %. Why: against the rule (the others playing it), every single
correction has a negative or nil mean 3-step gain in PF utility (macro: offset +3 dB
+0.16 +- 0.19, the rest -1.6 to -21; small cells: offset -3 dB +0.48 +- 0.18, the rest
-0.3 to -12; 60 steps of seed 100, a diagnostic only), although in 61 % of the
(station, step) pairs some correction would gain (2.2 on average, 3 steps, seen in
hindsight on a fork): the gains are there, but which correction pays when is not
something a per-station policy learns from a few hundred sampled transitions, and the
twin (40 steps) admits models that then lose on unseen traffic.

One :class:`Residual` belongs to one env (the rule keeps a moving average of its load
ratio): call :meth:`Residual.observe` once per env step with the env's observations,
then :meth:`Residual.to_env` with the corrections to get the env's actions.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from envs.basestation import BaseStationParallelEnv
from envs.basestation.heuristics import sleep_eligible

from .rules import LoadRatioRule

__all__ = ["Residual", "residual_feature_names", "RESIDUAL_FILE"]

# Beside residual stations' models (``<models>/<scenario>/<policy>/``): the rule their
# corrections apply to and the correction range, so that evaluation plays them as trained.
RESIDUAL_FILE = "residual.json"


def residual_feature_names(env: BaseStationParallelEnv) -> list[str]:
    """Names of the features :meth:`Residual.observe` appends to a station's observation."""
    return (["rule.power_level", "rule.cio", "rule.sleep"]
            + [f"nb{k}.rule_power_level" for k in range(env.network.n_slots)])


class Residual:
    """The tuned rule on ``env`` plus the mapping of corrections to env actions.

    :param env: the parallel env the rule reads (one :class:`Residual` per env).
    :param params: the tuned rule's parameters (:func:`~.rules.load_rule_params`).
    :param steps: ``k``, the largest correction of power (levels) and CIO (offset steps).
    :param raise_power: whether a correction may also raise power above the rule's level.
    """

    def __init__(self, env: BaseStationParallelEnv, params: Mapping[str, Any], steps: int = 2,
                 raise_power: bool = False) -> None:
        if steps < 1:
            raise ValueError(f"residual steps must be at least 1, got {steps}")
        self.env, self.net, self.k = env, env.network, int(steps)
        self.raise_power = bool(raise_power)
        self.rule = LoadRatioRule(env, params)
        self.params = dict(params)
        net = self.net
        self.agents = list(env.possible_agents)
        self.nvec = [self.k + 1 + (self.k if self.raise_power else 0), 2 * self.k + 1, 2]
        self.zero = np.array([self.k, self.k, 0], dtype=np.int64)
        self.eligible = sleep_eligible(net)
        self.n_extra = 3 + net.n_slots
        self.obs_dim = net.obs_dim + self.n_extra
        self._hi = np.array([net.n_power_levels - 1, net.n_cio - 1])
        self.base: np.ndarray | None = None  # the rule's (S, 3) actions for the last observation

    def zeros(self) -> np.ndarray:
        """(S, 3) corrections that leave the rule's actions as they are."""
        return np.tile(self.zero, (self.net.n_stations, 1))

    def observe(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        """(S, obs_dim) float32: each station's observation followed by the rule's plan.

        Runs the rule on these observations (once per env step: its moving average
        advances) and keeps its actions for :meth:`to_env`.
        """
        net = self.net
        base = self.base = self.rule.actions(obs)
        o = np.stack([obs[a] for a in self.agents]).astype(np.float32)
        power = base[:, 0] / max(net.n_power_levels - 1, 1)
        extra = np.empty((net.n_stations, self.n_extra), dtype=np.float32)
        extra[:, 0] = power
        extra[:, 1] = base[:, 1] / max(net.n_cio - 1, 1)
        extra[:, 2] = base[:, 2]
        slots = net.neighbour_slots()  # the slots of `obs`: the network has not stepped since
        extra[:, 3:] = np.where(slots >= 0, power[np.maximum(slots, 0)], 0.0)
        return np.concatenate([o, extra], axis=1)

    def to_env(self, corrections: np.ndarray) -> np.ndarray:
        """(S, 3) env actions: the rule's last actions with ``corrections`` applied."""
        if self.base is None:
            raise RuntimeError("Residual.to_env before observe: the rule has not planned yet")
        c = np.asarray(corrections, dtype=np.int64).reshape(-1, 3)
        if ((c < 0) | (c >= np.asarray(self.nvec))).any():
            raise ValueError(f"corrections outside 0..{[n - 1 for n in self.nvec]}")
        d = c - self.zero
        a = self.base.copy()
        a[:, :2] = np.clip(a[:, :2] + d[:, :2], 0, self._hi)
        flip = (d[:, 2] > 0) & (self.eligible | (a[:, 2] > 0))  # wake always; sleep where the rule may
        a[:, 2] = np.where(flip, 1 - a[:, 2], a[:, 2])
        return a

    def actions_dict(self, env_actions: np.ndarray) -> dict[str, np.ndarray]:
        return {ag: env_actions[i] for i, ag in enumerate(self.agents)}
