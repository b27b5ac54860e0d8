"""Minibatches from an SB3 replay buffer as flat arrays: what ``sample`` draws, cheaper.

The batched TD3 step (:mod:`mfd_core.learners.td3_batch`) wants each robot's minibatch as
flat float rows (the observation keys concatenated as the networks read them). SB3's
``HerReplayBuffer.sample`` builds dicts of tensors for real and relabelled transitions
and concatenates them, and first scans its whole buffer (100,000 rows by default) for
the transitions of complete episodes: ~0.45 ms a draw of 1,024 rows, a fifth of a
fleet's batched training step. :func:`draw` makes the same random draws in the same
order from the same global generator (so the same rows, the same relabelled goals and
rewards), scans only the part of the buffer written so far, and gathers straight into
flat arrays. Buffers it does not know (normalised envs, copied info dicts, other
classes) are sampled by SB3 and flattened.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

__all__ = ["Batch", "draw"]


class Batch(NamedTuple):
    """``n`` transitions as float32 rows: observations and next observations flattened
    (the keys in the given order), actions, rewards ``(n, 1)``, and ``(1 - done) * discount``
    ``(n, 1)``: the done flags times the discount, as TD3's target takes them."""

    obs: np.ndarray
    next_obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    not_done_discount: np.ndarray


def draw(buffer: Any, n: int, keys: list[str | None], gamma: float, env: Any = None, parts: int = 1) -> Batch:
    """``n`` transitions from an SB3 replay buffer, as ``buffer.sample(n, env)`` draws them;
    or, with ``parts``, ``parts`` minibatches of ``n // parts`` in one draw, each made as
    ``sample(n // parts)`` makes one (its real transitions, then its relabelled ones, in
    HER's proportion): one draw of the whole, split afterwards, would give the first
    minibatch every real transition and the others none.

    :param keys: the observation keys in the order the networks concatenate them, or
        ``[None]`` for a ``Box`` observation.
    :param gamma: the discount of a transition that is not done (a buffer's own per-sample
        discounts, n-step returns, replace it when it has them).
    :param env: SB3's ``VecNormalize`` env, if any (then SB3 samples).
    :param parts: minibatches in the draw (``n`` a multiple of it), one after another in the rows.
    """
    if n % parts:
        raise ValueError(f"{n} rows do not split into {parts} minibatches")
    from stable_baselines3.her.her_replay_buffer import GoalSelectionStrategy, HerReplayBuffer

    if type(buffer) is HerReplayBuffer and env is None and not buffer.copy_info_dict and keys != [None]:
        return _her(buffer, n, keys, gamma, GoalSelectionStrategy, parts)
    if parts == 1:
        return _sampled(buffer.sample(n, env=env), keys, gamma)
    drawn = [_sampled(buffer.sample(n // parts, env=env), keys, gamma) for _ in range(parts)]
    return Batch(*(np.concatenate(values) for values in zip(*drawn)))


def _flat(obs: Any, keys: list[str | None]) -> np.ndarray:
    if keys == [None]:
        return obs.reshape(len(obs), -1)
    return np.concatenate([obs[k].reshape(len(obs[k]), -1) for k in keys], axis=1)


def _sampled(data: Any, keys: list[str | None], gamma: float) -> Batch:
    """An SB3 sample (tensors) as a :class:`Batch`."""
    def np_(x: Any) -> np.ndarray:
        return x.numpy() if hasattr(x, "numpy") else np.asarray(x)
    obs = data.observations if keys == [None] else {k: np_(data.observations[k]) for k in keys}
    nxt = data.next_observations if keys == [None] else {k: np_(data.next_observations[k]) for k in keys}
    if keys == [None]:
        obs, nxt = np_(obs), np_(nxt)
    discounts = getattr(data, "discounts", None)
    disc = np_(discounts) if discounts is not None else gamma
    return Batch(_flat(obs, keys).astype(np.float32, copy=False), _flat(nxt, keys).astype(np.float32, copy=False),
                 np_(data.actions).astype(np.float32, copy=False),
                 np_(data.rewards).reshape(-1, 1).astype(np.float32, copy=False),
                 ((1 - np_(data.dones).reshape(-1, 1)) * disc).astype(np.float32, copy=False))


def _her(buffer: Any, n: int, keys: list[str], gamma: float, strategies: Any, parts: int) -> Batch:
    """``HerReplayBuffer.sample`` (SB3 2.x), step by step, into flat rows (``parts`` of them)."""
    # only rows written so far can belong to a complete episode (ep_length > 0)
    upper = buffer.buffer_size if buffer.full else buffer.pos
    is_valid = buffer.ep_length[:upper] > 0
    if not np.any(is_valid):
        raise RuntimeError("Unable to sample before the end of the first episode")
    valid = np.flatnonzero(is_valid)  # the same flat indices: rows beyond ``upper`` are never valid
    sampled = np.random.choice(valid, size=n, replace=True)
    n_envs = buffer.ep_length.shape[1]
    m = n // parts
    per_part = int(buffer.her_ratio * m)  # relabelled transitions of a minibatch
    virtual = per_part * parts
    # SB3 takes a minibatch's first draws to relabel and returns its real transitions first,
    # then the relabelled ones; a transition's flat index (row * n_envs + env) picks it from
    # every array seen as (rows * envs, ...)
    drawn = sampled.reshape(parts, m)
    index = np.concatenate([drawn[:, per_part:], drawn[:, :per_part]], axis=1).reshape(-1)
    relabelled = (np.arange(parts)[:, None] * m + (m - per_part) + np.arange(per_part)).reshape(-1)

    def take(array: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return np.take(array.reshape(buffer.buffer_size * n_envs, -1), index, axis=0, out=out)

    widths = [int(np.prod(buffer.observations[k].shape[2:])) for k in keys]
    starts = dict(zip(keys, np.cumsum([0, *widths[:-1]]).tolist()))
    obs = np.empty((n, sum(widths)), dtype=np.float32)
    nxt = np.empty_like(obs)
    for k, w in zip(keys, widths):
        obs[:, starts[k] : starts[k] + w] = take(buffer.observations[k])
        nxt[:, starts[k] : starts[k] + w] = take(buffer.next_observations[k])
    rewards = take(buffer.rewards).astype(np.float32, copy=False)
    if virtual:
        v_rows, v_envs = np.unravel_index(drawn[:, :per_part].reshape(-1), buffer.ep_length.shape)
        ep_start = buffer.ep_start[v_rows, v_envs]
        ep_length = buffer.ep_length[v_rows, v_envs]
        strategy = buffer.goal_selection_strategy
        if strategy == strategies.FINAL:
            in_episode = ep_length - 1
        elif strategy == strategies.FUTURE:
            in_episode = np.random.randint((v_rows - ep_start) % buffer.buffer_size, ep_length)
        elif strategy == strategies.EPISODE:
            in_episode = np.random.randint(0, ep_length)
        else:
            raise ValueError(f"goal selection strategy {strategy} not supported")
        goals = buffer.next_observations["achieved_goal"][(in_episode + ep_start) % buffer.buffer_size, v_envs]
        g, w = starts["desired_goal"], widths[keys.index("desired_goal")]
        obs[relabelled, g : g + w] = goals.reshape(virtual, -1)
        nxt[relabelled, g : g + w] = goals.reshape(virtual, -1)
        achieved = buffer.next_observations["achieved_goal"].reshape(buffer.buffer_size * n_envs, -1)[index[relabelled]]
        reward = buffer.env.env_method("compute_reward", achieved.reshape(goals.shape), goals,
                                       [{} for _ in range(virtual)], indices=[0])
        rewards[relabelled, 0] = np.asarray(reward[0], dtype=np.float32).reshape(-1)
    dones = take(buffer.dones) * (1 - take(buffer.timeouts))
    return Batch(obs, nxt, take(buffer.actions).astype(np.float32, copy=False), rewards,
                 ((1 - dones) * gamma).astype(np.float32))
