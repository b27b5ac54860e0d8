"""Scenario configuration of the multi-cell downlink environment.

`BaseStationConfig` is plain data: the app builds it from a TOML scenario file through
`BaseStationConfig.from_dict`, the presets in `scenarios/` are such files, and every
value is checked in `__post_init__` so that a bad file fails on load with the name of
the field at fault, not ten steps into an episode.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

__all__ = [
    "BaseStationConfig",
    "ConfigError",
    "SCENARIO_NAMES",
    "load_scenario",
    "scenario_path",
]

# Hexagonal layouts with 1, 2 and 3 rings of sites around a centre site (3R^2 + 3R + 1):
# the 19-site layout is the one of 3GPP TR 38.901 Sec. 7.8 / TR 36.814 calibration.
HEX_LAYOUT_SIZES = (7, 19, 37)

SCENARIO_NAMES = ("uniform", "hotspot", "rush_hour", "outage", "night")


class ConfigError(ValueError):
    """A scenario value is missing, of the wrong type or impossible.

    The message starts with the field name, e.g. ``"n_macro_cells: must be one of ..."``;
    `field` holds that name for programmatic use.
    """

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


@dataclass(frozen=True)
class BaseStationConfig:
    """Everything that defines a scenario of the radio environment.

    Units are in the field names (``_m``, ``_dbm``, ``_w``, ``_mps``, ``_steps``).
    Defaults give a 7-cell urban macro (UMa) network at 3.5 GHz with 10 MHz per cell,
    pedestrian users arriving and leaving, and 100-step episodes of 1 s each.
    """

    name: str = "custom"
    description: str = ""

    # --- layout -------------------------------------------------------------------------
    n_macro_cells: int = 7
    """Hexagonal sites, one omni macro cell each: 7, 19 or 37."""
    wrap_around: bool = False
    """Distances (and so interference) measured on the torus of the hex cluster, so edge
    cells see a full ring of interferers (TR 36.814 A.2.1.1 style)."""
    macro_isd_m: float = 500.0
    """Inter-site distance; 38.901 Table 7.2-1: UMa 500 m, UMi 200 m."""
    macro_path_loss: str = "UMa"
    """Path-loss model of the macro cells: "UMa" or "UMi" (TR 38.901 Table 7.4.1-1)."""
    n_small_cells: int = 0
    """Small (micro) cells, always UMi street canyon, spread over the macro cells
    (round robin, at a third of the ISD from the site); at most 6 per macro cell."""
    macro_height_m: float = 25.0
    small_height_m: float = 10.0
    ue_height_m: float = 1.5

    # --- radio --------------------------------------------------------------------------
    carrier_ghz: float = 3.5
    bandwidth_mhz: float = 10.0
    noise_figure_db: float = 9.0
    los_model: str = "stochastic"
    """"stochastic": LOS/NLOS drawn from the 38.901 LOS probability; "nlos": NLOS only."""
    shadowing: bool = True
    """Log-normal shadowing with the 38.901 standard deviations, spatially correlated
    along each user's track (Gudmundson, with 38.901 Table 7.5-6 decorrelation distances)."""
    rayleigh_fading: bool = False
    """Flat Rayleigh fast fading drawn afresh every step (|h|^2 ~ Exp(1))."""
    max_spectral_efficiency: float = 7.4
    """Cap of the Shannon rate, b/s/Hz (256-QAM, highest CQI of TS 38.214 Table 5.2.2.1-3)."""
    min_sinr_db: float = -10.0
    """Below this SINR a user gets no throughput (out of coverage)."""

    # --- stations: transmit power and EARTH power model -----------------------------------
    macro_max_power_w: float = 20.0
    macro_p0_w: float = 130.0
    macro_delta_p: float = 4.7
    macro_sleep_w: float = 75.0
    small_max_power_w: float = 6.3
    small_p0_w: float = 56.0
    small_delta_p: float = 2.6
    small_sleep_w: float = 39.0
    power_level_offsets_db: tuple[float, ...] = (-9.0, -6.0, -3.0, 0.0)
    """Transmit power levels relative to the maximum, ascending: the last one is full power."""
    cio_values_db: tuple[float, ...] = (-6.0, -3.0, 0.0, 3.0, 6.0)
    """Cell individual offsets a station may choose (must contain 0)."""
    outage_stations: tuple[int, ...] = ()
    """Stations forced off for the whole episode (no power, no service, actions ignored)."""

    # --- mobility management ---------------------------------------------------------------
    hysteresis_db: float = 2.0
    time_to_trigger_steps: int = 2
    handover_interruption_s: float = 0.05
    """Service gap of a handover; the user loses this share of the step's throughput."""
    pingpong_window_s: float = 1.0
    """A handover back to the cell the user left at its previous handover, at most this
    long after it, counts as a ping-pong (3GPP TR 36.839's critical time, 1 s)."""

    # --- scheduler ----------------------------------------------------------------------
    scheduler: str = "pf"
    """"pf": proportional fair with exponentially averaged rates; "rr": equal time share."""
    pf_time_constant_steps: float = 10.0

    # --- users --------------------------------------------------------------------------
    user_demand_mbps: float = float("inf")
    """Each user's traffic demand; ``inf`` is full buffer (every busy cell uses all its
    resources). A finite demand makes the PRB load, EARTH's load term and the
    interference of lightly used cells follow the traffic."""
    max_users: int = 64
    """Capacity of the user arrays (static shapes); arrivals beyond it are blocked."""
    initial_users: int = 30
    arrival_rate_per_step: float = 1.0
    """Poisson mean of new users per step."""
    mean_session_steps: float = 30.0
    """Mean (geometric) session length; ``inf`` for users who never leave."""
    speed_min_mps: float = 0.5
    speed_max_mps: float = 1.5
    n_hotspots: int = 0
    hotspot_fraction: float = 0.0
    """Share of users (initial and arriving) who belong to a hotspot."""
    hotspot_radius_m: float = 60.0
    """Standard deviation of users' offsets around their hotspot centre."""
    hotspot_speed_mps: float = 0.0
    """Hotspot centres move by random waypoint at this speed (0: fixed)."""

    # --- episode, reward and observation scales -------------------------------------------
    episode_steps: int = 100
    step_duration_s: float = 1.0
    pf_weight: float = 1.0
    """Weight of the PF utility, sum over users of ln(rate / 1 Mbit/s)."""
    ee_weight: float = 20.0
    """Weight of energy efficiency, in Mbit/J. A network at 0.2 Mbit/J then adds 4 per
    station, about one station's PF utility at the default load."""
    handover_cost: float = 0.1
    """Reward subtracted per handover out of a station."""
    power_weight: float = 0.0
    """Reward subtracted per watt a station draws (EARTH input power): a price on energy
    that, unlike the efficiency term, pays a station for sleeping when it carries no one."""
    rate_floor_bps: float = 1e3
    """Rates are floored here before the logarithm of the PF utility (ln(1e3/1e6) = -6.9)."""
    load_norm_users: int = 10
    """Attached users at which the observed load reads 1."""
    x2_neighbour_slots: int = 7
    """X2 neighbours a station observes, whatever the layout's degree: its most loaded
    neighbours first, padding (``present = 0``) where it has fewer. 7 is the largest X2
    degree of the shipped layouts (a macro site in a full ring: 6 macro neighbours and
    its one small cell; also the 19 macro + 12 small-cell layout), so no shipped station
    loses a neighbour; with more small cells per site the least loaded are left out. A
    fixed number keeps one station model's input the same on every layout."""

    # ------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        self._check_types()
        self._check_values()

    def _check_types(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = _FIELD_KINDS[f.name]
            if kind is tuple:
                if isinstance(value, list):
                    value = tuple(value)
                    object.__setattr__(self, f.name, value)
                if not isinstance(value, tuple):
                    raise ConfigError(f.name, f"expected a list, got {type(value).__name__}")
                item_kind = int if f.name == "outage_stations" else float
                for item in value:
                    _check_scalar(f.name, item, item_kind)
                if item_kind is float:
                    object.__setattr__(self, f.name, tuple(float(v) for v in value))
                continue
            _check_scalar(f.name, value, kind)
            if kind is float:
                object.__setattr__(self, f.name, float(value))

    def _check_values(self) -> None:
        def need(ok: bool, name: str, why: str) -> None:
            if not ok:
                raise ConfigError(name, f"{why} (got {getattr(self, name)!r})")

        finite = [
            "macro_isd_m", "macro_height_m", "small_height_m", "ue_height_m", "carrier_ghz",
            "bandwidth_mhz", "noise_figure_db", "max_spectral_efficiency", "min_sinr_db",
            "macro_max_power_w", "macro_p0_w", "macro_delta_p", "macro_sleep_w",
            "small_max_power_w", "small_p0_w", "small_delta_p", "small_sleep_w",
            "hysteresis_db", "handover_interruption_s", "pingpong_window_s", "pf_time_constant_steps",
            "arrival_rate_per_step", "speed_min_mps", "speed_max_mps", "hotspot_fraction",
            "hotspot_radius_m", "hotspot_speed_mps", "step_duration_s", "pf_weight",
            "ee_weight", "handover_cost", "power_weight", "rate_floor_bps",
        ]
        for name in finite:
            need(math.isfinite(getattr(self, name)), name, "must be a finite number")
        for name in ("power_level_offsets_db", "cio_values_db"):
            need(all(math.isfinite(v) for v in getattr(self, name)), name,
                 "must hold finite numbers")

        need(self.n_macro_cells in HEX_LAYOUT_SIZES, "n_macro_cells",
             f"must be one of {HEX_LAYOUT_SIZES} (1, 2 or 3 hexagonal rings)")
        need(self.macro_path_loss in ("UMa", "UMi"), "macro_path_loss", 'must be "UMa" or "UMi"')
        need(self.macro_isd_m >= 50.0, "macro_isd_m", "must be at least 50 m")
        need(0 <= self.n_small_cells <= 6 * self.n_macro_cells, "n_small_cells",
             "must be between 0 and 6 per macro cell")
        need(self.ue_height_m >= 1.0, "ue_height_m", "must be at least 1 m (38.901: 1.5 m)")
        # 38.901 Table 7.4.1-1 note: the UMa/UMi formulas assume h_UT < 13 m and
        # h_BS well above the users; below that the breakpoint distance turns negative.
        need(self.ue_height_m < 13.0, "ue_height_m", "must be below 13 m (38.901 UMa/UMi range)")
        need(self.macro_height_m > self.ue_height_m + 1.0, "macro_height_m",
             "must exceed ue_height_m by more than 1 m")
        need(self.small_height_m > self.ue_height_m + 1.0, "small_height_m",
             "must exceed ue_height_m by more than 1 m")
        need(0.5 <= self.carrier_ghz <= 100.0, "carrier_ghz",
             "must be within 0.5-100 GHz (38.901 validity)")
        need(self.bandwidth_mhz > 0, "bandwidth_mhz", "must be positive")
        need(self.noise_figure_db >= 0, "noise_figure_db", "must be non-negative")
        need(self.los_model in ("stochastic", "nlos"), "los_model",
             'must be "stochastic" or "nlos"')
        need(self.max_spectral_efficiency > 0, "max_spectral_efficiency", "must be positive")

        for prefix in ("macro", "small"):
            for suffix in ("max_power_w", "p0_w", "sleep_w"):
                name = f"{prefix}_{suffix}"
                need(getattr(self, name) >= 0, name, "must be non-negative")
            need(getattr(self, f"{prefix}_max_power_w") > 0, f"{prefix}_max_power_w",
                 "must be positive")
            need(getattr(self, f"{prefix}_delta_p") >= 0, f"{prefix}_delta_p",
                 "must be non-negative")

        levels = self.power_level_offsets_db
        need(len(levels) >= 1, "power_level_offsets_db", "must hold at least one level")
        need(all(v <= 0 for v in levels), "power_level_offsets_db",
             "levels are relative to the maximum power and must be <= 0 dB")
        need(list(levels) == sorted(set(levels)), "power_level_offsets_db",
             "must be strictly ascending (last = full power)")
        need(len(self.cio_values_db) >= 1 and 0.0 in self.cio_values_db, "cio_values_db",
             "must contain 0 dB")
        need(list(self.cio_values_db) == sorted(set(self.cio_values_db)), "cio_values_db",
             "must be strictly ascending")
        n_stations = self.n_macro_cells + self.n_small_cells
        need(all(0 <= s < n_stations for s in self.outage_stations), "outage_stations",
             f"station indices must be within 0..{n_stations - 1}")
        need(len(set(self.outage_stations)) == len(self.outage_stations), "outage_stations",
             "must not repeat a station")
        need(len(self.outage_stations) < n_stations, "outage_stations",
             "at least one station must stay on")

        need(self.hysteresis_db >= 0, "hysteresis_db", "must be non-negative")
        need(self.time_to_trigger_steps >= 0, "time_to_trigger_steps", "must be non-negative")
        need(0 <= self.handover_interruption_s <= self.step_duration_s,
             "handover_interruption_s", "must be between 0 and step_duration_s")
        need(self.pingpong_window_s >= 0, "pingpong_window_s", "must be non-negative")
        need(self.scheduler in ("pf", "rr"), "scheduler", 'must be "pf" or "rr"')
        need(self.pf_time_constant_steps >= 1, "pf_time_constant_steps", "must be at least 1")

        need(1 <= self.max_users <= 100_000, "max_users", "must be between 1 and 100000")
        need(0 <= self.initial_users <= self.max_users, "initial_users",
             "must be between 0 and max_users")
        need(self.arrival_rate_per_step >= 0, "arrival_rate_per_step", "must be non-negative")
        need(self.user_demand_mbps > 0, "user_demand_mbps", "must be positive (inf: full buffer)")
        need(self.mean_session_steps >= 1, "mean_session_steps",
             "must be at least 1 step (inf: users never leave)")
        need(self.speed_min_mps >= 0, "speed_min_mps", "must be non-negative")
        need(self.speed_max_mps >= self.speed_min_mps, "speed_max_mps",
             "must be at least speed_min_mps")
        need(self.n_hotspots >= 0, "n_hotspots", "must be non-negative")
        need(0 <= self.hotspot_fraction <= 1, "hotspot_fraction", "must be within 0..1")
        need(self.hotspot_fraction == 0 or self.n_hotspots > 0, "hotspot_fraction",
             "must be 0 when n_hotspots is 0")
        need(self.hotspot_radius_m > 0, "hotspot_radius_m", "must be positive")
        need(self.hotspot_speed_mps >= 0, "hotspot_speed_mps", "must be non-negative")

        need(self.episode_steps >= 1, "episode_steps", "must be at least 1")
        need(self.step_duration_s > 0, "step_duration_s", "must be positive")
        for name in ("pf_weight", "ee_weight", "handover_cost", "power_weight"):
            need(getattr(self, name) >= 0, name, "must be non-negative")
        need(self.rate_floor_bps > 0, "rate_floor_bps", "must be positive")
        need(self.load_norm_users >= 1, "load_norm_users", "must be at least 1")
        need(self.x2_neighbour_slots >= 1, "x2_neighbour_slots", "must be at least 1")

    # ------------------------------------------------------------------------------------
    @property
    def n_stations(self) -> int:
        return self.n_macro_cells + self.n_small_cells

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BaseStationConfig":
        """Build a config from a mapping (e.g. a parsed TOML table).

        :param d: field names to values; missing fields keep their defaults.
        :raises ConfigError: on unknown keys (all of them are named), wrong types or
            impossible values (the field is named).
        """
        if not isinstance(d, Mapping):
            raise ConfigError("<config>", f"expected a table of fields, got {type(d).__name__}")
        unknown = sorted(str(k) for k in d if k not in _FIELD_KINDS)
        if unknown:
            raise ConfigError(
                unknown[0],
                f"unknown field(s) {', '.join(unknown)}; known fields: "
                f"{', '.join(sorted(_FIELD_KINDS))}",
            )
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists for tuples), the inverse of `from_dict`."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    def replace(self, **changes: Any) -> "BaseStationConfig":
        """A copy with some fields changed (validated again)."""
        unknown = sorted(k for k in changes if k not in _FIELD_KINDS)
        if unknown:
            raise ConfigError(unknown[0], f"unknown field(s) {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)


def _check_scalar(name: str, value: Any, kind: type) -> None:
    # bool is a subclass of int in Python: a TOML `true` must not pass for a cell count.
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise ConfigError(name, f"expected {kind.__name__}, got {type(value).__name__} {value!r}")


_FIELD_KINDS: dict[str, type] = {}
for _f in dataclasses.fields(BaseStationConfig):
    _t = _f.type if isinstance(_f.type, str) else _f.type.__name__
    _FIELD_KINDS[_f.name] = tuple if _t.startswith("tuple") else {
        "str": str, "int": int, "float": float, "bool": bool}[_t]
del _f, _t


def scenario_path(name: str) -> Path:
    """Path of a preset scenario file shipped in `envs/basestation/scenarios/`."""
    if name not in SCENARIO_NAMES:
        raise ConfigError("scenario", f"unknown preset {name!r}; presets: {', '.join(SCENARIO_NAMES)}")
    return Path(str(resources.files(__package__).joinpath("scenarios", f"{name}.toml")))


def load_scenario(name_or_path: str | Path, **overrides: Any) -> BaseStationConfig:
    """Load a preset by name (see `SCENARIO_NAMES`) or a TOML file by path.

    The file holds config fields at top level, or under a ``[basestation]`` table.

    :param overrides: fields to change after loading (e.g. ``n_macro_cells=19``).
    """
    if isinstance(name_or_path, str) and name_or_path in SCENARIO_NAMES:
        path = scenario_path(name_or_path)
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise ConfigError("scenario", f"{str(name_or_path)!r} is neither a preset "
                              f"({', '.join(SCENARIO_NAMES)}) nor a TOML file")
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    if "basestation" in data and isinstance(data["basestation"], dict):
        data = data["basestation"]
    data = {**data, **overrides}
    return BaseStationConfig.from_dict(data)
