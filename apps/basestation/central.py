"""The strong central reference (issue 15 item 2): a greedy look-ahead on expected futures.

:class:`CentralLookahead` plays an env step by step. At every decision step it visits the
stations that are on, one at a time, and tries each candidate action of that station
with the others' current choices held, judging each by the network's PF utility summed
over the next ``horizon`` steps (less ``energy_weight`` per kW of network power, per step)
on forks of the network (:func:`apps.basestation.learner.fork_network`); it keeps a
candidate only when it beats the station's current choice ("no change"), so on its own
forecast the joint action never gets worse than holding (the greedy invariant). It is
central and sees the full state (every user's position, shadowing, PF average): an upper
reference, not something a station could run.

**Causal.** With ``futures`` F > 0 each candidate is judged on the mean of F *other*
futures: the fork's random generator is replaced by ``np.random.default_rng([seed, t, f,
7])`` (``seed`` the controller's planning seed, ``t`` the network's step, ``f`` the
future), the same for every candidate (common random numbers). The episode's own
generator is gymnasium's ``Generator(PCG64(SeedSequence(episode_seed)))``; numpy's
SeedSequence zero-pads its entropy to its 4-word pool, so the episode's entropy is
``(episode_seed, 0, 0, 0)`` while a future's ends in 7: they never coincide, whatever the
planning seed (both below 2**32, checked), so the futures are other streams, never the
episode's. Only the present state is read from the network; its generator is never drawn
from nor copied (the tests change it and see the same choices). ``futures=0`` is the
headroom study's *clairvoyant* (forks share the episode's future), kept for
``benchmarks/basestation_timedomain.py`` part 1 only.

**Candidates.** ``"all"``: every (power level, offset) awake and sleep (full power, offset
0), the study's set (21 with 4 levels and 5 offsets); ``"axes"``: every power level at
the station's current offset, every offset at its current power level, and sleep (9):
about 2.3x cheaper.

**Energy.** PF utility alone has no price on power: at night the greedy keeps every
station awake (sleeping an idle one moves PF by nothing), where the tuned rule sleeps
them. ``energy_weight`` (PF utility per kW, per step) prices it; 0 reproduces the study.

Cost: stations x (candidates + 1) x F x horizon forked network steps per decision step
(one core, F = horizon = 3, all candidates: uniform 3.1 s, hotspot 1.4 s, rush hour
2.1 s, outage 0.4 s, night 3.0 s per simulated step; "axes" about 0.42x that).

Measured (``benchmarks/basestation.py --policies tuned_rule,central_lookahead``, its
docstring; ``benchmarks/results/basestation_central.json``): "axes", F = horizon = 3,
``energy_weight`` 1, full 100-step evaluation episodes 100-102, against the tuned rule
of training seeds 0-2: PF +2.9 / +13.6 / +8.4 / +4.2 / -7.1 % (uniform, hotspot, rush
hour, outage, night), mean +4.4 %, at 0.81-0.88x the rule's energy.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from envs.basestation import BaseStationParallelEnv

from .learner import fork_network

__all__ = ["CentralLookahead", "future_rng", "FUTURE_TAG"]

FUTURE_TAG = 7  # the last word of a future's entropy: never 0, so never an episode seed's (padded) entropy


def future_rng(seed: int, t: int, f: int) -> np.random.Generator:
    """The generator of planning future ``f`` at step ``t`` (module docstring, *Causal*)."""
    if not (0 <= seed < 2**32 and 0 <= t < 2**32 and 0 <= f < 2**32):
        raise ValueError("planning seed, step and future must each fit one 32-bit word")
    return np.random.default_rng([seed, t, f, FUTURE_TAG])


@dataclass
class Decision:
    """One station's greedy choice: the forecast value of holding and of what it chose."""
    t: int
    station: int
    no_change: float
    chosen: float
    action: tuple


@dataclass
class CentralLookahead:
    """The greedy central look-ahead controller (module docstring).

    Call it with the parallel env's observations (a Controller: ``obs -> actions dict``)
    or ask :meth:`actions` for the (S, 3) array of the network's present state. A new
    episode (network step 0) starts again from full power, offset 0, awake.

    :param env: the env it plays (its network is read, never stepped here).
    :param horizon: steps each candidate is judged over.
    :param futures: other seeded futures per candidate; 0: the episode's own (clairvoyant).
    :param candidates: ``"all"`` or ``"axes"``.
    :param seed: planning seed (< 2**32), with the step and the future seeding each fork.
    :param every: decide every ``every`` steps and hold (judged over max(horizon, every)).
    :param energy_weight: PF utility per kW of network power, per step, in the objective.
    """

    env: BaseStationParallelEnv
    horizon: int = 3
    futures: int = 3
    candidates: str = "all"
    seed: int = 0
    every: int = 1
    energy_weight: float = 0.0
    decisions: list = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if self.candidates not in ("all", "axes"):
            raise ValueError(f"candidates {self.candidates!r}: 'all' or 'axes'")
        if self.horizon < 1 or self.futures < 0 or self.every < 1:
            raise ValueError("horizon and every at least 1, futures at least 0")
        future_rng(self.seed, 0, 0)  # checks the seed
        self._a: np.ndarray | None = None
        self.forks = 0

    # --- the plan ---------------------------------------------------------------------------
    def station_candidates(self, net, current: np.ndarray) -> list[tuple[int, int, int]]:
        full, cio0 = net.n_power_levels - 1, net.default_cio_index
        if self.candidates == "all":
            cands = [(p, c, 0) for p in range(net.n_power_levels) for c in range(net.n_cio)]
        else:
            p0, c0 = (int(current[0]), int(current[1])) if current[2] == 0 else (full, cio0)
            cands = [(p, c0, 0) for p in range(net.n_power_levels)]
            cands += [(p0, c, 0) for c in range(net.n_cio) if c != c0]
        return cands + [(full, cio0, 1)]

    def value(self, net, a: np.ndarray, t: int) -> float:
        """Forecast of holding ``a``: PF utility (less the energy price) summed over the
        judging horizon, summed over the futures (their mean times F)."""
        h = max(self.horizon, self.every)
        total = 0.0
        for f in range(max(self.futures, 1)):
            twin = fork_network(net)
            if self.futures:
                twin.rng = future_rng(self.seed, t, f)
            for _ in range(h):
                twin.step(a)
                k = twin.kpis()
                total += k.pf_utility
                if self.energy_weight:
                    total -= self.energy_weight * k.total_power_w / 1e3
            self.forks += 1
        return total

    def actions(self, net=None, *, start: np.ndarray | None = None) -> np.ndarray:
        """The (S, 3) actions for the network's present state (deciding if due).

        :param start: the actions the greedy pass starts from after the first step, in
            place of its own last plan (what the stations actually played, when something
            else acts and the look-ahead only labels the states it visits: DAgger).
        """
        net = self.env.network if net is None else net
        t = int(net.t)
        if start is not None and t > 0:
            self._a = np.array(start, dtype=np.int64)
        if self._a is None or t == 0:
            self._a = net.default_actions()
            self.decisions = []
        a = self._a
        if t % self.every == 0:
            best_v = None
            for i in np.flatnonzero(~net.off):
                if best_v is None:
                    best_v = self.value(net, a, t)
                hold, best = best_v, a[i].copy()
                for c in self.station_candidates(net, a[i]):
                    if tuple(c) == tuple(best):
                        continue  # "no change", valued already
                    a[i] = c
                    v = self.value(net, a, t)
                    if v > best_v + 1e-9:
                        best, best_v = np.array(c), v
                a[i] = best
                self.decisions.append(Decision(t, int(i), hold, best_v, tuple(int(x) for x in best)))
        return a.copy()

    def __call__(self, obs: dict) -> dict:
        a = self.actions()
        return {ag: a[i] for i, ag in enumerate(self.env.possible_agents)}
