"""Per-agent PPO learners that share one multi-agent environment (PettingZoo Parallel API).

In :mod:`mfd_core.learners.sb3` every node owns its env. Here the agents live in one
world: a :class:`~pettingzoo.ParallelEnv` in which each agent's action changes what the
others see (cells sharing a spectrum, robots sharing a floor). Every agent still learns
only from its own experience, so each is its own :class:`SharedEnvLearner` (the node's
:class:`~mfd_core.learners.base.Learner`), and the world is a :class:`SharedEnvCommons`:
when an agent asks for experience it has not had yet, the commons plays ``n`` steps with
*every* registered agent's current policy and hands each agent its own transitions
(independent learners, as in supersuit's ``pettingzoo_env_to_vec_env_v1`` + one PPO per
agent, but with one model per agent instead of one shared model). The agent then runs
SB3's own PPO update on them: its :class:`~stable_baselines3.common.buffers.RolloutBuffer`
is filled with ``add`` and ``compute_returns_and_advantage`` (GAE) exactly as
``OnPolicyAlgorithm.collect_rollouts`` fills it, and :meth:`PPO.train` learns. SB3 has no
multi-agent collector; this is the part of ``collect_rollouts`` that differs (one env
step serves every agent), nothing more.

Acting is batched: agents whose SB3 ``MlpPolicy`` networks have the same shapes run one
stacked forward (:class:`StackedPolicies`: batched matmuls, ~40 small MLPs in the time
of one), agents with other spaces or widths form their own batches. Action spaces:
``Discrete``, ``MultiDiscrete`` (one categorical per component, as SB3's
``MultiCategoricalDistribution``) and ``Box`` (SB3's diagonal Gaussian, clipped to the
bounds for the env, stored unclipped, as SB3 does); ``Box`` observations.

What an application adds is a subclass of :class:`SharedEnvCommons` overriding hooks,
in the spirit of SB3's callbacks (behaviour around the loop, not a fork of it):

- :meth:`~SharedEnvCommons.observe`: what the agents see (e.g. extra features computed
  from all agents' observations);
- :meth:`~SharedEnvCommons.env_actions`: the env's actions for the agents' actions (e.g.
  an agent's action is a correction to a rule's);
- :meth:`~SharedEnvCommons.idle_action`: what an agent without a learner plays;
- :meth:`~SharedEnvCommons.reward` / :meth:`~SharedEnvCommons.credit`: reward shaping
  per step, or a per-decision credit (e.g. a difference reward from a counterfactual);
- :meth:`~SharedEnvCommons.score`: how a candidate policy is scored for the gate.

Who uses it: the LM4Net base stations (``apps/basestation/learner.py``: ``RadioCommons``
adds residual actions on a tuned rule, difference rewards replayed on forks of the radio
network and digital-twin scores; ``StationLearner`` adds the deploy-if-better gate). The
Net4LM robots give each robot its own env (``apps/robots/fleet.py`` with
:class:`~mfd_core.learners.sb3.SB3Learner`); robots sharing one cell (one PyBullet
scene with several arms as a ``ParallelEnv``) would use this module instead: one
:class:`SharedEnvCommons` for the cell and a :class:`SharedEnvLearner` per arm around a
PPO on ``Box`` actions, the rest of the fleet unchanged (off-policy TD3/SAC would need a
replay-buffer counterpart of :meth:`SharedEnvLearner.learn_from`).

Limits: agents act in lockstep and an episode ends for all of them at once (when every
agent is terminated or truncated, the env is reset); SB3's ``MlpPolicy`` only (no
shared feature extractor between actor and critic, no SDE, no squashed outputs).
"""
from __future__ import annotations

import io
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn

from mfd_core.knowledge import distillation_loss
from mfd_core.learners.base import Learner, check_state, only_trainable

__all__ = ["SharedEnvCommons", "SharedEnvLearner", "Transitions", "StackedPolicies", "policy_actions",
           "gaussian_actions", "actor_logits", "make_ppo"]

LOG_SQRT_2PI = 0.5 * float(np.log(2 * np.pi))


# --------------------------------------------------------------------------- acting


def _layers(seq: nn.Module) -> list[nn.Module]:
    return list(seq) if isinstance(seq, nn.Sequential) else [seq]


def _nvec(space: spaces.Space) -> list[int] | None:
    """The categorical components of a discrete action space; None for ``Box``."""
    if isinstance(space, spaces.Discrete):
        return [int(space.n)]
    if isinstance(space, spaces.MultiDiscrete):
        return [int(n) for n in np.asarray(space.nvec).reshape(-1)]
    if isinstance(space, spaces.Box):
        return None
    raise TypeError(f"action space {type(space).__name__}: Discrete, MultiDiscrete or Box expected")


def signature(policy: nn.Module) -> tuple:
    """What must agree for policies to run in one :class:`StackedPolicies`: the
    class, the spaces and every tensor's shape."""
    return (type(policy).__name__, repr(policy.observation_space), repr(policy.action_space),
            tuple((k, tuple(v.shape)) for k, v in policy.state_dict().items()))


class StackedPolicies:
    """The forward pass of several same-shaped SB3 MLP actor-critic policies at once.

    One agent's MLP costs ~0.3 ms per call through SB3 on a CPU, mostly Python
    overhead; stacking the weights and using batched matmuls runs 38 of them in about
    the time of one. Row ``i`` of every input and output belongs to ``policies[i]``.
    The weights are copied at construction: build a new one after the policies change.
    """

    def __init__(self, policies: Sequence[nn.Module]) -> None:
        first = policies[0]
        if getattr(first, "use_sde", False) or getattr(first, "squash_output", False):
            raise TypeError("StackedPolicies: SDE and squashed outputs are not supported")
        self.action_space = first.action_space
        self.nvec = _nvec(self.action_space)
        self.pi = self._stack([_layers(p.mlp_extractor.policy_net) + [p.action_net] for p in policies])
        self.vf = self._stack([_layers(p.mlp_extractor.value_net) + [p.value_net] for p in policies])
        self.log_std = None if self.nvec is not None else torch.stack([p.log_std.detach() for p in policies])

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
        """(L, k) action logits (discrete actions) or Gaussian means (``Box``)."""
        return self._run(self.pi, obs)

    @torch.no_grad()
    def values(self, obs: Tensor) -> Tensor:
        return self._run(self.vf, obs).squeeze(-1)

    @torch.no_grad()
    def act(self, obs: Tensor, generator: torch.Generator | None, greedy: bool = False) -> tuple[np.ndarray, Tensor]:
        """(actions (L, k), log-probabilities (L,)) as the policies' SB3 distributions give them."""
        out = self.logits(obs)
        if self.nvec is not None:
            return policy_actions(out, self.nvec, generator, greedy)
        return gaussian_actions(out, self.log_std, generator, greedy)


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


def gaussian_actions(mean: Tensor, log_std: Tensor, generator: torch.Generator | None,
                     greedy: bool = False) -> tuple[np.ndarray, Tensor]:
    """Sample (or take the mean of) SB3's diagonal Gaussian per row; (actions, log-prob)."""
    log_std = torch.broadcast_to(log_std, mean.shape)
    a = mean if greedy else mean + log_std.exp() * torch.randn(mean.shape, generator=generator)
    logp = (-0.5 * ((a - mean) / log_std.exp()) ** 2 - log_std - LOG_SQRT_2PI).sum(dim=1)
    return a.numpy().astype(np.float32), logp


def actor_logits(policy: nn.Module, obs: Tensor) -> Tensor:
    """The action logits (Gaussian mean for ``Box``) of an SB3 actor-critic policy, with gradients."""
    latent = policy.mlp_extractor.forward_actor(policy.extract_features(obs, policy.pi_features_extractor))
    return policy.action_net(latent)


class _Spaces(gym.Env):
    """An env that only declares spaces: what SB3 needs to build a model that never
    steps its own env (the commons steps the shared one)."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space) -> None:
        self.observation_space, self.action_space = observation_space, action_space

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        raise RuntimeError("this model learns from a SharedEnvCommons; it has no env of its own")

    def step(self, action):
        raise RuntimeError("this model learns from a SharedEnvCommons; it has no env of its own")


def make_ppo(observation_space: spaces.Space, action_space: spaces.Space, seed: int = 0, **kwargs: Any):
    """An SB3 PPO (``MlpPolicy``, CPU, no logging) for one agent of a shared env.

    :param kwargs: PPO's arguments (``n_steps`` is only the first rollout buffer's size:
        :meth:`SharedEnvLearner.learn_from` sizes it to the transitions it gets).
    """
    from stable_baselines3 import PPO
    from stable_baselines3.common.logger import configure
    from stable_baselines3.common.vec_env import DummyVecEnv

    env = _Spaces(observation_space, action_space)
    kwargs.setdefault("device", "cpu")
    model = PPO("MlpPolicy", DummyVecEnv([lambda: env]), seed=seed, verbose=0, **kwargs)
    model.set_logger(configure(None, [""]))
    return model


# --------------------------------------------------------------------------- the commons


@dataclass
class Transitions:
    """One agent's transitions of one collection, ready for a rollout buffer."""

    obs: np.ndarray  # (n, *obs_shape)
    actions: np.ndarray  # (n, action_dim)
    rewards: np.ndarray  # (n,) as the commons' reward / credit hooks shaped them
    starts: np.ndarray  # (n,) 1.0 where an episode started
    values: np.ndarray  # (n,) the critic's values when acting
    log_probs: np.ndarray  # (n,)
    last_value: float  # the critic's value of the observation after the last transition
    last_done: bool  # whether the last transition ended an episode
    collection: int  # which collection of the commons (1, 2, ...)
    env_steps: int  # the env steps the transitions cover (hold_steps per transition)


class SharedEnvCommons:
    """A PettingZoo ``ParallelEnv`` that several learners share, played with their
    current policies (see the module docstring for the hooks).

    :param env: the shared env; only :meth:`collect` steps it.
    :param seed: seeds the first reset and the action sampling.
    :param gamma: the discount for bootstrapping a time-limit truncation (the agents'
        PPO ``gamma``, as ``collect_rollouts`` adds ``gamma * V(terminal obs)``).
    :param hold_steps: agents decide every this many env steps and hold their action in
        between; one transition per decision, its reward summed over the steps.
    :param eval_env: the env the default :meth:`score` plays (a second instance, so
        that scoring never moves the training env).
    :param eval_seed: seed of the default score's first episode.
    :param eval_steps: env steps the default score plays.
    """

    def __init__(self, env: Any, seed: int, *, gamma: float = 0.99, hold_steps: int = 1, eval_env: Any = None,
                 eval_seed: int = 10_000, eval_steps: int = 100) -> None:
        if hold_steps < 1:
            raise ValueError(f"hold_steps must be at least 1, got {hold_steps}")
        self.env, self.seed, self.gamma, self.hold_steps = env, seed, float(gamma), int(hold_steps)
        self.eval_env, self.eval_seed, self.eval_steps = eval_env, eval_seed, eval_steps
        self.agents: list[str] = list(env.possible_agents)
        self.index = {a: i for i, a in enumerate(self.agents)}
        self.learners: dict[str, SharedEnvLearner] = {}
        self.generator = torch.Generator().manual_seed(seed)
        self.obs: dict[str, np.ndarray] | None = None  # what the agents see now
        self.start = True  # whether `obs` starts an episode
        self.collections = 0
        self.env_steps = 0
        self._scratch: dict[tuple, nn.Module] = {}

    # -- hooks (override in an application's subclass) ---------------------------------

    def observe(self, obs: Mapping[str, Any], env: Any = None) -> dict[str, np.ndarray]:
        """What each agent sees, from the env's observations (``env``: which env they
        came from, the shared one by default). Called once per env step and reset."""
        return {a: np.array(obs[a], dtype=np.float32) for a in obs}

    def env_actions(self, actions: Mapping[str, np.ndarray], env: Any = None) -> dict[str, Any]:
        """The env's actions for the agents' actions (every agent, idle ones included);
        by default ``Box`` actions are clipped to their bounds, as SB3 does."""
        env = self.env if env is None else env
        out: dict[str, Any] = {}
        for a, act in actions.items():
            space = env.action_space(a)
            if isinstance(space, spaces.Box):
                out[a] = np.clip(act, space.low, space.high)
            elif isinstance(space, spaces.Discrete):
                out[a] = int(np.asarray(act).reshape(-1)[0])
            else:
                out[a] = act
        return out

    def idle_action(self, agent: str) -> np.ndarray:
        """The action of an agent that has no learner (default: none may be idle)."""
        raise KeyError(f"agent {agent!r} has no learner; override idle_action to let it idle")

    def reward(self, rewards: Mapping[str, float], agents: Sequence[str]) -> np.ndarray:
        """(len(agents),) the agents' rewards for one env step (summed over held steps)."""
        return np.array([rewards[a] for a in agents], dtype=np.float64)

    def credit(self, actions: Mapping[str, np.ndarray], agents: Sequence[str], hold: int) -> np.ndarray | None:
        """Called before a decision's steps are played: (len(agents),) rewards for this
        decision that replace the summed :meth:`reward` (e.g. a difference reward from
        counterfactual replays), or None (the default) to sum :meth:`reward`."""
        return None

    def score(self, learner: "SharedEnvLearner", policy: nn.Module) -> float:
        """A candidate ``policy`` for ``learner``'s agent, scored for the gate: by default
        its mean per-step :meth:`reward` over ``eval_steps`` steps of ``eval_env`` from
        ``eval_seed``, acting greedily, the other agents greedy with their current policies."""
        if self.eval_env is None:
            raise NotImplementedError("SharedEnvCommons.score needs an eval_env (or a subclass's score)")
        policies = {a: lr.policy for a, lr in self.learners.items()}
        policies[learner.agent] = policy
        rewards = self.play(self.eval_env, self.eval_seed, self.eval_steps, policies)
        return float(rewards[:, self.agents.index(learner.agent)].mean())

    # -- playing -------------------------------------------------------------------------

    def groups(self, policies: Mapping[str, nn.Module]) -> list[tuple[list[str], StackedPolicies]]:
        """The agents of ``policies`` in env order, batched by :func:`signature`."""
        by_sig: dict[tuple, list[str]] = {}
        for a in self.agents:
            if a in policies:
                by_sig.setdefault(signature(policies[a]), []).append(a)
        return [(group, StackedPolicies([policies[a] for a in group])) for group in by_sig.values()]

    def act(self, groups: Sequence[tuple[list[str], StackedPolicies]], obs: Mapping[str, np.ndarray],
            generator: torch.Generator | None, greedy: bool = False) -> dict[str, tuple[np.ndarray, Any, Any]]:
        """``{agent: (action, log-prob, value)}`` for every agent of ``groups``."""
        out = {}
        for group, stacked in groups:
            o = torch.from_numpy(np.stack([obs[a] for a in group]))
            a, logp = stacked.act(o, generator, greedy)
            values = stacked.values(o).numpy()
            logp = logp.numpy()
            for k, agent in enumerate(group):
                out[agent] = (a[k], logp[k], values[k])
        return out

    def play(self, env: Any, seed: int, steps: int, policies: Mapping[str, nn.Module],
             greedy: bool = True) -> np.ndarray:
        """(steps, agents) per-step :meth:`reward` of every agent over ``steps`` steps of
        ``env`` from ``seed``, ``policies`` acting (others idle), reset when an episode ends."""
        groups = self.groups(policies)
        gen = torch.Generator().manual_seed(seed)
        obs, _ = env.reset(seed=seed)
        seen = self.observe(obs, env)
        out = []
        for _ in range(steps):
            acted = self.act(groups, seen, gen, greedy)
            actions = {a: acted[a][0] if a in acted else self.idle_action(a) for a in self.agents}
            obs, rewards, terms, truncs, _ = env.step(self.env_actions(actions, env))
            out.append(self.reward(rewards, self.agents))
            if self.episode_over(terms, truncs):
                obs, _ = env.reset()
            seen = self.observe(obs, env)
        return np.asarray(out)

    def episode_over(self, terms: Mapping[str, bool], truncs: Mapping[str, bool]) -> bool:
        return all(bool(terms.get(a, False)) or bool(truncs.get(a, False)) for a in self.agents)

    # -- training experience -------------------------------------------------------------

    def reset(self, seed: int | None = None) -> None:
        """Start the shared env's first episode (``collect`` does it when not done yet)."""
        obs, _ = self.env.reset(seed=self.seed if seed is None else seed)
        self.obs, self.start = self.observe(obs), True

    def register(self, learner: "SharedEnvLearner") -> None:
        if learner.agent not in self.index:
            raise KeyError(f"unknown agent {learner.agent!r}; agents are {self.agents}")
        self.learners[learner.agent] = learner

    def collect(self, n: int) -> None:
        """Play ``n`` env steps with every registered agent's current policy; each
        learner receives its own transitions (``learner.pending``).

        With ``hold_steps`` h > 1 the agents decide every h steps and hold their actions
        in between: one transition per decision (``ceil(n / h)`` of them), its reward the
        :meth:`credit` or the sum of the h steps' :meth:`reward`.
        """
        if self.obs is None:
            self.reset()
        order = [a for a in self.agents if a in self.learners]
        groups = self.groups({a: self.learners[a].policy for a in order})
        hold = self.hold_steps
        m = -(-n // hold)
        L = len(order)
        obs_b = {a: [] for a in order}
        act_b = {a: [] for a in order}
        rew_b = np.zeros((m, L), dtype=np.float32)
        start_b = np.zeros((m, L), dtype=np.float32)
        val_b = np.zeros((m, L), dtype=np.float32)
        logp_b = np.zeros((m, L), dtype=np.float32)
        played = 0
        for t in range(m):
            acted = self.act(groups, self.obs, self.generator)
            actions = {a: acted[a][0] if a in acted else self.idle_action(a) for a in self.agents}
            env_actions = self.env_actions(actions)
            credit = self.credit(actions, order, hold)
            r = np.zeros(L)
            done = False
            ended = np.zeros(L, dtype=bool)
            for _ in range(min(hold, n - played)):
                obs, rewards, terms, truncs, _ = self.env.step(env_actions)
                played += 1
                if credit is None:
                    r += self.reward(rewards, order)
                done = self.episode_over(terms, truncs)
                if done:
                    ended = np.array([bool(terms.get(a, False)) for a in order])
                    break
            if credit is not None:
                r = credit
            next_obs = self.observe(obs)
            if done:
                # a time limit, not a terminal state: bootstrap from the last observation
                # (SB3's collect_rollouts does the same for TimeLimit truncations)
                boot = self._values(groups, next_obs, order)
                r = np.where(ended, r, r + self.gamma * boot) if ended.any() else r + self.gamma * boot
                obs, _ = self.env.reset()
                next_obs = self.observe(obs)
            for a in order:
                obs_b[a].append(self.obs[a])
                act_b[a].append(np.asarray(acted[a][0]).reshape(-1))
            rew_b[t] = r
            start_b[t] = float(self.start)
            val_b[t] = [acted[a][2] for a in order]
            logp_b[t] = [acted[a][1] for a in order]
            self.obs, self.start = next_obs, done
        last = self._values(groups, self.obs, order)
        self.collections += 1
        self.env_steps += played
        for k, a in enumerate(order):
            self.learners[a].pending = Transitions(
                np.stack(obs_b[a]), np.stack(act_b[a]), rew_b[:, k].copy(), start_b[:, k].copy(),
                val_b[:, k].copy(), logp_b[:, k].copy(), float(last[k]), self.start, self.collections, n)

    @staticmethod
    def _values(groups, obs: Mapping[str, np.ndarray], order: Sequence[str]) -> np.ndarray:
        values = {}
        for group, stacked in groups:
            v = stacked.values(torch.from_numpy(np.stack([obs[a] for a in group]))).numpy()
            values.update(zip(group, v))
        return np.array([values[a] for a in order], dtype=np.float32)

    def transitions_for(self, learner: "SharedEnvLearner", n: int) -> Transitions:
        """The agent's newest unused transitions of ``n`` env steps, collecting if needed.

        Agents train in step (the same env steps per round), so one collection serves
        every agent's next round; an agent that fell behind gets the newest data only.
        """
        if self.learners.get(learner.agent) is not learner:
            raise RuntimeError(f"{learner!r} is not the learner the commons plays for {learner.agent!r} "
                               "(a clone is not played: it learns by distillation only)")
        tr = learner.pending
        if tr is None or tr.env_steps != n:
            self.collect(n)
            tr = learner.pending
        learner.pending = None
        return tr

    def scratch_policy(self, learner: "SharedEnvLearner") -> nn.Module:
        """A policy module of ``learner``'s build for scoring candidates, shared by the
        agents whose policies have one :func:`signature` (the learners stay untouched)."""
        key = signature(learner.policy)
        if key not in self._scratch:
            self._scratch[key] = learner.fresh_policy()
        return self._scratch[key]


# --------------------------------------------------------------------------- the learner


class SharedEnvLearner(Learner):
    """One agent of a :class:`SharedEnvCommons` behind the MFD :class:`Learner` interface.

    :param commons: the shared env (experience, and the score by default).
    :param agent: the agent's name in the env.
    :param model: the agent's SB3 PPO (e.g. :func:`make_ppo` on the agent's spaces as
        the commons' :meth:`~SharedEnvCommons.observe` shapes them).
    :param family: architecture family name; models of one family merge.
    :param register: whether the commons plays this learner's policy (a clone is not).
    """

    def __init__(self, commons: SharedEnvCommons, agent: str, model: Any, *, family: str = "ppo-mlp",
                 register: bool = True) -> None:
        self.commons, self.agent, self.model = commons, agent, model
        self.family, self.width = family, 1.0
        self.nvec = _nvec(model.action_space)
        self.output_kind = "categorical" if self.nvec is not None else "gaussian"
        self.samples = 0
        self.work_done = 0
        self.pending: Transitions | None = None
        self.recent_obs = np.zeros((0, *model.observation_space.shape), dtype=np.float32)
        if register:
            commons.register(self)

    @property
    def num_samples(self) -> int:  # merge weight: the experience behind this model
        return max(self.samples, 1)

    @property
    def policy(self) -> nn.Module:
        return self.model.policy

    def changed(self) -> None:
        """Called whenever the model changed (trained, written, distilled): a subclass
        that caches scores drops them here."""

    # -- training -------------------------------------------------------------------------

    def train(self, steps: int, trainable: Collection[str] | None = None) -> int:
        """PPO on the agent's own transitions of the next ``steps`` env steps.

        :return: work: ``steps * (1 + n_epochs)`` (one pass to act, n_epochs to learn).
        """
        tr = self.commons.transitions_for(self, steps)
        self.learn_from(tr, trainable)
        self.samples += steps
        self.recent_obs = tr.obs
        self.changed()
        work = steps * (1 + self.model.n_epochs)
        self.work_done += work
        return work

    def learn_from(self, tr: Transitions, trainable: Collection[str] | None = None) -> None:
        """Fill the rollout buffer with ``tr`` (``RolloutBuffer.add``, then GAE) and run
        :meth:`PPO.train`; only ``trainable`` parameters change when given."""
        from stable_baselines3.common.buffers import RolloutBuffer

        model = self.model
        buf = model.rollout_buffer
        m = len(tr.obs)
        if buf.buffer_size != m or buf.n_envs != 1:
            buf = model.rollout_buffer = RolloutBuffer(
                m, model.observation_space, model.action_space, device=model.device,
                gamma=model.gamma, gae_lambda=model.gae_lambda)
        buf.reset()
        for t in range(m):
            buf.add(tr.obs[t : t + 1], tr.actions[t : t + 1], tr.rewards[t : t + 1], tr.starts[t : t + 1],
                    torch.from_numpy(tr.values[t : t + 1]), torch.from_numpy(tr.log_probs[t : t + 1]))
        buf.compute_returns_and_advantage(torch.tensor([tr.last_value]), np.array([tr.last_done]))
        with only_trainable(self.policy, trainable):
            model.train()
        self.policy.set_training_mode(False)

    # -- scoring --------------------------------------------------------------------------

    def candidate_policy(self, state: Mapping[str, Tensor]) -> nn.Module:
        """The commons' scratch policy holding this model with ``state`` written over it."""
        scratch = self.commons.scratch_policy(self)
        full = self.get_state()
        check_state(state, full, what="candidate shape")
        for key, value in state.items():
            full[key] = value.to(full[key].dtype)
        scratch.load_state_dict(full, strict=False)
        return scratch

    def score(self, state: Mapping[str, Tensor] | None = None) -> float:
        """The commons' :meth:`~SharedEnvCommons.score` of the model (or of ``state``)."""
        return self.commons.score(self, self.policy if state is None else self.candidate_policy(state))

    def fresh_policy(self) -> nn.Module:
        """A new policy module of the same build (not a copy: SB3 policies keep their last
        action distribution, tensors with a graph, which deepcopy refuses)."""
        module = type(self.policy)(**self.policy._get_constructor_parameters())
        module.set_training_mode(False)
        return module

    # -- state ----------------------------------------------------------------------------

    def get_state(self) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in self.policy.state_dict().items()}

    @torch.no_grad()
    def set_state(self, state: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None = None) -> None:
        local = self.policy.state_dict()
        check_state(state, local)
        for key, value in state.items():
            dst = local[key]
            mask = None if masks is None else masks.get(key)
            if mask is None:
                dst.copy_(value)
            else:
                dst.copy_(torch.where(mask.to(torch.bool), value.to(dst.dtype), dst))
        self.changed()

    # -- distillation ---------------------------------------------------------------------

    def _outputs_with_grad(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        out = actor_logits(self.policy, x)
        if self.nvec is not None:
            return out
        return out, torch.broadcast_to(self.policy.log_std, out.shape)

    @torch.no_grad()
    def outputs(self, inputs: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """Action logits (discrete actions) or ``(mean, log_std)`` (``Box``)."""
        return self._outputs_with_grad(torch.as_tensor(inputs, dtype=torch.float32))

    def local_inputs(self, n: int) -> Tensor:
        return torch.from_numpy(self.recent_obs[:n].copy())

    def distil_from(self, teacher: Callable[[Tensor], Tensor | tuple[Tensor, ...]], steps: int, kind: str, *,
                    temperature: float = 2.0) -> float:
        """Match the teacher's action distribution (KL per action component, summed, for
        discrete actions; the Gaussian KL for ``Box``) on the agent's recent
        observations; the critic is left alone."""
        x = self.local_inputs(len(self.recent_obs))
        if len(x) == 0:
            return float("nan")
        with torch.no_grad():
            target = teacher(x)
        params = list(self.policy.mlp_extractor.policy_net.parameters()) + list(self.policy.action_net.parameters())
        if self.nvec is None:
            params.append(self.policy.log_std)
        lr = self.model.learning_rate
        opt = torch.optim.Adam(params, lr=lr if isinstance(lr, float) else float(lr(1.0)))
        nvec = self.nvec

        def loss_fn() -> Tensor:
            out = self._outputs_with_grad(x)
            if nvec is None:
                return distillation_loss(out, target, "gaussian")
            return sum(distillation_loss(s, t, "categorical")
                       for s, t in zip(torch.split(out, nvec, 1), torch.split(target, nvec, 1)))

        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn()
            loss.backward()
            opt.step()
        self.work_done += steps * len(x)
        self.changed()
        with torch.no_grad():
            return float(loss_fn())

    @torch.no_grad()
    def evaluate(self, inputs: Tensor, targets: Tensor) -> float:
        """Discrete actions: share of rows whose greedy action equals the target action
        (all components); ``Box``: minus the mean squared error of the mean action."""
        out = self.outputs(inputs)
        if self.nvec is None:
            mean = out[0]
            return -float(((mean - torch.as_tensor(targets, dtype=mean.dtype).reshape(mean.shape)) ** 2).mean())
        a, _ = policy_actions(out, self.nvec, None, greedy=True)
        t = np.asarray(targets).reshape(len(a), -1)
        return float((a == t).all(axis=1).mean()) if len(a) else float("nan")

    def clone(self) -> "SharedEnvLearner":
        """A copy with its own model and optimiser (through SB3's save/load), in the same
        commons but not played by it."""
        from stable_baselines3.common.logger import configure

        buf = io.BytesIO()
        self.model.save(buf)
        buf.seek(0)
        model = type(self.model).load(buf, device=self.model.device)
        model.set_logger(configure(None, [""]))
        twin = type(self).__new__(type(self))
        twin.__dict__.update(self.__dict__)
        twin.model, twin.pending, twin.recent_obs = model, None, self.recent_obs.copy()
        return twin

    def save(self, path: str | Path) -> Path:
        """The agent's SB3 zip (``PPO.load`` reads it back)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.model.save(path)
        return path.with_suffix(".zip") if path.suffix != ".zip" else path

    def __repr__(self) -> str:
        return f"{type(self).__name__}(agent={self.agent!r}, samples={self.samples})"
