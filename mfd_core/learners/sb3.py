"""A :class:`Learner` around a stable-baselines3 algorithm: a node that learns by acting.

The node's "data" is its own experience: the transitions in its replay buffer (or the
last rollout, for on-policy algorithms) and the episodes of its own evaluation env. None
of it leaves the node; what travels is the policy's network state. The adapter knows
nothing of any particular env: it needs a ``Box`` or ``Dict``-of-``Box`` observation
space (goal-conditioned envs with HER included) and a ``Box`` (or ``Discrete`` for PPO)
action space.

Conventions the rest of the core relies on:

- **State** (:meth:`SB3Learner.get_state`): tensors of the policy's ``state_dict`` whose
  first name part is in ``share`` (default ``("actor", "critic")`` for off-policy
  algorithms, everything for on-policy ones). Target networks travel only when asked
  (``share`` naming ``actor_target`` / ``critic_target`` beside their networks); else a
  receiver shifts its own targets by the same step as the network it installs (so one
  install keeps TD targets consistent, and undoing a merge undoes it). A fleet that
  merges every few env steps needs its targets merged with the networks: with each
  robot's own target shifted along (or left alone, or reset to the merge), four TD3+HER
  reach robots averaged every 5 env steps learned nothing in 2,000 steps; with the
  targets averaged too they reached 90 % in 400 (seed 0).
- **Inputs** (:meth:`outputs`, :meth:`local_inputs`, :meth:`distil_from`): one flat
  float tensor per observation, the ``Dict`` keys concatenated in the space's key order
  (what SB3's ``CombinedExtractor`` feeds the networks), see :func:`flatten_obs`.
- **Outputs**: deterministic actions in the policy's squashed ``[-1, 1]`` space for TD3
  / DDPG (kind ``"deterministic"``), ``(mean, log_std)`` of the pre-squash Gaussian for
  SAC and for PPO on ``Box`` actions (kind ``"gaussian"``), logits for PPO on
  ``Discrete`` actions (``"categorical"``).
- **Work** (:meth:`train`): environment steps. Off-policy SB3 algorithms take one
  gradient step per env step by default, so one distillation step counts as one unit.
- **Score**: success rate (``info["is_success"]`` at the end of an episode) or mean
  return over a fixed, seeded set of deterministic episodes on the node's own eval env:
  the same goals every time, so two policies are compared on the same episodes (the
  RL counterpart of a validation set, and what the gate needs to be paired, not noisy).
  Or (``metric="critic"``) the node's own critic's value of a policy's actions on the
  node's own replay states: no episode runs, so a robot pays no robot time to gate or
  decide (episodes cost it ~10x its training steps in the reach fleet); it judges one
  step of each policy, against what its critic has learned so far.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn
from torch.func import functional_call

from mfd_core.knowledge import distillation_loss
from mfd_core.learners.base import Learner
from mfd_core.learners.td3_batch import TD3Batcher, supports
from mfd_core.scaling import ModelFamily

__all__ = ["SB3Learner", "SB3PolicyFamily", "episode_progress", "flatten_obs", "obs_layout", "unflatten_obs"]

Layout = list[tuple[str | None, tuple[int, ...]]]

METRICS = ("success", "return", "progress", "critic")
# states the critic metric judges a policy on (evenly spaced over the replay buffer)
_CRITIC_STATES = 1024

# A deterministic action of +-1 is a Gaussian mean of +-infinity before tanh: clip the
# action to 1 - 1e-3 first (atanh(0.999) = 3.8, past where tanh is flat anyway).
_ATANH_CLIP = 1.0 - 1e-3
# A deterministic teacher read as a Gaussian gets this std (pre-squash units): narrow
# enough to say "do this", wide enough that the student's own std is not forced to 0.
_DETERMINISTIC_LOG_STD = math.log(0.1)


# --------------------------------------------------------------------------- observations


def obs_layout(space: spaces.Space) -> Layout:
    """``[(key, shape), ...]`` of a ``Box`` (one entry, key ``None``) or ``Dict`` of ``Box``.

    ``Dict`` keys come in the space's own order, the order SB3's ``CombinedExtractor``
    concatenates them in.
    """
    if isinstance(space, spaces.Dict):
        layout: Layout = []
        for key, sub in space.spaces.items():
            if not isinstance(sub, spaces.Box):
                raise TypeError(f"observation key {key!r}: only Box sub-spaces are supported, got {type(sub).__name__}")
            layout.append((key, tuple(sub.shape)))
        return layout
    if isinstance(space, spaces.Box):
        return [(None, tuple(space.shape))]
    raise TypeError(f"only Box or Dict-of-Box observation spaces are supported, got {type(space).__name__}")


def flatten_obs(obs: Mapping[str, Any] | np.ndarray, layout: Layout) -> np.ndarray:
    """Observations (one or a batch) as ``(batch, features)`` float32 rows."""
    parts = []
    for key, shape in layout:
        value = np.asarray(obs if key is None else obs[key], dtype=np.float32)
        size = int(np.prod(shape)) if shape else 1
        parts.append(value.reshape(-1, size))
    return np.concatenate(parts, axis=1)


def unflatten_obs(x: Tensor, layout: Layout) -> Tensor | dict[str, Tensor]:
    """Flat rows back into the observation structure the policy takes."""
    out: dict[str, Tensor] = {}
    start = 0
    for key, shape in layout:
        size = int(np.prod(shape)) if shape else 1
        part = x[:, start : start + size].reshape(-1, *shape)
        start += size
        if key is None:
            return part
        out[key] = part
    if start != x.shape[1]:
        raise ValueError(f"inputs have {x.shape[1]} features, the observation space {start}")
    return out


# --------------------------------------------------------------------------- policy views


def _kind_of(policy: nn.Module, action_space: spaces.Space) -> str:
    if isinstance(action_space, spaces.Discrete):
        return "categorical"
    if hasattr(policy, "actor") and hasattr(policy.actor, "get_action_dist_params"):
        return "gaussian"  # SAC
    if hasattr(policy, "actor"):
        return "deterministic"  # TD3, DDPG
    return "gaussian"  # PPO / A2C on Box actions


def _policy_outputs(policy: nn.Module, obs: Any, kind: str) -> Tensor | tuple[Tensor, Tensor]:
    """The policy's distillation outputs on structured observations (with gradients)."""
    if hasattr(policy, "actor"):
        if kind == "deterministic":
            return policy.actor(obs)
        mean, log_std, _ = policy.actor.get_action_dist_params(obs)
        return mean, log_std
    dist = policy.get_distribution(obs).distribution
    if kind == "categorical":
        return dist.logits
    return dist.mean, torch.log(dist.stddev)


class _PolicyForward(nn.Module):
    """Runs :func:`_policy_outputs` as ``forward`` so that ``functional_call`` can swap
    candidate tensors in for one call (names are the policy's, under ``policy.``)."""

    def __init__(self, policy: nn.Module, kind: str) -> None:
        super().__init__()
        self.policy, self.kind = policy, kind

    def forward(self, obs: Any) -> Tensor | tuple[Tensor, Tensor]:
        return _policy_outputs(self.policy, obs, self.kind)


# --------------------------------------------------------------------------- learner


class SB3Learner(Learner):
    """A node's SB3 agent: its policy, its own env, replay buffer and eval episodes.

    :param model: an SB3 algorithm instance (TD3, SAC, DDPG with or without
        ``HerReplayBuffer``; PPO) already holding the node's own training env, or a
        zero-argument factory returning one.
    :param eval_env: the node's own evaluation env (a ``gymnasium.Env``, not vectorised),
        or a factory; scoring resets it with fixed seeds.
    :param eval_episodes: episodes per :meth:`score`.
    :param eval_seed: seed of the first scoring episode (episode ``i`` uses
        ``eval_seed + i``); keep it apart from the training env's seeds.
    :param metric: ``"success"`` (share of episodes whose last ``info`` has a true
        ``is_success``), ``"return"`` (mean undiscounted return) or ``"progress"``
        (goal-conditioned envs: 1 per success, else half the share of the initial goal
        distance closed; in [0, 1] like success, but it ranks policies before any
        succeeds), or ``"critic"`` (off-policy algorithms: the node's *own* critic
        judges the policy's actions on states of its own replay buffer: the mean of
        its lowest Q-head, in return units; no episode is run, so scoring costs no
        robot time; see :meth:`score`).
    :param share: first name parts of the policy ``state_dict`` that travel; default
        ``("actor", "critic")`` when the policy has an actor and a critic (off-policy),
        else everything. Why the critic travels with the actor: the actor is what a
        robot acts with, but a receiver that keeps training needs a critic that agrees
        with it; a good actor next to an untrained critic is pulled off course by the
        critic's random gradients in the first updates (and a joining node's bootstrap
        is lost). Send ``("actor",)`` to halve the bytes when receivers only act; add
        ``"actor_target", "critic_target"`` when models merge often (module docstring).
    :param family: architecture family name (models of one family merge); default
        ``"<algorithm>-mlp"``, e.g. ``"td3-mlp"``.
    :param width: width ratio within the family (hidden widths relative to the
        family's widest member; models nest by prefix as in :mod:`mfd_core.scaling`).
    :param distil_batch: minibatch size for distillation.
    :param distil_lr: learning rate of the distillation optimiser.
    :param distil_work: work charged per distillation step, in env steps (the unit of
        :meth:`train`'s work). 1 when a node's clock is its compute (one gradient step per
        env step); a robot whose clock is its control period does a gradient step in a
        fraction of one (e.g. 2 ms against 40 ms: 0.05).
    :param actor_warmup: env steps after a state from elsewhere changed the actor (a
        merge, a distillation, a FedAvg or gossip install) during which only the other
        networks train. An installed actor next to a critic that has not seen it is
        pulled off course by the critic's gradients; the critic catches up first (the
        critic warm-up of offline-to-online RL), while the installed actor collects the
        data it learns from. 0: off.
    :param seed: seeds the sampling of local inputs.
    :param env_factory: makes a fresh training env; only needed to train a clone.
    :param batcher: a :class:`~mfd_core.learners.td3_batch.TD3Batcher` shared by several
        learners: :meth:`train` then records the chunk and returns, and the chunks of every
        learner waiting run side by side, their gradient steps batched into one computation,
        as soon as any of them is used (each learner flushes before anything reads or
        changes it). The same learning per env step as ``model.learn``; for models the
        batcher cannot train (:func:`~mfd_core.learners.td3_batch.supports`) it is ignored.
    """

    def __init__(
        self,
        model: Any,
        eval_env: gym.Env | Callable[[], gym.Env],
        *,
        eval_episodes: int = 10,
        eval_seed: int = 1_000_000,
        metric: str = "success",
        share: Sequence[str] | None = None,
        family: str | None = None,
        width: float = 1.0,
        distil_batch: int = 256,
        distil_lr: float = 1e-3,
        distil_work: float = 1.0,
        actor_warmup: int = 0,
        seed: int = 0,
        env_factory: Callable[[], gym.Env] | None = None,
        batcher: TD3Batcher | None = None,
    ) -> None:
        if callable(model) and not hasattr(model, "policy"):
            model = model()
        if not hasattr(model, "policy") or not hasattr(model, "learn"):
            raise TypeError(f"model must be an SB3 algorithm (or a factory of one), got {type(model).__name__}")
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        if metric == "progress" and not (isinstance(model.observation_space, spaces.Dict)
                                         and {"achieved_goal", "desired_goal"} <= set(model.observation_space.spaces)):
            raise ValueError("metric 'progress' needs a goal-conditioned Dict observation (achieved_goal, desired_goal)")
        if metric == "critic" and not (hasattr(model.policy, "actor") and hasattr(model.policy, "critic")):
            raise ValueError("metric 'critic' needs an off-policy algorithm with an actor and a critic (TD3, SAC, DDPG)")
        if eval_episodes < 1:
            raise ValueError(f"eval_episodes must be >= 1, got {eval_episodes}")
        if not 0 < width <= 1:
            raise ValueError(f"width must be in (0, 1], got {width}")
        self.model = model
        self.eval_env = eval_env() if callable(eval_env) and not isinstance(eval_env, gym.Env) else eval_env
        self.eval_episodes, self.eval_seed, self.metric = int(eval_episodes), int(eval_seed), metric
        self.layout = obs_layout(model.observation_space)
        self.input_dim = sum(int(np.prod(s)) if s else 1 for _, s in self.layout)
        self.output_kind = _kind_of(model.policy, model.action_space)
        self.family = family or f"{type(model).__name__.lower()}-mlp"
        self.width = float(width)
        self.distil_batch, self.distil_lr = int(distil_batch), float(distil_lr)
        self.env_factory = env_factory
        if distil_work < 0:
            raise ValueError(f"distil_work must be >= 0, got {distil_work}")
        self.distil_work = float(distil_work)
        self._work_carry = 0.0  # fractions of a work unit not yet charged
        if actor_warmup < 0:
            raise ValueError(f"actor_warmup must be >= 0, got {actor_warmup}")
        self.actor_warmup = int(actor_warmup)
        self._warmup_left = 0
        self.work_done = 0
        # env steps spent scoring (the gate's and the share decision's episodes): on a real
        # robot these are episodes too (or a digital twin's), so they are counted apart
        self.score_env_steps = 0
        self._rng = np.random.default_rng(seed)
        self._owns_buffer = True
        names = {k.split(".", 1)[0] for k in model.policy.state_dict()}
        if share is None:
            share = ("actor", "critic") if {"actor", "critic"} <= names else sorted(n for n in names if not n.endswith("_target"))
        unknown = set(share) - names
        if unknown:
            raise ValueError(f"share: {sorted(unknown)} not in the policy (it has {sorted(names)})")
        lone = [s for s in share if s.endswith("_target") and s[: -len("_target")] not in share]
        if lone:
            raise ValueError(f"share: {lone} without their networks (a target travels only with its network)")
        self.share = tuple(share)
        self._forward = _PolicyForward(model.policy, self.output_kind)
        self.batcher = batcher if batcher is not None and supports(model) else None

    # ------------------------------------------------------------------ properties

    @property
    def policy(self) -> nn.Module:
        self._settle()
        return self.model.policy

    @property
    def env_steps(self) -> int:
        """Environment steps this node has taken while training."""
        self._settle()
        return int(self.model.num_timesteps)

    def settle(self) -> None:
        """Run this learner's recorded training chunk (and every other waiting one) now:
        the end of a run, where a batcher may still hold the last chunks asked for."""
        self._settle()

    def _settle(self) -> None:
        """Run this learner's recorded training chunk (and every other waiting one) now."""
        batcher = self.batcher
        if batcher is not None and batcher.pending(self.model):
            batcher.flush()

    @property
    def num_samples(self) -> int:  # type: ignore[override]
        """Transitions of own experience (the merge weight); at least 1 so a fresh node
        still has a defined weight."""
        return max(1, self.env_steps)

    # ------------------------------------------------------------------ internals

    def _is_shared(self, name: str) -> bool:
        return name.split(".", 1)[0] in self.share

    def _obs_tensor(self, x: Tensor | np.ndarray) -> Tensor | dict[str, Tensor]:
        x = torch.as_tensor(x, dtype=torch.float32, device=self.policy.device)
        if x.dim() == 1:
            x = x.unsqueeze(0)
        return unflatten_obs(x, self.layout)

    def _to_env_action(self, out: Tensor | tuple[Tensor, ...], kind: str | None = None) -> np.ndarray:
        """The env action a policy output stands for (deterministic: the mode)."""
        kind = kind or self.output_kind
        space = self.model.action_space
        if kind == "categorical" or isinstance(space, spaces.Discrete):
            return out.argmax(dim=-1).cpu().numpy()
        if isinstance(out, tuple):
            mean = out[0]
            action = torch.tanh(mean) if self.policy.squash_output else mean
        else:
            action = out
        action = action.detach().cpu().numpy()
        if self.policy.squash_output:
            return self.policy.unscale_action(action)
        return np.clip(action, space.low, space.high)

    def _episodes(self, act: Callable[[Tensor | dict[str, Tensor]], np.ndarray]) -> float:
        """Run the fixed scoring episodes with ``act`` on the eval env; return the metric."""
        env = self.eval_env
        total = 0.0
        for i in range(self.eval_episodes):
            obs, info = env.reset(seed=self.eval_seed + i)
            start = obs
            ret, done = 0.0, False
            while not done:
                flat = torch.from_numpy(flatten_obs(obs, self.layout))
                action = act(flat)[0]
                obs, reward, terminated, truncated, info = env.step(action)
                self.score_env_steps += 1
                ret += float(reward)
                done = terminated or truncated
            if self.metric == "success":
                total += float(bool(info.get("is_success", False)))
            elif self.metric == "return":
                total += ret
            else:
                total += episode_progress(start, obs, bool(info.get("is_success", False)))
        return total / self.eval_episodes

    def _check_state(self, state: Mapping[str, Tensor], local: Mapping[str, Tensor]) -> None:
        for key, value in state.items():
            if key not in local or key.split(".", 1)[0] not in self.share:
                raise KeyError(f"{key!r} is not a shared tensor of this policy")
            if value.shape != local[key].shape:
                raise ValueError(f"{key}: shape {tuple(value.shape)} != local {tuple(local[key].shape)}")

    def _sync_targets(self, before: Mapping[str, Tensor], skip: Collection[str] = ()) -> None:
        """Shift each shared network's target by the step its network just took (but
        those in ``skip``, whose targets were written with them)."""
        policy = self.policy
        for prefix in self.share:
            if prefix in skip:
                continue
            target = getattr(policy, f"{prefix}_target", None)
            if target is None:
                continue
            online = getattr(policy, prefix).state_dict()
            with torch.no_grad():
                for name, t in target.state_dict().items():
                    key = f"{prefix}.{name}"
                    if key in before and t.is_floating_point():
                        t.add_(online[name] - before[key])

    def _replay_observations(self, evenly: int | None = None) -> np.ndarray:
        """Flat observations of the node's own experience (replay buffer or last rollout);
        with ``evenly``, at most that many rows, evenly spaced over it (picked before
        flattening, so a full buffer is not copied to read a thousand rows)."""
        self._settle()
        buffer = getattr(self.model, "replay_buffer", None)
        if buffer is not None:
            size = buffer.buffer_size if buffer.full else buffer.pos
            obs = buffer.observations
        else:
            buffer = getattr(self.model, "rollout_buffer", None)
            if buffer is None:
                return np.zeros((0, self.input_dim), dtype=np.float32)
            size = buffer.buffer_size if buffer.full else buffer.pos
            obs = buffer.observations
        if size == 0:
            return np.zeros((0, self.input_dim), dtype=np.float32)
        # (size, n_envs, *shape) per key: rows of all envs
        if isinstance(obs, dict):
            obs = {k: v[:size].reshape(-1, *v.shape[2:]) for k, v in obs.items()}
        else:
            obs = obs[:size].reshape(-1, *obs.shape[2:])
        if evenly is not None:
            total = len(next(iter(obs.values())) if isinstance(obs, dict) else obs)
            rows = np.unique(np.linspace(0, total - 1, min(total, evenly)).round().astype(int))
            obs = {k: v[rows] for k, v in obs.items()} if isinstance(obs, dict) else obs[rows]
        return flatten_obs(obs, self.layout)

    def _reset_observations(self, n: int) -> np.ndarray:
        """Start states of the node's own eval env, for a node with no experience yet:
        they cover the goals it will be asked to reach (seeds apart from the scoring ones)."""
        rows = []
        for i in range(n):
            obs, _ = self.eval_env.reset(seed=self.eval_seed + 100_000 + i)
            rows.append(flatten_obs(obs, self.layout))
        return np.concatenate(rows) if rows else np.zeros((0, self.input_dim), dtype=np.float32)

    # ------------------------------------------------------------------ Learner

    def train(self, steps: int, trainable: Collection[str] | None = None) -> int:
        """Act ``steps`` env steps and learn from them (``model.learn``, continuing).

        :return: env steps taken.
        """
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        if steps == 0:
            return 0
        if self.batcher is not None and trainable is None and self._warmup_left == 0 and self._owns_buffer:
            self.batcher.submit(self.model, steps)  # runs when this learner is next used
            self.work_done += steps
            return steps
        self._settle()
        if not self._owns_buffer:
            self._detach_from_parent()
        if self._warmup_left > 0 and trainable is None:
            names = [k for k, _ in self.policy.named_parameters() if not k.startswith("actor")]
            first = min(steps, self._warmup_left)
            self._warmup_left -= first
            work = self._learn(first, names)
            return work + (self._learn(steps - first, None) if steps > first else 0)
        return self._learn(steps, trainable)

    def _learn(self, steps: int, trainable: Collection[str] | None) -> int:
        params = dict(self.policy.named_parameters())
        frozen: dict[str, Tensor] = {}
        hooks = []
        if trainable is not None:
            unknown = set(trainable) - set(params)
            if unknown:
                raise KeyError(f"unknown parameters: {sorted(unknown)}")
            # Not requires_grad=False: SB3's losses must keep a graph (a fully frozen
            # critic would leave its loss without one). Gradients of the frozen tensors
            # are zeroed as they arrive and their values restored after the chunk, so
            # they end bit-identical (Adam's momentum may move them inside the chunk).
            frozen = {k: p.detach().clone() for k, p in params.items() if k not in trainable}
            hooks = [params[k].register_hook(torch.zeros_like) for k in frozen]
        before = self.model.num_timesteps
        try:
            self.model.learn(total_timesteps=steps, reset_num_timesteps=False, progress_bar=False)
        finally:
            for hook in hooks:
                hook.remove()
            with torch.no_grad():
                for k, value in frozen.items():
                    params[k].copy_(value)
        work = int(self.model.num_timesteps - before)
        self.work_done += work
        return work

    @torch.no_grad()
    def score(self, state: Mapping[str, Tensor] | None = None) -> float:
        """The metric of the node's policy, or of a candidate ``state`` swapped in.

        With ``metric="critic"`` the node's own critic (never the candidate's: a
        candidate may not judge itself) values the candidate's actions on the node's own
        states, so a policy that would act worse where this robot acts scores lower,
        without an episode run. A critic that has learned nothing yet values every
        policy about alike, and the gate then refuses nothing, as a node that knows
        nothing should.
        """
        self.policy.set_training_mode(False)
        kind = self.output_kind
        swapped = None
        if state is not None:
            self._check_state(state, self.policy.state_dict())
            # functional_call swaps the candidate in for each call only: the learner's own
            # tensors are never written, so scoring a candidate cannot change the node.
            swapped = {f"policy.{k}": v for k, v in state.items()}
        if self.metric == "critic":
            if swapped is None:
                return self._critic_value(self._forward)
            actor_only = {k: v for k, v in swapped.items() if k.startswith("policy.actor.")}
            return self._critic_value(lambda obs: functional_call(self._forward, actor_only, (obs,), strict=False))
        if swapped is None:
            return self._episodes(lambda x: self._to_env_action(self._forward(self._obs_tensor(x)), kind))
        return self._episodes(
            lambda x: self._to_env_action(functional_call(self._forward, swapped, (self._obs_tensor(x),), strict=False), kind)
        )

    @torch.no_grad()
    def score_teacher(self, teacher: Callable[[Tensor], Tensor | tuple[Tensor, ...]]) -> float:
        self.policy.set_training_mode(False)
        if self.metric == "critic":
            return self._critic_value(teacher, flat_inputs=True)
        return self._episodes(lambda x: self._to_env_action(teacher(x)))

    def _critic_states(self) -> Tensor:
        """Flat states the critic metric judges on: up to ``_CRITIC_STATES`` evenly
        spaced over the replay buffer (the same rows for every policy scored between two
        training chunks), or start states of the eval env before any experience."""
        flat = self._replay_observations(evenly=_CRITIC_STATES)
        if len(flat) == 0:
            flat = self._reset_observations(self.eval_episodes)
        return torch.as_tensor(flat, dtype=torch.float32)

    def _critic_value(self, actor: Callable[[Any], Tensor | tuple[Tensor, ...]], *, flat_inputs: bool = False) -> float:
        """The mean of the own critic's lowest Q-head for ``actor``'s
        deterministic actions (in the policy's squashed action space, as the critic
        learned them)."""
        flat = self._critic_states()
        obs = self._obs_tensor(flat)
        out = actor(flat if flat_inputs else obs)
        if isinstance(out, tuple):  # a Gaussian's mean, squashed as the policy acts
            out = torch.tanh(out[0]) if self.policy.squash_output else out[0]
        q = torch.stack(self.policy.critic(obs, out.clamp(-1.0, 1.0)), dim=0).min(dim=0).values
        return float(q.mean())

    def get_state(self) -> dict[str, Tensor]:
        # one walk of the module tree (~0.3 ms; a fleet takes thousands of states a run)
        return {k: v.detach().clone() for k, v in self.policy.state_dict().items() if self._is_shared(k)}

    @torch.no_grad()
    def set_state(self, state: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None = None) -> None:
        local = self.policy.state_dict()  # tensors share storage with the policy
        self._check_state(state, local)
        for key in masks or {}:
            if key not in state:
                raise KeyError(f"mask for {key!r} without a tensor")
        before = {k: local[k].clone() for k in state}
        for key, value in state.items():
            dst = local[key]
            mask = None if masks is None else masks.get(key)
            if mask is None:
                dst.copy_(value)
            else:
                if mask.shape != dst.shape:
                    raise ValueError(f"{key}: mask shape {tuple(mask.shape)} != {tuple(dst.shape)}")
                dst.copy_(torch.where(mask.to(torch.bool), value.to(dst.dtype), dst))
        # a network whose target came with the state takes that target; the others' targets
        # shift by the step their network just took
        parts = {k.split(".", 1)[0] for k in state}
        self._sync_targets(before, skip={p.removesuffix("_target") for p in parts if p.endswith("_target")})
        if self.actor_warmup and any(k.startswith("actor.") and not torch.equal(before[k], local[k]) for k in state):
            self._warmup_left = self.actor_warmup

    def initialise(self, state: Mapping[str, Tensor]) -> None:
        """Write a starting state (e.g. a fleet's common initialisation): like
        :meth:`set_state`, without the actor warm-up an installed policy triggers."""
        self.set_state(state)
        self._warmup_left = 0

    @torch.no_grad()
    def outputs(self, inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        self.policy.set_training_mode(False)
        return self._forward(self._obs_tensor(inputs))

    def local_inputs(self, n: int) -> Tensor:
        """Up to ``n`` observations of the node's own experience (start states of its own
        env when it has none yet); they never leave the node."""
        rows = self._replay_observations()
        if len(rows) == 0:
            rows = self._reset_observations(min(n, 256))
        if len(rows) > n:
            rows = rows[self._rng.choice(len(rows), size=n, replace=False)]
        return torch.from_numpy(np.ascontiguousarray(rows))

    def distil_from(
        self,
        teacher: Callable[[Tensor], Tensor | tuple[Tensor, ...]],
        steps: int,
        kind: str,
        *,
        temperature: float = 2.0,
    ) -> float:
        """Train the policy to act like ``teacher`` on the node's own observations.

        A teacher whose outputs are of another kind (a deterministic TD3 teacher for a
        Gaussian SAC student, or the reverse) is read in the student's kind: a
        deterministic action as a narrow Gaussian around its pre-squash value, a
        Gaussian as its mode.
        """
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        inputs = self.local_inputs(max(self.distil_batch * 8, 2048))
        with torch.no_grad():
            target = _as_kind(teacher(inputs), self.output_kind, self.policy.squash_output)
        kind = self.output_kind
        params = [p for name, p in self.policy.named_parameters() if name.split(".", 1)[0] in self.share
                  and (name.split(".", 1)[0] != "critic")]
        before = {k: v.clone() for k, v in self.policy.state_dict().items() if k.split(".", 1)[0] in self.share}
        optimizer = torch.optim.Adam(params, lr=self.distil_lr)
        gen = torch.Generator().manual_seed(int(self._rng.integers(2**62)))
        n = len(inputs)
        self.policy.set_training_mode(True)
        try:
            for _ in range(steps):
                idx = torch.randint(n, (min(self.distil_batch, n),), generator=gen)
                out = _policy_outputs(self.policy, self._obs_tensor(inputs[idx]), kind)
                loss = distillation_loss(out, _take(target, idx), kind, temperature=temperature)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        finally:
            self.policy.set_training_mode(False)
        self._sync_targets(before)
        self._work_carry += steps * self.distil_work
        whole = int(self._work_carry)
        self._work_carry -= whole
        self.work_done += whole
        with torch.no_grad():
            out = _policy_outputs(self.policy, self._obs_tensor(inputs), kind)
            return float(distillation_loss(out, target, kind, temperature=temperature))

    @torch.no_grad()
    def evaluate(self, inputs: Tensor, targets: Tensor) -> float:
        """Imitation score on given data: ``-MSE`` of the policy's deterministic env
        actions against ``targets`` (env actions) on flat ``inputs``. For success rate
        on episodes use :meth:`score` or :meth:`evaluate_episodes`."""
        actions = self._to_env_action(self.outputs(inputs))
        return -float(np.mean((actions - np.asarray(targets, dtype=np.float32)) ** 2))

    @torch.no_grad()
    def evaluate_episodes(self, env: gym.Env, episodes: int, seed: int, *, metric: str | None = None) -> float:
        """The metric over ``episodes`` deterministic episodes on another env (e.g. a
        held-out set of seeds for measurements), without touching the scoring env."""
        saved = (self.eval_env, self.eval_episodes, self.eval_seed, self.metric, self.score_env_steps)
        self.eval_env, self.eval_episodes, self.eval_seed = env, int(episodes), int(seed)
        self.metric = metric or self.metric
        try:
            return self.score()
        finally:
            self.eval_env, self.eval_episodes, self.eval_seed, self.metric, self.score_env_steps = saved

    def act(self, obs: Mapping[str, Any] | np.ndarray) -> np.ndarray:
        """The deterministic env action for one observation (for replay and rendering)."""
        with torch.no_grad():
            self.policy.set_training_mode(False)
            flat = torch.from_numpy(flatten_obs(obs, self.layout))
            return self._to_env_action(self._forward(self._obs_tensor(flat)))[0]

    def clone(self) -> SB3Learner:
        """A copy with its own policy and optimisers that shares the replay buffer and
        envs with this learner, read-only: enough to score and distil (the gate's
        trial). Training the clone first copies the buffer and needs ``env_factory``."""
        self._settle()
        model = copy.copy(self.model)
        model.policy = copy.deepcopy(self.model.policy)
        if hasattr(model, "_create_aliases"):
            model._create_aliases()
        new = copy.copy(self)
        new.model = model
        new._forward = _PolicyForward(model.policy, self.output_kind)
        new._rng = np.random.default_rng(self._rng.integers(2**62))
        new._owns_buffer = False
        new.batcher = None  # a clone trains on its own, as before
        return new

    def _detach_from_parent(self) -> None:
        if self.env_factory is None:
            raise RuntimeError("this clone shares its parent's env; pass env_factory to SB3Learner to train clones")
        from stable_baselines3.common.env_util import make_vec_env

        if getattr(self.model, "replay_buffer", None) is not None:
            self.model.replay_buffer = copy.deepcopy(self.model.replay_buffer)
        env = make_vec_env(self.env_factory, n_envs=1)
        self.model.env = env
        self.model._last_obs = None
        if getattr(self.model.replay_buffer, "env", None) is not None:
            self.model.replay_buffer.env = env
        self._owns_buffer = True

    # ------------------------------------------------------------------ files

    def save(self, path: str | Path) -> Path:
        """The node's own policy as an SB3 zip (no replay buffer); ``<algo>.load`` reads it."""
        self._settle()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.model.save(path)
        return path if path.suffix == ".zip" else path.with_suffix(".zip")

    def __repr__(self) -> str:
        return (f"SB3Learner({type(self.model).__name__}, family={self.family!r}, width={self.width}, "
                f"kind={self.output_kind!r}, env_steps={self.env_steps})")


def episode_progress(start: Mapping[str, Any], end: Mapping[str, Any], success: bool) -> float:
    """1 for a success, else half the share of the start's goal distance the episode closed.

    Success rate alone is 0 for every policy of a fleet that has not learned yet, so a
    gate that scores by it accepts anything then; this keeps success worth most while
    ranking the policies that do not succeed yet by how far they got.
    """
    if success:
        return 1.0
    d0 = float(np.linalg.norm(np.asarray(start["achieved_goal"]) - np.asarray(start["desired_goal"])))
    d1 = float(np.linalg.norm(np.asarray(end["achieved_goal"]) - np.asarray(end["desired_goal"])))
    return 0.5 * float(np.clip(1.0 - d1 / max(d0, 1e-9), 0.0, 1.0))


def _as_kind(out: Tensor | tuple[Tensor, ...], kind: str, squash: bool) -> Tensor | tuple[Tensor, ...]:
    """Teacher outputs in the student's kind (see :meth:`SB3Learner.distil_from`)."""
    if kind == "gaussian" and isinstance(out, Tensor):
        mean = torch.atanh(out.clamp(-_ATANH_CLIP, _ATANH_CLIP)) if squash else out
        return mean, torch.full_like(mean, _DETERMINISTIC_LOG_STD)
    if kind == "deterministic" and isinstance(out, tuple):
        return torch.tanh(out[0]) if squash else out[0]
    return out


def _take(outputs: Tensor | tuple[Tensor, ...], idx: Tensor) -> Tensor | tuple[Tensor, ...]:
    if isinstance(outputs, tuple):
        return tuple(o[idx] for o in outputs)
    return outputs[idx]


# --------------------------------------------------------------------------- family


class _Teacher(nn.Module):
    """The shared part of a policy as a module whose ``state_dict`` names match
    :meth:`SB3Learner.get_state` and whose ``forward`` maps flat observations to the
    policy's outputs: what :func:`mfd_core.knowledge.absorb_knowledge` builds to let a
    policy of another family teach."""

    def __init__(self, policy: nn.Module, share: Sequence[str], layout: Layout, kind: str) -> None:
        super().__init__()
        for prefix in share:
            self.add_module(prefix, getattr(policy, prefix))
        self._policy = [policy]  # a list: not registered, so its other tensors stay out of state_dict
        self.layout, self.kind = layout, kind

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        return _policy_outputs(self._policy[0], unflatten_obs(x, self.layout), self.kind)


class SB3PolicyFamily(ModelFamily):
    """A family of SB3 policies of one algorithm, nested by width, for teaching.

    :param name: family name, as the learners of this family carry it.
    :param make_policy: ``ratio -> SB3 policy`` (e.g. ``lambda r: TD3(..., policy_kwargs=
        {"net_arch": [round(64 * r)] * 2}).policy``); only its shapes and forward matter.
    :param share: the shared name parts, as the learners' ``share``.
    """

    def __init__(self, name: str, make_policy: Callable[[float], nn.Module], share: Sequence[str] = ("actor", "critic")) -> None:
        self.name = name
        self.make_policy = make_policy
        self.share = tuple(share)
        probe = make_policy(1.0)
        self.layout = obs_layout(probe.observation_space)
        self.input_shape = (sum(int(np.prod(s)) if s else 1 for _, s in self.layout),)
        self.kind = _kind_of(probe, probe.action_space)
        self._shapes: dict[float, dict[str, torch.Size]] = {}
        self._templates: dict[float, _Teacher] = {}

    def _make(self, ratio: float) -> nn.Module:
        # building an SB3 policy is slow (an algorithm object, optimisers): build one per
        # ratio and hand out copies
        if ratio not in self._templates:
            self._templates[ratio] = _Teacher(self.make_policy(ratio), self.share, self.layout, self.kind)
        return copy.deepcopy(self._templates[ratio])

    def shapes(self, ratio: float = 1.0) -> dict[str, torch.Size]:
        # SB3 builds policies with .to(device), which meta tensors refuse: build a real
        # one once per ratio and remember its shapes.
        if ratio not in self._shapes:
            if not 0 < ratio <= 1:
                raise ValueError(f"ratio must be in (0, 1], got {ratio}")
            self._shapes[ratio] = {k: v.shape for k, v in self._make(ratio).state_dict().items()}
        return dict(self._shapes[ratio])
