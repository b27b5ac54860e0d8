"""Stations that imitate the best look-ahead correction (``training.learner = "lookahead"``).

A headroom replay (hotspot, other stations on the tuned rule) found that on 61 % of
station-steps *some* correction to the rule gained PF utility over the next 3 steps,
while every fixed correction averaged zero or worse: the gains are situational, and PPO
on a few hundred sampled transitions does not find which correction pays when. So here
the simulator tells the station, step by step, and the station learns to predict it:

1. **Labels.** The fleet plays the tuned rule (no correction) on training episodes
   (:func:`label_seeds`; never an evaluation seed). At every step and for every station
   that is on, each candidate correction (:func:`candidates`: none, power one or two
   levels down, offset one or two steps either way, go to sleep where the rule may) is
   judged by the network's PF utility over the next ``horizon`` steps, replayed on a
   fork of the network with the *same* random future (the fork copies the generator),
   the other stations on the rule's actions, everything held over the horizon (as the
   difference reward's forks do, :meth:`RadioCommons._credits`). The label is the best
   candidate if it gains more than ``margin`` over no correction, else "no correction".
   No candidate spends more energy than the rule (power only down, sleep, offsets).
   With ``futures`` F > 0 (the default, ``training.lookahead_futures``) each candidate is
   judged on F other seeded futures instead of the episode's own: the hindsight-best
   correction is mostly the luck of one future (arrivals, moves, fading), which no
   observation foretells (measured: ``TrainingSettings.lookahead_futures``).
2. **Imitation.** Each station's policy (the residual PPO's actor, the same network and
   state dict, so MFD merges it as before) is trained to predict its labels from its own
   observation with the rule's plan (cross-entropy on each action head), a few epochs per
   round; MFD shares and merges the models between rounds as the app does for PPO.
   With ``lookahead_ppo`` each round then also runs the usual PPO update.

This is centralised training for decentralised execution: only the simulator can fork
the network; the deployed policy acts on its own observation.

Cost: ``steps x stations x candidates x futures`` forks of ``horizon`` env steps, ~1 ms
a fork of 3 steps here (hotspot, 4 episodes, 4 futures: ~120 000 forks, 360 000 env
steps, 105 s a training seed; rush hour, 19 stations: ~170 000 forks, 160-215 s).

Measured 2026-12-07 (tuned rules of ``basestation_transfer.json``, 6 rounds, MFD,
4 labelled episodes (the stations train on three, the fourth is held out), margin 0.3, 4 futures,
training seeds 0-2, evaluation seeds 100-102; ``benchmarks/results/basestation_lookahead*.json``):

- The labels: a correction pays in expectation on 46-60 % of station-steps (2.2-2.6 PF
  over 3 steps when it does; power down ~40 %, offsets ~55 %, sleep 1-3 %), yet every
  single candidate averages -1 to -18 over all steps (the headroom study's finding).
- Predicting them from a station's own observation barely beats "never correct": on the
  held-out episode the stations' served models predict a correction on 0-7 % of steps
  and their choices gain -0.08..+0.08 PF per station-step against the labels' 1.2-1.5;
  one model fitted to all 14 hotspot stations' rows (seed 0) does no better (+0.03..+0.11). With
  hindsight labels (``lookahead_futures = 0``) fitting them *loses* on held-out steps.
  What decides a correction (which users are at which cell edge, who arrives) is not in
  the observation.
- PF against the tuned rule (mean of training seeds): 10 epochs a round, the stations
  stay on the rule: hotspot -0.14 % (seeds -0.12 / -0.29 / 0.00 %), rush hour -0.01 %,
  energy -0.07 %; 40 epochs a round, hotspot +0.40 % (+0.47 / +0.15 / +0.60 %) at -0.14 %
  energy and the same handovers, rush hour -0.42 % (-0.63 / -0.67 / +0.04 %) at -0.75 %
  energy and 1.01x the handovers, although there the served models' choices gained
  +0.05 PF per station-step on the held-out labels: a label judges one station correcting
  with every other on the rule, and in play they all correct at once. The issue's
  target is +5 %; this is not on by default.
"""
from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from envs.basestation import BaseStationConfig, BaseStationParallelEnv

from .config import ACTION_HEADS
from .learner import StationLearner, actor_logits, bias_towards_static, fork_network, policy_actions
from .residual import Residual

__all__ = ["LabelSet", "candidates", "label_seeds", "label_episode", "collect_labels",
           "imitate", "label_accuracy", "LookaheadStationLearner"]

# Label episodes start here (30000 + 100 x training seed + j): apart from the rule's
# tuning episodes (seed, 10000 + seed, 20000 + seed) and the evaluation seeds (100-102).
LABEL_SEED_BASE = 30_000


def candidates(steps: int, heads: Collection[str] = ACTION_HEADS) -> np.ndarray:
    """(C, 3) corrections a label may name (residual coordinates, row 0 = no correction):
    one head at a time, power only down (the target is PF at no more energy), offsets
    either way, sleep flipped. Corrections of two heads at once are left out to keep the
    fork count (and the labels' classes) small."""
    k = int(steps)
    zero = np.array([k, k, 0])
    out = [zero]
    if "power" in heads:
        out += [zero + [-d, 0, 0] for d in range(1, k + 1)]
    if "cio" in heads:
        out += [zero + [0, d, 0] for d in range(-k, k + 1) if d]
    if "sleep" in heads:
        out += [zero + [0, 0, 1]]
    return np.asarray(out, dtype=np.int64)


def label_seeds(seed: int, episodes: int, eval_seeds: Sequence[int] = ()) -> list[int]:
    """The episodes labelled for training seed ``seed``; refuses any evaluation seed."""
    seeds = [LABEL_SEED_BASE + 100 * int(seed) + j for j in range(episodes)]
    clash = sorted(set(seeds) & set(eval_seeds))
    if clash:
        raise ValueError(f"training seed {seed}: label episodes {clash} are evaluation seeds")
    return seeds


@dataclass
class LabelSet:
    """Labelled station-steps of one or more episodes.

    ``obs`` (N, S, d): what each station sees (its observation and the rule's plan);
    ``labels`` (N, S, 3): the best correction (residual coordinates); ``gains`` (N, S):
    its look-ahead PF gain over no correction (0 where none is labelled); ``best_gain``
    (N, S): the best candidate's gain whether or not above the margin; ``episode`` (N,):
    which episode each row comes from; ``on`` (S,): stations that are on (labelled);
    ``table`` (N, S, C): every candidate's gain (NaN where it clipped onto one already
    judged), ``cands`` (C, 3) the candidates."""

    obs: np.ndarray
    labels: np.ndarray
    gains: np.ndarray
    best_gain: np.ndarray
    episode: np.ndarray
    on: np.ndarray
    table: np.ndarray | None = None
    cands: np.ndarray | None = None
    forks: int = 0
    env_steps: int = 0
    seconds: float = 0.0
    seeds: list[int] = field(default_factory=list)

    @staticmethod
    def concat(parts: Sequence["LabelSet"]) -> "LabelSet":
        return LabelSet(np.concatenate([p.obs for p in parts]), np.concatenate([p.labels for p in parts]),
                        np.concatenate([p.gains for p in parts]), np.concatenate([p.best_gain for p in parts]),
                        np.concatenate([p.episode for p in parts]), parts[0].on,
                        np.concatenate([p.table for p in parts]), parts[0].cands,
                        sum(p.forks for p in parts), sum(p.env_steps for p in parts),
                        sum(p.seconds for p in parts), [s for p in parts for s in p.seeds])

    def stats(self, zero: np.ndarray) -> dict[str, Any]:
        """What the labels say: how often a correction was labelled, which, and its gain."""
        lab = self.labels[:, self.on]
        corrected = (lab != zero).any(axis=2)
        d = lab - zero
        share = {"power_down": float((d[..., 0] < 0)[corrected].mean()) if corrected.any() else 0.0,
                 "cio_up": float((d[..., 1] > 0)[corrected].mean()) if corrected.any() else 0.0,
                 "cio_down": float((d[..., 1] < 0)[corrected].mean()) if corrected.any() else 0.0,
                 "sleep": float((d[..., 2] > 0)[corrected].mean()) if corrected.any() else 0.0}
        best = self.best_gain[:, self.on]
        return {"station_steps": int(corrected.size), "corrected_share": float(corrected.mean()),
                "some_gain_share": float((best > 1e-9).mean()),
                "mean_gain_when_corrected": float(self.gains[:, self.on][corrected].mean()) if corrected.any() else 0.0,
                "correction_kinds": share, "forks": self.forks, "env_steps": self.env_steps,
                "seconds": round(self.seconds, 1), "seeds": list(self.seeds)}


def label_episode(env: BaseStationParallelEnv, residual: Residual, seed: int, horizon: int = 3,
                  margin: float = 0.5, cands: np.ndarray | None = None, steps: int | None = None,
                  episode: int = 0, futures: int = 0) -> LabelSet:
    """Play the rule on ``env`` from ``seed`` and label every step (module docstring, 1).

    :param residual: the rule and correction mapping on ``env``.
    :param horizon: env steps each candidate is replayed for.
    :param margin: PF utility (summed over the horizon) a correction must gain over no
        correction to be labelled; below it the label is "no correction".
    :param cands: (C, 3) corrections, row 0 no correction (default :func:`candidates`).
    :param steps: label only the first ``steps`` steps (default: the whole episode).
    :param futures: 0: judge each candidate on the episode's own future (the fork copies
        the generator: hindsight); F > 0: on the mean of F other futures, the fork's
        generator seeded by (seed, step, f), the same F for every candidate (common
        random numbers): the correction that pays *in expectation* from this state,
        which is what a station that cannot see the future could learn.
    """
    t0 = time.perf_counter()
    net = env.network
    cands = candidates(residual.k) if cands is None else np.asarray(cands, dtype=np.int64)
    zero = residual.zero
    if not (cands[0] == zero).all():
        raise ValueError("candidates: row 0 must be no correction")
    on = ~net.off
    stations = np.flatnonzero(on)
    obs, _ = env.reset(seed=seed)
    rows_o, rows_l, rows_g, rows_b, rows_t = [], [], [], [], []
    forks = fork_steps = 0
    played = 0
    while env.agents and (steps is None or played < steps):
        o = residual.observe(obs)
        none = residual.zeros()
        rule = residual.to_env(none)

        def value(actions: np.ndarray) -> float:
            total = 0.0
            for f in range(max(futures, 1)):
                twin = fork_network(net)
                if futures:
                    twin.rng = np.random.default_rng([int(seed), played, f])
                for _ in range(horizon):
                    twin.step(actions)
                    total += twin.kpis().pf_utility
            return total / max(futures, 1)

        per = max(futures, 1)
        base = value(rule)
        forks, fork_steps = forks + per, fork_steps + per * horizon
        labels = np.tile(zero, (net.n_stations, 1))
        table = np.full((net.n_stations, len(cands)), np.nan)
        table[stations, 0] = 0.0
        gains = np.zeros(net.n_stations)
        best_gain = np.zeros(net.n_stations)
        for s in stations:
            seen = {rule[s].tobytes()}
            best, best_v = 0, base
            for c in range(1, len(cands)):
                corr = none.copy()
                corr[s] = cands[c]
                a = residual.to_env(corr)
                key = a[s].tobytes()
                if key in seen:  # clipped to an action already judged (e.g. no level below 0)
                    continue
                seen.add(key)
                v = value(a)
                table[s, c] = v - base
                forks, fork_steps = forks + per, fork_steps + per * horizon
                if v > best_v:
                    best, best_v = c, v
            best_gain[s] = best_v - base
            if best and best_gain[s] > margin:
                labels[s], gains[s] = cands[best], best_gain[s]
        rows_o.append(o)
        rows_l.append(labels)
        rows_g.append(gains)
        rows_b.append(best_gain)
        rows_t.append(table)
        obs, *_ = env.step(residual.actions_dict(rule))
        played += 1
    n = len(rows_o)
    return LabelSet(np.asarray(rows_o, dtype=np.float32), np.asarray(rows_l, dtype=np.int64), np.asarray(rows_g),
                    np.asarray(rows_b), np.full(n, episode), on.copy(), np.asarray(rows_t, dtype=np.float32), cands,
                    forks, played + fork_steps,
                    time.perf_counter() - t0, [int(seed)])


def collect_labels(config: BaseStationConfig, rule_params: Mapping[str, Any], seeds: Sequence[int],
                   residual_steps: int = 2, horizon: int = 3, margin: float = 0.5,
                   heads: Collection[str] = ACTION_HEADS, steps: int | None = None, futures: int = 0) -> LabelSet:
    """Labels of the episodes ``seeds`` on a network of its own (``config``, the tuned rule
    ``rule_params``); episode j of the result is ``seeds[j]``."""
    env = BaseStationParallelEnv(config)
    res = Residual(env, rule_params, residual_steps)
    cands = candidates(residual_steps, heads)
    return LabelSet.concat([label_episode(env, res, s, horizon, margin, cands, steps, episode=j, futures=futures)
                            for j, s in enumerate(seeds)])


def _ce(policy: nn.Module, x: torch.Tensor, y: torch.Tensor, nvec: Sequence[int]) -> torch.Tensor:
    out = actor_logits(policy, x)
    return sum(nn.functional.cross_entropy(part, y[:, k]) for k, part in enumerate(torch.split(out, list(nvec), 1)))


def imitate(policy: nn.Module, obs: np.ndarray, labels: np.ndarray, nvec: Sequence[int], epochs: int = 10,
            lr: float = 1e-3, batch: int = 64, generator: torch.Generator | None = None,
            optimizer: torch.optim.Optimizer | None = None) -> float:
    """Train ``policy``'s actor (features, actor MLP, action head; not the critic) to
    predict ``labels`` (n, 3) from ``obs`` (n, d): cross-entropy summed over the heads,
    ``epochs`` passes of minibatches. :return: the loss on all rows afterwards."""
    x, y = torch.as_tensor(obs, dtype=torch.float32), torch.as_tensor(labels, dtype=torch.int64)
    if len(x) == 0:
        return float("nan")
    if optimizer is None:
        params = list(policy.mlp_extractor.policy_net.parameters()) + list(policy.action_net.parameters())
        optimizer = torch.optim.Adam(params, lr=lr)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x), batch):
            b = order[i:i + batch]
            optimizer.zero_grad(set_to_none=True)
            loss = _ce(policy, x[b], y[b], nvec)
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return float(_ce(policy, x, y, nvec))


@torch.no_grad()
def label_accuracy(policy: nn.Module, obs: np.ndarray, labels: np.ndarray, nvec: Sequence[int],
                   zero: np.ndarray, table: np.ndarray | None = None,
                   cands: np.ndarray | None = None) -> dict[str, float]:
    """How well ``policy`` (greedy) predicts ``labels``: exact share, the share of "no
    correction" always (the trivial predictor), recall of labelled corrections and the
    share of unlabelled rows where it corrects anyway. With the candidates' gains
    ``table`` (n, C): ``gain`` the mean look-ahead gain of the policy's choices (what
    acting on them would have gained, the rule's being 0; a choice that is no single
    candidate counts 0 and is counted in ``unjudged``) and ``gain_labels`` that of the
    labels (the imitation's ceiling)."""
    if len(obs) == 0:
        return {}
    a, _ = policy_actions(actor_logits(policy, torch.as_tensor(obs, dtype=torch.float32)), nvec, None, greedy=True)
    hit = (a == labels).all(axis=1)
    corrected = (labels != zero).any(axis=1)
    moves = (a != zero).any(axis=1)
    out = {"rows": int(len(a)), "accuracy": float(hit.mean()), "accuracy_no_correction": float((~corrected).mean()),
           "correction_recall": float(hit[corrected].mean()) if corrected.any() else float("nan"),
           "false_correction": float(moves[~corrected].mean()) if (~corrected).any() else float("nan"),
           "predicted_correction_share": float(moves.mean())}
    if table is not None and cands is not None:
        match = (a[:, None, :] == cands[None]).all(axis=2)  # (n, C)
        idx = np.where(match.any(axis=1), match.argmax(axis=1), -1)
        g = np.where(idx >= 0, table[np.arange(len(a)), np.maximum(idx, 0)], 0.0)
        g = np.nan_to_num(g)  # clipped onto another candidate's action: counted as that one's, 0 here
        lab = (labels[:, None, :] == cands[None]).all(axis=2).argmax(axis=1)
        out.update(gain=float(g.mean()), gain_labels=float(np.nan_to_num(table[np.arange(len(a)), lab]).mean()),
                   unjudged=float((idx < 0).mean()))
    return out


class LookaheadStationLearner(StationLearner):
    """A residual station that learns by imitating its look-ahead labels (module docstring).

    Same model, state, scoring, deploy gate and sharing as :class:`StationLearner`; only
    :meth:`train` differs: ``n_epochs`` passes of cross-entropy over the station's
    training labels (``commons.labels``, all episodes but the held-out last one), then,
    with ``settings.lookahead_ppo``, the usual PPO update on fresh experience.
    """

    def __init__(self, commons, station: int, settings, seed: int = 0, register: bool = True) -> None:
        super().__init__(commons, station, settings, seed=seed, register=register)
        # the labels may name any head they judged: unpin those (a pinned head's bias of
        # 30 would take thousands of steps to unlearn); PPO fine-tuning keeps the rest pinned
        pinned = [h for h in settings.pinned if h not in settings.lookahead_heads]
        bias_towards_static(self.model.policy, commons.nvec, commons.default[station], settings.static_bias, pinned)
        if settings.action == "residual":
            self.rule_start = (self.get_state(), 1.0)  # the rule, as re-biased here
        self._gen = torch.Generator().manual_seed(seed * 1000 + station)
        self._opt: torch.optim.Optimizer | None = None

    def _pick(self, held_out: bool) -> np.ndarray:
        lab = self.commons.labels
        last = lab.episode.max()
        return (lab.episode == last) if held_out else (lab.episode < last if last > 0 else lab.episode >= 0)

    def _rows(self, held_out: bool) -> tuple[np.ndarray, np.ndarray]:
        lab, pick = self.commons.labels, self._pick(held_out)
        return lab.obs[pick, self.station], lab.labels[pick, self.station]

    def train(self, steps: int, trainable: Collection[str] | None = None) -> int:
        x, y = self._rows(held_out=False)
        if self._opt is None:
            params = (list(self.policy.mlp_extractor.policy_net.parameters())
                      + list(self.policy.action_net.parameters()))
            self._opt = torch.optim.Adam(params, lr=self.settings.lr)
        imitate(self.policy, x, y, self.commons.nvec, epochs=self.settings.n_epochs,
                batch=self.settings.batch_size, generator=self._gen, optimizer=self._opt)
        self.policy.set_training_mode(False)
        self.recent_obs = x
        self.changed()
        work = len(x) * self.settings.n_epochs
        self.samples += len(x)
        self.work_done += work
        if self.settings.lookahead_ppo:
            work += super().train(steps, trainable)
        return work

    def held_out_accuracy(self, state: Mapping[str, torch.Tensor] | None = None) -> dict[str, float]:
        """:func:`label_accuracy` of the model (or ``state``) on the held-out episode."""
        x, y = self._rows(held_out=True)
        policy = self.policy
        if state is not None:
            policy = self.commons.scratch_policy(self)
            policy.load_state_dict(dict(state), strict=False)
        lab = self.commons.labels
        table = None if lab.table is None else lab.table[self._pick(True), self.station]
        return label_accuracy(policy, x, y, self.commons.nvec, self.commons.default[self.station], table, lab.cands)

    def clone(self) -> "LookaheadStationLearner":
        twin = super().clone()
        twin.__class__ = type(self)  # same state; train() imitates the same labels
        twin._gen = torch.Generator().manual_seed(int(self._gen.initial_seed()))
        twin._opt = None
        return twin
