"""The simulation behind both APIs: users, channels, handover, scheduling, energy.

`CellularNetwork` holds fixed-capacity user arrays with an ``active`` mask, so every
quantity is a (users,) or (users x stations) array of static shape and one step is a
few dozen numpy expressions, with no Python loop over users, stations or pairs.

One step, in order: apply the stations' actions (power level, CIO, sleep); users leave,
arrive (Poisson) and move (random waypoint, hotspots that move); channels (38.901 path
loss, LOS state, correlated shadowing, optional Rayleigh fading); association (A3
handover with CIO, hysteresis and time-to-trigger, forced handover away from sleeping
stations); scheduling (PF or RR time shares of the full-buffer downlink) and SINR with
interference from every transmitting station; power (EARTH) and KPIs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import radio
from .config import BaseStationConfig
from .layout import Layout, build_layout

__all__ = ["CellularNetwork", "StepKPIs", "OBS_OWN_FEATURES", "OBS_NEIGHBOUR_FEATURES", "SINR_OBS_RANGE_DB",
           "sinr_feature_db"]

OBS_OWN_FEATURES = (
    "load",  # attached users / load_norm_users, clipped to 1
    "prb_load",  # share of the station's resources in use (1 for any busy cell under full buffer)
    "sinr_mean",  # mean SINR of its users, (dB + 10) / 40 clipped to [0, 1]
    "sinr_p5",  # 5th percentile SINR of its users, same scale
    "rate_mean",  # mean user throughput, log1p(Mbit/s) / log1p(peak Mbit/s)
    "rate_p5",  # 5th percentile user throughput, same scale
    "power_level",  # chosen level / (levels - 1); 1 = full power
    "cio",  # chosen CIO mapped from [min, max] to [0, 1]
    "sleeping",  # 1 if asleep (by choice)
    "off",  # 1 if forced off (outage)
    "small_cell",  # 1 for a small (micro) cell, 0 for a macro: the same choice means other things
    # `load` saturates at load_norm_users; a hotspot cell carries several times that, and
    # how much more than its neighbours is what tells it how far to shrink (CIO, power).
    "users",  # attached users, log1p(n) / log1p(max_users): not clipped at load_norm_users
    "load_vs_neighbours",  # 0.5 + log2((n + 1) / (awake neighbours' mean n + 1)) / 8, clipped to [0, 1]
)
OBS_NEIGHBOUR_FEATURES = (
    "present",  # 1 for a real X2 neighbour, 0 for padding
    "load",
    "prb_load",  # as in the X2 Resource Status Update (TS 36.423): PRB usage
    "inactive",  # asleep or off
    "power_level",
    "cio",
    "users",  # as the own feature: attached users, log scale, not clipped
)

# The SINR range the observation maps to [0, 1]: -10 dB is the coverage edge used as
# `min_sinr_db` by default, 30 dB is where the 7.4 b/s/Hz cap is already reached.
_SINR_OBS_LOW_DB, _SINR_OBS_SPAN_DB = -10.0, 40.0
SINR_OBS_RANGE_DB = (_SINR_OBS_LOW_DB, _SINR_OBS_LOW_DB + _SINR_OBS_SPAN_DB)


def sinr_feature_db(feature: np.ndarray | float) -> np.ndarray:
    """The SINR in dB that an observation's ``sinr_mean`` / ``sinr_p5`` feature stands for
    (the inverse of the observation's scale, within `SINR_OBS_RANGE_DB`)."""
    return np.asarray(feature, dtype=float) * _SINR_OBS_SPAN_DB + _SINR_OBS_LOW_DB

_P5 = 0.05


@dataclass
class StepKPIs:
    """Network-wide figures of one step (also what `info` carries)."""

    mean_user_rate_bps: float
    p5_user_rate_bps: float
    pf_utility: float
    total_power_w: float
    energy_efficiency_bits_per_j: float
    handovers: int
    pingpong_handovers: int  # handovers back to the cell left within config.pingpong_window_s
    throughput_bps: float
    active_users: int
    unserved_users: int
    sleeping_stations: int
    blocked_arrivals: int

    def as_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)


class CellularNetwork:
    """Multi-cell downlink with inter-cell interference, handover and energy.

    :param config: the scenario.
    After `reset`, read-only state for inspection and plotting: ``ue_pos`` (M, 2),
    ``active`` (M,), ``serving`` (M,) (-1: none), ``sinr`` (M,) linear, ``rate_bps``
    (M,) full-band rate, ``throughput_bps`` (M,), ``rx_mw`` (M, S), ``tx_power_dbm``
    (S,), ``sleeping`` (S,), ``off`` (S,), ``power_w`` (S,), ``n_users`` (S,).
    """

    def __init__(self, config: BaseStationConfig) -> None:
        self.config = c = config
        self.layout: Layout = build_layout(c)
        S = self.n_stations = self.layout.n_stations
        M = self.capacity = c.max_users
        macro = self.layout.is_macro

        scen = [c.macro_path_loss if m else "UMi" for m in macro]
        heights = np.where(macro, c.macro_height_m, c.small_height_m)
        self.coef = radio.path_loss_coefficients(scen, heights, c.carrier_ghz, c.ue_height_m)
        self.noise_mw = float(radio.dbm_to_mw(
            radio.noise_power_dbm(c.bandwidth_mhz * 1e6, c.noise_figure_db)))
        self.bandwidth_hz = c.bandwidth_mhz * 1e6
        self.min_sinr = float(10.0 ** (c.min_sinr_db / 10.0))
        self.max_power_w = np.where(macro, c.macro_max_power_w, c.small_max_power_w)
        self.p0_w = np.where(macro, c.macro_p0_w, c.small_p0_w)
        self.delta_p = np.where(macro, c.macro_delta_p, c.small_delta_p)
        self.sleep_w = np.where(macro, c.macro_sleep_w, c.small_sleep_w)
        self.power_offsets_db = np.asarray(c.power_level_offsets_db)
        self.cio_values_db = np.asarray(c.cio_values_db)
        self.n_power_levels = len(c.power_level_offsets_db)
        self.n_cio = len(c.cio_values_db)
        self.default_cio_index = int(c.cio_values_db.index(0.0))
        self.off = np.zeros(S, dtype=bool)
        self.off[list(c.outage_stations)] = True
        self._any_off = bool(self.off.any())
        # (S, levels) tables: the step indexes them instead of recomputing dB <-> W.
        self._p_out_table = self.max_power_w[:, None] * 10.0 ** (self.power_offsets_db / 10.0)
        self._tx_dbm_table = 10.0 * np.log10(self._p_out_table * 1e3)
        self._action_high = np.array([self.n_power_levels, self.n_cio, 2])

        # Station images (S*K) for distances; with K=1 this is just the stations.
        img = (self.layout.pos[:, None, :] + self.layout.shifts[None, :, :]).reshape(-1, 2)
        self._img_x, self._img_y = img[:, 0].copy(), img[:, 1].copy()
        self._n_images = len(self.layout.shifts)

        # X2 neighbourhood incl. self, for each station's local energy efficiency.
        nb = self.layout.neighbours
        hood = np.eye(S)
        rows = np.repeat(np.arange(S), nb.shape[1])
        valid = nb.reshape(-1) >= 0
        hood[rows[valid], nb.reshape(-1)[valid]] = 1.0
        self._hood = hood
        self._nb_valid = nb >= 0
        self._nb_gather = np.maximum(nb, 0)

        self._ar = np.arange(M)
        self._ar_s = np.arange(S)
        self._pf_alpha = 1.0 / c.pf_time_constant_steps
        self._interrupt = c.handover_interruption_s / c.step_duration_s
        self._pingpong_steps = c.pingpong_window_s / c.step_duration_s
        self._leave_p = 0.0 if np.isinf(c.mean_session_steps) else 1.0 / c.mean_session_steps
        self._peak_mbps = self.bandwidth_hz * c.max_spectral_efficiency / 1e6
        self._rate_obs_scale = 1.0 / np.log1p(self._peak_mbps)
        cio_span = self.cio_values_db[-1] - self.cio_values_db[0]
        self._cio_obs = (self.cio_values_db - self.cio_values_db[0]) / max(cio_span, 1e-9)
        self._level_obs = (np.arange(self.n_power_levels) / max(self.n_power_levels - 1, 1))
        self._small = (~macro).astype(np.float32)
        self._users_obs_scale = 1.0 / np.log1p(c.max_users)
        self.n_slots = c.x2_neighbour_slots
        self.obs_dim = len(OBS_OWN_FEATURES) + self.n_slots * len(OBS_NEIGHBOUR_FEATURES)
        self.rng = np.random.default_rng()
        self.t = 0

    # ------------------------------------------------------------------------------------
    @property
    def x2_graph(self):
        return self.layout.x2_graph

    def default_actions(self) -> np.ndarray:
        """(S, 3): full power, CIO 0 dB, awake."""
        a = np.zeros((self.n_stations, 3), dtype=np.int64)
        a[:, 0] = self.n_power_levels - 1
        a[:, 1] = self.default_cio_index
        return a

    def reset(self, rng: np.random.Generator) -> None:
        c, M, S = self.config, self.capacity, self.n_stations
        self.rng = rng
        self.t = 0
        self.active = np.zeros(M, dtype=bool)
        self.pos_local = np.zeros((M, 2))
        self.dest_local = np.zeros((M, 2))
        self.speed = np.zeros(M)
        self.anchor = np.full(M, -1, dtype=np.int64)
        self.shadow_x = np.zeros((M, S))
        self.los_u = np.zeros((M, S))
        self.serving = np.full(M, -1, dtype=np.int64)
        self.ttt = np.zeros(M, dtype=np.int64)
        self.avg_rate = np.zeros(M)
        self.handover_flag = np.zeros(M, dtype=bool)
        self.left_cell = np.full(M, -1, dtype=np.int64)  # the cell each user left at its last handover
        self.left_at = np.zeros(M, dtype=np.int64)  # ... and the step it did
        self.n_pingpong = 0
        self.blocked = 0
        self.hs_pos = self.layout.sample_in_cells(rng, c.n_hotspots)
        self.hs_dest = self.layout.sample_in_cells(rng, c.n_hotspots)
        self._apply_actions(self.default_actions())
        self._add_users(c.initial_users)
        self.ue_pos = self._absolute_positions()
        self._channels(moved=None)
        self._associate()
        self._schedule()

    def step(self, actions: np.ndarray) -> None:
        """Advance one step. :param actions: (S, 3) ints: power level, CIO index, sleep."""
        self.t += 1
        self._apply_actions(actions)
        self._churn()
        old = self.ue_pos
        self._move()
        new = self.ue_pos = self._absolute_positions()
        d = new - old
        self._channels(moved=np.sqrt(d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1]))
        self._associate()
        self._schedule()

    # --- actions ----------------------------------------------------------------------------
    def _apply_actions(self, actions: np.ndarray) -> None:
        a = np.asarray(actions, dtype=np.int64).reshape(self.n_stations, 3)
        if ((a < 0) | (a >= self._action_high)).any():
            bad = np.argwhere((a < 0) | (a >= self._action_high))[0]
            what = ("power level", "CIO index", "sleep flag")[bad[1]]
            raise ValueError(f"station {bad[0]}: {what} {a[bad[0], bad[1]]} outside "
                             f"0..{self._action_high[bad[1]] - 1}")
        self.power_level = a[:, 0]
        self.cio_index = a[:, 1]
        sleep = a[:, 2] > 0
        if self._any_off:  # forced-off stations keep no setting of their own
            off = self.off
            sleep &= ~off
            self.power_level = np.where(off, 0, self.power_level)
            self.cio_index = np.where(off, self.default_cio_index, self.cio_index)
            self.awake = ~sleep & ~off
        else:
            self.awake = ~sleep
        self.sleeping = sleep
        self.p_out_w = self._p_out_table[self._ar_s, self.power_level]
        self.tx_power_dbm = self._tx_dbm_table[self._ar_s, self.power_level]
        self.cio_db = self.cio_values_db[self.cio_index]

    # --- users ------------------------------------------------------------------------------
    def _draw_destinations(self, anchor: np.ndarray) -> np.ndarray:
        n = len(anchor)
        free = self.layout.sample_in_cells(self.rng, n)
        if self.config.n_hotspots == 0:
            return free
        near = self.rng.normal(0.0, self.config.hotspot_radius_m, size=(n, 2))
        return np.where((anchor >= 0)[:, None], near, free)

    def _add_users(self, n: int) -> None:
        c, S = self.config, self.n_stations
        slots = np.flatnonzero(~self.active)[:n]
        self.blocked += n - len(slots)
        k = len(slots)
        if k == 0:
            return
        rng = self.rng
        anchor = np.full(k, -1, dtype=np.int64)
        if c.n_hotspots > 0 and c.hotspot_fraction > 0:
            hot = rng.random(k) < c.hotspot_fraction
            anchor = np.where(hot, rng.integers(0, c.n_hotspots, size=k), -1)
        self.anchor[slots] = anchor
        self.pos_local[slots] = self._draw_destinations(anchor)
        self.dest_local[slots] = self._draw_destinations(anchor)
        self.speed[slots] = rng.uniform(c.speed_min_mps, c.speed_max_mps, size=k)
        self.shadow_x[slots] = rng.standard_normal((k, S))
        self.los_u[slots] = rng.random((k, S))
        self.serving[slots] = -1
        self.left_cell[slots] = -1
        self.ttt[slots] = 0
        self.avg_rate[slots] = 0.0
        self.active[slots] = True

    def _churn(self) -> None:
        if self._leave_p > 0:
            leave = self.active & (self.rng.random(self.capacity) < self._leave_p)
            if leave.any():
                self.active &= ~leave
                self.serving[leave] = -1
        if self.config.arrival_rate_per_step > 0:
            n = int(self.rng.poisson(self.config.arrival_rate_per_step))
            if n:
                self._add_users(n)
                # newcomers appear where they are; give them a defined "previous" position
                self.ue_pos = self._absolute_positions()

    def _move(self) -> None:
        dt = self.config.step_duration_s
        if self.config.n_hotspots and self.config.hotspot_speed_mps > 0:
            self.hs_pos, arrived = _waypoint(self.hs_pos, self.hs_dest,
                                             self.config.hotspot_speed_mps * dt)
            if arrived.any():
                self.hs_dest[arrived] = self.layout.sample_in_cells(self.rng, int(arrived.sum()))
        self.pos_local, arrived = _waypoint(self.pos_local, self.dest_local, self.speed * dt)
        arrived &= self.active
        if arrived.any():
            self.dest_local[arrived] = self._draw_destinations(self.anchor[arrived])

    def _absolute_positions(self) -> np.ndarray:
        if self.config.n_hotspots == 0:
            return self.pos_local
        origin = np.concatenate([self.hs_pos, np.zeros((1, 2))])
        return self.pos_local + origin[self.anchor]  # anchor -1 picks the zero row

    # --- channels ---------------------------------------------------------------------------
    def _channels(self, moved: np.ndarray | None) -> None:
        c, coef, M, S = self.config, self.coef, self.capacity, self.n_stations
        ux, uy = self.ue_pos[:, 0:1], self.ue_pos[:, 1:2]
        dx = ux - self._img_x
        dy = uy - self._img_y
        d2 = dx * dx + dy * dy
        if self._n_images > 1:
            d2 = d2.reshape(M, S, self._n_images).min(axis=2)
        d2d = np.sqrt(d2)
        self.d2d = d2d
        los = None
        if c.los_model == "stochastic":
            # A uniform number per user-station pair, fixed over the user's life, is
            # compared with Pr_LOS(d): the state changes only where the probability
            # crosses it, so LOS is consistent along a track instead of flickering.
            los = self.los_u < radio.los_probability(coef, d2d)
        pl = radio.path_loss_db(coef, d2d, los)
        if c.shadowing:
            if moved is not None:
                # Gudmundson AR(1) along the track: rho = exp(-dx / d_corr), with the
                # 38.901 Table 7.5-6 decorrelation distances.
                if los is None:
                    decorr = coef.decorr_nlos_m
                else:
                    decorr = np.where(los, coef.decorr_los_m, coef.decorr_nlos_m)
                rho = np.exp(-moved[:, None] / decorr)
                fresh = self.rng.standard_normal((M, S))
                self.shadow_x = rho * self.shadow_x + np.sqrt(1.0 - rho * rho) * fresh
            if los is None:
                std = coef.shadow_std_nlos
            else:
                std = np.where(los, coef.shadow_std_los, coef.shadow_std_nlos)
            pl = pl + std * self.shadow_x
        self.path_loss_db = pl
        rsrp = self.tx_power_dbm - pl
        self.rsrp_dbm = rsrp
        self.rx_mw = np.exp(rsrp * (np.log(10.0) / 10.0))
        if c.rayleigh_fading:
            self.rx_fading_mw = self.rx_mw * self.rng.exponential(1.0, size=(M, S))
        else:
            self.rx_fading_mw = self.rx_mw

    # --- association --------------------------------------------------------------------------
    def _associate(self) -> None:
        c, ar, S = self.config, self._ar, self.n_stations
        awake = self.awake
        # Reference signals of sleeping/off stations are absent: -inf measurement.
        metric = np.where(awake, self.rsrp_dbm + self.cio_db, -np.inf)
        cur = self.serving
        cur_c = np.maximum(cur, 0)
        has = self.active & (cur >= 0) & awake[cur_c]
        serv_metric = metric[ar, cur_c]
        best_any = np.argmax(metric, axis=1)
        best_any_val = metric[ar, best_any]
        # A3 (TS 38.331 5.5.4.4): Mn + Ocn > Ms + Ocs + Hys; the candidate is the best
        # cell other than the serving one.
        others = metric.copy()
        others[ar, cur_c] = -np.inf
        best = np.argmax(others, axis=1)
        a3 = has & (others[ar, best] > serv_metric + c.hysteresis_db)
        self.ttt = np.where(a3, self.ttt + 1, 0)
        ho = a3 & (self.ttt >= max(c.time_to_trigger_steps, 1))
        self.ttt[ho] = 0
        need = self.active & ~has
        can = need & np.isfinite(best_any_val)
        forced = can & (cur >= 0)  # its station went to sleep / off: forced handover
        new_serving = np.where(ho, best, cur)
        new_serving = np.where(can, best_any, new_serving)
        new_serving = np.where(self.active & ~(has | can), -1, new_serving)
        moved_off = ho | forced
        self.handover_flag = moved_off
        self.handovers_out = np.bincount(cur_c[moved_off], minlength=S)
        self.n_handovers = int(moved_off.sum())
        if self.n_handovers:
            back = moved_off & (new_serving == self.left_cell) & (self.t - self.left_at <= self._pingpong_steps)
            self.n_pingpong = int(back.sum())
            self.left_cell = np.where(moved_off, cur, self.left_cell)
            self.left_at = np.where(moved_off, self.t, self.left_at)
        else:
            self.n_pingpong = 0
        self.serving = np.where(self.active, new_serving, -1)

    # --- scheduling, rates, power -------------------------------------------------------------
    def _schedule(self) -> None:
        c, S = self.config, self.n_stations
        serving = self.serving
        served = serving >= 0
        g = np.where(served, serving, S)  # group S collects users without a station
        counts = np.bincount(g, minlength=S + 1)
        self._counts = counts
        n_users = counts[:S]
        self.n_users = n_users
        self._g = g
        self._served = served
        self._n_ext = counts.copy()
        self._n_ext[S] = 1  # users without a station divide by 1, not by their count
        # A station with users transmits for the share of resources it uses and
        # interferes for that share; an idle or sleeping one sends no data. Under full
        # buffer (TR 36.814 calibration traffic) every busy station uses all resources.
        busy = (self.awake & (n_users > 0)).astype(float)
        rate = self._rates(busy)
        share = self._time_shares(rate)
        demand = c.user_demand_mbps * 1e6
        if np.isfinite(demand):
            share = self._cap_at_demand(share, demand / np.maximum(rate, 1e-9))
            load = np.bincount(g, weights=share, minlength=S + 1)[:S]
            # One Jacobi pass of the load-coupled interference fixed point (Siomina &
            # Yuan): neighbours interfere in proportion to the resources they use.
            rate = self._rates(np.minimum(load, 1.0) * busy)
            share = np.minimum(share, demand / np.maximum(rate, 1e-9))
        load = np.minimum(np.bincount(g, weights=share, minlength=S + 1)[:S], 1.0)
        thr = share * rate
        if self._interrupt > 0:
            thr = np.where(self.handover_flag, thr * (1.0 - self._interrupt), thr)
        thr = np.where(served, thr, 0.0)
        self.throughput_bps = thr
        a = self._pf_alpha
        self.avg_rate = np.where(self.active, (1.0 - a) * self.avg_rate + a * thr, 0.0)
        self.load = load  # resource (PRB) utilisation, what EARTH's load term means
        self.power_w = np.where(self.off, 0.0, radio.earth_power_w(
            self.p_out_w, load, self.p0_w, self.delta_p, self.sleep_w, self.awake))

    def _rates(self, activity: np.ndarray) -> np.ndarray:
        """SINR and full-band rate of every user, interferers weighted by `activity`."""
        c, S = self.config, self.n_stations
        self.tx_on = activity
        rx = self.rx_fading_mw
        total = rx @ activity
        g_c = np.minimum(self._g, S - 1)
        sig = rx[self._ar, g_c]
        interference = np.maximum(total - sig * activity[g_c], 0.0)
        sinr = np.where(self._served, sig / (interference + self.noise_mw), 0.0)
        self.sinr = sinr
        rate = radio.shannon_rate_bps(sinr, self.bandwidth_hz, c.max_spectral_efficiency,
                                      self.min_sinr)
        self.rate_bps = rate
        return rate

    def _time_shares(self, rate: np.ndarray) -> np.ndarray:
        g, n_ext = self._g, self._n_ext
        if self.config.scheduler == "rr":
            return 1.0 / n_ext[g]
        # Fluid PF: time shares proportional to the PF metric r / R_avg. With constant
        # channels the fixed point is an equal time share (the PF optimum); with fading
        # a user gets more time while its channel is above its average, as per-TTI PF
        # would give it. A newcomer starts from an equal share.
        avg = np.where(self.avg_rate > 0, self.avg_rate, rate / n_ext[g])
        pf = rate / np.maximum(avg, 1.0)
        msum = np.bincount(g, weights=pf, minlength=self.n_stations + 1)
        return pf / np.maximum(msum[g], 1e-300)

    def _cap_at_demand(self, share: np.ndarray, need: np.ndarray) -> np.ndarray:
        """Users who need less than their share keep only what they need; the rest goes
        to the others of the cell in proportion to their shares (three rounds of this
        water-filling; what is left after them stays unused)."""
        g, S1 = self._g, self.n_stations + 1
        for _ in range(3):
            capped = share >= need
            spare = np.bincount(g, weights=np.where(capped, share - need, 0.0), minlength=S1)
            share = np.where(capped, need, share)
            free = np.bincount(g, weights=np.where(capped, 0.0, share), minlength=S1)
            share = np.where(capped, share, share * (1.0 + spare[g] / np.maximum(free[g], 1e-300)))
        return np.minimum(share, need)

    # --- results --------------------------------------------------------------------------
    def kpis(self) -> StepKPIs:
        act = self.active
        thr = self.throughput_bps
        n_act = int(act.sum())
        thr_act = thr[act]
        if n_act:
            mean_rate = float(thr_act.sum()) / n_act
            p5 = float(np.sort(thr_act)[int(_P5 * (n_act - 1))])
        else:
            mean_rate = p5 = 0.0
        log_rate = np.log(np.maximum(thr_act, self.config.rate_floor_bps) * 1e-6)
        total_thr = float(thr_act.sum())
        total_power = float(self.power_w.sum())
        return StepKPIs(
            mean_user_rate_bps=mean_rate,
            p5_user_rate_bps=p5,
            pf_utility=float(log_rate.sum()),
            total_power_w=total_power,
            energy_efficiency_bits_per_j=total_thr / total_power if total_power > 0 else 0.0,
            handovers=self.n_handovers,
            pingpong_handovers=self.n_pingpong,
            throughput_bps=total_thr,
            active_users=n_act,
            unserved_users=int((act & (self.serving < 0)).sum()),
            sleeping_stations=int(self.sleeping.sum()),
            blocked_arrivals=int(self.blocked),
        )

    def station_rewards(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Per-station reward and its parts.

        reward_s = pf_weight * U_s + ee_weight * EE_s - handover_cost * HO_s - power_weight * P_s,
        with P_s the station's input power (W), U_s the
        sum over the station's users of ln(rate / 1 Mbit/s), EE_s the energy efficiency
        (Mbit/J) of the station's X2 neighbourhood including itself (so that sleeping
        pays off where the neighbours carry the traffic), HO_s handovers out of it.
        """
        c, S, g = self.config, self.n_stations, self._g
        log_rate = np.log(np.maximum(self.throughput_bps, c.rate_floor_bps) * 1e-6)
        util = np.bincount(g, weights=log_rate, minlength=S + 1)[:S]
        thr = np.bincount(g, weights=self.throughput_bps, minlength=S + 1)[:S]
        hood_bits = self._hood @ thr
        hood_power = self._hood @ self.power_w
        ee = np.where(hood_power > 0, hood_bits / np.maximum(hood_power, 1e-12), 0.0) * 1e-6
        reward = (c.pf_weight * util + c.ee_weight * ee - c.handover_cost * self.handovers_out
                  - c.power_weight * self.power_w)
        return reward, {"pf_utility": util, "throughput_bps": thr, "hood_ee_mbit_per_j": ee}

    def network_reward(self, kpis: StepKPIs | None = None) -> float:
        """Central controller's reward: pf_weight * U + ee_weight * S * EE - cost * HO - power_weight * P,
        with U the PF utility of all users and EE the network's Mbit/J; S * EE keeps the
        energy term on the scale of the sum of the stations' neighbourhood terms.

        :param kpis: this step's `kpis()`, if already computed."""
        c, k = self.config, (kpis if kpis is not None else self.kpis())
        return (c.pf_weight * k.pf_utility
                + c.ee_weight * self.n_stations * k.energy_efficiency_bits_per_j * 1e-6
                - c.handover_cost * k.handovers - c.power_weight * k.total_power_w)

    def neighbour_slots(self) -> np.ndarray:
        """(S, n_slots) the X2 neighbour each observation slot reports, -1 for padding.

        Most attached users first (what the X2 Resource Status Update tells a station),
        ties in the layout's order (distance, then angle); padding last. A slot then means
        the same on every layout ("my busiest neighbour"), not a direction, and where a
        station has more neighbours than slots the least loaded are left out."""
        nb, S, K = self.layout.neighbours, self.n_stations, self.n_slots
        key = np.where(self._nb_valid, -self.n_users[self._nb_gather], np.iinfo(np.int64).max)
        order = np.take_along_axis(nb, np.argsort(key, axis=1, kind="stable"), axis=1)
        if order.shape[1] >= K:
            return order[:, :K]
        return np.concatenate([order, np.full((S, K - order.shape[1]), -1, dtype=order.dtype)], axis=1)

    def observations(self) -> np.ndarray:
        """(S, obs_dim) float32 in [0, 1]: own features, then per X2 neighbour slot
        (`neighbour_slots`: the most loaded neighbours first)."""
        c, S, g = self.config, self.n_stations, self._g
        n = self.n_users
        n_div = np.maximum(n, 1)
        sinr_db = 10.0 * np.log10(np.maximum(self.sinr, 1e-30))
        # np.clip costs several times two ufuncs on arrays this small
        sinr_n = np.minimum(np.maximum((sinr_db - _SINR_OBS_LOW_DB) / _SINR_OBS_SPAN_DB, 0.0), 0.999)
        rate_n = np.minimum(np.log1p(self.throughput_bps * 1e-6) * self._rate_obs_scale, 0.999)
        # Group percentiles without a loop: values lie in [0, 1), so group + value sorts
        # by group first; each group's k-th smallest sits at its start offset + k.
        counts = self._counts
        starts = (np.cumsum(counts) - counts)[:S]
        k = starts + np.floor(_P5 * np.maximum(n - 1, 0)).astype(np.int64)
        k = np.minimum(k, self.capacity - 1)
        has = n > 0
        own = np.empty((S, len(OBS_OWN_FEATURES)), dtype=np.float32)
        own[:, 0] = np.minimum(n / c.load_norm_users, 1.0)
        own[:, 1] = self.load
        own[:, 2] = np.bincount(g, weights=sinr_n, minlength=S + 1)[:S] / n_div
        own[:, 3] = np.where(has, np.sort(g + sinr_n)[k] - self._ar_s, 0.0)
        own[:, 4] = np.bincount(g, weights=rate_n, minlength=S + 1)[:S] / n_div
        own[:, 5] = np.where(has, np.sort(g + rate_n)[k] - self._ar_s, 0.0)
        own[:, 6] = self._level_obs[self.power_level]
        own[:, 7] = self._cio_obs[self.cio_index]
        own[:, 8] = self.sleeping
        own[:, 9] = self.off
        own[:, 10] = self._small
        own[:, 11] = np.log1p(n) * self._users_obs_scale
        # the neighbours' mean over those awake (what their X2 reports say), padding excluded
        awake_nb = self._nb_valid & self.awake[self._nb_gather]
        nb_users = np.where(awake_nb, n[self._nb_gather], 0)
        mean_nb = nb_users.sum(axis=1) / np.maximum(awake_nb.sum(axis=1), 1)
        ratio = np.log2((n + 1.0) / (mean_nb + 1.0))
        own[:, 12] = np.where(awake_nb.any(axis=1), np.minimum(np.maximum(0.5 + ratio / 8.0, 0.0), 1.0), 0.5)
        # What neighbours report over X2: load, PRB usage, whether active, power, CIO.
        report = np.zeros((S + 1, len(OBS_NEIGHBOUR_FEATURES)), dtype=np.float32)
        report[:S, 0] = 1.0
        report[:S, 1] = own[:, 0]
        report[:S, 2] = own[:, 1]
        report[:S, 3] = ~self.awake
        report[:S, 4] = own[:, 6]
        report[:S, 5] = own[:, 7]
        report[:S, 6] = own[:, 11]
        slots = self.neighbour_slots()
        nb = report[np.where(slots >= 0, slots, S)].reshape(S, -1)
        return np.concatenate([own, nb], axis=1)


def _waypoint(pos: np.ndarray, dest: np.ndarray, step: np.ndarray | float):
    """Move each point up to `step` towards its destination; (new positions, arrived)."""
    delta = dest - pos
    dist = np.sqrt(delta[:, 0] * delta[:, 0] + delta[:, 1] * delta[:, 1])
    arrived = dist <= step
    frac = np.where(arrived, 1.0, step / np.maximum(dist, 1e-9))
    return pos + delta * frac[:, None], arrived
