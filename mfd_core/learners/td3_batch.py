"""Several TD3 agents' training chunks as one computation: the fleet's gradient steps batched.

A fleet of robots on one machine trains one small TD3+HER agent per robot. Each gradient
step of a 64-64 network on a minibatch of 256 is ~4 ms of which nearly all is framework
overhead (a hundred small ops, module calls, optimiser loops), so four robots stepping one
after another pay it four times. :class:`TD3Batcher` runs the chunks of every robot
waiting to train in lockstep and does one gradient step of *all* of them at once: the
robots' parameters are stacked (one flat ``(robots, n)`` tensor per network, the robots'
SB3 modules hold views into it while the chunks run), every layer is one batched matmul,
the losses are summed over robots (each robot's gradient is its own: their parameters do
not meet), and Adam and the target updates are a handful of ops on the flat tensors.

What each robot learns is what SB3's ``TD3.train`` does for it, step for step: the same
update count (``gradient_steps`` per env step after ``learning_starts``), the same
minibatches (its own replay buffer's ``sample``), the same target noise, the clipped double
Q target, the delayed actor update (``policy_delay``) and Polyak averaging, Adam with the
robot's own optimiser state (written back when the chunks end). Random numbers are drawn
from the same global generators in a fixed order (robot by robot, step by step), so a run
is reproducible and one robot alone draws exactly the numbers SB3 would; floating point
differs only by rounding (batched matmuls).

Deferred chunks keep their meaning: :meth:`submit` records that an agent is to act and
learn ``steps`` env steps from its state *now*; nothing else may touch that agent before
:meth:`flush` (the learner flushes before any other use), so running the chunk later, side
by side with other agents' chunks, gives the agent the same state it would have had.

Only plain TD3/DDPG MLP policies (ReLU hidden layers, Flatten/Combined extractors, Adam
without weight decay) batch; :func:`supports` says which; others train as before.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["TD3Batcher", "supports"]


def _mlp_layers(seq: nn.Module, last: type | None) -> list[nn.Linear] | None:
    """The Linear layers of an SB3 MLP ``[Linear, ReLU]* Linear [last]``; None if it is not one."""
    mods = list(seq.children()) if isinstance(seq, nn.Sequential) else []
    if last is not None:
        if not mods or not isinstance(mods[-1], last):
            return None
        mods = mods[:-1]
    if not mods or len(mods) % 2 != 1:
        return None
    layers = mods[0::2]
    acts = mods[1::2]
    if not all(type(m) is nn.Linear for m in layers) or not all(type(a) is nn.ReLU for a in acts):
        return None
    return layers  # type: ignore[return-value]


def _extractor_keys(extractor: nn.Module) -> list[str | None] | None:
    from stable_baselines3.common.torch_layers import CombinedExtractor, FlattenExtractor

    if isinstance(extractor, FlattenExtractor):
        return [None]
    if isinstance(extractor, CombinedExtractor):
        if not all(isinstance(m, nn.Flatten) for m in extractor.extractors.values()):
            return None
        return list(extractor.extractors.keys())
    return None


def supports(model: Any) -> bool:
    """Whether :class:`TD3Batcher` can train this SB3 model (TD3 or DDPG on MLPs, one env)."""
    try:
        from stable_baselines3 import TD3
    except ImportError:  # pragma: no cover
        return False
    if not isinstance(model, TD3) or getattr(model, "use_sde", False) or model.n_envs != 1:
        return False
    policy = model.policy
    if getattr(policy, "share_features_extractor", False) or str(policy.device) != "cpu":
        return False
    if _mlp_layers(policy.actor.mu, nn.Tanh) is None or _extractor_keys(policy.actor.features_extractor) is None:
        return False
    if _extractor_keys(policy.critic.features_extractor) != _extractor_keys(policy.actor.features_extractor):
        return False
    if any(_mlp_layers(q, None) is None for q in policy.critic.q_networks):
        return False
    for opt in (policy.actor.optimizer, policy.critic.optimizer):
        if type(opt) is not torch.optim.Adam or len(opt.param_groups) != 1:
            return False
        g = opt.param_groups[0]
        if g["weight_decay"] or g["amsgrad"] or g["maximize"] or g.get("decoupled_weight_decay", False):
            return False
    if getattr(model, "actor_batch_norm_stats", None) or getattr(model, "critic_batch_norm_stats", None):
        return False
    return model.gradient_steps >= 0


def _signature(model: Any) -> tuple:
    p = model.policy
    return (tuple(tuple(v.shape) for v in p.actor.state_dict().values()),
            tuple(tuple(v.shape) for v in p.critic.state_dict().values()),
            len(p.critic.q_networks), float(model.gamma), float(model.tau), int(model.policy_delay),
            float(model.target_policy_noise), float(model.target_noise_clip), int(model.batch_size),
            tuple(p.actor.optimizer.param_groups[0]["betas"]), float(p.actor.optimizer.param_groups[0]["eps"]),
            tuple(p.critic.optimizer.param_groups[0]["betas"]), float(p.critic.optimizer.param_groups[0]["eps"]))


class _Stack:
    """The networks of one kind (actor or critic with its target and Adam state) of several
    robots in flat ``(robots, n)`` tensors; each robot's modules view into them."""

    def __init__(self, nets: list[list[list[nn.Linear]]], targets: list[list[list[nn.Linear]]],
                 optimizers: list[torch.optim.Optimizer]) -> None:
        # nets[r][q][l]: robot r's q-th network's l-th Linear (the actor has one network)
        self.robots, self.heads, self.depth = len(nets), len(nets[0]), len(nets[0][0])
        first = nets[0][0]
        self.shapes = [(layer.out_features, layer.in_features) for layer in first]
        # layout: per layer, the weights of every head, then their biases
        self.slots: list[tuple[int, int, int, int]] = []  # (w_start, w_end, b_start, b_end)
        n = 0
        for out_f, in_f in self.shapes:
            w = self.heads * out_f * in_f
            b = self.heads * out_f
            self.slots.append((n, n + w, n + w, n + w + b))
            n += w + b
        self.size = n
        self.flat = torch.empty(self.robots, n)
        self.target = torch.empty(self.robots, n)
        self.exp_avg = torch.zeros(self.robots, n)
        self.exp_avg_sq = torch.zeros(self.robots, n)
        self.steps = [0] * self.robots
        self.optimizers = optimizers
        self._nets, self._targets = nets, targets
        with torch.no_grad():
            for r in range(self.robots):
                for q in range(self.heads):
                    for l, (out_f, in_f) in enumerate(self.shapes):
                        for flat, layer in ((self.flat, nets[r][q][l]), (self.target, targets[r][q][l])):
                            self._view(flat, r, q, l, "weight").copy_(layer.weight)
                            self._view(flat, r, q, l, "bias").copy_(layer.bias)
                opt = optimizers[r]
                state = [opt.state.get(p) for p in self._params(r)]
                if all(s and "exp_avg" in s for s in state):
                    self.steps[r] = int(float(state[0]["step"]))
                    for (q, l, kind), s in zip(self._index(), state):
                        self._view(self.exp_avg, r, q, l, kind).copy_(s["exp_avg"])
                        self._view(self.exp_avg_sq, r, q, l, kind).copy_(s["exp_avg_sq"])
                elif any(state):
                    raise RuntimeError("an optimiser with state for some parameters only")
        self.flat.requires_grad_(True)
        # the robots' modules act with the stacked values while the chunks run
        for r in range(self.robots):
            for q, l, kind in self._index():
                getattr(nets[r][q][l], kind).data = self._view(self.flat.detach(), r, q, l, kind)
                getattr(targets[r][q][l], kind).data = self._view(self.target, r, q, l, kind)

    def _index(self) -> Iterator[tuple[int, int, str]]:
        # the order of the optimiser's parameters (Sequential order: head by head, layer by layer)
        for q in range(self.heads):
            for l in range(self.depth):
                yield q, l, "weight"
                yield q, l, "bias"

    def _params(self, r: int) -> list[Tensor]:
        return [getattr(self._nets[r][q][l], kind) for q, l, kind in self._index()]

    def _view(self, flat: Tensor, r: int, q: int, l: int, kind: str) -> Tensor:
        out_f, in_f = self.shapes[l]
        ws, we, bs, be = self.slots[l]
        if kind == "weight":
            size = out_f * in_f
            return flat[r, ws + q * size : ws + (q + 1) * size].view(out_f, in_f)
        return flat[r, bs + q * out_f : bs + (q + 1) * out_f]

    def layers(self, flat: Tensor, heads: int | None = None) -> list[tuple[Tensor, Tensor]]:
        """Per layer, weights ``(robots * heads, in, out)`` (transposed for bmm) and biases
        ``(robots * heads, 1, out)``; ``heads=1`` takes the first head only."""
        h = self.heads if heads is None else heads
        out = []
        for (out_f, in_f), (ws, we, bs, be) in zip(self.shapes, self.slots):
            w = flat[:, ws:we].view(self.robots, self.heads, out_f, in_f)[:, :h]
            b = flat[:, bs:be].view(self.robots, self.heads, 1, out_f)[:, :h]
            out.append((w.reshape(self.robots * h, out_f, in_f).transpose(1, 2), b.reshape(self.robots * h, 1, out_f)))
        return out

    def adam(self, active: list[bool], lr: list[float], betas: tuple[float, float], eps: float) -> None:
        """One Adam step of the active robots (torch's single-tensor Adam, robot by robot)."""
        grad = self.flat.grad
        beta1, beta2 = betas
        rows = [r for r in range(self.robots) if active[r]]
        for r in rows:
            self.steps[r] += 1
        every = len(rows) == self.robots
        idx = None if every else torch.tensor(rows)
        bc1 = [1 - beta1 ** self.steps[r] for r in rows]
        bc2 = [(1 - beta2 ** self.steps[r]) ** 0.5 for r in rows]
        neg_step = torch.tensor([-lr[r] / c for r, c in zip(rows, bc1)], dtype=torch.float32).unsqueeze(1)
        bc2 = torch.tensor(bc2, dtype=torch.float32).unsqueeze(1)
        with torch.no_grad():
            if every:
                m, v, p, g = self.exp_avg, self.exp_avg_sq, self.flat, grad
            else:
                m, v, p, g = self.exp_avg[idx], self.exp_avg_sq[idx], self.flat[idx], grad[idx]
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (v.sqrt() / bc2).add_(eps)
            p.add_((m * neg_step) / denom)
            if not every:
                self.exp_avg[idx], self.exp_avg_sq[idx], self.flat[idx] = m, v, p
        self.flat.grad = None

    @torch.no_grad()
    def polyak(self, active: list[bool], tau: float) -> None:
        """SB3's ``polyak_update`` (``target * (1 - tau) + tau * online``) for the active robots."""
        if all(active):
            self.target.mul_(1 - tau)
            torch.add(self.target, self.flat.detach(), alpha=tau, out=self.target)
            return
        idx = torch.tensor([r for r in range(self.robots) if active[r]])
        t = self.target[idx].mul_(1 - tau)
        self.target[idx] = torch.add(t, self.flat.detach()[idx], alpha=tau)

    @torch.no_grad()
    def close(self) -> None:
        """Give every robot's modules their own storage again, and its optimiser its state."""
        flat = self.flat.detach()
        for r in range(self.robots):
            opt = self.optimizers[r]
            for (q, l, kind), p in zip(self._index(), self._params(r)):
                p.data = self._view(flat, r, q, l, kind).clone()
                t = getattr(self._targets[r][q][l], kind)
                t.data = self._view(self.target, r, q, l, kind).clone()
                if self.steps[r]:
                    opt.state[p] = {"step": torch.tensor(float(self.steps[r])),
                                    "exp_avg": self._view(self.exp_avg, r, q, l, kind).clone(),
                                    "exp_avg_sq": self._view(self.exp_avg_sq, r, q, l, kind).clone()}


def _split(data: Any, parts: int) -> list[Any]:
    """A replay sample of ``parts * batch`` rows as ``parts`` samples of ``batch`` rows."""
    def cut(value: Any, i: int) -> Any:
        if value is None:
            return None
        if isinstance(value, dict):
            return {k: cut(v, i) for k, v in value.items()}
        size = value.shape[0] // parts
        return value[i * size : (i + 1) * size]
    return [type(data)(*(cut(v, i) for v in data)) for i in range(parts)]


def _mlp(x: Tensor, layers: list[tuple[Tensor, Tensor]], squash: bool) -> Tensor:
    for i, (w, b) in enumerate(layers):
        x = torch.baddbmm(b, x, w)
        if i < len(layers) - 1:
            x = torch.relu(x)
    return torch.tanh(x) if squash else x


class _Group:
    """The robots of one architecture and one set of TD3 settings in a flush."""

    def __init__(self, models: list[Any], presample: bool = True) -> None:
        self.models = models
        m0 = models[0]
        self.keys = _extractor_keys(m0.policy.actor.features_extractor)
        self.actor = _Stack([[_mlp_layers(m.policy.actor.mu, nn.Tanh)] for m in models],
                            [[_mlp_layers(m.policy.actor_target.mu, nn.Tanh)] for m in models],
                            [m.policy.actor.optimizer for m in models])
        self.critic = _Stack([[_mlp_layers(q, None) for q in m.policy.critic.q_networks] for m in models],
                             [[_mlp_layers(q, None) for q in m.policy.critic_target.q_networks] for m in models],
                             [m.policy.critic.optimizer for m in models])
        self.heads = self.critic.heads
        self.gamma, self.tau = float(m0.gamma), float(m0.tau)
        self.delay = int(m0.policy_delay)
        self.noise, self.noise_clip = float(m0.target_policy_noise), float(m0.target_noise_clip)
        self.batch = int(m0.batch_size)
        self.updates = 0  # gradient steps taken, robots counted apiece
        self.presample = presample

    def _flat(self, obs: Any) -> Tensor:
        if self.keys == [None]:
            return obs.reshape(obs.shape[0], -1).float()
        return torch.cat([obs[k].reshape(obs[k].shape[0], -1).float() for k in self.keys], dim=1)

    def train(self, active: list[bool], gradient_steps: int) -> None:
        """``gradient_steps`` TD3 updates of every active robot, as ``TD3.train`` does them.

        With ``presample`` the minibatches of all ``gradient_steps`` are drawn in one
        ``sample`` call per robot (the buffer does not change between them, so they are
        drawn from the same distribution; one call instead of several saves most of HER's
        sampling cost), else one call per step as SB3 does (the same random numbers).
        """
        models = self.models
        rows = [r for r in range(len(models)) if active[r]]
        drawn: dict[int, list[Any]] = {}
        if self.presample and gradient_steps > 1:
            for r in rows:
                m = models[r]
                data = m.replay_buffer.sample(self.batch * gradient_steps, env=m._vec_normalize_env)
                drawn[r] = _split(data, gradient_steps)
        for step in range(gradient_steps):
            self._update(active, rows, {r: d[step] for r, d in drawn.items()})

    def _update(self, active: list[bool], rows: list[int], drawn: dict[int, Any]) -> None:
        models = self.models
        robots = len(models)
        obs, nxt, act, rew, notdone_disc, noise = [], [], [], [], [], []
        actor_rows = []
        for r in rows:
            m = models[r]
            m._n_updates += 1
            data = drawn[r] if r in drawn else m.replay_buffer.sample(self.batch, env=m._vec_normalize_env)
            disc = data.discounts if getattr(data, "discounts", None) is not None else m.gamma
            n = data.actions.clone().normal_(0, self.noise).clamp_(-self.noise_clip, self.noise_clip)
            obs.append(self._flat(data.observations))
            nxt.append(self._flat(data.next_observations))
            act.append(data.actions)
            rew.append(data.rewards)
            notdone_disc.append((1 - data.dones) * disc)
            noise.append(n)
            actor_rows.append(m._n_updates % self.delay == 0)
        if not obs:
            return
        self.updates += len(obs)
        if len(obs) < robots:  # inactive robots ride along on zeros; nothing of theirs changes
            fill = iter(range(len(obs)))
            order = [next(fill) if a else None for a in active]
            def full(parts: list[Tensor]) -> Tensor:
                z = torch.zeros_like(parts[0])
                return torch.stack([parts[i] if i is not None else z for i in order])
            rows_actor = [actor_rows[i] if i is not None else False for i in order]
        else:
            def full(parts: list[Tensor]) -> Tensor:
                return torch.stack(parts)
            rows_actor = actor_rows
        obs_t, nxt_t, act_t = full(obs), full(nxt), full(act)
        rew_t, nd_t, noise_t = full(rew), full(notdone_disc), full(noise)
        h = self.heads
        with torch.no_grad():
            next_a = (_mlp(nxt_t, self.actor.layers(self.actor.target), True) + noise_t).clamp(-1, 1)
            q_in = torch.cat([nxt_t, next_a], dim=2)
            q_in = q_in.unsqueeze(1).expand(-1, h, -1, -1).reshape(robots * h, *q_in.shape[1:])
            next_q = _mlp(q_in, self.critic.layers(self.critic.target), False).view(robots, h, -1, 1)
            next_q = next_q.min(dim=1).values
            target_q = rew_t + nd_t * next_q
        q_in = torch.cat([obs_t, act_t], dim=2)
        q_in = q_in.unsqueeze(1).expand(-1, h, -1, -1).reshape(robots * h, *q_in.shape[1:])
        q = _mlp(q_in, self.critic.layers(self.critic.flat), False).view(robots, h, -1, 1)
        # each robot's loss is SB3's (the sum over heads of the mean squared error)
        critic_loss = (q - target_q.unsqueeze(1)).pow(2).mean(dim=(2, 3)).sum()
        critic_loss.backward()
        lr_c = [m.policy.critic.optimizer.param_groups[0]["lr"] for m in models]
        g = models[0].policy.critic.optimizer.param_groups[0]
        self.critic.adam(active, lr_c, g["betas"], g["eps"])
        if any(rows_actor):
            a = _mlp(obs_t, self.actor.layers(self.actor.flat), True)
            q1 = _mlp(torch.cat([obs_t, a], dim=2), self.critic.layers(self.critic.flat.detach(), heads=1), False)
            actor_loss = -q1.mean(dim=(1, 2)).sum()
            actor_loss.backward()
            lr_a = [m.policy.actor.optimizer.param_groups[0]["lr"] for m in models]
            g = models[0].policy.actor.optimizer.param_groups[0]
            self.actor.adam(rows_actor, lr_a, g["betas"], g["eps"])
            self.critic.polyak(rows_actor, self.tau)
            self.actor.polyak(rows_actor, self.tau)

    def close(self) -> None:
        self.actor.close()
        self.critic.close()


class TD3Batcher:
    """Deferred training chunks of several TD3 agents, run side by side when flushed.

    ``submit(model, steps)`` records a chunk (``model.learn(steps)``, continuing); ``flush()``
    runs every recorded chunk: the agents act in turn one env step each, then take their
    gradient steps together (:class:`_Group`, one per architecture). An agent with a
    recorded chunk must not be used in any other way before the flush.
    """

    def __init__(self, presample: bool = True) -> None:
        self.presample = presample
        self._pending: dict[int, tuple[Any, int]] = {}
        self._flushing = False
        self.flushes = 0
        self.batched_steps = 0  # gradient steps taken in groups of two robots or more
        self.gradient_steps = 0  # all gradient steps, robots counted apiece

    def pending(self, model: Any) -> bool:
        return id(model) in self._pending

    def submit(self, model: Any, steps: int) -> None:
        if self._flushing:
            raise RuntimeError("submit during a flush")
        if not supports(model):
            raise ValueError("this model does not batch (see td3_batch.supports)")
        key = id(model)
        if key in self._pending:
            prev, n = self._pending[key]
            self._pending[key] = (model, n + int(steps))
        else:
            self._pending[key] = (model, int(steps))

    def flush(self) -> None:
        """Run every recorded chunk (a learner may ask from inside ``torch.no_grad``)."""
        if self._flushing or not self._pending:
            return
        with torch.enable_grad():
            self._flush()

    def _flush(self) -> None:
        self._flushing = True
        jobs = list(self._pending.values())
        self._pending = {}
        groups: dict[tuple, list[Any]] = {}
        for model, _ in jobs:
            groups.setdefault(_signature(model), []).append(model)
        built: list[_Group] = []
        try:
            member: dict[int, tuple[_Group, int]] = {}
            for models in groups.values():
                group = _Group(models, presample=self.presample)
                built.append(group)
                for r, m in enumerate(models):
                    member[id(m)] = (group, r)
            # MLPs without dropout or batch norm: train and eval modes are the same network,
            # and SB3's switch (a walk over every module, twice an env step) is skipped
            for model, _ in jobs:
                model.policy.set_training_mode = _no_mode
            loops = {id(m): _chunk(m, n) for m, n in jobs}
            while loops:
                asks: dict[int, int] = {}
                for key, loop in list(loops.items()):
                    try:
                        asks[key] = next(loop)
                    except StopIteration:
                        del loops[key]
                for group in built:
                    wants = [asks.get(id(m), 0) for m in group.models]
                    done = 0
                    while done < max(wants):
                        # robots asking for as many steps as the fewest left go together
                        active = [w > done for w in wants]
                        steps = min(w - done for w in wants if w > done)
                        group.train(active, steps)
                        done += steps
                        self.gradient_steps += sum(active) * steps
                        if sum(active) > 1:
                            self.batched_steps += sum(active) * steps
            self.flushes += 1
        finally:
            for model, _ in jobs:
                model.policy.__dict__.pop("set_training_mode", None)
            for group in built:
                group.close()
            self._flushing = False


def _no_mode(mode: bool) -> None:
    return None


def _chunk(model: Any, steps: int) -> Iterator[int]:
    """SB3's ``OffPolicyAlgorithm.learn(steps, reset_num_timesteps=False)``, yielding where it
    would call ``train``: the number of gradient steps it asks for."""
    total, callback = model._setup_learn(steps, None, False, "run", False)
    callback.on_training_start(locals(), globals())
    while model.num_timesteps < total:
        rollout = model.collect_rollouts(model.env, train_freq=model.train_freq, action_noise=model.action_noise,
                                         callback=callback, learning_starts=model.learning_starts,
                                         replay_buffer=model.replay_buffer, log_interval=4)
        if not rollout.continue_training:
            break
        if model.num_timesteps > 0 and model.num_timesteps > model.learning_starts:
            gradient_steps = model.gradient_steps if model.gradient_steps >= 0 else rollout.episode_timesteps
            if gradient_steps > 0:
                yield int(gradient_steps)
    callback.on_training_end()
