"""Can stations imitate the central look-ahead? (issue 15: centralised training, decentralised execution)

Measured: no. Hotspot, training seeds 0-2, evaluation seeds 100-102, PF against the tuned
rule, medians over the training seeds: per-station imitators -10.1 % (a) / -11.5 % (b),
-8.6 to -14.3 % per seed; pooled -2.7 % (a) / -2.6 % (b); pooled + 4 DAgger episodes
+0.8 % (a; per seed -1.9 / +0.8 / +1.1 %) / -0.3 % (b), + 8 DAgger episodes -0.1 % (a;
-2.3 / -0.1 / +0.4 %); the central look-ahead itself +11.1 to +13.4 % on the same episodes.

The central look-ahead (:class:`apps.basestation.central.CentralLookahead`: causal,
expected futures, full state; here without an energy price) gains those +11.1 to +13.4 %
PF over the three training seeds' tuned rules in hotspot, at 0.87-0.90x their energy (the
time-domain study's expected-future look-ahead: median +12.9 %). Its
joint actions label *training* episodes (the look-ahead's label seeds, 30000 + 100 x
training seed + j; never an evaluation seed), as residual corrections to each station's
tuned rule (training seed's rule), and each station learns to predict its own label from
what it can observe:

- ``a``: the residual observation (env observation + the rule's plan + neighbours'
  planned power, :class:`apps.basestation.residual.Residual`);
- ``b``: ``a`` plus what measurement reports and X2 carry (:func:`report_features`,
  computed app-side from the network state): the share of the station's users within
  3 / 6 dB RSRP of their best other cell, its edge users' (within 6 dB) mean SINR and
  their count's share, per X2 neighbour slot the share of its users whose best other
  cell is that neighbour within 6 dB (A3-like measurement reports), and per slot the
  neighbour's own within-6-dB share and edge SINR (over X2).

Each variant is fitted per station (one model each) and pooled (one model for all
stations); the pooled model is also played with only its power or only its offset
corrections (the other heads left to the rule), and with ``--dagger N`` it plays N
further label episodes in which the central labels the states the imitators visit
(DAgger), refitted after each.

The imitators then play, deterministically and each on its own observation, the
evaluation seeds 100-102 against the tuned rule (and the central look-ahead itself,
same settings as the labels, on the same episodes: how much of its gain they keep).
Label predictability: on the held-out (last) label episode, per head, the accuracy of
the imitating policy against "always no correction".

The tuned rules are the time-domain study's (``--rules-from``, tuned there with 0
restarts and 2 passes); a scenario or training seed that file lacks is tuned here the
same way (cached under ``runs/``).

The figures above (``benchmarks/results/basestation_imitate_central.json`` and
``..._dagger8.json``)::

    python benchmarks/basestation_imitate_central.py --futures 3 --raise-power --central-eval --dagger 4
    python benchmarks/basestation_imitate_central.py --futures 3 --raise-power --central-eval --dagger 8 \\
        --variants a --models pooled --out benchmarks/results/basestation_imitate_central_dagger8.json

A labelled episode costs 55-105 s on one core (3 per training seed, plus the DAgger
episodes and 3 central evaluation episodes): they are kept in ``--label-cache`` and
re-runs only fit and play. Writes ``benchmarks/results/basestation_imitate_central.json``
(``--out`` elsewhere).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import write_results  # noqa: E402
from basestation_timedomain import episode, mean_kpis as mean  # noqa: E402
from envs.basestation import BaseStationParallelEnv, load_scenario  # noqa: E402
from envs.basestation.network import SINR_OBS_RANGE_DB  # noqa: E402
from apps.basestation.central import CentralLookahead  # noqa: E402
from apps.basestation.lookahead import label_seeds  # noqa: E402
from apps.basestation.residual import Residual  # noqa: E402
from apps.basestation.rules import heuristic_reference, tune_rule, tuning_seeds  # noqa: E402

EVAL_SEEDS = (100, 101, 102)
HEADS = ("power", "cio", "sleep")
VARIANTS = ("a", "b")
MODEL_KINDS = ("per_station", "pooled")
# The time-domain study's tuned rules (its part 2 rows): the same rules basestation.py's
# --rules-from reuses, so that every study of issue 15 measures against one rule.
RULES_FILE = ROOT / "benchmarks" / "results" / "basestation_timedomain.json"
# How that study tuned them; a rule tuned here for a scenario / seed it lacks is tuned alike.
RULE_RESTARTS, RULE_PASSES = 0, 2
TUNED_RULES_CACHE = ROOT / "runs" / "imitate-central-rules.json"  # git-ignored
LABEL_CACHE = ROOT / "runs" / "imitate-central"  # git-ignored


# --- what a station could know: measurement reports and X2 ---------------------------------
def report_feature_names(n_slots: int) -> list[str]:
    return (["mr.within3db", "mr.within6db", "mr.edge_sinr"]
            + [f"mr.towards_nb{k}" for k in range(n_slots)]
            + [f"nb{k}.within6db" for k in range(n_slots)] + [f"nb{k}.edge_sinr" for k in range(n_slots)])


def report_features(net) -> np.ndarray:
    """(S, 3 + 3 x slots) float32 in [0, 1] (module docstring, variant ``b``), from the
    network's present state (the one the env's observation describes)."""
    S, K = net.n_stations, net.n_slots
    ar = np.arange(net.capacity)
    serving = net.serving
    on = net.active & (serving >= 0)
    sc = np.maximum(serving, 0)
    rsrp = np.where(net.awake[None, :], net.rsrp_dbm, -np.inf)
    serv = net.rsrp_dbm[ar, sc]
    others = rsrp.copy()
    others[ar, sc] = -np.inf
    best = np.argmax(others, axis=1)
    margin = serv - others[ar, best]  # inf where no other cell is heard
    g = np.where(on, serving, S)
    n = np.maximum(np.bincount(g, minlength=S + 1)[:S], 1)
    w3 = np.bincount(g, weights=(margin < 3.0) & on, minlength=S + 1)[:S] / n
    edge = on & (margin < 6.0)
    n_edge = np.bincount(g, weights=edge, minlength=S + 1)[:S]
    w6 = n_edge / n
    lo, hi = SINR_OBS_RANGE_DB
    sinr_n = np.clip((10 * np.log10(np.maximum(net.sinr, 1e-30)) - lo) / (hi - lo), 0, 1)
    esinr = np.where(n_edge > 0, np.bincount(g, weights=np.where(edge, sinr_n, 0.0), minlength=S + 1)[:S]
                     / np.maximum(n_edge, 1), 0.0)
    # towards whom: (S, S) share of s's users whose best other cell is j within 6 dB
    pair = np.zeros((S + 1, S))
    np.add.at(pair, (g[edge], best[edge]), 1.0)
    pair = pair[:S] / n[:, None]
    slots = net.neighbour_slots()
    valid = slots >= 0
    sl = np.maximum(slots, 0)
    towards = np.where(valid, np.take_along_axis(pair, sl, axis=1), 0.0)
    nb6 = np.where(valid, w6[sl], 0.0)
    nbe = np.where(valid, esinr[sl], 0.0)
    return np.concatenate([np.stack([w3, w6, esinr], 1), towards, nb6, nbe], axis=1).astype(np.float32)


# --- labels: the central look-ahead's joint actions as residual corrections ---------------
def residual_labels(rule: np.ndarray, central: np.ndarray, res: Residual) -> tuple[np.ndarray, np.ndarray]:
    """(..., 3) corrections that take the rule's actions ``rule`` to the central's
    ``central`` as far as the residual range allows, and a (...,) mask of exact reach."""
    k = res.k
    d = central[..., :2] - rule[..., :2]
    p_lo, p_hi = -k, (k if res.raise_power else 0)
    dp = np.clip(d[..., 0], p_lo, p_hi)
    dc = np.clip(d[..., 1], -k, k)
    flip = (central[..., 2] != rule[..., 2]).astype(np.int64)
    # a sleeping station's power/offset mean nothing: no correction of them
    asleep = central[..., 2] == 1
    dp = np.where(asleep, 0, dp)
    dc = np.where(asleep, 0, dc)
    # sleep only where the rule may put the station to sleep
    eligible = np.broadcast_to(res.eligible, flip.shape)
    flip = np.where(asleep & (rule[..., 2] == 0) & ~eligible, 0, flip)
    lab = np.stack([dp + k, dc + k, flip], axis=-1).astype(np.int64)
    reach = (dp == np.where(asleep, 0, d[..., 0])) & (dc == np.where(asleep, 0, d[..., 1])) & (
        flip == (central[..., 2] != rule[..., 2]))
    return lab, reach


def label_episode(env, res: Residual, seed: int, horizon: int, futures: int, cands: str, steps: int | None):
    """Play the central look-ahead on episode ``seed`` and record, per step, what each
    station observes (variants a and b), the rule's plan and the central's actions."""
    return _central_labels(env, res, seed, horizon, futures, cands, steps, imitators=None)


def dagger_episode(env, res: Residual, seed: int, imitators: "Imitators", horizon: int, futures: int, cands: str,
                   steps: int | None = None):
    """DAgger: the imitators play episode ``seed`` (or its first ``steps``) and the central
    look-ahead labels every state they visit (its greedy pass starting from the actions the
    stations played)."""
    return _central_labels(env, res, seed, horizon, futures, cands, steps, imitators=imitators)


def _central_labels(env, res: Residual, seed: int, horizon: int, futures: int, cands: str, steps: int | None,
                    imitators: "Imitators | None") -> dict:
    """One episode labelled by the central look-ahead, played by it (``imitators`` None)
    or by the imitators."""
    t0 = time.perf_counter()
    net = env.network
    obs, _ = env.reset(seed=seed)
    ctrl = CentralLookahead(env, horizon=horizon, futures=futures, candidates=cands, seed=seed)
    oa, ob, rule, cen, pf, energy = [], [], [], [], [], 0.0
    while env.agents and (steps is None or len(oa) < steps):
        o = res.observe(obs)
        x = report_features(net)
        oa.append(o)
        ob.append(x)
        rule.append(res.base.copy())
        if imitators is None:
            played = central = ctrl.actions(net)
        else:
            played = res.to_env(imitators.corrections(o, x))
            central = ctrl.actions(net, start=played)  # its greedy pass starts from what the stations play
        cen.append(central)
        obs, _, _, _, infos = env.step(res.actions_dict(played))
        k = next(iter(infos.values()))
        pf.append(k["pf_utility"])
        energy += k["total_power_w"] * env.config.step_duration_s
    return {"obs_a": np.asarray(oa, np.float32), "obs_b": np.asarray(ob, np.float32),
            "rule": np.asarray(rule, np.int64), "central": np.asarray(cen, np.int64),
            "pf": np.asarray(pf), "energy_kj": energy / 1e3, "seconds": time.perf_counter() - t0,
            "forks": ctrl.forks}


# --- the imitating policy ---------------------------------------------------------------------
class Heads(nn.Module):
    def __init__(self, d: int, nvec, hidden: int = 64) -> None:
        super().__init__()
        self.nvec = list(nvec)
        self.body = nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.out = nn.Linear(hidden, sum(self.nvec))

    def forward(self, x):
        return torch.split(self.out(self.body(x)), self.nvec, dim=1)

    @torch.no_grad()
    def act(self, x: np.ndarray) -> np.ndarray:
        parts = self(torch.as_tensor(x, dtype=torch.float32))
        return torch.stack([p.argmax(1) for p in parts], 1).numpy()


def fit(x: np.ndarray, y: np.ndarray, nvec, zero: np.ndarray, epochs: int, seed: int, lr: float = 1e-3,
        batch: int = 64, wd: float = 1e-4) -> Heads:
    torch.manual_seed(seed)
    m = Heads(x.shape[1], nvec)
    with torch.no_grad():  # start at "no correction" (the rule), as the app's residual stations do
        off = 0
        for h, n in enumerate(nvec):
            m.out.bias[off + int(zero[h])] += 2.0
            off += n
    opt = torch.optim.Adam(m.parameters(), lr=lr, weight_decay=wd)
    X, Y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(X), generator=gen)
        for i in range(0, len(X), batch):
            b = order[i:i + batch]
            opt.zero_grad(set_to_none=True)
            loss = sum(nn.functional.cross_entropy(p, Y[b, h]) for h, p in enumerate(m(X[b])))
            loss.backward()
            opt.step()
    return m


def accuracy(pred: np.ndarray, y: np.ndarray, zero: np.ndarray) -> dict:
    out = {}
    for h, name in enumerate(HEADS):
        out[name] = {"policy": float((pred[:, h] == y[:, h]).mean()),
                     "no_correction": float((y[:, h] == zero[h]).mean())}
    out["joint"] = {"policy": float((pred == y).all(1).mean()), "no_correction": float((y == zero).all(1).mean())}
    return out


class Imitators:
    """Each station acts on its own observation with its own model (or one pooled model)."""

    def __init__(self, models, variant: str, heads=HEADS, zero=None) -> None:
        self.models, self.variant = models, variant
        self.keep = np.array([h in heads for h in HEADS])
        self.zero = zero

    def corrections(self, oa: np.ndarray, ob: np.ndarray) -> np.ndarray:
        x = oa if self.variant == "a" else np.concatenate([oa, ob], axis=1)
        if isinstance(self.models, Heads):
            c = self.models.act(x)
        else:
            c = np.concatenate([m.act(x[s:s + 1]) for s, m in enumerate(self.models)])
        if not self.keep.all():  # the other heads left to the rule
            c = np.where(self.keep, c, self.zero)
        return c


def play(env, res: Residual, seed: int, imitators: Imitators | None, steps: int | None = None) -> dict:
    """The tuned rule (``imitators`` None) or the imitators' corrections of it on episode
    ``seed`` (or its first ``steps``)."""
    net = env.network
    played = moved = 0

    def policy(obs):
        nonlocal played, moved
        oa = res.observe(obs)
        if imitators is None:
            c = res.zeros()
        else:
            c = imitators.corrections(oa, report_features(net))
            moved += int((c != res.zero).any(1).sum())
        played += 1
        return res.actions_dict(res.to_env(c))

    kpis = episode(env, policy, seed, steps)
    return {**kpis, "corrected_share": moved / (played * net.n_stations)}


def play_central(env, seed: int, horizon: int, futures: int, cands: str, steps: int | None = None) -> dict:
    """The central look-ahead itself on episode ``seed`` (or its first ``steps``)."""
    central = CentralLookahead(env, horizon=horizon, futures=futures, candidates=cands, seed=seed)
    return episode(env, central, seed, steps)


def gain(x: float, ref: float) -> float:
    return (x - ref) / abs(ref)


# --- the tuned rules ---------------------------------------------------------------------------
def rules_from(path: Path) -> dict[tuple[str, int], dict]:
    """The tuned rules of a ``basestation_timedomain.py`` results file (its part 2 rows),
    by (scenario, training seed)."""
    doc = json.loads(Path(path).read_text())
    return {(row["scenario"], int(row["train_seed"])): row["rule"]["params"] for row in doc["figures"]["patterns"]}


def tune_rule_params(name: str, seed: int, cache: Path = TUNED_RULES_CACHE) -> dict:
    """Tune the rule of training seed ``seed`` as the time-domain study does (20-60 s per
    scenario and seed there), once: kept in ``cache``."""
    key = f"{name}/{seed}/r{RULE_RESTARTS}p{RULE_PASSES}"
    saved = json.loads(cache.read_text()) if cache.is_file() else {}
    if key in saved:
        return saved[key]["params"]
    env = BaseStationParallelEnv(load_scenario(name))
    seeds = tuning_seeds(seed, EVAL_SEEDS)
    ref = heuristic_reference(env, seeds)
    params, pf, e, tried = tune_rule(env, seeds, min(x for _, x in ref.values()), restarts=RULE_RESTARTS,
                                     passes=RULE_PASSES, rng_seed=seed)
    saved[key] = {"params": params, "train_pf_utility": pf, "train_energy_kj": e, "rules_played": tried}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(saved, indent=1))
    return params


def rule_params(name: str, seed: int, rules: dict[tuple[str, int], dict], rules_path: Path) -> tuple[dict, str]:
    """(the tuned rule of ``name`` and training seed ``seed``, where it comes from)."""
    if (name, seed) in rules:
        return rules[(name, seed)], _shown(rules_path)
    return tune_rule_params(name, seed), f"tuned here ({_shown(TUNED_RULES_CACHE)})"


def _shown(path: Path) -> str:
    """``path`` relative to the repository where it lies inside it (results stay portable)."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


# --- the label cache: one file per episode, named by everything that shapes it ----------------
def _central_tag(args) -> str:
    return f"h{args.horizon}f{args.futures}{args.candidates}"


def label_file(cache: Path, name: str, episode: int, rule_seed: int, args) -> Path:
    return cache / f"{name}_{episode}_{_central_tag(args)}_{args.steps}_rule{rule_seed}.npz"


def dagger_file(cache: Path, name: str, episode: int, j: int, variant: str, kind: str, rule_seed: int, args) -> Path:
    # the episode seed and j together fix how many label episodes the imitators were fitted on
    short = "" if args.steps is None else f"_s{args.steps}"  # full episodes keep their old names
    return cache / (f"{name}_{episode}_{_central_tag(args)}_dagger{j}_{variant}{kind}_rule{rule_seed}"
                    f"_k{args.residual_steps}{int(args.raise_power)}e{args.epochs}{short}.npz")


def central_eval_file(cache: Path, name: str, episode: int, args) -> Path:
    short = "" if args.eval_steps is None else f"_s{args.eval_steps}"
    return cache / f"{name}_central_eval_{episode}_{_central_tag(args)}{short}.json"


def central_eval_episodes(env, name: str, args, cache: Path) -> list[dict]:
    """The central look-ahead on the evaluation episodes (same settings as the labels)."""
    runs = []
    for s in EVAL_SEEDS:
        t0 = time.perf_counter()
        f = central_eval_file(cache, name, s, args)
        if f.is_file():
            runs.append(json.loads(f.read_text()))
        else:
            runs.append(play_central(env, s, args.horizon, args.futures, args.candidates, args.eval_steps))
            f.write_text(json.dumps(runs[-1]))
        print(f"{name} central eval seed {s}: PF {runs[-1]['pf_utility']:.2f} "
              f"E {runs[-1]['energy_kj']:.1f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return runs


def labelled_episodes(env, res: Residual, name: str, seed: int, args, cache: Path) -> list[dict]:
    """Training seed ``seed``'s label episodes, played by the central look-ahead (or read
    back from ``cache``)."""
    eps = []
    for s in label_seeds(seed, args.episodes, EVAL_SEEDS):
        f = label_file(cache, name, s, seed, args)
        if f.is_file():
            d = dict(np.load(f))
        else:
            d = label_episode(env, res, s, args.horizon, args.futures, args.candidates, args.steps)
            np.savez(f, **d)
            print(f"{name} seed {seed}: labelled episode {s} in {d['seconds']:.0f} s "
                  f"({d['forks']} forks), central PF {d['pf'].mean():.2f}", flush=True)
        eps.append(d)
    return eps


# --- one training seed: its labels, its imitators, their plays --------------------------------
@dataclass
class SeedStudy:
    """What every imitator of one scenario and training seed is fitted on and played against."""

    name: str
    seed: int
    env: BaseStationParallelEnv
    res: Residual  # the training seed's tuned rule and the correction range
    args: argparse.Namespace
    cache: Path  # the label cache
    rule_eval: dict  # the tuned rule's means over the evaluation episodes
    central_gain: float | None  # the central look-ahead's PF gain over that rule, if played

    @property
    def on(self) -> np.ndarray:
        """Stations that are not in outage (the only ones labelled and scored)."""
        return ~self.env.network.off


def label_statistics(study: SeedStudy, eps: list[dict], labels: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """How much the central corrects the rule on the label episodes, and how far the
    residual range reaches it; its gain there over the rule."""
    res, on, zero = study.res, study.on, study.res.zero
    y_all = [lb[0] for lb in labels]
    nz = np.concatenate([(y[:, on] != zero).any(-1).ravel() for y in y_all])
    stats = {
        "seconds_per_episode": float(np.mean([float(d["seconds"]) for d in eps])),
        "forks_per_episode": float(np.mean([float(d["forks"]) for d in eps])),
        "steps_per_episode": int(len(eps[0]["pf"])),
        "central_pf_label_episodes": [float(d["pf"].mean()) for d in eps],
        "reachable_share": float(np.mean([lb[1][:, on].mean() for lb in labels])),
        "corrected_share": float(nz.mean()),
        "per_head_corrected_share": {h: float(np.concatenate([(y[:, on, i] != zero[i]).ravel() for y in y_all]).mean())
                                     for i, h in enumerate(HEADS)}}
    # the rule on the same steps the central labelled (all of them unless --steps)
    rule_label = [play(study.env, res, s, None, study.args.steps)
                  for s in label_seeds(study.seed, study.args.episodes, EVAL_SEEDS)]
    stats["rule_pf_label_episodes"] = [r["pf_utility"] for r in rule_label]
    stats["central_gain_label_episodes"] = [gain(float(d["pf"].mean()), r["pf_utility"])
                                            for d, r in zip(eps, rule_label)]
    stats["central_energy_vs_rule_label_episodes"] = [float(d["energy_kj"]) / r["energy_kj"]
                                                      for d, r in zip(eps, rule_label)]
    return stats


def features(d: dict, variant: str) -> np.ndarray:
    """(steps, S, d) what each station's imitator sees in episode ``d``."""
    return d["obs_a"] if variant == "a" else np.concatenate([d["obs_a"], d["obs_b"]], axis=2)


def fit_imitators(study: SeedStudy, kind: str, variant: str, eps: list[dict], ys: list[np.ndarray]):
    """(the models as :class:`Imitators` takes them, one model per station) fitted on
    ``eps`` with labels ``ys``; a pooled model learns from every station not in outage."""
    on, res, epochs, S = study.on, study.res, study.args.epochs, study.env.network.n_stations
    xs = np.concatenate([features(d, variant) for d in eps])
    y = np.concatenate(ys)
    if kind == "pooled":
        m = fit(xs[:, on].reshape(-1, xs.shape[2]), y[:, on].reshape(-1, 3), res.nvec, res.zero, epochs, study.seed)
        return m, [m] * S
    ms = [fit(xs[:, s], y[:, s], res.nvec, res.zero, epochs, study.seed * 100 + s) for s in range(S)]
    return ms, ms


def label_accuracy(study: SeedStudy, per_station: list[Heads], variant: str, eps: list[dict],
                   ys: list[np.ndarray]) -> dict:
    """Per head, how often the stations' models predict the central's label in ``eps``."""
    on = study.on
    x, y = np.concatenate([features(d, variant) for d in eps]), np.concatenate(ys)
    pred = np.stack([per_station[s].act(x[:, s]) for s in np.flatnonzero(on)], 1)
    return accuracy(pred.reshape(-1, 3), y[:, on].reshape(-1, 3), study.res.zero)


def evaluated(study: SeedStudy, key: str, out: dict, models, variant: str, heads=HEADS) -> dict:
    """``out`` with the imitators' plays of the evaluation episodes against the tuned rule."""
    rr = study.rule_eval
    ev = [play(study.env, study.res, s, Imitators(models, variant, heads, study.res.zero), study.args.eval_steps)
          for s in EVAL_SEEDS]
    e = mean(ev)
    out.update(eval=e, eval_per_seed=ev, pf_gain_vs_tuned_rule=gain(e["pf_utility"], rr["pf_utility"]),
               p5_gain_vs_tuned_rule=(e["p5_mbps"] - rr["p5_mbps"]) / max(rr["p5_mbps"], 1e-12),
               energy_vs_tuned_rule=e["energy_kj"] / rr["energy_kj"])
    if study.central_gain is not None and study.central_gain > 0:
        out["share_of_central_gain"] = out["pf_gain_vs_tuned_rule"] / study.central_gain
    ha = out["held_out_accuracy"]
    print(f"{study.name} seed {study.seed} {key}: PF {out['pf_gain_vs_tuned_rule']:+.2%} "
          f"p5 {out['p5_gain_vs_tuned_rule']:+.1%} E {out['energy_vs_tuned_rule']:.3f}x "
          f"corrected {e['corrected_share']:.0%}; held-out acc "
          + " ".join(f"{h} {ha[h]['policy']:.2f}/{ha[h]['no_correction']:.2f}" for h in (*HEADS, "joint")),
          flush=True)
    return out


def imitator_rows(study: SeedStudy, variant: str, kind: str, eps: list[dict], ys: list[np.ndarray]) -> dict:
    """Rows of one variant and model kind: its imitators, for a pooled model also its
    power-only and offset-only plays and (``--dagger``) its DAgger refit."""
    _, held = fit_imitators(study, kind, variant, eps[:-1], ys[:-1])
    out = {"held_out_accuracy": label_accuracy(study, held, variant, eps[-1:], ys[-1:]),
           "train_accuracy": label_accuracy(study, held, variant, eps[:-1], ys[:-1])}
    models, _ = fit_imitators(study, kind, variant, eps, ys)
    key = f"{variant}/{kind}"
    rows = {key: evaluated(study, key, out, models, variant)}
    if kind != "pooled":
        return rows
    for h in ("power", "cio"):
        rows[f"{key}/{h}_only"] = evaluated(study, f"{key}/{h}_only", dict(out), models, variant, (h,))
    if study.args.dagger:
        rows[f"{key}+dagger{study.args.dagger}"] = dagger_row(study, variant, kind, models, eps, ys)
    return rows


def dagger_row(study: SeedStudy, variant: str, kind: str, models, eps: list[dict], ys: list[np.ndarray]) -> dict:
    """DAgger: the imitators play further label episodes, the central labels what they
    visit, and they are refitted on everything after each episode."""
    args, n = study.args, study.args.episodes
    d_eps, d_y = list(eps), list(ys)
    for j, s in enumerate(label_seeds(study.seed, n + args.dagger, EVAL_SEEDS)[n:]):
        f = dagger_file(study.cache, study.name, s, j, variant, kind, study.seed, args)
        if f.is_file():
            d = dict(np.load(f))
        else:
            d = dagger_episode(study.env, study.res, s, Imitators(models, variant), args.horizon, args.futures,
                               args.candidates, args.steps)
            np.savez(f, **d)
            print(f"{study.name} seed {study.seed} {variant}/{kind}: DAgger episode {s} in {d['seconds']:.0f} s,"
                  f" imitators' PF {d['pf'].mean():.2f}", flush=True)
        d_eps.append(d)
        d_y.append(residual_labels(d["rule"], d["central"], study.res)[0])
        models, _ = fit_imitators(study, kind, variant, d_eps, d_y)
    # held-out accuracy: refit without the held-out central episode
    _, held = fit_imitators(study, kind, variant, d_eps[:n - 1] + d_eps[n:], d_y[:n - 1] + d_y[n:])
    out = {"held_out_accuracy": label_accuracy(study, held, variant, eps[-1:], ys[-1:]),
           "dagger_imitator_pf": [float(d["pf"].mean()) for d in d_eps[n:]]}
    return evaluated(study, f"{variant}/{kind}+dagger{args.dagger}", out, models, variant)


def training_seed_row(env, name: str, seed: int, args, rules: dict, cache: Path, central_eval: list[dict] | None) -> dict:
    """Everything measured for one training seed: its labels, the tuned rule, the central
    and every imitator against that rule."""
    params, source = rule_params(name, seed, rules, args.rules_from)
    res = Residual(env, params, args.residual_steps, raise_power=args.raise_power)
    eps = labelled_episodes(env, res, name, seed, args, cache)
    labels = [residual_labels(d["rule"], d["central"], res) for d in eps]
    rule_eval = [play(env, res, s, None, args.eval_steps) for s in EVAL_SEEDS]
    rr = mean(rule_eval)
    central = None
    if central_eval is not None:
        c = mean(central_eval)
        central = dict(c, pf_gain_vs_tuned_rule=gain(c["pf_utility"], rr["pf_utility"]),
                       energy_vs_tuned_rule=c["energy_kj"] / rr["energy_kj"])
    study = SeedStudy(name, seed, env, res, args, cache, rr,
                      None if central is None else central["pf_gain_vs_tuned_rule"])
    label_stats = label_statistics(study, eps, labels)
    row = {"seed": seed, "rule": {"params": params, "from": source}, "labels": label_stats, "tuned_rule": rr,
           "tuned_rule_per_eval_seed": rule_eval, "imitators": {}}
    if central is not None:
        row["central"] = central
    print(f"{name} seed {seed}: rule eval PF {rr['pf_utility']:.2f} E {rr['energy_kj']:.1f}; labels "
          f"{label_stats['corrected_share']:.0%} corrected, reach {label_stats['reachable_share']:.0%}; central on "
          "label episodes " + " ".join(f"{g:+.1%}" for g in label_stats["central_gain_label_episodes"])
          + " E " + " ".join(f"{g:.2f}x" for g in label_stats["central_energy_vs_rule_label_episodes"]), flush=True)
    ys = [lb[0] for lb in labels]
    for variant in _names(args.variants):
        for kind in _names(args.models):
            row["imitators"].update(imitator_rows(study, variant, kind, eps, ys))
    return row


def medians(rows: list[dict]) -> dict:
    """Per imitator, medians over the training seeds, and its PF gain per seed."""
    summary = {}
    for key in rows[0]["imitators"]:
        g = [r["imitators"][key] for r in rows]
        summary[key] = {f: float(np.median([x[f] for x in g]))
                        for f in ("pf_gain_vs_tuned_rule", "p5_gain_vs_tuned_rule", "energy_vs_tuned_rule")}
        summary[key]["pf_gain_per_seed"] = [x["pf_gain_vs_tuned_rule"] for x in g]
    return summary


def scenario_figures(name: str, args, rules: dict, cache: Path) -> dict:
    env = BaseStationParallelEnv(load_scenario(name))
    central_eval = central_eval_episodes(env, name, args, cache) if args.central_eval else None
    rows = [training_seed_row(env, name, seed, args, rules, cache, central_eval)
            for seed in (int(s) for s in _names(args.train_seeds))]
    out = {"per_seed": rows, "median": medians(rows)}
    if central_eval is not None:
        out["central_eval_per_seed"] = central_eval
    return out


# --- command line ------------------------------------------------------------------------------
def _names(text: str) -> list[str]:
    return [s for s in text.split(",") if s]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenarios", default="hotspot", help="comma-separated scenario names (default: hotspot)")
    p.add_argument("--train-seeds", default="0,1,2",
                   help="comma-separated training seeds: each has its tuned rule, label episodes and imitators "
                        "(default: 0,1,2)")
    p.add_argument("--episodes", type=int, default=3,
                   help="label episodes per training seed, the last held out for the accuracy figures; at least 2 "
                        "(default: 3)")
    p.add_argument("--steps", type=int, default=None,
                   help="label (and DAgger) only the first STEPS steps of each episode (default: all)")
    p.add_argument("--eval-steps", type=int, default=None,
                   help="play only the first EVAL_STEPS steps of each evaluation episode (default: all)")
    p.add_argument("--horizon", type=int, default=3, help="central look-ahead: steps judged (default: 3)")
    p.add_argument("--futures", type=int, default=2,
                   help="central look-ahead: seeded futures per candidate (default: 2; the results use 3)")
    p.add_argument("--candidates", choices=("axes", "all"), default="axes",
                   help="central look-ahead: one axis at a time or every (power, offset) (default: axes)")
    p.add_argument("--residual-steps", type=int, default=3,
                   help="largest correction of power (levels) and offset (steps) on the rule's (default: 3)")
    p.add_argument("--raise-power", action="store_true",
                   help="corrections may also raise power above the rule's level (default: only lower it)")
    p.add_argument("--epochs", type=int, default=60, help="epochs of each imitator fit (default: 60)")
    p.add_argument("--variants", default="a,b",
                   help="what the imitators observe, comma-separated: a (the residual observation), b (a plus "
                        "measurement-report and X2 summaries) (default: a,b)")
    p.add_argument("--models", default="per_station,pooled",
                   help="comma-separated: per_station (a model each) and / or pooled (one for all stations) "
                        "(default: per_station,pooled)")
    p.add_argument("--dagger", type=int, default=0,
                   help="DAgger episodes per training seed for the pooled models (default: 0, none)")
    p.add_argument("--central-eval", action="store_true",
                   help="also play the central look-ahead on the evaluation episodes (default: off)")
    p.add_argument("--rules-from", type=Path, default=RULES_FILE, metavar="PATH",
                   help="take the tuned rules from this basestation_timedomain.py results file (its part 2 rows); "
                        "a scenario / training seed it lacks is tuned here and kept in "
                        f"{_shown(TUNED_RULES_CACHE)} (default: {_shown(RULES_FILE)})")
    p.add_argument("--label-cache", type=Path, default=LABEL_CACHE, metavar="DIR",
                   help="scratch folder of labelled episodes (label, DAgger and central evaluation episodes, "
                        f"about 100 s each to play); re-runs reuse them (default: {_shown(LABEL_CACHE)})")
    p.add_argument("--out", type=Path, default=None,
                   help="results file (default: benchmarks/results/basestation_imitate_central.json)")
    args = p.parse_args(argv)
    if args.episodes < 2:
        p.error("--episodes: at least 2 (the last one is held out)")
    for option, given, allowed in (("--variants", args.variants, VARIANTS), ("--models", args.models, MODEL_KINDS)):
        bad = [x for x in _names(given) if x not in allowed]
        if bad or not _names(given):
            p.error(f"{option}: choose from {', '.join(allowed)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)  # one core, and torch's fits reproduce exactly
    cache = Path(args.label_cache)
    cache.mkdir(parents=True, exist_ok=True)
    rules = rules_from(args.rules_from)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "label_cache")}
    settings["rules_from"] = _shown(args.rules_from)
    figures = {"settings": settings,
               "scenarios": {name: scenario_figures(name, args, rules, cache) for name in _names(args.scenarios)}}
    path = write_results("basestation_imitate_central", figures, path=args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
