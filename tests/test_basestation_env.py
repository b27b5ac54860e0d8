"""Multi-cell downlink environment (envs/basestation): APIs, radio, energy, seeding."""

from __future__ import annotations

import math
import time

import gymnasium
import numpy as np
import pytest

from envs.basestation import (
    CENTRAL_ENV_ID,
    SCENARIO_NAMES,
    BaseStationConfig,
    BaseStationParallelEnv,
    CentralControllerEnv,
    OBS_OWN_FEATURES,
    ConfigError,
    load_scenario,
)
from envs.basestation.heuristics import (
    LoadBalancingHeuristic,
    full_power_strongest_cell,
    run_episode,
)

# Static, deterministic radio: NLOS-only 38.901 formula, no shadowing, no fading,
# users standing still and never leaving, handover as soon as A3 holds.
STATIC = dict(
    los_model="nlos", shadowing=False, rayleigh_fading=False, speed_min_mps=0.0,
    speed_max_mps=0.0, arrival_rate_per_step=0.0, mean_session_steps=math.inf,
    time_to_trigger_steps=0, hysteresis_db=0.0, initial_users=40, max_users=40,
    handover_interruption_s=0.0,
)


def _actions(net, sleep=(), cio=None, level=None):
    a = net.default_actions()
    a[list(sleep), 2] = 1
    if cio is not None:
        a[:, 1] = cio
    if level is not None:
        a[:, 0] = level
    return a


def _uma_nlos_db(d2d, h_bs, h_ut, fc_ghz):
    """38.901 Table 7.4.1-1, UMa NLOS, written out independently of envs.basestation."""
    d2d = np.maximum(d2d, 10.0)
    d3d = np.sqrt(d2d**2 + (h_bs - h_ut) ** 2)
    d_bp = 4 * (h_bs - 1.0) * (h_ut - 1.0) * fc_ghz * 1e9 / 299_792_458.0
    pl1 = 28.0 + 22 * np.log10(d3d) + 20 * np.log10(fc_ghz)
    pl2 = (28.0 + 40 * np.log10(d3d) + 20 * np.log10(fc_ghz)
           - 9 * np.log10(d_bp**2 + (h_bs - h_ut) ** 2))
    pl_los = np.where(d2d <= d_bp, pl1, pl2)
    pl_nlos_prime = 13.54 + 39.08 * np.log10(d3d) + 20 * np.log10(fc_ghz) - 0.6 * (h_ut - 1.5)
    return np.maximum(pl_los, pl_nlos_prime)


def _by_hand_rx_mw(cfg, net, station, power_w):
    d = np.hypot(*(net.ue_pos - net.layout.pos[station]).T)
    pl = _uma_nlos_db(d, cfg.macro_height_m, cfg.ue_height_m, cfg.carrier_ghz)
    return 10 ** ((10 * np.log10(power_w * 1e3) - pl) / 10)


# --- API conformance --------------------------------------------------------------------

def test_parallel_api_test_passes():
    from pettingzoo.test import parallel_api_test

    env = BaseStationParallelEnv(BaseStationConfig(episode_steps=15, n_small_cells=3))
    parallel_api_test(env, num_cycles=20)
    assert env.possible_agents == [f"bs_{i}" for i in range(10)]


def test_central_env_passes_gymnasium_and_sb3_checkers():
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    check_env(CentralControllerEnv(BaseStationConfig(episode_steps=10)), skip_render_check=True)
    sb3_check_env(CentralControllerEnv(BaseStationConfig(episode_steps=10)), warn=True)


def test_registered_id_makes_central_env_that_truncates():
    env = gymnasium.make(CENTRAL_ENV_ID, config={"episode_steps": 5, "n_macro_cells": 19})
    obs, info = env.reset(seed=3)
    assert env.observation_space.contains(obs)
    assert env.action_space.shape == (19 * 3,)
    for k in ("mean_user_rate_bps", "p5_user_rate_bps", "pf_utility", "total_power_w",
              "energy_efficiency_bits_per_j", "handovers"):
        assert k in info
    truncs = []
    for _ in range(5):
        obs, r, term, trunc, info = env.step(env.action_space.sample())
        assert np.isfinite(r) and not term
        truncs.append(trunc)
    assert truncs == [False] * 4 + [True]
    assert len(env.unwrapped.feature_names) == env.observation_space.shape[0]


def test_x2_graph_is_the_hex_neighbourhood():
    env = BaseStationParallelEnv(BaseStationConfig(n_macro_cells=19, wrap_around=True))
    g = env.x2_graph
    assert sorted(g.nodes) == sorted(env.possible_agents)
    assert {d for _, d in g.degree()} == {6}  # wrap-around: every site has a full ring
    flat = BaseStationParallelEnv(BaseStationConfig(n_macro_cells=19))
    assert flat.x2_graph.degree["bs_0"] == 6 and min(d for _, d in flat.x2_graph.degree()) == 3
    # observation: own features + 5 per neighbour slot, padded to the max degree
    assert env.observation_space("bs_0").shape == (len(env.feature_names),)


# --- radio --------------------------------------------------------------------------------

def test_single_station_sinr_is_received_power_over_noise():
    cfg = BaseStationConfig(**STATIC)
    env = CentralControllerEnv(cfg)
    env.reset(seed=0)
    net = env.network
    others = range(1, net.n_stations)
    env.step(_actions(net, sleep=others).reshape(-1))
    assert (net.serving[net.active] == 0).all()
    noise_mw = 10 ** ((-174 + 10 * np.log10(cfg.bandwidth_mhz * 1e6) + cfg.noise_figure_db) / 10)
    expected = _by_hand_rx_mw(cfg, net, 0, cfg.macro_max_power_w) / noise_mw
    np.testing.assert_allclose(net.sinr[net.active], expected[net.active], rtol=1e-9)
    # rate: B * min(log2(1 + SINR), 7.4), shared equally (PF fixed point with no fading)
    rate = cfg.bandwidth_mhz * 1e6 * np.minimum(np.log2(1 + expected), 7.4)
    rate = np.where(expected >= 10 ** (cfg.min_sinr_db / 10), rate, 0.0)
    np.testing.assert_allclose(net.rate_bps[net.active], rate[net.active], rtol=1e-9)


def test_interferer_lowers_sinr_by_exactly_its_received_power():
    cfg = BaseStationConfig(**STATIC)
    env = CentralControllerEnv(cfg)
    env.reset(seed=1)
    net = env.network
    env.step(_actions(net, sleep=range(1, 7)).reshape(-1))
    alone = net.sinr.copy()
    env.step(_actions(net, sleep=range(2, 7)).reshape(-1))  # wake station 1
    assert net.n_users[1] > 0  # it serves users, so it transmits and interferes
    still0 = net.active & (net.serving == 0)
    assert still0.sum() >= 5
    assert (net.sinr[still0] < alone[still0]).all()
    noise_mw = 10 ** ((-174 + 10 * np.log10(cfg.bandwidth_mhz * 1e6) + cfg.noise_figure_db) / 10)
    s = _by_hand_rx_mw(cfg, net, 0, cfg.macro_max_power_w)
    i = _by_hand_rx_mw(cfg, net, 1, cfg.macro_max_power_w)
    np.testing.assert_allclose(net.sinr[still0], (s / (i + noise_mw))[still0], rtol=1e-9)


def test_lower_power_level_shrinks_received_power_by_its_offset():
    cfg = BaseStationConfig(**STATIC)
    env = CentralControllerEnv(cfg)
    env.reset(seed=2)
    net = env.network
    env.step(_actions(net, sleep=range(1, 7)).reshape(-1))
    full = net.rx_mw[:, 0].copy()
    env.step(_actions(net, sleep=range(1, 7), level=0).reshape(-1))
    np.testing.assert_allclose(net.rx_mw[:, 0] / full, 10 ** (cfg.power_level_offsets_db[0] / 10))


# --- handover, sleep, energy ------------------------------------------------------------

def test_sleeping_station_serves_no_one_and_draws_sleep_power():
    cfg = BaseStationConfig(**STATIC)
    env = BaseStationParallelEnv(cfg)
    env.reset(seed=4)
    net = env.network
    before = int(net.n_users[3])
    assert before > 0
    act = {a: np.array([3, 2, 0]) for a in env.agents}
    act["bs_3"] = np.array([3, 2, 1])
    obs, rew, _, _, infos = env.step(act)
    assert net.n_users[3] == 0 and not (net.serving == 3).any()
    assert infos["bs_3"]["station_power_w"] == pytest.approx(cfg.macro_sleep_w)
    assert infos["bs_3"]["station_sleeping"] is True
    assert obs["bs_3"][OBS_OWN_FEATURES.index("sleeping")] == 1.0
    # its users were forced to hand over, and that is counted against it
    assert infos["bs_3"]["station_handovers_out"] == before
    assert infos["bs_0"]["handovers"] >= before
    # an awake busy station follows EARTH: P0 + Delta_p * P_out * load (load 1)
    busy = int(np.argmax(net.n_users))
    assert net.power_w[busy] == pytest.approx(
        cfg.macro_p0_w + cfg.macro_delta_p * cfg.macro_max_power_w)
    total = sum(info["station_power_w"] for info in infos.values())
    assert infos["bs_0"]["total_power_w"] == pytest.approx(total)


def test_cio_moves_users_towards_the_favoured_cell():
    cfg = BaseStationConfig(**STATIC)
    env = CentralControllerEnv(cfg)
    env.reset(seed=5)
    net = env.network
    env.step(_actions(net).reshape(-1))
    n1 = int(net.n_users[1])
    cio = np.zeros(net.n_stations, dtype=int)  # index 0 = -6 dB everywhere ...
    cio[1] = 4  # ... but +6 dB at station 1: a 12 dB edge shift
    _, _, _, _, info = env.step(_actions(net, cio=cio).reshape(-1))
    assert net.n_users[1] > n1
    assert info["handovers"] == net.n_users[1] - n1


@pytest.mark.parametrize("window_s, expect_pingpong", [(1.0, True), (0.0, False)])
def test_handover_back_within_the_window_is_a_pingpong(window_s, expect_pingpong):
    cfg = BaseStationConfig(**{**STATIC, "pingpong_window_s": window_s})
    env = CentralControllerEnv(cfg)
    env.reset(seed=5)
    net = env.network
    _, _, _, _, info = env.step(_actions(net).reshape(-1))
    assert info["pingpong_handovers"] == 0
    home = net.serving.copy()
    to_1 = np.zeros(net.n_stations, dtype=int)
    to_1[1] = 4  # +6 dB at station 1, -6 dB elsewhere: edge users move to 1 ...
    _, _, _, _, info = env.step(_actions(net, cio=to_1).reshape(-1))
    moved = info["handovers"]
    assert moved > 0 and info["pingpong_handovers"] == 0
    back = np.full(net.n_stations, 4)
    back[1] = 0  # ... and the next second back where they came from
    _, _, _, _, info = env.step(_actions(net, cio=back).reshape(-1))
    returned = int(((net.serving == home) & (home != 1)).sum())
    assert info["handovers"] >= moved
    assert info["pingpong_handovers"] == (moved if expect_pingpong else 0)
    assert returned >= moved
    # staying put afterwards: no handover, no ping-pong
    _, _, _, _, info = env.step(_actions(net, cio=back).reshape(-1))
    assert info["handovers"] == 0 and info["pingpong_handovers"] == 0


def test_time_to_trigger_delays_handover():
    cfg = BaseStationConfig(**{**STATIC, "time_to_trigger_steps": 3})
    env = CentralControllerEnv(cfg)
    env.reset(seed=5)
    net = env.network
    cio = np.zeros(net.n_stations, dtype=int)
    cio[1] = 4
    counts = []
    for _ in range(4):
        env.step(_actions(net, cio=cio).reshape(-1))
        counts.append(int(net.n_users[1]))
    assert counts[0] == counts[1] and counts[2] > counts[1]


def test_outage_station_is_off_and_neighbours_cover():
    env = BaseStationParallelEnv(scenario="outage")
    obs, infos = env.reset(seed=0)
    net = env.network
    assert net.off[0] and net.n_users[0] == 0 and net.power_w[0] == 0.0
    all_on = {a: np.array([3, 2, 0]) for a in env.agents}  # bs_0 asking to be on: no help
    obs, _, _, _, infos = env.step(all_on)
    assert net.n_users[0] == 0 and infos["bs_0"]["unserved_users"] == 0
    assert obs["bs_0"][OBS_OWN_FEATURES.index("off")] == 1.0


def test_finite_demand_sets_prb_load_and_earth_power():
    cfg = BaseStationConfig(**{**STATIC, "user_demand_mbps": 1.0})
    env = CentralControllerEnv(cfg)
    env.reset(seed=6)
    net = env.network
    env.step(_actions(net).reshape(-1))
    served = net.active & (net.rate_bps > 0)
    np.testing.assert_allclose(net.throughput_bps[served], 1e6, rtol=1e-9)
    busy = net.n_users > 0
    assert ((net.load[busy] > 0) & (net.load[busy] < 0.5)).all()
    # EARTH: P0 + Delta_p * P_out * load, with load the share of resources in use
    np.testing.assert_allclose(
        net.power_w[busy], cfg.macro_p0_w + cfg.macro_delta_p * cfg.macro_max_power_w * net.load[busy])
    # the resource share each user needs is demand / full-band rate
    share = np.bincount(net.serving[served], weights=1e6 / net.rate_bps[served],
                        minlength=net.n_stations)
    np.testing.assert_allclose(net.load, share, rtol=1e-9)
    obs = net.observations()
    np.testing.assert_allclose(obs[:, OBS_OWN_FEATURES.index("prb_load")], net.load, rtol=1e-6)


def test_pf_beats_round_robin_under_fading():
    def mean_throughput(scheduler):
        cfg = BaseStationConfig(**{**STATIC, "rayleigh_fading": True, "scheduler": scheduler})
        env = CentralControllerEnv(cfg)
        env.reset(seed=9)
        out = []
        for _ in range(40):
            _, _, _, _, info = env.step(env.network.default_actions().reshape(-1))
            out.append(info["throughput_bps"])
        return np.mean(out[10:])

    assert mean_throughput("pf") > 1.05 * mean_throughput("rr")


# --- seeding -----------------------------------------------------------------------------

def _trajectory(seed):
    env = BaseStationParallelEnv(scenario="rush_hour", config={"episode_steps": 30})
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(123)
    traj = [np.concatenate(list(obs.values()))]
    while env.agents:
        act = {a: rng.integers(0, env.action_space(a).nvec) for a in env.agents}
        obs, rew, _, _, _ = env.step(act)
        traj.append(np.concatenate(list(obs.values()) + [np.array(list(rew.values()))]))
    return traj


def test_same_seed_same_trajectory_different_seed_differs():
    a, b, c = _trajectory(7), _trajectory(7), _trajectory(8)
    assert len(a) == len(b) == 31
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not all(np.array_equal(x, z) for x, z in zip(a, c))


def test_reset_without_seed_continues_the_random_stream():
    env = CentralControllerEnv(BaseStationConfig(episode_steps=3))
    first, _ = env.reset(seed=11)
    second, _ = env.reset()
    again, _ = env.reset(seed=11)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, second)


# --- configuration ------------------------------------------------------------------------

@pytest.mark.parametrize("bad, field", [
    ({"n_macro_cells": 8}, "n_macro_cells"),
    ({"n_macro_cells": "7"}, "n_macro_cells"),
    ({"wrap_around": 1}, "wrap_around"),
    ({"n_small_cells": True}, "n_small_cells"),
    ({"carrier_ghz": 200.0}, "carrier_ghz"),
    ({"hysteresis_db": -1.0}, "hysteresis_db"),
    ({"cio_values_db": [-3.0, 3.0]}, "cio_values_db"),
    ({"power_level_offsets_db": [0.0, -3.0]}, "power_level_offsets_db"),
    ({"outage_stations": [7]}, "outage_stations"),
    ({"initial_users": 100, "max_users": 50}, "initial_users"),
    ({"scheduler": "max-cqi"}, "scheduler"),
    ({"bandwidth_mhz": float("nan")}, "bandwidth_mhz"),
    ({"hotspot_fraction": 0.5}, "hotspot_fraction"),
    ({"bogus_field": 1, "another": 2}, "another"),
])
def test_bad_config_field_fails_with_its_name(bad, field):
    with pytest.raises(ConfigError) as err:
        BaseStationConfig.from_dict(bad)
    assert str(err.value).startswith(field + ":")
    assert err.value.field == field
    if "bogus_field" in bad:
        assert "bogus_field" in str(err.value)


def test_config_round_trips_and_presets_load(tmp_path):
    cfg = BaseStationConfig(n_macro_cells=19, outage_stations=(2, 5), cio_values_db=(-3, 0, 3))
    assert BaseStationConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.cio_values_db == (-3.0, 0.0, 3.0)
    for name in SCENARIO_NAMES:
        assert load_scenario(name).name == name
    path = tmp_path / "s.toml"
    path.write_text("[basestation]\nn_macro_cells = 37\nbad_key = 3\n")
    with pytest.raises(ConfigError, match="bad_key"):
        load_scenario(path)
    with pytest.raises(ConfigError, match="^scenario:"):
        load_scenario("nigth")
    with pytest.raises(dataclasses_frozen_error()):
        cfg.n_macro_cells = 7  # type: ignore[misc]


def dataclasses_frozen_error():
    import dataclasses
    return dataclasses.FrozenInstanceError


@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_every_preset_runs_and_stays_in_its_spaces(name):
    env = BaseStationParallelEnv(scenario=name, config={"episode_steps": 8})
    obs, _ = env.reset(seed=0)
    while env.agents:
        for a, o in obs.items():
            assert env.observation_space(a).contains(o), a
        obs, rew, _, _, infos = env.step({a: env.action_space(a).sample() for a in env.agents})
        assert all(np.isfinite(list(rew.values())))
        assert infos["bs_0"]["total_power_w"] > 0


# --- baselines and rendering ----------------------------------------------------------------

def test_heuristic_saves_energy_at_night_without_dropping_users():
    env = CentralControllerEnv(scenario="night", config={"episode_steps": 30})
    full = run_episode(env, lambda o: full_power_strongest_cell(env, o), seed=0)
    heur = LoadBalancingHeuristic(env)
    tuned = run_episode(env, heur, seed=0)
    ee = lambda h: np.mean([s["energy_efficiency_bits_per_j"] for s in h[5:]])  # noqa: E731
    assert max(s["sleeping_stations"] for s in tuned) > 0
    assert all(s["sleeping_stations"] == 0 for s in full)
    assert ee(tuned) > 1.1 * ee(full)
    assert all(s["unserved_users"] == 0 for s in tuned)


def test_heuristic_offloads_the_busiest_cell_in_the_parallel_api():
    env = BaseStationParallelEnv(scenario="hotspot")
    obs, _ = env.reset(seed=0)
    heur = LoadBalancingHeuristic(env)
    act = heur(obs)
    assert set(act) == set(env.agents)
    assert all(env.action_space(a).contains(np.asarray(v)) for a, v in act.items())
    net = env.network
    cio = net.cio_values_db[np.array([act[a][1] for a in env.possible_agents])]
    assert cio[np.argmax(net.n_users)] < 0 <= cio[np.argmin(net.n_users)]
    assert isinstance(full_power_strongest_cell(env, obs), dict)
    history = run_episode(env, heur, seed=0)
    assert len(history) == env.config.episode_steps


def test_render_rgb_array_frame():
    env = CentralControllerEnv(BaseStationConfig(n_small_cells=2), render_mode="rgb_array")
    env.reset(seed=0)
    env.step(env.action_space.sample())
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    assert frame.std() > 10  # not a blank canvas
    assert CentralControllerEnv().render() is None


# --- speed: the step is vectorised ----------------------------------------------------------

def test_large_step_is_vectorised():
    # 37 cells x 300 users = 11,100 pairs: a Python loop over pairs costs tens of ms
    # per step; the numpy step takes ~2 ms here. The bound is loose for busy CI cores.
    cfg = BaseStationConfig(n_macro_cells=37, wrap_around=True, initial_users=300,
                            max_users=300, rayleigh_fading=True,
                            arrival_rate_per_step=0.0, mean_session_steps=math.inf)
    env = CentralControllerEnv(cfg)
    env.reset(seed=0)
    actions = [env.action_space.sample() for _ in range(15)]
    times = []
    for a in actions:
        t = time.perf_counter()
        env.step(a)
        times.append(time.perf_counter() - t)
    assert env.network.active.sum() == 300
    assert np.median(times) < 0.025, f"median step {np.median(times) * 1e3:.1f} ms"


def test_stations_observe_whether_they_are_small_cells():
    env = BaseStationParallelEnv(scenario="hotspot")
    obs, _ = env.reset(seed=0)
    k = OBS_OWN_FEATURES.index("small_cell")
    small = np.array([obs[a][k] for a in env.possible_agents])
    np.testing.assert_array_equal(small, ~env.network.layout.is_macro)


def test_stations_observe_their_users_beyond_the_load_scale_and_against_neighbours():
    from envs.basestation import OBS_NEIGHBOUR_FEATURES

    env = BaseStationParallelEnv(scenario="hotspot")
    obs, _ = env.reset(seed=0)
    net = env.network
    o = np.stack([obs[a] for a in env.possible_agents])
    n = net.n_users
    users = o[:, OBS_OWN_FEATURES.index("users")]
    np.testing.assert_allclose(users, np.log1p(n) / np.log1p(net.config.max_users), rtol=1e-6)
    assert n.max() > net.config.load_norm_users  # a hotspot cell: load reads 1, users does not
    busiest = int(np.argmax(n))
    assert users[busiest] > users[n == net.config.load_norm_users].max(initial=0.0)
    ratio = o[:, OBS_OWN_FEATURES.index("load_vs_neighbours")]
    nb = net.layout.neighbours[busiest]
    mean_nb = n[nb[nb >= 0]].mean()
    assert ratio[busiest] == pytest.approx(min(1.0, 0.5 + np.log2((n[busiest] + 1) / (mean_nb + 1)) / 8), abs=1e-6)
    # what a neighbour reports over X2 is its users feature
    own = len(OBS_OWN_FEATURES)
    k = OBS_NEIGHBOUR_FEATURES.index("users")
    slot0 = net.neighbour_slots()[busiest, 0]  # the first slot is its most loaded neighbour
    assert n[slot0] == n[nb[nb >= 0]].max()
    assert o[busiest, own + k] == pytest.approx(users[slot0])


def test_power_weight_prices_every_watt():
    cfg = dict(STATIC, power_weight=0.0)
    env = BaseStationParallelEnv(BaseStationConfig(**cfg))
    priced = BaseStationParallelEnv(BaseStationConfig(**dict(cfg, power_weight=0.05)))
    env.reset(seed=1)
    priced.reset(seed=1)
    a = {ag: np.array([3, 2, 0]) for ag in env.possible_agents}
    _, r, *_ = env.step(a)
    _, rp, *_ = priced.step(a)
    power = env.network.power_w
    for i, ag in enumerate(env.possible_agents):
        assert rp[ag] == pytest.approx(r[ag] - 0.05 * power[i])
    assert priced.network.network_reward() == pytest.approx(env.network.network_reward() - 0.05 * power.sum())


def test_observation_size_is_the_same_on_layouts_of_different_degree():
    """A station model plays on any layout: the X2 neighbour slots are a fixed number,
    the most loaded neighbour first, padded with present = 0."""
    from envs.basestation import OBS_NEIGHBOUR_FEATURES

    rush = BaseStationParallelEnv(scenario="rush_hour")  # 19 macro, no small cells: degree 6
    hot = BaseStationParallelEnv(scenario="hotspot")  # 7 macro + 7 small: degree 7
    assert rush.network.layout.max_degree != hot.network.layout.max_degree
    assert rush.observation_space("bs_0").shape == hot.observation_space("bs_0").shape
    assert len(rush.feature_names) == rush.network.obs_dim
    obs, _ = hot.reset(seed=4)
    net = hot.network
    slots = net.neighbour_slots()
    own, nf = len(OBS_OWN_FEATURES), len(OBS_NEIGHBOUR_FEATURES)
    present = OBS_NEIGHBOUR_FEATURES.index("present")
    for i in range(net.n_stations):
        real = slots[i][slots[i] >= 0]
        assert sorted(real.tolist()) == sorted(net.layout.neighbours[i][net.layout.neighbours[i] >= 0].tolist())
        assert (np.diff(net.n_users[real]) <= 0).all()  # most users first
        flags = obs[f"bs_{i}"][own + present::nf]
        np.testing.assert_array_equal(flags, slots[i] >= 0)
    # fewer slots than neighbours: the least loaded are left out
    few = BaseStationParallelEnv(hot.config.replace(x2_neighbour_slots=2))
    few.reset(seed=4)
    kept = few.network.neighbour_slots()
    assert kept.shape == (net.n_stations, 2)
    assert (few.network.n_users[kept[:, 1]] >= few.network.n_users[slots[:, 2].clip(0)] * (slots[:, 2] >= 0)).all()
