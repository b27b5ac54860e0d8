"""Per-station PPO agents (Stable-Baselines3) that live in one shared radio network.

Each base station owns an SB3 :class:`~stable_baselines3.PPO` model and learns only
from its own experience: its observations, its actions and its reward. The stations
share one radio network, so their experience comes from one
:class:`~envs.basestation.BaseStationParallelEnv` in which every station acts with its
current policy (independent learners). :class:`RadioCommons` is that network: when a
station asks for experience it has not had yet, the commons plays ``n`` steps with all
stations' current policies (one batched forward for all of them) and hands each
station its own transitions; the station then runs SB3's PPO update on them
(:meth:`PPO.train` on a filled rollout buffer: SB3 has no multi-agent collector).

:class:`StationLearner` is the :class:`~mfd_core.learners.base.Learner` the MFD process
sees. Its score is the station's return on its own *digital twin*: an evaluation
copy of the scenario with a fixed seed in which the station acts (greedily) with the
scored model and the others keep the static configuration (full power, CIO 0, awake;
``twin = "peers"``: the neighbours whose models reached it act with those; ``"alike"``:
all act with it), reported as ``1 + (R - R_static) / scale`` with
``R`` the mean per-step reward of the station's X2 neighbourhood, ``R_static`` the same
with the station static too, and ``scale`` the spread (std) of per-step station
rewards; 1.0 is "as good as the static configuration". It is local: it needs only the
candidate model and the twin, never a neighbour's data or model.

With residual actions (``TrainingSettings.action = "residual"``, the default; see
:mod:`apps.basestation.residual`) a station's actions are corrections to the tuned MLB
rule's, and "the static configuration" everywhere above is the rule (no correction): an
untrained station plays it exactly, scores 1.0 and runs it until a trained model scores
at least as well.

:class:`StationView` is the single-station gymnasium view of the parallel env (the
other stations act with a given policy); PPO takes its spaces from it, and it lets a
single station's policy be played and checked on its own.
"""
from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.logger import configure
from torch import Tensor, nn

from envs.basestation import BaseStationConfig, BaseStationParallelEnv
from mfd_core.knowledge import distillation_loss
from mfd_core.learners.base import Learner

from .config import ACTION_HEADS, TrainingSettings
from .residual import Residual

__all__ = ["single_thread", "RadioCommons", "StationLearner", "StationView", "make_ppo", "policy_actions",
           "bias_towards_static", "FAMILY"]

FAMILY = "bs-ppo-mlp"


@contextmanager
def single_thread():
    """Run torch on one thread: these models are tiny, and on a busy machine torch's
    intra-op threads turn a 0.05 ms matmul into a 3 ms wait (measured here: a twin
    episode 30x slower with the default threads than with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------- the view


class StationView(gym.Env):
    """One station's gymnasium view of the parallel env.

    :param env: the parallel env (stepped by this view).
    :param station: index of the station this view controls.
    :param others: ``others(obs_dict) -> {agent: action}`` for the other stations;
        default: the static configuration (full power, CIO 0, awake).
    :param reward: ``"own"`` (the station's reward) or ``"hood"`` (mean over the
        station and its X2 neighbours).
    :param residual: with a :class:`~apps.basestation.residual.Residual` on ``env``, the
        view's actions are corrections to the tuned rule's (``others`` answer
        corrections too; default: none, i.e. the rule) and its observations carry the
        rule's plan.
    """

    metadata = {"render_modes": []}

    def __init__(self, env: BaseStationParallelEnv, station: int,
                 others: Callable[[dict], dict] | None = None, reward: str = "hood",
                 residual: Residual | None = None) -> None:
        self.env, self.station, self.agent = env, station, f"bs_{station}"
        self.others, self.reward_kind, self.residual = others, reward, residual
        if residual is None:
            self.observation_space = env.observation_space(self.agent)
            self.action_space = env.action_space(self.agent)
        else:
            self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(residual.obs_dim,), dtype=np.float32)
            self.action_space = gym.spaces.MultiDiscrete(residual.nvec)
        self._hood = hood_matrix(env)[station]
        self._obs: dict | None = None

    def _own(self, obs: dict) -> np.ndarray:
        if self.residual is None:
            return obs[self.agent]
        return self.residual.observe(obs)[self.station]

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._obs, infos = self.env.reset(seed=seed)
        return self._own(self._obs), infos[self.agent]

    def step(self, action):
        if self.residual is None:
            actions = dict(self.others(self._obs)) if self.others is not None else {}
            actions[self.agent] = np.asarray(action, dtype=np.int64)
        else:
            corrections = self.residual.zeros()
            for agent, act in (self.others(self._obs) if self.others is not None else {}).items():
                corrections[int(agent.removeprefix("bs_"))] = np.asarray(act, dtype=np.int64)
            corrections[self.station] = np.asarray(action, dtype=np.int64)
            actions = self.residual.actions_dict(self.residual.to_env(corrections))
        self._obs, rewards, terms, truncs, infos = self.env.step(actions)
        r = np.array([rewards[a] for a in self.env.possible_agents])
        reward = float(r[self.station]) if self.reward_kind == "own" else float(self._hood @ r)
        return self._own(self._obs), reward, terms[self.agent], truncs[self.agent], infos[self.agent]


def hood_matrix(env: BaseStationParallelEnv) -> np.ndarray:
    """(S, S) row-stochastic: row i averages station i and its X2 neighbours."""
    S = len(env.possible_agents)
    m = np.eye(S)
    for u, v in env.x2_graph.edges:
        i, j = env.x2_graph.nodes[u]["index"], env.x2_graph.nodes[v]["index"]
        m[i, j] = m[j, i] = 1.0
    return m / m.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------- PPO


def make_ppo(view: gym.Env, settings: TrainingSettings, seed: int) -> PPO:
    """An SB3 PPO model for one station (or the central controller), CPU, no logging."""
    from stable_baselines3.common.vec_env import DummyVecEnv

    hidden = list(settings.hidden)
    model = PPO("MlpPolicy", DummyVecEnv([lambda: view]), n_steps=settings.chunk_steps,
                batch_size=settings.batch_size, n_epochs=settings.n_epochs, learning_rate=settings.lr,
                gamma=settings.gamma, gae_lambda=settings.gae_lambda, ent_coef=settings.ent_coef,
                clip_range=settings.clip_range, policy_kwargs={"net_arch": {"pi": hidden, "vf": hidden}},
                device="cpu", seed=seed, verbose=0)
    model.set_logger(configure(None, [""]))
    return model


PIN_BIAS = 30.0  # softmax weight e^-30 on the other choices: never sampled, no gradient


def bias_towards_static(policy: nn.Module, nvec: Sequence[int], default: Sequence[int], strength: float = 2.0,
                        pinned: Collection[str] = ()) -> None:
    """Start near the static configuration, still exploring.

    SB3 initialises the action head with gain 0.01, so the first policy is uniform: half
    the stations asleep at every step, a network no operator would run and one that
    drowns the learning signal. A bias of 2 on each head's default choice (3 on
    "awake") makes the first policy pick full power ~70 %, CIO 0 ~65 % and stay awake
    ~95 % of the time; everything else is still tried.

    :param pinned: heads (``"power"``, ``"cio"``, ``"sleep"``; for a central controller
        every station's) held at the static choice: a bias of `PIN_BIAS` makes the
        other choices never sampled and their gradients vanish, so the policy learns
        only the other heads (``TrainingSettings.pinned``).
    """
    with torch.no_grad():
        bias = policy.action_net.bias
        bias.zero_()
        start = 0
        for k, (n, d) in enumerate(zip(nvec, default)):
            head = ACTION_HEADS[k % len(ACTION_HEADS)]
            if head in pinned:
                bias[start + int(d)] = PIN_BIAS
            else:
                bias[start + int(d)] = strength + 1.0 if (n == 2 and head == "sleep") else strength
            start += int(n)


def _layers(seq: nn.Module) -> list[nn.Module]:
    return list(seq) if isinstance(seq, nn.Sequential) else [seq]


class StackedPolicies:
    """The forward pass of several same-shaped SB3 MLP policies at once (one per station).

    A station's MLP costs ~0.3 ms per call through SB3 on this CPU, mostly Python
    overhead; stacking the weights and using batched matmuls runs 38 of them in about
    the time of one.
    """

    def __init__(self, policies: Sequence[nn.Module]) -> None:
        self.pi = self._stack([_layers(p.mlp_extractor.policy_net) + [p.action_net] for p in policies])
        self.vf = self._stack([_layers(p.mlp_extractor.value_net) + [p.value_net] for p in policies])

    @staticmethod
    def _stack(chains: list[list[nn.Module]]) -> list:
        out = []
        for depth, layer in enumerate(chains[0]):
            if isinstance(layer, nn.Linear):
                w = torch.stack([c[depth].weight.detach() for c in chains])  # (L, out, in)
                b = torch.stack([c[depth].bias.detach() for c in chains])  # (L, out)
                out.append((w.transpose(1, 2).contiguous(), b))
            else:
                out.append(layer)
        return out

    @staticmethod
    def _run(chain, x: Tensor) -> Tensor:
        x = x.unsqueeze(1)  # (L, 1, in)
        for layer in chain:
            if isinstance(layer, tuple):
                w, b = layer
                x = torch.baddbmm(b.unsqueeze(1), x, w)
            else:
                x = layer(x)
        return x.squeeze(1)

    @torch.no_grad()
    def logits(self, obs: Tensor) -> Tensor:
        return self._run(self.pi, obs)

    @torch.no_grad()
    def values(self, obs: Tensor) -> Tensor:
        return self._run(self.vf, obs).squeeze(-1)


def policy_actions(logits: Tensor, nvec: Sequence[int], generator: torch.Generator | None,
                   greedy: bool = False) -> tuple[np.ndarray, Tensor]:
    """Sample (or take the argmax of) a MultiDiscrete action per row; (actions, log-prob).

    The same distribution as SB3's ``MultiCategoricalDistribution``: one categorical per
    component over its slice of the logits, log-probabilities summed.
    """
    acts, logp = [], torch.zeros(len(logits))
    for part in torch.split(logits, list(nvec), dim=1):
        log_p = torch.log_softmax(part, dim=1)
        if greedy:
            a = part.argmax(dim=1)
        else:
            a = torch.multinomial(log_p.exp(), 1, generator=generator).squeeze(1)
        acts.append(a)
        logp += log_p.gather(1, a[:, None]).squeeze(1)
    return torch.stack(acts, dim=1).numpy().astype(np.int64), logp


# --------------------------------------------------------------------------- the commons


@dataclass
class Experience:
    """One station's transitions of one collection, ready for a rollout buffer."""

    obs: np.ndarray  # (n, d)
    actions: np.ndarray  # (n, 3)
    rewards: np.ndarray  # (n,) normalised
    starts: np.ndarray  # (n,)
    values: np.ndarray  # (n,)
    log_probs: np.ndarray  # (n,)
    last_value: float
    last_done: bool
    collection: int
    env_steps: int  # the env steps the transitions cover (hold_steps per transition)


class RadioCommons:
    """The radio network the stations share, and their digital twins for scoring.

    :param config: the radio scenario.
    :param settings: training settings (reward kind, eval steps, discount).
    :param seed: seeds the training network and the action sampling.
    :param val_seed: seed of the twin episode the gate scores on.
    :param test_seed: seed of the twin episode the measurements use.
    :param rule_params: with ``settings.action = "residual"``, the tuned rule the stations
        correct (default: the rule's starting parameters, :data:`~.rules.RULE_START`).

    With residual actions the stations' actions here are corrections (``nvec``,
    ``default`` = no correction) and their observations carry the rule's plan
    (``obs_dim``); the "static configuration" every score and difference reward is
    measured against is then the tuned rule itself.
    """

    def __init__(self, config: BaseStationConfig, settings: TrainingSettings, seed: int,
                 val_seed: int = 10_000, test_seed: int = 20_000,
                 rule_params: Mapping[str, Any] | None = None) -> None:
        self.config, self.settings = config, settings
        self.env = BaseStationParallelEnv(config)
        self.twin = BaseStationParallelEnv(config)
        self.agents = list(self.env.possible_agents)
        self.S = len(self.agents)
        net = self.env.network
        self.residuals: dict[int, Residual] = {}
        self.rule_params: dict[str, Any] | None = None
        if settings.action == "residual":
            from .rules import RULE_START

            self.rule_params = dict(rule_params) if rule_params is not None else dict(RULE_START)
            for e in (self.env, self.twin):
                self.residuals[id(e)] = Residual(e, self.rule_params, settings.residual_steps,
                                                 settings.residual_raise_power)
            res = self.residuals[id(self.env)]
            self.nvec, self.default, self.obs_dim = list(res.nvec), res.zeros(), res.obs_dim
        else:
            self.nvec = [net.n_power_levels, net.n_cio, 2]
            self.default = net.default_actions()
            self.obs_dim = net.obs_dim
        self.off = net.off.copy()
        self.hood = hood_matrix(self.env)
        self.val_seed, self.test_seed = val_seed, test_seed
        self.learners: dict[int, StationLearner] = {}
        self._gen = torch.Generator().manual_seed(seed)
        obs, _ = self.env.reset(seed=seed)
        self._obs = self._stack(obs)
        self._start = True
        self.collections = 0
        self.env_steps = 0
        # Reward normalisation from the static configuration, one for the whole network
        # so that every station's critic speaks the same units (merges stay meaningful).
        self.reference = {seed_: self._static_returns(seed_) for seed_ in (val_seed, test_seed)}
        rewards = self._static_rewards(seed)
        self.reward_mean = float(rewards.mean())
        self.reward_scale = float(max(rewards.std(), 0.05 * abs(self.reward_mean), 1e-3))
        # Scores in units of the per-step reward's spread: a station's own choices move its
        # neighbourhood's reward by tenths of it, which the gate's tolerance must resolve.
        self.score_scale = self.reward_scale

    # -- helpers ------------------------------------------------------------------------

    def residual_of(self, env: BaseStationParallelEnv) -> Residual | None:
        """The residual mapping of one of the commons' envs (None with absolute actions)."""
        return self.residuals.get(id(env))

    def _stack(self, obs: Mapping[str, np.ndarray], env: BaseStationParallelEnv | None = None) -> np.ndarray:
        """(S, obs_dim) what the stations see (with residual actions: the rule plans now)."""
        res = self.residuals.get(id(env if env is not None else self.env))
        if res is not None:
            return res.observe(obs)
        return np.stack([obs[a] for a in self.agents]).astype(np.float32)

    def _env_actions(self, actions: np.ndarray, env: BaseStationParallelEnv | None = None) -> np.ndarray:
        """(S, 3) env actions for the stations' (S, 3) actions (corrections, with residual actions)."""
        res = self.residuals.get(id(env if env is not None else self.env))
        return actions if res is None else res.to_env(actions)

    def station_rewards(self, rewards: Mapping[str, float]) -> np.ndarray:
        r = np.array([rewards[a] for a in self.agents])
        return r if self.settings.reward == "own" else self.hood @ r

    def _play(self, env: BaseStationParallelEnv, seed: int, steps: int,
              act: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """(steps, S) per-station rewards of one twin episode driven by ``act(obs (S, d))``."""
        obs, _ = env.reset(seed=seed)
        out = []
        for _ in range(steps):
            o = self._stack(obs, env)
            a = self._env_actions(act(o), env)
            obs, rewards, _, truncs, _ = env.step({ag: a[i] for i, ag in enumerate(self.agents)})
            out.append(self.station_rewards(rewards))
            if truncs[self.agents[0]]:
                obs, _ = env.reset()
        return np.asarray(out)

    def _static_rewards(self, seed: int) -> np.ndarray:
        return self._play(self.twin, seed, self.settings.chunk_steps, lambda o: self.default)[:, ~self.off]

    def _static_returns(self, seed: int) -> np.ndarray:
        return self._twin_mean(seed, lambda o: self.default)

    def _twin_mean(self, seed: int, act: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """(S,) mean per-step rewards over ``settings.twin_episodes`` twin episodes from ``seed`` on."""
        return np.mean([self._play(self.twin, seed + j, self.settings.eval_steps, act).mean(axis=0)
                        for j in range(self.settings.twin_episodes)], axis=0)

    # -- training experience ------------------------------------------------------------

    def register(self, learner: "StationLearner") -> None:
        self.learners[learner.station] = learner

    def collect(self, n: int) -> None:
        """Play ``n`` steps with every registered station's current policy; each station
        receives its own transitions (a station without a learner, one in outage, keeps
        the static configuration).

        With ``settings.hold_steps`` h > 1 the stations decide every h steps and hold
        their actions in between: one transition per decision (``ceil(n / h)`` of them),
        its reward the decision's whole window (the difference reward over
        ``max(h, difference_steps)`` steps, or the sum of the h steps' normalised
        rewards)."""
        stations = sorted(self.learners)
        stacked = StackedPolicies([self.learners[s].model.policy for s in stations])
        idx = np.asarray(stations)
        hold = self.settings.hold_steps
        m = -(-n // hold)
        L, d = len(stations), self._obs.shape[1]
        obs_b = np.zeros((m, L, d), dtype=np.float32)
        act_b = np.zeros((m, L, 3), dtype=np.int64)
        rew_b = np.zeros((m, L), dtype=np.float32)
        start_b = np.zeros((m, L), dtype=np.float32)
        val_b = np.zeros((m, L), dtype=np.float32)
        logp_b = np.zeros((m, L), dtype=np.float32)
        gamma = self.settings.gamma
        difference = self.settings.reward == "difference"
        played = 0
        for t in range(m):
            o = torch.from_numpy(self._obs[idx])
            logits = stacked.logits(o)
            a, logp = policy_actions(logits, self.nvec, self._gen)
            values = stacked.values(o)
            actions = self.default.copy()
            actions[idx] = a
            env_actions = self._env_actions(actions)
            if difference:
                credit = self._credits(actions, idx, max(hold, self.settings.difference_steps))
            r = np.zeros(L)
            done = False
            for _ in range(min(hold, n - played)):
                obs, rewards, _, truncs, _ = self.env.step({ag: env_actions[i] for i, ag in enumerate(self.agents)})
                played += 1
                if not difference:
                    r += (self.station_rewards(rewards)[idx] - self.reward_mean) / self.reward_scale
                done = bool(truncs[self.agents[0]])
                if done:
                    break
            if difference:
                r = credit / self.reward_scale
            next_obs = self._stack(obs)
            if done:
                # a time limit, not a terminal state: bootstrap from the last observation
                # (SB3's collect_rollouts does the same for TimeLimit truncations)
                r = r + gamma * stacked.values(torch.from_numpy(next_obs[idx])).numpy()
                obs, _ = self.env.reset()
                next_obs = self._stack(obs)
            obs_b[t], act_b[t], rew_b[t] = self._obs[idx], a, r
            start_b[t], val_b[t], logp_b[t] = float(self._start), values.numpy(), logp.numpy()
            self._obs, self._start = next_obs, done
        last = stacked.values(torch.from_numpy(self._obs[idx])).numpy()
        self.collections += 1
        self.env_steps += played
        for k, s in enumerate(stations):
            self.learners[s].pending = Experience(
                obs_b[:, k].copy(), act_b[:, k].copy(), rew_b[:, k].copy(), start_b[:, k].copy(),
                val_b[:, k].copy(), logp_b[:, k].copy(), float(last[k]), self._start, self.collections, n)

    def _credits(self, actions: np.ndarray, stations: np.ndarray, steps: int | None = None) -> np.ndarray:
        """Each of ``stations``' difference reward for ``actions``: the network's total
        reward over the coming ``settings.difference_steps`` steps minus that total had
        the station acted statically (every other station as in ``actions``).

        Both are the same steps replayed on forks of the training network (random
        generator copied, so users move, arrive and fade exactly as they will in the real
        steps; the actions held over the steps). More than one step lets an offset's
        effect show: it moves users only after the handover's time-to-trigger. A station
        whose action is the static one changed nothing: its credit is 0, no replay.

        This is centralised training for decentralised execution: the simulator that
        trains the stations replays the step for them; a live station could not, and the
        deployed policies act on their own observations only.
        """
        net = self.env.network
        steps = steps or self.settings.difference_steps
        out = np.zeros(len(stations))
        total = None
        played = self._env_actions(actions)
        static = self._env_actions(self.default)  # with residual actions: the rule's
        for k, s in enumerate(stations):
            if (actions[s] == self.default[s]).all():
                continue
            if total is None:
                total = _Fork(net).step_total(played, steps)
            alt = played.copy()
            alt[s] = static[s]
            out[k] = total - _Fork(net).step_total(alt, steps)
        return out

    def experience_for(self, learner: "StationLearner", n: int) -> Experience:
        """The station's newest unused experience of ``n`` steps, collecting if needed.

        Stations train in step (same compute per chunk), so one collection serves every
        station's next chunk; a station that fell behind gets the newest data only.
        """
        exp = learner.pending
        if exp is None or exp.env_steps != n:
            self.collect(n)
            exp = learner.pending
        learner.pending = None
        return exp

    # -- scoring on the twin --------------------------------------------------------------

    def twin_returns(self, policy: nn.Module, seed: int, station: int,
                     peers: Sequence[tuple[int, nn.Module]] = ()) -> np.ndarray:
        """(S,) mean per-step rewards on the twin with ``policy`` acting greedily at ``station``.

        ``settings.twin``: ``"peers"``: the neighbours whose models the station has
        received act with those, the rest keep the static configuration; ``"static"``:
        every other station keeps the static configuration; ``"alike"``: every station
        acts with ``policy`` ("if my neighbours acted like me").
        """
        mode = self.settings.twin
        if mode == "alike":
            def act(o: np.ndarray) -> np.ndarray:
                a, _ = policy_actions(_single_logits(policy, torch.from_numpy(o)), self.nvec, None, greedy=True)
                a[self.off] = self.default[self.off]
                return a
        else:
            who = [(station, policy)] + ([(s, m) for s, m in peers if s != station] if mode == "peers" else [])
            idx = np.asarray([s for s, _ in who])
            stacked = StackedPolicies([m for _, m in who])

            def act(o: np.ndarray) -> np.ndarray:
                a = self.default.copy()
                a[idx], _ = policy_actions(stacked.logits(torch.from_numpy(o[idx])), self.nvec, None, greedy=True)
                return a

        return self._twin_mean(seed, act)

    def score_of(self, returns: np.ndarray, station: int, seed: int) -> float:
        return 1.0 + float(returns[station] - self.reference[seed][station]) / self.score_scale


def fork_network(net):
    """A copy of a :class:`CellularNetwork` that can be stepped without touching the
    original: its arrays and its random generator are copied (the same future), the
    layout is shared."""
    twin = object.__new__(type(net))
    twin.__dict__ = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in net.__dict__.items()}
    twin.rng = copy.deepcopy(net.rng)
    return twin


class _Fork:
    """A network fork (:func:`fork_network`) and the stations' reward summed over steps."""

    def __init__(self, net) -> None:
        self.net = fork_network(net)

    def step_total(self, actions: np.ndarray, steps: int = 1) -> float:
        """Step ``steps`` times with ``actions``; the sum of the stations' rewards (what
        the env pays) over those steps."""
        total = 0.0
        for _ in range(steps):
            self.net.step(actions)
            rewards, _ = self.net.station_rewards()
            total += float(rewards.sum())
        return total


def actor_logits(policy: nn.Module, obs: Tensor) -> Tensor:
    """The action logits of an SB3 actor-critic policy on a batch, with gradients."""
    latent = policy.mlp_extractor.forward_actor(policy.extract_features(obs, policy.pi_features_extractor))
    return policy.action_net(latent)


@torch.no_grad()
def _single_logits(policy: nn.Module, obs: Tensor) -> Tensor:
    """Logits of one SB3 actor-critic policy on a batch (all stations acting alike)."""
    return actor_logits(policy, obs)


# --------------------------------------------------------------------------- the learner


class StationLearner(Learner):
    """One base station's PPO agent behind the MFD :class:`Learner` interface.

    :param commons: the shared radio network (experience and digital twin).
    :param station: the station's index (agent ``bs_<station>``).
    :param settings: PPO settings.
    :param seed: the PPO model's seed; the same for every station of a fleet, so that
        all start from one initialisation and their averages stay meaningful.
    """

    output_kind = "categorical"

    def __init__(self, commons: RadioCommons, station: int, settings: TrainingSettings, seed: int = 0,
                 register: bool = True) -> None:
        self.commons, self.station, self.settings = commons, station, settings
        self.family, self.width = FAMILY, 1.0
        self.view = StationView(commons.env, station, reward=settings.reward, residual=commons.residual_of(commons.env))
        self.model = make_ppo(self.view, settings, seed)
        bias_towards_static(self.model.policy, commons.nvec, commons.default[station], settings.static_bias,
                            settings.pinned)
        self.samples = 0
        self.work_done = 0
        self.pending: Experience | None = None
        self._score_cache: dict[int, float] = {}
        # What the station runs (see promote); None: the model being trained.
        self.deployed: dict[str, Tensor] | None = None
        self.deployed_score = -math.inf
        # The latest model heard from each neighbour (MFD packets): the twin plays them.
        self.peers: dict[int, nn.Module] = {}
        self._peers_version = 0
        self._deployed_version = 0
        self._recent_obs = np.zeros((0, commons.obs_dim), dtype=np.float32)
        if settings.action == "residual":
            # An untrained residual station plays the rule exactly (no correction), which
            # its twin scores 1.0 by construction: it runs that until a trained model
            # scores at least as well.
            self.deployed, self.deployed_score = self.get_state(), 1.0
        if register:
            commons.register(self)

    @property
    def num_samples(self) -> int:  # merge weight: the experience behind this model
        return max(self.samples, 1)

    @property
    def policy(self) -> nn.Module:
        return self.model.policy

    # -- training -------------------------------------------------------------------------

    def train(self, steps: int, trainable: Collection[str] | None = None) -> int:
        exp = self.commons.experience_for(self, steps)
        buf = self.model.rollout_buffer
        m = len(exp.obs)  # transitions: steps / hold_steps
        if buf.buffer_size != m:
            buf = self.model.rollout_buffer = RolloutBuffer(
                m, self.model.observation_space, self.model.action_space, device="cpu",
                gamma=self.settings.gamma, gae_lambda=self.settings.gae_lambda)
        buf.reset()
        buf.observations[:, 0] = exp.obs
        buf.actions[:, 0] = exp.actions
        buf.rewards[:, 0] = exp.rewards
        buf.episode_starts[:, 0] = exp.starts
        buf.values[:, 0] = exp.values
        buf.log_probs[:, 0] = exp.log_probs
        buf.pos, buf.full = m, True
        buf.compute_returns_and_advantage(torch.tensor([exp.last_value]), np.array([exp.last_done]))
        frozen = []
        if trainable is not None:
            params = dict(self.policy.named_parameters())
            unknown = set(trainable) - set(params)
            if unknown:
                raise KeyError(f"unknown parameters: {sorted(unknown)}")
            frozen = [p for k, p in params.items() if k not in trainable and p.requires_grad]
            for p in frozen:
                p.requires_grad_(False)
        try:
            self.model.train()
        finally:
            for p in frozen:
                p.requires_grad_(True)
        self.policy.set_training_mode(False)
        self.samples += steps
        self._recent_obs = exp.obs
        self._score_cache.clear()
        work = steps * (1 + self.settings.n_epochs)  # one pass to act, n_epochs to learn
        self.work_done += work
        return work

    # -- scoring --------------------------------------------------------------------------

    def _score(self, seed: int, state: Mapping[str, Tensor] | None) -> float:
        if state is None:
            if seed not in self._score_cache:
                returns = self.commons.twin_returns(self.policy, seed, self.station, self._peer_list())
                self._score_cache[seed] = self.commons.score_of(returns, self.station, seed)
            return self._score_cache[seed]
        scratch = self._scratch()
        full = self.get_state()
        for key, value in state.items():
            if key not in full:
                raise KeyError(f"{key!r} is not a tensor of this model")
            if value.shape != full[key].shape:
                raise ValueError(f"{key}: candidate shape {tuple(value.shape)} != local {tuple(full[key].shape)}")
            full[key] = value.to(full[key].dtype)
        scratch.load_state_dict(full, strict=False)
        returns = self.commons.twin_returns(scratch, seed, self.station, self._peer_list())
        return self.commons.score_of(returns, self.station, seed)

    def _peer_list(self) -> list[tuple[int, nn.Module]]:
        return sorted(self.peers.items(), key=lambda kv: kv[0])

    def _fresh_policy(self) -> nn.Module:
        # a fresh module of the same build: an SB3 policy keeps its last action
        # distribution (tensors with a graph), which deepcopy refuses
        module = type(self.policy)(**self.policy._get_constructor_parameters())
        module.set_training_mode(False)
        return module

    def observe_peer(self, station: int, state: Mapping[str, Tensor]) -> bool:
        """Keep a neighbour's model (complete, same shapes) for the twin to play.

        :return: whether it was kept.
        """
        if station == self.station or self.settings.twin != "peers":
            return False
        local = self.policy.state_dict()
        if set(state) != set(local) or any(state[k].shape != local[k].shape for k in local):
            return False
        if not all(bool(torch.isfinite(v).all()) for v in state.values()):
            return False
        module = self.peers.get(station) or self._fresh_policy()
        module.load_state_dict({k: v.to(local[k].dtype) for k, v in state.items()})
        self.peers[station] = module
        self._peers_version += 1
        self._score_cache.clear()
        return True

    def _scratch(self) -> nn.Module:
        scratch = getattr(self.commons, "_scratch_policy", None)
        if scratch is None:  # candidates are loaded into it, the learner is untouched
            scratch = self._fresh_policy()
            self.commons._scratch_policy = scratch
        return scratch

    def score(self, state: Mapping[str, Tensor] | None = None) -> float:
        """Score on the validation twin (see the module docstring); 1.0 = static configuration."""
        return self._score(self.commons.val_seed, state)

    def test_score(self) -> float:
        """The deployed model on the held-out test twin (what the run's measurements record)."""
        return self._score(self.commons.test_seed, self.deployed)

    def promote(self) -> bool:
        """Deploy the model being trained if the validation twin scores it at least as
        well as the deployed one: what an operator's digital twin would do before
        pushing a new configuration policy to a live cell. PPO on a few hundred noisy
        transitions wanders; the station keeps running its best model meanwhile.

        :return: whether the trained model is now deployed.
        """
        current = self.score()
        if self.deployed is not None and self._deployed_version != self._peers_version:
            # the neighbours changed since the running model was scored: score it again
            self.deployed_score = self._score(self.commons.val_seed, self.deployed)
        self._deployed_version = self._peers_version
        if self.deployed is not None and current < self.deployed_score:
            return False
        self.deployed, self.deployed_score = self.get_state(), current
        return True

    def deployed_state(self) -> dict[str, Tensor]:
        """The model the station runs (the trained one when nothing was promoted)."""
        return {k: v.clone() for k, v in (self.deployed or self.get_state()).items()}

    # -- state ----------------------------------------------------------------------------

    def get_state(self) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in self.policy.state_dict().items()}

    @torch.no_grad()
    def set_state(self, state: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None = None) -> None:
        local = self.policy.state_dict()
        for key, value in state.items():
            if key not in local:
                raise KeyError(f"{key!r} is not a tensor of this model")
            dst = local[key]
            if value.shape != dst.shape:
                raise ValueError(f"{key}: shape {tuple(value.shape)} != local {tuple(dst.shape)}")
            mask = None if masks is None else masks.get(key)
            if mask is None:
                dst.copy_(value)
            else:
                dst.copy_(torch.where(mask.to(torch.bool), value.to(dst.dtype), dst))
        self._score_cache.clear()

    # -- distillation (another architecture teaching this station) -------------------------

    @torch.no_grad()
    def outputs(self, inputs: Tensor) -> Tensor:
        return _single_logits(self.policy, torch.as_tensor(inputs, dtype=torch.float32))

    def local_inputs(self, n: int) -> Tensor:
        return torch.from_numpy(self._recent_obs[:n].copy())

    def distil_from(self, teacher: Callable[[Tensor], Tensor | tuple[Tensor, ...]], steps: int, kind: str, *,
                    temperature: float = 2.0) -> float:
        """Match the teacher's action distribution (KL per action component, summed) on
        the station's recent observations; the critic is left alone."""
        x = self.local_inputs(len(self._recent_obs))
        if len(x) == 0:
            return float("nan")
        with torch.no_grad():
            target = teacher(x)
        params = list(self.policy.mlp_extractor.policy_net.parameters()) + list(self.policy.action_net.parameters())
        opt = torch.optim.Adam(params, lr=self.settings.lr)
        nvec = self.commons.nvec

        def loss_fn() -> Tensor:
            out = actor_logits(self.policy, x)
            return sum(distillation_loss(s, t, "categorical")
                       for s, t in zip(torch.split(out, nvec, 1), torch.split(target, nvec, 1)))

        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn()
            loss.backward()
            opt.step()
        self.work_done += steps * len(x)
        self._score_cache.clear()
        with torch.no_grad():
            return float(loss_fn())

    @torch.no_grad()
    def evaluate(self, inputs: Tensor, targets: Tensor) -> float:
        """Share of rows whose greedy action equals the target action (all components)."""
        logits = self.outputs(inputs)
        a, _ = policy_actions(logits, self.commons.nvec, None, greedy=True)
        t = np.asarray(targets).reshape(len(a), -1)
        return float((a == t).all(axis=1).mean()) if len(a) else float("nan")

    def clone(self) -> "StationLearner":
        """A copy with its own model and optimiser, in the same network (never copied)."""
        twin = StationLearner(self.commons, self.station, self.settings, register=False)
        twin.set_state(self.get_state())
        twin.policy.optimizer.load_state_dict(self.policy.optimizer.state_dict())
        twin.samples, twin.work_done = self.samples, self.work_done
        twin._recent_obs = self._recent_obs.copy()
        twin.peers, twin._peers_version = dict(self.peers), self._peers_version
        if self.deployed is not None:
            twin.deployed = {k: v.clone() for k, v in self.deployed.items()}
        twin.deployed_score, twin._deployed_version = self.deployed_score, self._deployed_version
        return twin

    def save(self, path: str | Path) -> Path:
        """The station's SB3 zip on its own disk (``PPO.load`` reads it back)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.model.save(path)
        return path.with_suffix(".zip") if path.suffix != ".zip" else path

    def __repr__(self) -> str:
        return f"StationLearner(station={self.station}, samples={self.samples})"


