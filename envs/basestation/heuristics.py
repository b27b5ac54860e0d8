"""Baseline controllers without learning, for both APIs.

Each baseline is called with the observations an env returned (a dict for
`BaseStationParallelEnv`, a flat array for `CentralControllerEnv`) and answers with
actions in the same env's format. They read only what a station observes (its own
figures and its X2 neighbours' reports); the load-balancing heuristic also uses the X2
graph to decide, once, which stations may ever sleep.
"""

from __future__ import annotations

from typing import Any, Mapping

import networkx as nx
import numpy as np

from .central_env import CentralControllerEnv
from .network import OBS_NEIGHBOUR_FEATURES, OBS_OWN_FEATURES, CellularNetwork
from .parallel_env import BaseStationParallelEnv

__all__ = ["full_power_strongest_cell", "LoadBalancingHeuristic", "run_episode", "sleep_eligible"]

Env = BaseStationParallelEnv | CentralControllerEnv

_LOAD = OBS_OWN_FEATURES.index("load")
_SLEEPING = OBS_OWN_FEATURES.index("sleeping")
_NB_PRESENT = OBS_NEIGHBOUR_FEATURES.index("present")
_NB_LOAD = OBS_NEIGHBOUR_FEATURES.index("load")
_NB_INACTIVE = OBS_NEIGHBOUR_FEATURES.index("inactive")


def _network(env: Env) -> CellularNetwork:
    return env.unwrapped.network if hasattr(env, "unwrapped") else env.network


def _stack_obs(env: Env, obs: Any) -> np.ndarray:
    net = _network(env)
    if isinstance(obs, Mapping):
        return np.stack([np.asarray(obs[f"bs_{i}"]) for i in range(net.n_stations)])
    return np.asarray(obs).reshape(net.n_stations, net.obs_dim)


def _format(env: Env, actions: np.ndarray) -> Any:
    """(S, 3) actions -> what `env.step` takes."""
    if isinstance(env.unwrapped if hasattr(env, "unwrapped") else env, CentralControllerEnv):
        return actions.reshape(-1)
    return {f"bs_{i}": actions[i] for i in range(len(actions))}


def full_power_strongest_cell(env: Env, obs: Any = None) -> Any:
    """Every station at full power, CIO 0 dB, never asleep: users attach to the
    strongest cell (plus hysteresis), the classic static configuration."""
    return _format(env, _network(env).default_actions())


def sleep_eligible(net: CellularNetwork) -> np.ndarray:
    """Small cells (their host macro is the umbrella) and a maximal independent set
    of the macro X2 graph (greedy, most-connected first, then by index), so no two
    adjacent macro cells ever sleep together."""
    g: nx.Graph = net.x2_graph
    macro = [n for n in g.nodes if g.nodes[n]["kind"] == "macro"]
    sub = g.subgraph(macro)
    order = sorted(macro, key=lambda n: (-sub.degree[n], g.nodes[n]["index"]))
    chosen: set[str] = set()
    for node in order:
        if not any(nb in chosen for nb in sub.neighbors(node)):
            chosen.add(node)
    eligible = ~net.layout.is_macro.copy()
    eligible[[g.nodes[n]["index"] for n in chosen]] = True
    eligible &= ~net.off
    # a sleeper needs someone to hand its users to
    eligible &= np.array([g.degree[f"bs_{i}"] > 0 for i in range(net.n_stations)])
    return eligible


class LoadBalancingHeuristic:
    """Mobility load balancing plus cell sleep, from local observations.

    - CIO: a station whose load is above its awake neighbours' mean lowers its CIO (its
      edge users move to neighbours), one below raises it; the offset is
      ``cio_gain_db`` per unit of load difference, snapped to the allowed values.
    - Sleep: a station in the sleep-eligible set (small cells, and a maximal
      independent set of the macro cells, so no two adjacent macro cells sleep together
      and every sleeping macro is surrounded by awake ones) sleeps when its load is at
      most ``sleep_below`` and every awake neighbour is at most ``neighbour_max_load``
      loaded, and wakes up when any awake neighbour exceeds ``wake_above``. Loads are
      the observed ``load`` feature (attached users / ``load_norm_users``).
    - Power: full.

    :param env: the env whose stations it drives (either API).
    """

    def __init__(self, env: Env, cio_gain_db: float = 12.0, sleep_below: float = 0.15,
                 neighbour_max_load: float = 0.6, wake_above: float = 0.8) -> None:
        self.env = env
        net = _network(env)
        self.cio_gain_db = cio_gain_db
        self.sleep_below = sleep_below
        self.neighbour_max_load = neighbour_max_load
        self.wake_above = wake_above
        self.eligible = sleep_eligible(net)
        self._cio_values = net.cio_values_db
        self._n_power = net.n_power_levels
        self._n_own = len(OBS_OWN_FEATURES)
        self._n_nb = len(OBS_NEIGHBOUR_FEATURES)

    def __call__(self, obs: Any) -> Any:
        o = _stack_obs(self.env, obs)
        S = len(o)
        nb = o[:, self._n_own:].reshape(S, -1, self._n_nb)
        awake_nb = (nb[..., _NB_PRESENT] > 0.5) & (nb[..., _NB_INACTIVE] < 0.5)
        n_awake = awake_nb.sum(axis=1)
        nb_load = np.where(awake_nb, nb[..., _NB_LOAD], 0.0)
        mean_nb = nb_load.sum(axis=1) / np.maximum(n_awake, 1)
        max_nb = nb_load.max(axis=1)
        own = o[:, _LOAD]

        target_db = np.where(n_awake > 0, self.cio_gain_db * (mean_nb - own), 0.0)
        cio_idx = np.abs(self._cio_values[None, :] - target_db[:, None]).argmin(axis=1)

        asleep = o[:, _SLEEPING] > 0.5
        go_sleep = (~asleep & (own <= self.sleep_below) & (n_awake > 0)
                    & (max_nb <= self.neighbour_max_load))
        stay_asleep = asleep & (n_awake > 0) & (max_nb <= self.wake_above)
        sleep = self.eligible & (go_sleep | stay_asleep)

        actions = np.empty((S, 3), dtype=np.int64)
        actions[:, 0] = self._n_power - 1
        actions[:, 1] = cio_idx
        actions[:, 2] = sleep
        return _format(self.env, actions)


def run_episode(env: Env, policy, seed: int | None = None) -> list[dict[str, Any]]:
    """Play one episode with ``policy(obs) -> action`` (either API); the per-step KPIs.

    For a baseline that takes the env, bind it first, e.g.
    ``run_episode(env, lambda o: full_power_strongest_cell(env, o))``.
    """
    inner = env.unwrapped if hasattr(env, "unwrapped") else env
    obs, _ = env.reset(seed=seed)
    history = []
    if isinstance(inner, CentralControllerEnv):
        done = False
        while not done:
            obs, _, term, trunc, info = env.step(policy(obs))
            history.append(info)
            done = term or trunc
    else:
        while env.agents:
            obs, _, _, _, infos = env.step(policy(obs))
            history.append(next(iter(infos.values())))
    return history
