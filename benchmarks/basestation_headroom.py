"""How much PF utility do the stations' actions leave on the table? (issue 6)

The learning target is +10 % PF utility over the best heuristic at no more energy. Before
blaming the learners, this measures what the action space (power level, cell offset,
sleep) can give at all, with two controllers that no station could run:

1. **Best static configuration**: every combination of one power level and one offset
   for the macro cells and one for the small cells, held for the whole episode, on the
   evaluation seeds the benchmark uses (so it is tuned on the test episodes: an upper
   bound for static settings).
2. **Clairvoyant greedy controller**: at every step a central controller improves the
   stations' actions one station at a time (one pass, every action tried), judging each
   candidate by the PF utility of the next ``--horizon`` steps replayed on a fork of the
   network with the *same* random future (arrivals, moves, shadowing). It knows the
   future, sees every user and decides centrally: a generous bound, not a target.

3. **Local load-ratio offset rule**: what a station could do on its own observations: its
   CIO is ``-gain * log2((n + 1) / (m + 1))`` dB (``n`` its users, ``m`` its awake X2
   neighbours' mean, the ``users`` the X2 reports carry), snapped to the allowed values,
   with one power step down where ``n`` exceeds ``m`` by more than ``hi`` doublings; the
   few (gain, hi, shift) tried are tuned on the evaluation seeds, as the static search.
   It is the bound for a *reactive local* policy of that simple form, not a heuristic
   the benchmark compares with.

The clairvoyant's choices are summarised per station (``clairvoyant.stations``: share of
steps at each power level / offset / asleep, the station's mean users) to show what it
reacts to.

All are compared with full power + strongest cell and the load-balancing heuristic on
the same seeds and steps. Energy is reported alongside, since the target is "at no more
energy". The PF utility here is the env's own KPI (sum of ln(rate / 1 Mbit/s), per-step
mean), the one ``benchmarks/basestation.py`` compares.

    python benchmarks/basestation_headroom.py                       # default scenarios
    python benchmarks/basestation_headroom.py --scenarios hotspot --oracle-steps 50

Writes ``benchmarks/results/basestation_headroom.json``.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import write_results  # noqa: E402
from envs.basestation import BaseStationParallelEnv, load_scenario  # noqa: E402
from envs.basestation.heuristics import LoadBalancingHeuristic, full_power_strongest_cell  # noqa: E402

EVAL_SEEDS = (100, 101, 102)  # apps/basestation TrainingSettings.eval_seeds


def play(env: BaseStationParallelEnv, policy, seed: int, steps: int | None = None) -> tuple[float, float]:
    """(mean per-step PF utility, energy in kJ) of one episode (or its first ``steps``)."""
    obs, _ = env.reset(seed=seed)
    pf, energy, n = 0.0, 0.0, 0
    while env.agents and (steps is None or n < steps):
        obs, _, _, _, infos = env.step(policy(obs))
        k = next(iter(infos.values()))
        pf += k["pf_utility"]
        energy += k["total_power_w"] * env.config.step_duration_s
        n += 1
    return pf / n, energy / 1e3


def static_search(env: BaseStationParallelEnv, seeds) -> dict:
    net = env.network
    macro = net.layout.is_macro
    has_small = bool((~macro).any())
    levels, cios = range(net.n_power_levels), range(net.n_cio)
    best = None
    tried = 0
    full, zero = net.n_power_levels - 1, net.default_cio_index
    for pm, ps, cm, cs in itertools.product(levels, levels if has_small else [full], cios,
                                            cios if has_small else [zero]):
        a = net.default_actions()
        a[macro, 0], a[~macro, 0], a[macro, 1], a[~macro, 1] = pm, ps, cm, cs
        d = {f"bs_{i}": a[i] for i in range(len(a))}
        runs = [play(env, lambda o: d, s) for s in seeds]
        pf, energy = float(np.mean([r[0] for r in runs])), float(np.mean([r[1] for r in runs]))
        tried += 1
        if best is None or pf > best["pf_utility"]:
            best = {"pf_utility": pf, "energy_kj": energy,
                    "macro_power_db": float(net.power_offsets_db[pm]), "macro_cio_db": float(net.cio_values_db[cm]),
                    "small_power_db": float(net.power_offsets_db[ps]) if has_small else None,
                    "small_cio_db": float(net.cio_values_db[cs]) if has_small else None}
    best["configurations_tried"] = tried
    return best


def load_ratio_rule(env: BaseStationParallelEnv, gain: float, hi: float, shift: float):
    """The local offset rule (module docstring, 3): a policy over the env's own state
    that uses only what each station observes (its users, its X2 neighbours' users)."""
    net = env.network
    nb, S = net.layout.neighbours, net.n_stations
    gather, valid = np.maximum(nb, 0), nb >= 0

    def policy(obs):
        n = net.n_users.astype(float)
        awake = valid & net.awake[gather]
        mean_nb = np.where(awake, n[gather], 0.0).sum(axis=1) / np.maximum(awake.sum(axis=1), 1)
        ratio = np.where(awake.any(axis=1), np.log2((n + 1.0) / (mean_nb + 1.0)), 0.0)
        cio = np.abs(net.cio_values_db[None, :] - (shift - gain * ratio)[:, None]).argmin(axis=1)
        power = np.where(ratio > hi, net.n_power_levels - 2, net.n_power_levels - 1)
        a = np.stack([power, cio, np.zeros(S, dtype=np.int64)], axis=1)
        return {f"bs_{i}": a[i] for i in range(S)}

    return policy


def rule_search(env: BaseStationParallelEnv, seeds) -> dict:
    best = None
    for gain, hi, shift in itertools.product((1.0, 2.0, 3.0, 4.0), (0.5, 1.0, 99.0), (-3.0, 0.0)):
        runs = [play(env, load_ratio_rule(env, gain, hi, shift), s) for s in seeds]
        pf, energy = float(np.mean([r[0] for r in runs])), float(np.mean([r[1] for r in runs]))
        if best is None or pf > best["pf_utility"]:
            best = {"pf_utility": pf, "energy_kj": energy, "gain_db_per_doubling": gain,
                    "power_step_down_above_doublings": hi, "cio_shift_db": shift}
    return best


def clairvoyant(env: BaseStationParallelEnv, seed: int, steps: int, horizon: int) -> tuple[float, float, dict]:
    net = env.network
    env.reset(seed=seed)
    candidates = [(p, c, 0) for p in range(net.n_power_levels) for c in range(net.n_cio)]
    candidates += [(net.n_power_levels - 1, net.default_cio_index, 1)]  # sleep

    def future_pf(a: np.ndarray) -> float:
        fork = copy.deepcopy(net)  # arrays and random generator: the same future
        total = 0.0
        for _ in range(horizon):
            fork.step(a)
            total += fork.kpis().pf_utility
        return total

    a = net.default_actions()
    pf, energy = 0.0, 0.0
    chosen, users = [], []
    for _ in range(steps):
        for i in np.flatnonzero(~net.off):
            best, best_v = a[i].copy(), future_pf(a)
            for cand in candidates:
                a[i] = cand
                v = future_pf(a)
                if v > best_v + 1e-9:
                    best, best_v = np.array(cand), v
            a[i] = best
        chosen.append(a.copy())
        users.append(net.n_users.copy())
        net.step(a)
        k = net.kpis()
        pf += k.pf_utility
        energy += k.total_power_w * env.config.step_duration_s
    A, U = np.asarray(chosen), np.asarray(users)
    kinds = np.where(net.layout.is_macro, "macro", "small")
    stations = {f"bs_{i}": {"kind": str(kinds[i]), "mean_users": round(float(U[:, i].mean()), 1),
                            "power_db_share": {f"{net.power_offsets_db[k]:+.0f}": round(float((A[:, i, 0] == k).mean()), 2)
                                               for k in range(net.n_power_levels)},
                            "cio_db_share": {f"{net.cio_values_db[k]:+.0f}": round(float((A[:, i, 1] == k).mean()), 2)
                                             for k in range(net.n_cio)},
                            "asleep_share": round(float(A[:, i, 2].mean()), 2)}
                for i in np.flatnonzero(~net.off)}
    return pf / steps, energy / 1e3, stations


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", default="uniform,hotspot,rush_hour,outage,night")
    p.add_argument("--oracle-scenarios", default="hotspot,outage",
                   help="scenarios for the (slow) clairvoyant controller")
    p.add_argument("--oracle-seed", type=int, default=EVAL_SEEDS[0])
    p.add_argument("--oracle-steps", type=int, default=100)
    p.add_argument("--horizon", type=int, default=3)
    args = p.parse_args(argv)
    started = time.perf_counter()
    rows = []
    for name in [s for s in args.scenarios.split(",") if s]:
        env = BaseStationParallelEnv(load_scenario(name))
        t0 = time.perf_counter()
        full = [play(env, lambda o: full_power_strongest_cell(env, o), s) for s in EVAL_SEEDS]
        heur = LoadBalancingHeuristic(env)
        lb = [play(env, heur, s) for s in EVAL_SEEDS]
        row = {"scenario": name, "seeds": list(EVAL_SEEDS),
               "full_power": {"pf_utility": float(np.mean([r[0] for r in full])),
                              "energy_kj": float(np.mean([r[1] for r in full]))},
               "heuristic": {"pf_utility": float(np.mean([r[0] for r in lb])),
                             "energy_kj": float(np.mean([r[1] for r in lb]))},
               "best_static": static_search(env, EVAL_SEEDS),
               "load_ratio_rule": rule_search(env, EVAL_SEEDS)}
        best_h = max(row["full_power"]["pf_utility"], row["heuristic"]["pf_utility"])
        row["best_static_gain_vs_best_heuristic"] = (row["best_static"]["pf_utility"] - best_h) / abs(best_h)
        row["load_ratio_rule_gain_vs_best_heuristic"] = (row["load_ratio_rule"]["pf_utility"] - best_h) / abs(best_h)
        if name in args.oracle_scenarios.split(","):
            steps = min(args.oracle_steps, env.config.episode_steps)
            o_pf, o_e, o_stations = clairvoyant(env, args.oracle_seed, steps, args.horizon)
            f_pf, f_e = play(env, lambda o: full_power_strongest_cell(env, o), args.oracle_seed, steps)
            h_pf, h_e = play(env, LoadBalancingHeuristic(env), args.oracle_seed, steps)
            ref = max(f_pf, h_pf)
            row["clairvoyant"] = {"seed": args.oracle_seed, "steps": steps, "horizon": args.horizon,
                                  "pf_utility": o_pf, "energy_kj": o_e,
                                  "full_power_pf_utility": f_pf, "full_power_energy_kj": f_e,
                                  "heuristic_pf_utility": h_pf, "heuristic_energy_kj": h_e,
                                  "gain_vs_best_heuristic": (o_pf - ref) / abs(ref), "stations": o_stations}
        row["wall_seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        bs = row["best_static"]
        line = (f"{name:<10} full {row['full_power']['pf_utility']:7.2f}  heur {row['heuristic']['pf_utility']:7.2f}  "
                f"best static {bs['pf_utility']:7.2f} ({row['best_static_gain_vs_best_heuristic']:+.1%}; macro "
                f"{bs['macro_power_db']:+.0f} dB / CIO {bs['macro_cio_db']:+.0f}"
                + (f", small {bs['small_power_db']:+.0f} dB / CIO {bs['small_cio_db']:+.0f}"
                   if bs["small_power_db"] is not None else "")
                + f"; E {bs['energy_kj']:.0f} vs {row['full_power']['energy_kj']:.0f} kJ)"
                + f"\n{'':<10} local load-ratio rule {row['load_ratio_rule']['pf_utility']:7.2f} "
                  f"({row['load_ratio_rule_gain_vs_best_heuristic']:+.1%}), E {row['load_ratio_rule']['energy_kj']:.0f} kJ")
        if "clairvoyant" in row:
            c = row["clairvoyant"]
            line += (f"\n{'':<10} clairvoyant seed {c['seed']}, {c['steps']} steps: {c['pf_utility']:.2f} vs full "
                     f"{c['full_power_pf_utility']:.2f} / heur {c['heuristic_pf_utility']:.2f} "
                     f"({c['gain_vs_best_heuristic']:+.1%}), E {c['energy_kj']:.0f} vs {c['full_power_energy_kj']:.0f} kJ")
        print(line, flush=True)
    try:
        load = round(os.getloadavg()[0], 2)
    except OSError:
        load = None
    command = "python benchmarks/basestation_headroom.py" + ("" if not (argv or sys.argv[1:]) else
                                                           " " + " ".join(argv if argv is not None else sys.argv[1:]))
    path = write_results("basestation_headroom", {
        "issue": 6, "command": command, "wall_seconds": round(time.perf_counter() - started, 1),
        "load_average_1m_at_end": load, "rows": rows})
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
