"""Radio and power models, as vectorised numpy formulas.

Path loss, LOS probability and shadowing follow 3GPP TR 38.901 V17 (Sec. 7.4), the
power model is EARTH's linear one (Auer et al., "How much energy is needed to run a
wireless network?", IEEE Wireless Communications 18(5), 2011, Table 2). Every function
takes arrays and broadcasts; per-station constants come in as (S,) arrays so a
(users x stations) matrix is one expression, never a loop over pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "SPEED_OF_LIGHT",
    "PathLossCoefficients",
    "path_loss_coefficients",
    "path_loss_db",
    "los_probability",
    "noise_power_dbm",
    "shannon_rate_bps",
    "earth_power_w",
    "dbm_to_mw",
]

SPEED_OF_LIGHT = 299_792_458.0
THERMAL_NOISE_DBM_PER_HZ = -174.0  # kT at 290 K

# 38.901 Table 7.4.1-1: shadow fading standard deviations (dB).
SHADOW_STD_DB = {"UMa": (4.0, 6.0), "UMi": (4.0, 7.82)}  # (LOS, NLOS)
# 38.901 Table 7.5-6 Part 1: shadow-fading decorrelation distances (m).
SHADOW_DECORRELATION_M = {"UMa": (37.0, 50.0), "UMi": (10.0, 13.0)}  # (LOS, NLOS)
# 38.901 Table 7.4.2-1: LOS probability decay lengths (m), for h_UT <= 13 m (C' = 0).
LOS_DECAY_M = {"UMa": 63.0, "UMi": 36.0}
# 38.901 Table 7.4.1-1 note 1: effective environment height h_E = 1 m
# (UMi always; UMa with probability 1 for h_UT <= 13 m, since C(d2D, h_UT) = 0 there).
ENVIRONMENT_HEIGHT_M = 1.0
# Formulas hold for d2D >= 10 m (38.901 Table 7.4.1-1); closer users are clamped there.
MIN_DISTANCE_M = 10.0


@dataclass(frozen=True)
class PathLossCoefficients:
    """Per-station constants so that each 38.901 formula is ``c + b * log10(d3D)``.

    Arrays of shape (S,), one entry per station (macro and small cells may use
    different scenarios, heights and so breakpoints).
    """

    los1_c: np.ndarray
    los1_b: np.ndarray
    los2_c: np.ndarray
    los2_b: np.ndarray
    nlos_c: np.ndarray
    nlos_b: np.ndarray
    breakpoint_m: np.ndarray  # d'_BP, compared with d2D
    dh2: np.ndarray  # (h_BS - h_UT)^2, to build d3D from d2D
    los_decay_m: np.ndarray
    shadow_std_los: np.ndarray
    shadow_std_nlos: np.ndarray
    decorr_los_m: np.ndarray
    decorr_nlos_m: np.ndarray


def _scenario_constants(scenario: str, fc_ghz: float, h_bs: float, h_ut: float) -> tuple:
    fc_hz = fc_ghz * 1e9
    # d'_BP = 4 h'_BS h'_UT f_c / c with h' = h - h_E (38.901 Table 7.4.1-1 note 1).
    d_bp = 4.0 * (h_bs - ENVIRONMENT_HEIGHT_M) * (h_ut - ENVIRONMENT_HEIGHT_M) * fc_hz / SPEED_OF_LIGHT
    lf = np.log10(fc_ghz)
    if scenario == "UMa":
        # PL1 = 28.0 + 22 log10(d3D) + 20 log10(fc)
        # PL2 = 28.0 + 40 log10(d3D) + 20 log10(fc) - 9 log10(d'BP^2 + (hBS - hUT)^2)
        # PL'_NLOS = 13.54 + 39.08 log10(d3D) + 20 log10(fc) - 0.6 (hUT - 1.5)
        los1 = (28.0 + 20.0 * lf, 22.0)
        los2 = (28.0 + 20.0 * lf - 9.0 * np.log10(d_bp**2 + (h_bs - h_ut) ** 2), 40.0)
        nlos = (13.54 + 20.0 * lf - 0.6 * (h_ut - 1.5), 39.08)
    elif scenario == "UMi":
        # UMi street canyon:
        # PL1 = 32.4 + 21 log10(d3D) + 20 log10(fc)
        # PL2 = 32.4 + 40 log10(d3D) + 20 log10(fc) - 9.5 log10(d'BP^2 + (hBS - hUT)^2)
        # PL'_NLOS = 35.3 log10(d3D) + 22.4 + 21.3 log10(fc) - 0.3 (hUT - 1.5)
        los1 = (32.4 + 20.0 * lf, 21.0)
        los2 = (32.4 + 20.0 * lf - 9.5 * np.log10(d_bp**2 + (h_bs - h_ut) ** 2), 40.0)
        nlos = (22.4 + 21.3 * lf - 0.3 * (h_ut - 1.5), 35.3)
    else:
        raise ValueError(f"unknown path-loss scenario {scenario!r}")
    return los1, los2, nlos, d_bp


def path_loss_coefficients(
    scenarios: list[str], heights_m: np.ndarray, fc_ghz: float, h_ut: float
) -> PathLossCoefficients:
    """Constants of every station's path-loss model (one scenario name per station)."""
    rows = []
    for scen, h_bs in zip(scenarios, np.asarray(heights_m, dtype=float)):
        los1, los2, nlos, d_bp = _scenario_constants(scen, fc_ghz, float(h_bs), h_ut)
        rows.append((los1[0], los1[1], los2[0], los2[1], nlos[0], nlos[1], d_bp,
                     (h_bs - h_ut) ** 2, LOS_DECAY_M[scen], *SHADOW_STD_DB[scen],
                     *SHADOW_DECORRELATION_M[scen]))
    cols = np.asarray(rows, dtype=float).reshape(len(rows), 13).T
    return PathLossCoefficients(*[np.ascontiguousarray(c) for c in cols])


def path_loss_db(
    coef: PathLossCoefficients, d2d: np.ndarray, los: np.ndarray | None
) -> np.ndarray:
    """38.901 path loss (dB) of a (users x stations) distance matrix.

    :param d2d: (M, S) horizontal distances in metres (clamped to 10 m).
    :param los: (M, S) bool LOS state, or None for the NLOS-only formula.
    NLOS is ``max(PL_LOS, PL'_NLOS)`` as the standard prescribes, so that NLOS never
    beats LOS near the site.
    """
    d2d = np.maximum(d2d, MIN_DISTANCE_M)
    log_d3d = 0.5 * np.log10(d2d * d2d + coef.dh2)
    pl_los = np.where(
        d2d <= coef.breakpoint_m,
        coef.los1_c + coef.los1_b * log_d3d,
        coef.los2_c + coef.los2_b * log_d3d,
    )
    pl_nlos = np.maximum(pl_los, coef.nlos_c + coef.nlos_b * log_d3d)
    if los is None:
        return pl_nlos
    return np.where(los, pl_los, pl_nlos)


def los_probability(coef: PathLossCoefficients, d2d: np.ndarray) -> np.ndarray:
    """38.901 Table 7.4.2-1 (UMa with h_UT <= 13 m, UMi street canyon):
    Pr_LOS = 1 for d2D <= 18 m, else 18/d2D + exp(-d2D / L) (1 - 18/d2D), L = 63 m / 36 m.
    Clamping d2D at 18 m gives exactly 1 below it."""
    d = np.maximum(d2d, 18.0)
    ratio = 18.0 / d
    return ratio + np.exp(-d / coef.los_decay_m) * (1.0 - ratio)


def noise_power_dbm(bandwidth_hz: float, noise_figure_db: float) -> float:
    """Thermal noise over the band plus the receiver noise figure: -174 + 10 log10(B) + NF."""
    return THERMAL_NOISE_DBM_PER_HZ + 10.0 * np.log10(bandwidth_hz) + noise_figure_db


def dbm_to_mw(dbm: np.ndarray | float) -> np.ndarray:
    return np.power(10.0, np.asarray(dbm) / 10.0)


def shannon_rate_bps(
    sinr: np.ndarray, bandwidth_hz: float, max_se: float, min_sinr: float
) -> np.ndarray:
    """B * min(log2(1 + SINR), max_se), and 0 below `min_sinr` (linear)."""
    se = np.minimum(np.log2(1.0 + sinr), max_se)
    return np.where(sinr >= min_sinr, bandwidth_hz * se, 0.0)


def earth_power_w(
    p_out_w: np.ndarray,
    load: np.ndarray,
    p0_w: np.ndarray,
    delta_p: np.ndarray,
    sleep_w: np.ndarray,
    awake: np.ndarray,
) -> np.ndarray:
    """EARTH linear power model per station: P_in = P0 + Delta_p * P_out * load while awake,
    P_sleep while asleep.

    Defaults (per transceiver chain, Auer et al. 2011 Table 2): macro P_max 20 W,
    P0 130 W, Delta_p 4.7, P_sleep 75 W; micro P_max 6.3 W, P0 56 W, Delta_p 2.6,
    P_sleep 39 W (pico: 0.13 W, 6.8 W, 4.0, 4.3 W).
    """
    return np.where(awake, p0_w + delta_p * p_out_w * load, sleep_w)
