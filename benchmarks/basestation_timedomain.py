"""Is there non-clairvoyant headroom in time-domain coordination, and can stations take it? (issue 15)

The headroom study's clairvoyant (``benchmarks/basestation_headroom.py``) finds +66-77 %
PF utility over the best heuristic in hotspot and rush hour, read as "stations cutting
power step by step in turns". This benchmark checks that reading and measures what a
causal controller can keep of it, in two parts.

**Part 1, the clairvoyant explained** (``--explain-scenarios``, on episodes that are
neither tuning nor evaluation episodes: the look-ahead's label seeds 30000 + 100 x
training seed). A central greedy controller (the headroom study's: at every step, one
station at a time, every action tried, judged by the network's PF utility over the next
``--horizon`` steps on a fork of the network) is played in three ways:

- ``true_future``: the fork shares the episode's random future (the headroom study's
  clairvoyant);
- ``expected_future``: each candidate is judged on the mean of ``--futures`` *other*
  seeded futures (common random numbers across candidates): a causal controller, but
  central and with the full state (every user's position, shadowing, PF average);
- ``slow``: the true future, but actions decided every ``--slow-every`` steps and held
  (judged over that many steps): what is left without step-by-step switching.

Its actions are summarised: how often a station's power level changes, how long it
holds one, the share of one- or two-step dips (what an ABS-like "in turns" pattern would
be), whether X2 neighbours' cuts alternate, and how the power relates to the station's
load ratio; beside them the tuned rule (training seed 0's) and full power on the same
episodes.

**Part 2, causal time-domain patterns** (``--scenarios``): the X2-coordinated pattern
family of ``benchmarks/basestation_patterns.py`` on top of each training seed's tuned rule
(reduced-power subframes on a cycle, phases from a colouring of the X2 graph or by
layer, depth per station class, load-triggered), tuned on the training seeds' tuning
episodes only, evaluated on seeds 100-102 against the tuned rule: PF utility,
5th-percentile user rate, energy.

Why patterns cannot win under this KPI: the env's PF utility is a *per-step* sum of log
rates, and the per-step problem depends on the past only through slow state
(association, PF averages). A pattern that cycles through actions scores the mean of
their per-step utilities, never more than the best of them held, so time sharing (the
reason eICIC pays under a long-term-average PF utility) buys nothing here.

Measured 2026-12-07 (one core; ``benchmarks/results/basestation_timedomain_explain.json``
for part 1, training seed 0's tuned rule, 40 steps from the episode start, horizon 3,
3 other futures, episodes 30000/30100/30200; PF gain over the tuned rule, median and per
episode):

- hotspot: true future +29.9 % (+28.2 / +29.9 / +104.5 %), expected future +12.9 %
  (+7.0 / +12.9 / +62.3 %), slow (every 5 steps) +16.9 % (+16.9 / +15.4 / +78.5 %), at
  0.90-0.98x the rule's energy;
- rush hour: true future +46.3 % (+32.6 / +48.2 / +46.3 %), expected future +15.0 %
  (+14.2 / +17.4 / +15.0 %), slow +20.8 % (+20.6 / +30.3 / +20.8 %), at 0.86-0.94x.

What the gain is *not*: turns. X2 neighbours are both below full power as often as two
independent stations would be (hotspot 0.32 / 0.39 / 0.34 of steps vs 0.31 / 0.38 / 0.34
if independent; rush hour likewise): no alternation between neighbours. Held for five
steps with no dip at all (``slow``), the controller keeps 55-75 % of its gain. What it
*is*: deeper, state-dependent power cuts (mean macro level -3.4 to -4.2 dB against the
rule's -0.7 to -1.5 dB; a station's level correlates with its load ratio at 0.0-0.4, the
rule's at 0.1-0.7) and offsets re-chosen every few steps (offset changes on 27-50 % of
steps against the rule's 5-12 %), chosen on the state of every user; about half of it
(true minus expected future) is the luck of the next three steps' arrivals, departures
and shadowing, which no causal policy has. The scenarios have no fast fading.

Part 2 (``basestation_timedomain.json``, training seeds 0-2, rules tuned with 0 restarts
and 2 passes, evaluation seeds 100-102): on the tuning episodes no pattern beats its
training seed's tuned rule by more than 0.06 %, so the tuned pattern is off or switched
off by its trigger; on the five-scenario mean it gains +0.02 / -0.00 / -0.10 % (median
-0.00 %; worst scenario hotspot seed 2, -0.52 %). The best *untriggered* pattern of the
grid, always the mildest (one level down in one step of 6, or of 3-4 at night), loses on
evaluation: uniform -2.1 %, hotspot -1.9 to -2.8 %, rush hour -4.1 to -5.0 %, outage
-2.7 to -3.5 %, night -0.0 to -0.3 %, with the 5th-percentile rate down 0-15 %, at
0.97-1.00x energy. No causal pattern of this family reaches +5 %, nor +0.5 %.

    python benchmarks/basestation_timedomain.py --jobs 1
    python benchmarks/basestation_timedomain.py --scenarios hotspot --train-seeds 0 --explain-scenarios ''

Writes ``benchmarks/results/basestation_timedomain.json`` (``--out`` elsewhere).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import write_results  # noqa: E402
from envs.basestation import BaseStationParallelEnv, load_scenario  # noqa: E402
from envs.basestation.heuristics import full_power_strongest_cell  # noqa: E402
from apps.basestation.central import CentralLookahead  # noqa: E402
from basestation_patterns import PatternRule, tune_pattern, x2_colouring  # noqa: E402
from apps.basestation.rules import LoadRatioRule, heuristic_reference, tune_rule, tuning_seeds  # noqa: E402

EVAL_SEEDS = (100, 101, 102)
EXPLAIN_SEED_BASE = 30_000  # the look-ahead's label episodes: neither tuning nor evaluation episodes


# --- shared ----------------------------------------------------------------------------------
def episode(env: BaseStationParallelEnv, policy, seed: int, steps: int | None = None) -> dict:
    """KPIs of one episode (or its first ``steps``): per-step means of PF utility and the
    5th-percentile user rate, energy (kJ), handovers."""
    obs, _ = env.reset(seed=seed)
    pf, p5, energy, ho, n = 0.0, 0.0, 0.0, 0, 0
    while env.agents and (steps is None or n < steps):
        obs, _, _, _, infos = env.step(policy(obs))
        k = next(iter(infos.values()))
        pf += k["pf_utility"]
        p5 += k["p5_user_rate_bps"]
        energy += k["total_power_w"] * env.config.step_duration_s
        ho += k["handovers"]
        n += 1
    return {"pf_utility": pf / n, "p5_mbps": p5 / n / 1e6, "energy_kj": energy / 1e3, "handovers": ho}


def mean_kpis(runs: list[dict]) -> dict:
    return {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}


# --- part 1: the clairvoyant explained --------------------------------------------------------
def greedy_controller(env: BaseStationParallelEnv, seed: int, steps: int, horizon: int = 3, futures: int = 0,
                      every: int = 1) -> tuple[dict, np.ndarray, np.ndarray]:
    """The headroom study's greedy central controller, now
    :class:`apps.basestation.central.CentralLookahead` (all candidates, planning seed =
    ``seed``, no energy price). ``futures`` 0: forks share the true future; F > 0: each
    candidate judged on F other futures (generators seeded by (seed, step, f, 7), the same
    for every candidate). Decides every ``every`` steps and holds (judging over
    max(horizon, every) steps). (KPIs, actions (T, S, 3), ratios (T, S))."""
    net = env.network
    env.reset(seed=seed)
    ctrl = CentralLookahead(env, horizon=horizon, futures=futures, candidates="all", seed=seed, every=every)
    pf = p5 = energy = 0.0
    ho = 0
    acts, ratios = [], []
    for t in range(steps):
        a = ctrl.actions(net)
        ratios.append(load_ratio(net))
        acts.append(a.copy())
        _, _, _, _, infos = env.step({f"bs_{i}": a[i] for i in range(len(a))})
        k = next(iter(infos.values()))
        pf += k["pf_utility"]
        p5 += k["p5_user_rate_bps"]
        energy += k["total_power_w"] * env.config.step_duration_s
        ho += k["handovers"]
    kpis = {"pf_utility": pf / steps, "p5_mbps": p5 / steps / 1e6, "energy_kj": energy / 1e3, "handovers": ho}
    return kpis, np.asarray(acts), np.asarray(ratios)


def load_ratio(net) -> np.ndarray:
    """log2((n + 1) / (m + 1)) per station, m its awake X2 neighbours' mean users (the rule's ratio)."""
    n = net.n_users.astype(float)
    nb = net.layout.neighbours
    awake = (nb >= 0) & net.awake[np.maximum(nb, 0)]
    m = np.where(awake, n[np.maximum(nb, 0)], 0.0).sum(axis=1) / np.maximum(awake.sum(axis=1), 1)
    return np.log2((n + 1.0) / (m + 1.0))


def action_summary(net, acts: np.ndarray, ratios: np.ndarray) -> dict:
    """What the controller's power choices look like in time (module docstring, part 1)."""
    on = np.flatnonzero(~net.off)
    P = acts[:, on, 0].astype(int)
    T = len(P)
    full = net.n_power_levels - 1
    changes = (np.diff(P, axis=0) != 0)
    runs = []
    for j in range(P.shape[1]):
        edges = np.flatnonzero(np.diff(P[:, j]) != 0)
        bounds = np.concatenate([[-1], edges, [T - 1]])
        runs += list(np.diff(bounds))
    # a dip: below full power for 1-2 steps, with higher levels just before and after
    dips = 0
    cuts = 0
    for j in range(P.shape[1]):
        p = P[:, j]
        for t in range(1, T - 1):
            if p[t] < p[t - 1]:
                cuts += 1
                for w in (1, 2):
                    if t + w < T and (p[t:t + w] < p[t - 1]).all() and p[t + w] > p[t + w - 1]:
                        dips += 1
                        break
    # neighbours in turns: of the X2 pairs, how often exactly one of the two is below full
    # power while the other is at full, against how often both are below
    g = net.x2_graph
    pairs = [(g.nodes[u]["index"], g.nodes[v]["index"]) for u, v in g.edges]
    pairs = [(i, j) for i, j in pairs if not net.off[i] and not net.off[j]]
    A = acts[:, :, 0] < full
    one = float(np.mean([(A[:, i] ^ A[:, j]).mean() for i, j in pairs])) if pairs else 0.0
    both = float(np.mean([(A[:, i] & A[:, j]).mean() for i, j in pairs])) if pairs else 0.0
    indep = float(np.mean([A[:, i].mean() * A[:, j].mean() for i, j in pairs])) if pairs else 0.0
    r = ratios[:, on].reshape(-1)
    lv = P.reshape(-1).astype(float)
    corr = float(np.corrcoef(r, lv)[0, 1]) if r.std() > 0 and lv.std() > 0 else 0.0
    macro = net.layout.is_macro[on]
    return {"power_change_share": round(float(changes.mean()), 3),
            "mean_run_steps": round(float(np.mean(runs)), 1),
            "dip_share_of_cuts": round(dips / max(cuts, 1), 3),
            "below_full_share": {"macro": round(float((P[:, macro] < full).mean()), 3),
                                 "small": round(float((P[:, ~macro] < full).mean()), 3) if (~macro).any() else None},
                                 "mean_level_db": {"macro": round(float(net.power_offsets_db[P[:, macro]].mean()), 2),
                              "small": round(float(net.power_offsets_db[P[:, ~macro]].mean()), 2)
                              if (~macro).any() else None},
            "x2_pairs_one_cut_share": round(one, 3), "x2_pairs_both_cut_share": round(both, 3),
            "x2_pairs_both_cut_if_independent": round(indep, 3),
            "corr_power_level_vs_load_ratio": round(corr, 3),
            "cio_change_share": round(float((np.diff(acts[:, on, 1], axis=0) != 0).mean()), 3),
            "asleep_share": round(float(acts[:, on, 2].mean()), 3)}


def rule_actions(env: BaseStationParallelEnv, rule: LoadRatioRule, seed: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    obs, _ = env.reset(seed=seed)
    acts, ratios = [], []
    for _ in range(steps):
        a = rule.actions(obs)
        ratios.append(load_ratio(env.network))
        acts.append(a)
        obs, *_ = env.step({f"bs_{i}": a[i] for i in range(len(a))})
    return np.asarray(acts), np.asarray(ratios)


def explain(name: str, seeds: list[int], steps: int, horizon: int, futures: int, slow_every: int,
            rule_params: dict) -> dict:
    env = BaseStationParallelEnv(load_scenario(name))
    net = env.network
    rows = []
    for s in seeds:
        t0 = time.perf_counter()
        rule = LoadRatioRule(env, rule_params)
        row = {"seed": s, "steps": steps,
               "full_power": episode(env, lambda o: full_power_strongest_cell(env, o), s, steps),
               "tuned_rule": episode(env, LoadRatioRule(env, rule_params), s, steps)}
        acts, ratios = rule_actions(env, rule, s, steps)
        row["tuned_rule"]["actions"] = action_summary(net, acts, ratios)
        for label, kw in (("true_future", {}), ("expected_future", {"futures": futures}),
                          ("slow", {"every": slow_every})):
            if label == "expected_future" and futures <= 0:
                continue
            if label == "slow" and slow_every <= 1:
                continue
            t1 = time.perf_counter()
            kpis, acts, ratios = greedy_controller(env, s, steps, horizon=horizon, **kw)
            kpis["gain_vs_tuned_rule"] = (kpis["pf_utility"] - row["tuned_rule"]["pf_utility"]) / abs(row["tuned_rule"]["pf_utility"])
            kpis["energy_vs_tuned_rule"] = kpis["energy_kj"] / row["tuned_rule"]["energy_kj"]
            kpis["actions"] = action_summary(net, acts, ratios)
            kpis["seconds"] = round(time.perf_counter() - t1, 1)
            row[label] = kpis
        row["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(f"explain {name} seed {s}: full {row['full_power']['pf_utility']:.2f} rule {row['tuned_rule']['pf_utility']:.2f} "
              + " ".join(f"{k} {row[k]['pf_utility']:.2f} ({row[k]['gain_vs_tuned_rule']:+.1%}, E {row[k]['energy_vs_tuned_rule']:.2f}x)"
                         for k in ("true_future", "expected_future", "slow") if k in row), flush=True)
    out = {"scenario": name, "seeds": seeds, "steps": steps, "horizon": horizon, "futures": futures,
           "slow_every": slow_every, "rule_params": rule_params, "rows": rows}
    for k in ("true_future", "expected_future", "slow"):
        g = [r[k]["gain_vs_tuned_rule"] for r in rows if k in r]
        if g:
            out[f"{k}_gain_vs_tuned_rule_median"] = float(np.median(g))
            out[f"{k}_gain_vs_tuned_rule_per_seed"] = g
    return out


# --- part 2: causal time-domain patterns -------------------------------------------------------
def pattern_row(name: str, seed: int, rule_restarts: int, rule_passes: int, cache: Path | None) -> dict:
    env = BaseStationParallelEnv(load_scenario(name))
    seeds = tuning_seeds(seed, EVAL_SEEDS)
    t0 = time.perf_counter()
    key = f"{name}/{seed}/r{rule_restarts}p{rule_passes}"
    saved = json.loads(cache.read_text()) if cache is not None and cache.is_file() else {}
    if key in saved:
        rule = saved[key]
    else:
        ref = heuristic_reference(env, seeds)
        e_max = min(e for _, e in ref.values())
        params, pf, e, tried = tune_rule(env, seeds, e_max, restarts=rule_restarts, passes=rule_passes, rng_seed=seed)
        rule = {"params": params, "train_pf_utility": pf, "train_energy_kj": e, "rules_played": tried,
                "seconds": round(time.perf_counter() - t0, 1)}
        if cache is not None:
            saved[key] = rule
            cache.write_text(json.dumps(saved, indent=1))
    t1 = time.perf_counter()
    # the pattern must spend no more energy than the rule on the tuning episodes
    pattern, p_pf, p_e, p_tried, on = tune_pattern(env, rule["params"], seeds, e_max=rule["train_energy_kj"])
    p_seconds = round(time.perf_counter() - t1, 1)
    rule_eval = [episode(env, LoadRatioRule(env, rule["params"]), s) for s in EVAL_SEEDS]
    pat_eval = [episode(env, PatternRule(env, rule["params"], pattern), s) for s in EVAL_SEEDS]
    fx = on["fixed"]
    fx_eval = mean_kpis([episode(env, PatternRule(env, rule["params"], fx["pattern"]), s) for s in EVAL_SEEDS])
    on_eval = [episode(env, PatternRule(env, rule["params"], on["pattern"]), s) for s in EVAL_SEEDS]
    r, p, o = mean_kpis(rule_eval), mean_kpis(pat_eval), mean_kpis(on_eval)
    on["train_gain_vs_rule"] = (on["pf_utility"] - rule["train_pf_utility"]) / abs(rule["train_pf_utility"])
    on["eval"] = dict(o, pf_gain_vs_tuned_rule=(o["pf_utility"] - r["pf_utility"]) / abs(r["pf_utility"]),
                      p5_gain_vs_tuned_rule=(o["p5_mbps"] - r["p5_mbps"]) / max(r["p5_mbps"], 1e-12),
                      energy_vs_tuned_rule=o["energy_kj"] / r["energy_kj"])
    fx["train_gain_vs_rule"] = (fx["pf_utility"] - rule["train_pf_utility"]) / abs(rule["train_pf_utility"])
    fx["eval"] = dict(fx_eval, pf_gain_vs_tuned_rule=(fx_eval["pf_utility"] - r["pf_utility"]) / abs(r["pf_utility"]),
                      p5_gain_vs_tuned_rule=(fx_eval["p5_mbps"] - r["p5_mbps"]) / max(r["p5_mbps"], 1e-12),
                      energy_vs_tuned_rule=fx_eval["energy_kj"] / r["energy_kj"])
    return {"scenario": name, "train_seed": seed, "tuned_on_seeds": list(seeds), "eval_seeds": list(EVAL_SEEDS),
            "rule": rule, "pattern": pattern, "pattern_train_pf_utility": p_pf, "pattern_train_energy_kj": p_e,
            "pattern_train_gain_vs_rule": (p_pf - rule["train_pf_utility"]) / abs(rule["train_pf_utility"]),
            "best_active_pattern": on, "patterns_played": p_tried, "pattern_search_seconds": p_seconds,
            "colours": int(x2_colouring(env.network).max() + 1),
            "eval": {"tuned_rule": r, "pattern": p,
                     "pf_gain_vs_tuned_rule": (p["pf_utility"] - r["pf_utility"]) / abs(r["pf_utility"]),
                     "p5_gain_vs_tuned_rule": (p["p5_mbps"] - r["p5_mbps"]) / max(r["p5_mbps"], 1e-12),
                     "energy_vs_tuned_rule": p["energy_kj"] / r["energy_kj"],
                     "per_seed_pf": {"tuned_rule": [x["pf_utility"] for x in rule_eval],
                                     "pattern": [x["pf_utility"] for x in pat_eval]}}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", default="uniform,hotspot,rush_hour,outage,night")
    p.add_argument("--train-seeds", default="0,1,2")
    p.add_argument("--explain-scenarios", default="hotspot,rush_hour")
    p.add_argument("--explain-steps", type=int, default=40)
    p.add_argument("--horizon", type=int, default=3)
    p.add_argument("--futures", type=int, default=3)
    p.add_argument("--slow-every", type=int, default=5)
    p.add_argument("--rule-restarts", type=int, default=0)
    p.add_argument("--rule-passes", type=int, default=2)
    p.add_argument("--rule-cache", default=None, help="JSON file of tuned rules to reuse / fill (a scratch path)")
    p.add_argument("--reuse-explain", default=None,
                   help="take part 1 from this earlier results file (its command and commit are kept beside it) "
                        "instead of running it again")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (1: this one; kept for the habit)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        pass
    started = time.perf_counter()
    train_seeds = [int(s) for s in args.train_seeds.split(",") if s]
    cache = Path(args.rule_cache) if args.rule_cache else None
    explained, explain_source = [], None
    if args.reuse_explain:
        earlier = json.loads(Path(args.reuse_explain).read_text())
        explained = earlier["figures"]["explain"]
        explain_source = {"command": earlier.get("command"), "commit": earlier.get("commit"),
                          "started": earlier.get("started")}
    for name in [s for s in args.explain_scenarios.split(",") if s and not args.reuse_explain]:
        # the rule of training seed 0 (tuned on its tuning episodes), the cache's if there
        env = BaseStationParallelEnv(load_scenario(name))
        seeds = tuning_seeds(0, EVAL_SEEDS)
        key = f"{name}/0/r{args.rule_restarts}p{args.rule_passes}"
        saved = json.loads(cache.read_text()) if cache is not None and cache.is_file() else {}
        if key in saved:
            params = saved[key]["params"]
        else:
            t0 = time.perf_counter()
            ref = heuristic_reference(env, seeds)
            params, pf, e, tried = tune_rule(env, seeds, min(x for _, x in ref.values()),
                                             restarts=args.rule_restarts, passes=args.rule_passes, rng_seed=0)
            if cache is not None:
                saved[key] = {"params": params, "train_pf_utility": pf, "train_energy_kj": e, "rules_played": tried,
                              "seconds": round(time.perf_counter() - t0, 1)}
                cache.write_text(json.dumps(saved, indent=1))
        explained.append(explain(name, [EXPLAIN_SEED_BASE + 100 * s for s in train_seeds], args.explain_steps,
                                 args.horizon, args.futures, args.slow_every, params))
    rows = []
    for name in [s for s in args.scenarios.split(",") if s]:
        for seed in train_seeds:
            row = pattern_row(name, seed, args.rule_restarts, args.rule_passes, cache)
            rows.append(row)
            e = row["eval"]
            print(f"pattern {name} seed {seed}: {row['pattern']} train {row['pattern_train_gain_vs_rule']:+.2%}; "
                  f"eval rule {e['tuned_rule']['pf_utility']:.2f} pattern {e['pattern']['pf_utility']:.2f} "
                  f"({e['pf_gain_vs_tuned_rule']:+.2%}, p5 {e['p5_gain_vs_tuned_rule']:+.1%}, "
                  f"E {e['energy_vs_tuned_rule']:.3f}x); best active pattern {row['best_active_pattern']['pattern']} "
                  f"train {row['best_active_pattern']['train_gain_vs_rule']:+.2%} eval "
                  f"{row['best_active_pattern']['eval']['pf_gain_vs_tuned_rule']:+.2%} "
                  f"(p5 {row['best_active_pattern']['eval']['p5_gain_vs_tuned_rule']:+.1%}, "
                  f"E {row['best_active_pattern']['eval']['energy_vs_tuned_rule']:.3f}x); best fixed "
                  f"{row['best_active_pattern']['fixed']['pattern']} train "
                  f"{row['best_active_pattern']['fixed']['train_gain_vs_rule']:+.2%} eval "
                  f"{row['best_active_pattern']['fixed']['eval']['pf_gain_vs_tuned_rule']:+.2%} "
                  f"(p5 {row['best_active_pattern']['fixed']['eval']['p5_gain_vs_tuned_rule']:+.1%}, "
                  f"E {row['best_active_pattern']['fixed']['eval']['energy_vs_tuned_rule']:.3f}x)", flush=True)
    summary = {}
    if rows:
        per = {}
        for r in rows:
            per.setdefault(r["scenario"], []).append(r["eval"])
        scen = {n: {"pf_gain_vs_tuned_rule_median": float(np.median([e["pf_gain_vs_tuned_rule"] for e in v])),
                    "pf_gain_vs_tuned_rule_per_seed": [e["pf_gain_vs_tuned_rule"] for e in v],
                    "p5_gain_vs_tuned_rule_median": float(np.median([e["p5_gain_vs_tuned_rule"] for e in v])),
                    "energy_vs_tuned_rule_median": float(np.median([e["energy_vs_tuned_rule"] for e in v])),
                    "best_active_pattern_pf_gain_vs_tuned_rule_per_seed":
                        [r["best_active_pattern"]["eval"]["pf_gain_vs_tuned_rule"] for r in rows if r["scenario"] == n],
                    "best_active_pattern_train_gain_vs_rule_per_seed":
                        [r["best_active_pattern"]["train_gain_vs_rule"] for r in rows if r["scenario"] == n],
                    "best_fixed_pattern_pf_gain_vs_tuned_rule_per_seed":
                        [r["best_active_pattern"]["fixed"]["eval"]["pf_gain_vs_tuned_rule"] for r in rows if r["scenario"] == n],
                    "best_fixed_pattern_train_gain_vs_rule_per_seed":
                        [r["best_active_pattern"]["fixed"]["train_gain_vs_rule"] for r in rows if r["scenario"] == n]}
                for n, v in per.items()}
        by_seed = [float(np.mean([r["eval"]["pf_gain_vs_tuned_rule"] for r in rows if r["train_seed"] == s]))
                   for s in train_seeds]
        summary = {"per_scenario": scen,
                   "pattern_pf_gain_vs_tuned_rule_mean_per_seed": by_seed,
                   "pattern_pf_gain_vs_tuned_rule_mean": float(np.median(by_seed)),
                   "pattern_pf_gain_vs_tuned_rule_worst": min(v["pf_gain_vs_tuned_rule_median"] for v in scen.values()),
                   "target": 0.05}
        print(f"pattern over the tuned rule, mean of {len(scen)} scenarios (median over training seeds): "
              f"{summary['pattern_pf_gain_vs_tuned_rule_mean']:+.2%} (per seed {[f'{x:+.2%}' for x in by_seed]})")
    figures = {"issue": 15, "train_seeds": train_seeds, "eval_seeds": list(EVAL_SEEDS),
               "wall_seconds": round(time.perf_counter() - started, 1), "explain": explained,
               "explain_source": explain_source,
               "patterns": rows, "summary": summary}
    path = write_results("basestation_timedomain", figures, path=Path(args.out) if args.out else None)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
