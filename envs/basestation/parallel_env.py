"""PettingZoo Parallel API: one agent per base station."""

from __future__ import annotations

from typing import Any, Mapping

import networkx as nx
import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from pettingzoo import ParallelEnv

from .config import BaseStationConfig, load_scenario
from .network import OBS_NEIGHBOUR_FEATURES, OBS_OWN_FEATURES, CellularNetwork

__all__ = ["BaseStationParallelEnv", "make_config", "station_feature_names"]


def station_feature_names(network: CellularNetwork) -> list[str]:
    """Names of one station's observation elements: ``own.<feature>``, then
    ``nb<k>.<feature>`` for each X2 neighbour slot k (``config.x2_neighbour_slots`` of
    them, the same on every layout)."""
    names = [f"own.{f}" for f in OBS_OWN_FEATURES]
    for k in range(network.n_slots):
        names += [f"nb{k}.{f}" for f in OBS_NEIGHBOUR_FEATURES]
    return names


def make_config(
    config: BaseStationConfig | Mapping[str, Any] | None = None, scenario: str | None = None
) -> BaseStationConfig:
    """Resolve the ways an env can be given its scenario: a config, a mapping of fields
    (validated by `BaseStationConfig.from_dict`), a preset/TOML `scenario`, or defaults.
    With both `scenario` and a mapping, the mapping overrides the preset's fields."""
    if isinstance(config, BaseStationConfig):
        if scenario is not None:
            raise ValueError("give either a BaseStationConfig or a scenario, not both")
        return config
    if scenario is not None:
        return load_scenario(scenario, **dict(config or {}))
    if config is None:
        return BaseStationConfig()
    return BaseStationConfig.from_dict(config)


class BaseStationParallelEnv(ParallelEnv):
    """Multi-cell downlink where each base station ``"bs_i"`` is an agent.

    Observation (Box [0, 1], float32): the station's own features
    (`OBS_OWN_FEATURES`), then for each of ``config.x2_neighbour_slots`` X2 neighbour
    slots (most attached users first, padding has ``present = 0``; see
    `CellularNetwork.neighbour_slots`) what that neighbour reports
    (`OBS_NEIGHBOUR_FEATURES`). Its size does not depend on the layout, so a station
    model plays on any layout.

    Action (MultiDiscrete ``[n_power_levels, n_cio, 2]``): transmit power level
    (last = full power), index into ``config.cio_values_db``, sleep (1) or stay awake (0).
    An agent missing from the actions dict gets full power, CIO 0 dB, awake.

    Reward: see `CellularNetwork.station_rewards`. Infos: the network KPIs (see
    `StepKPIs`) plus ``station_*`` figures of that station.

    :param config: a `BaseStationConfig`, a mapping of its fields, or None.
    :param scenario: a preset name (``"uniform"``, ``"hotspot"``, ``"rush_hour"``,
        ``"outage"``, ``"night"``) or a TOML path.
    :param render_mode: None or ``"rgb_array"``.
    """

    metadata = {"render_modes": ["rgb_array"], "name": "mfd_basestation_v0",
                "render_fps": 4, "is_parallelizable": True}

    def __init__(
        self,
        config: BaseStationConfig | Mapping[str, Any] | None = None,
        render_mode: str | None = None,
        scenario: str | None = None,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, "
                             f"got {render_mode!r}")
        self.config = make_config(config, scenario)
        self.render_mode = render_mode
        self.network = CellularNetwork(self.config)
        S = self.network.n_stations
        self.possible_agents = [f"bs_{i}" for i in range(S)]
        self.agents: list[str] = []
        self._index = {a: i for i, a in enumerate(self.possible_agents)}
        obs_space = spaces.Box(0.0, 1.0, shape=(self.network.obs_dim,), dtype=np.float32)
        act_space = spaces.MultiDiscrete([self.network.n_power_levels, self.network.n_cio, 2])
        self.observation_spaces = {a: obs_space for a in self.possible_agents}
        self.action_spaces = {a: act_space for a in self.possible_agents}
        self.np_random, _ = seeding.np_random(None)
        self._seeded = False
        self._default = self.network.default_actions()

    # --- PettingZoo API -------------------------------------------------------------------
    def observation_space(self, agent: str) -> spaces.Box:
        return self.observation_spaces[agent]

    def action_space(self, agent: str) -> spaces.MultiDiscrete:
        return self.action_spaces[agent]

    @property
    def x2_graph(self) -> nx.Graph:
        """X2 links between stations: nodes ``"bs_i"`` (``index``, ``pos``, ``kind``),
        edges with ``distance_m``. Fixed for the scenario."""
        return self.network.x2_graph

    @property
    def feature_names(self) -> list[str]:
        """Name of every observation element, in order."""
        return station_feature_names(self.network)

    def reset(self, seed: int | None = None, options: dict | None = None):
        if seed is not None or not self._seeded:
            self.np_random, _ = seeding.np_random(seed)
            self._seeded = True
        self.network.reset(self.np_random)
        self.agents = list(self.possible_agents)
        obs = self._observations()
        infos = self._infos()
        return obs, infos

    def step(self, actions: Mapping[str, Any]):
        if not self.agents:
            raise RuntimeError("step() called after the episode ended; call reset()")
        a = self._default.copy()  # an agent left out keeps full power, CIO 0, awake
        for agent, act in actions.items():
            i = self._index.get(agent)
            if i is None:
                raise ValueError(f"unknown agent {agent!r}; agents are bs_0..bs_{len(a) - 1}")
            a[i] = np.asarray(act, dtype=np.int64).reshape(3)
        self.network.step(a)
        truncated = self.network.t >= self.config.episode_steps
        rewards_arr, parts = self.network.station_rewards()
        obs = self._observations()
        infos = self._infos(parts=parts)
        rewards = {ag: float(r) for ag, r in zip(self.possible_agents, rewards_arr.tolist())}
        terms = {ag: False for ag in self.possible_agents}
        truncs = {ag: truncated for ag in self.possible_agents}
        if truncated:
            self.agents = []
        return obs, rewards, terms, truncs, infos

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        from .render import render_rgb
        return render_rgb(self.network)

    def close(self) -> None:
        pass

    def state(self) -> np.ndarray:
        """Global state: all stations' observations, concatenated."""
        return self.network.observations().reshape(-1)

    # --- helpers ------------------------------------------------------------------------
    def _observations(self) -> dict[str, np.ndarray]:
        obs = self.network.observations()
        return {ag: obs[i] for i, ag in enumerate(self.possible_agents)}

    def _infos(self, parts: dict | None = None) -> dict:
        net = self.network
        kpis = net.kpis().as_dict()
        if parts is None:
            _, parts = net.station_rewards()
        users = net.n_users.tolist()
        power = net.power_w.tolist()
        thr = parts["throughput_bps"].tolist()
        util = parts["pf_utility"].tolist()
        ho = net.handovers_out.tolist()
        sleeping = net.sleeping.tolist()
        return {
            ag: {**kpis, "station_users": users[i], "station_power_w": power[i],
                 "station_throughput_bps": thr[i], "station_pf_utility": util[i],
                 "station_handovers_out": ho[i], "station_sleeping": sleeping[i]}
            for i, ag in enumerate(self.possible_agents)
        }
