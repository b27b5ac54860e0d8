"""Per-station PPO agents (Stable-Baselines3) that live in one shared radio network.

Each base station owns an SB3 :class:`~stable_baselines3.PPO` model and learns only
from its own experience: its observations, its actions and its reward. The stations
share one radio network, so their experience comes from one
:class:`~envs.basestation.BaseStationParallelEnv` in which every station acts with its
current policy (independent learners). That part is the core's shared-environment
learner (:mod:`mfd_core.learners.shared_env`): :class:`RadioCommons` is its commons
(one batched forward for all stations, each station handed its own transitions, then
SB3's PPO update); what is radio here are its hooks: residual actions on the tuned rule
(observation and action transforms), the stations' rewards (neighbourhood mean,
normalised, or the difference reward replayed on forks of the network) and the digital
twin that scores a station's models.

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
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.logger import configure
from torch import Tensor, nn

from envs.basestation import BaseStationConfig, BaseStationParallelEnv
from mfd_core.learners.shared_env import (SharedEnvCommons, SharedEnvLearner, StackedPolicies, actor_logits,
                                          policy_actions)

from .config import ACTION_HEADS, TrainingSettings
from .residual import Residual

__all__ = ["single_thread", "RadioCommons", "StationLearner", "StationView", "make_ppo", "policy_actions",
           "bias_towards_static", "FAMILY", "StackedPolicies", "actor_logits", "fork_network", "hood_matrix"]

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

# --------------------------------------------------------------------------- the commons


class RadioCommons(SharedEnvCommons):
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

    A station in outage has no learner and keeps the static configuration
    (:meth:`idle_action`). With ``settings.hold_steps`` h > 1 the stations decide every h
    steps and hold their actions in between (the core's ``hold_steps``): one transition
    per decision, its reward the decision's whole window (the difference reward over
    ``max(h, difference_steps)`` steps, or the sum of the h steps' normalised rewards).
    """

    def __init__(self, config: BaseStationConfig, settings: TrainingSettings, seed: int,
                 val_seed: int = 10_000, test_seed: int = 20_000,
                 rule_params: Mapping[str, Any] | None = None) -> None:
        self.config, self.settings = config, settings
        env = BaseStationParallelEnv(config)
        super().__init__(env, seed, gamma=settings.gamma, hold_steps=settings.hold_steps)
        self.twin = BaseStationParallelEnv(config)
        self.S = len(self.agents)
        self._index_cache: dict[tuple[str, ...], np.ndarray] = {}
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
        self.reset(seed)
        # Reward normalisation from the static configuration, one for the whole network
        # so that every station's critic speaks the same units (merges stay meaningful).
        self.reference = {seed_: self._static_returns(seed_) for seed_ in (val_seed, test_seed)}
        rewards = self._static_rewards(seed)
        self.reward_mean = float(rewards.mean())
        self.reward_scale = float(max(rewards.std(), 0.05 * abs(self.reward_mean), 1e-3))
        # Scores in units of the per-step reward's spread: a station's own choices move its
        # neighbourhood's reward by tenths of it, which the gate's tolerance must resolve.
        self.score_scale = self.reward_scale

    # -- the core's hooks: what the stations see, do and are paid ----------------------------

    def observe(self, obs: Mapping[str, np.ndarray], env: Any = None) -> dict[str, np.ndarray]:
        rows = self._stack(obs, env)
        return {a: rows[i] for i, a in enumerate(self.agents)}

    def env_actions(self, actions: Mapping[str, np.ndarray], env: Any = None) -> dict[str, np.ndarray]:
        a = self._env_actions(np.stack([actions[ag] for ag in self.agents]), env)
        return {ag: a[i] for i, ag in enumerate(self.agents)}

    def idle_action(self, agent: str) -> np.ndarray:
        return self.default[self.index[agent]]

    def reward(self, rewards: Mapping[str, float], agents: Sequence[str]) -> np.ndarray:
        return (self.station_rewards(rewards)[self._indices(agents)] - self.reward_mean) / self.reward_scale

    def credit(self, actions: Mapping[str, np.ndarray], agents: Sequence[str], hold: int) -> np.ndarray | None:
        if self.settings.reward != "difference":
            return None
        a = np.stack([actions[ag] for ag in self.agents])
        return self._credits(a, self._indices(agents), max(hold, self.settings.difference_steps)) / self.reward_scale

    def _indices(self, agents: Sequence[str]) -> np.ndarray:
        key = tuple(agents)
        if key not in self._index_cache:
            self._index_cache = {key: np.asarray([self.index[a] for a in agents])}
        return self._index_cache[key]

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

    # -- difference rewards -------------------------------------------------------------

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
            @torch.no_grad()
            def act(o: np.ndarray) -> np.ndarray:
                a, _ = policy_actions(actor_logits(policy, torch.from_numpy(o)), self.nvec, None, greedy=True)
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

# --------------------------------------------------------------------------- the learner


class StationLearner(SharedEnvLearner):
    """One base station's PPO agent behind the MFD :class:`Learner` interface.

    Training is the core's (:class:`~mfd_core.learners.shared_env.SharedEnvLearner`:
    PPO on the station's own transitions); the station adds its twin scores, the
    deploy-if-better gate and the neighbours' models its twin plays.

    :param commons: the shared radio network (experience and digital twin).
    :param station: the station's index (agent ``bs_<station>``).
    :param settings: PPO settings.
    :param seed: the PPO model's seed; the same for every station of a fleet, so that
        all start from one initialisation and their averages stay meaningful.
    """

    def __init__(self, commons: RadioCommons, station: int, settings: TrainingSettings, seed: int = 0,
                 register: bool = True) -> None:
        self.station, self.settings = station, settings
        self.view = StationView(commons.env, station, reward=settings.reward, residual=commons.residual_of(commons.env))
        model = make_ppo(self.view, settings, seed)
        bias_towards_static(model.policy, commons.nvec, commons.default[station], settings.static_bias,
                            settings.pinned)
        super().__init__(commons, f"bs_{station}", model, family=FAMILY, register=False)
        self.commons: RadioCommons = commons
        self._score_cache: dict[int, float] = {}
        # What the station runs (see promote); None: the model being trained.
        self.deployed: dict[str, Tensor] | None = None
        self.deployed_score = -math.inf
        # The latest model heard from each neighbour (MFD packets): the twin plays them.
        self.peers: dict[int, nn.Module] = {}
        self._peers_version = 0
        self._deployed_version = 0
        # An untrained residual station plays the rule exactly (no correction), which its
        # twin scores 1.0 by construction: under the deploy gate (promote) it runs that
        # until a trained model scores at least as well. Without the gate (deploy =
        # "always", FedAvg's clients) the model being trained runs, as for absolute actions.
        self.rule_start: tuple[dict[str, Tensor], float] | None = (
            (self.get_state(), 1.0) if settings.action == "residual" else None)
        if register:
            commons.register(self)

    def changed(self) -> None:
        self._score_cache.clear()

    # -- scoring --------------------------------------------------------------------------

    def _score(self, seed: int, state: Mapping[str, Tensor] | None) -> float:
        if state is None:
            if seed not in self._score_cache:
                returns = self.commons.twin_returns(self.policy, seed, self.station, self._peer_list())
                self._score_cache[seed] = self.commons.score_of(returns, self.station, seed)
            return self._score_cache[seed]
        returns = self.commons.twin_returns(self.candidate_policy(state), seed, self.station, self._peer_list())
        return self.commons.score_of(returns, self.station, seed)

    def _peer_list(self) -> list[tuple[int, nn.Module]]:
        return sorted(self.peers.items(), key=lambda kv: kv[0])

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
        module = self.peers.get(station) or self.fresh_policy()
        module.load_state_dict({k: v.to(local[k].dtype) for k, v in state.items()})
        self.peers[station] = module
        self._peers_version += 1
        self._score_cache.clear()
        return True

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
        if self.deployed is None and self.rule_start is not None:
            self.deployed, self.deployed_score = self.rule_start  # the gate's first comparison: the rule
        self.rule_start = None
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

    def clone(self) -> "StationLearner":
        """A copy with its own model and optimiser, in the same network (never copied)."""
        twin = StationLearner(self.commons, self.station, self.settings, register=False)
        twin.set_state(self.get_state())
        twin.policy.optimizer.load_state_dict(self.policy.optimizer.state_dict())
        twin.samples, twin.work_done = self.samples, self.work_done
        twin.recent_obs = self.recent_obs.copy()
        twin.peers, twin._peers_version = dict(self.peers), self._peers_version
        if self.deployed is not None:
            twin.deployed = {k: v.clone() for k, v in self.deployed.items()}
        if self.rule_start is not None:
            twin.rule_start = ({k: v.clone() for k, v in self.rule_start[0].items()}, self.rule_start[1])
        twin.deployed_score, twin._deployed_version = self.deployed_score, self._deployed_version
        return twin

    def __repr__(self) -> str:
        return f"StationLearner(station={self.station}, samples={self.samples})"
