"""Multi-cell downlink radio environment: base stations as agents.

Pure gymnasium / PettingZoo (no MFD imports). Each base station chooses its transmit
power level, cell individual offset (handover) and sleep mode; users arrive, move and
hand over; SINR includes interference from every transmitting station; power follows
the EARTH model.

- `BaseStationParallelEnv`: PettingZoo Parallel API, agents ``"bs_0".."bs_{S-1}"``.
- `CentralControllerEnv`: gymnasium, one controller for all stations, registered as
  ``mfd/BaseStationCentral-v0``.
- `BaseStationConfig` / `load_scenario`: scenario data, presets in ``scenarios/``.
- `heuristics`: `full_power_strongest_cell`, `LoadBalancingHeuristic`.
"""

import gymnasium as _gym

from .central_env import CentralControllerEnv
from .config import SCENARIO_NAMES, BaseStationConfig, ConfigError, load_scenario
from .network import (OBS_NEIGHBOUR_FEATURES, OBS_OWN_FEATURES, SINR_OBS_RANGE_DB, CellularNetwork, StepKPIs,
                      sinr_feature_db)
from .parallel_env import BaseStationParallelEnv

__all__ = [
    "BaseStationConfig",
    "BaseStationParallelEnv",
    "CellularNetwork",
    "CentralControllerEnv",
    "ConfigError",
    "OBS_NEIGHBOUR_FEATURES",
    "OBS_OWN_FEATURES",
    "SCENARIO_NAMES",
    "SINR_OBS_RANGE_DB",
    "StepKPIs",
    "load_scenario",
    "sinr_feature_db",
    "CENTRAL_ENV_ID",
]

CENTRAL_ENV_ID = "mfd/BaseStationCentral-v0"

if CENTRAL_ENV_ID not in _gym.registry:
    # No TimeLimit wrapper: the env truncates itself after config.episode_steps.
    _gym.register(id=CENTRAL_ENV_ID, entry_point="envs.basestation.central_env:CentralControllerEnv")
