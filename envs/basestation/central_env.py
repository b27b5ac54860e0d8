"""Gymnasium single-agent view: one central controller sets every station."""

from __future__ import annotations

from typing import Any, Mapping

import gymnasium as gym
import networkx as nx
import numpy as np
from gymnasium import spaces

from .config import BaseStationConfig
from .network import CellularNetwork
from .parallel_env import make_config, station_feature_names

__all__ = ["CentralControllerEnv"]


class CentralControllerEnv(gym.Env):
    """All stations driven by one agent (registered as ``mfd/BaseStationCentral-v0``).

    Observation: every station's observation (as in `BaseStationParallelEnv`),
    concatenated station by station: shape ``(S * obs_dim,)``, float32 in [0, 1].
    Action: MultiDiscrete ``[n_power_levels, n_cio, 2] * S``, station-major (station i
    owns elements ``3i, 3i+1, 3i+2``).
    Reward: `CellularNetwork.network_reward`. Info: the network KPIs (`StepKPIs`).
    Episodes end by truncation after ``config.episode_steps`` steps.

    :param config: a `BaseStationConfig`, a mapping of its fields, or None.
    :param scenario: a preset name or TOML path (see `load_scenario`).
    :param render_mode: None or ``"rgb_array"``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

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
        S = self.n_stations = self.network.n_stations
        self.observation_space = spaces.Box(0.0, 1.0, shape=(S * self.network.obs_dim,),
                                            dtype=np.float32)
        self.action_space = spaces.MultiDiscrete(
            np.tile([self.network.n_power_levels, self.network.n_cio, 2], S))

    @property
    def x2_graph(self) -> nx.Graph:
        return self.network.x2_graph

    @property
    def feature_names(self) -> list[str]:
        """Name of every observation element: ``bs_<i>.own.<feature>`` /
        ``bs_<i>.nb<k>.<feature>``, station by station."""
        per = station_feature_names(self.network)
        return [f"bs_{i}.{n}" for i in range(self.n_stations) for n in per]

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.network.reset(self.np_random)
        return self.network.observations().reshape(-1), self.network.kpis().as_dict()

    def step(self, action):
        self.network.step(np.asarray(action, dtype=np.int64).reshape(self.n_stations, 3))
        truncated = self.network.t >= self.config.episode_steps
        kpis = self.network.kpis()
        reward = self.network.network_reward(kpis)
        obs = self.network.observations().reshape(-1)
        return obs, float(reward), False, truncated, kpis.as_dict()

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        from .render import render_rgb
        return render_rgb(self.network)
