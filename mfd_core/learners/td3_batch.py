"""Several TD3 agents' training chunks as one computation: the fleet's gradient steps batched.

A fleet of robots on one machine trains one small TD3+HER agent per robot. Each gradient
step of a 64-64 network on a minibatch of 256 is ~4 ms of which nearly all is framework
overhead (a hundred small ops, module calls, optimiser loops), so four robots stepping one
after another pay it four times. :class:`TD3Batcher` runs the chunks of every robot
waiting to train in lockstep and does one gradient step of *all* of them at once: the
robots' parameters are stacked (per network kind, one flat tensor laid out layer by layer,
so that a layer of every robot and head is one ``(robots * heads, out, in)`` view; the
robots' SB3 modules hold views into it while the chunks run), every layer is one batched
matmul, and the backward pass is written out (no autograd: its graph and per-op
bookkeeping cost more than these small matmuls), each robot's gradient its own (their
parameters do not meet). Adam is torch's fused Adam over every robot's parts, each with
its own step count; the target updates are two ops. Minibatches come from
:func:`mfd_core.learners.replay.draw` (the numbers ``sample`` draws, as flat rows). A group
holds the robots taking gradient steps now and is rebuilt when they change, so a robot
whose chunk has ended or that is before ``learning_starts`` costs nothing.

Where the time goes (a 5-robot reach fleet, 64-64 networks, batch 256, on this project's
2-core AMD machine): ~60 % in the batched float32 matmuls, which torch's MKL runs on AVX2
code on AMD (~100 GFLOP/s a core; numpy's OpenBLAS on its AVX-512 kernels did them in half
the time, but this environment pins ``OPENBLAS_CORETYPE=Haswell``), the rest in the env
steps, SB3's acting loop and the minibatch draws.

What each robot learns is what SB3's ``TD3.train`` does for it, step for step: the same
update count (``gradient_steps`` per env step after ``learning_starts``), the same
minibatches (its own replay buffer's ``sample``), the same target noise, the clipped double
Q target, the delayed actor update (``policy_delay``) and Polyak averaging, Adam with the
robot's own optimiser state (written back when the chunks end). Random numbers are drawn
from the same global generators in a fixed order (robot by robot, step by step), so a run
is reproducible and one robot alone draws exactly the numbers SB3 would; floating point
differs only by rounding (batched matmuls, the written-out backward pass, the fused Adam).

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

from mfd_core.learners import replay

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
    robots in flat tensors, layer by layer: each layer's weights of every robot and head in
    one ``(robots * heads, out, in)`` block (what a batched matmul takes, no copy), then its
    biases; each robot's modules view into them."""

    def __init__(self, nets: list[list[list[nn.Linear]]], targets: list[list[list[nn.Linear]]],
                 optimizers: list[torch.optim.Optimizer]) -> None:
        # nets[r][q][l]: robot r's q-th network's l-th Linear (the actor has one network)
        self.robots, self.heads, self.depth = len(nets), len(nets[0]), len(nets[0][0])
        first = nets[0][0]
        self.shapes = [(layer.out_features, layer.in_features) for layer in first]
        rh = self.robots * self.heads
        self.slots: list[tuple[int, int]] = []  # per layer: where its weights and its biases start
        n = 0
        for out_f, in_f in self.shapes:
            self.slots.append((n, n + rh * out_f * in_f))
            n += rh * out_f * (in_f + 1)
        self.size = n
        self.flat = torch.empty(n)
        self.target = torch.empty(n)
        self.exp_avg = torch.zeros(n)
        self.exp_avg_sq = torch.zeros(n)
        self.grad = torch.zeros(n)  # the gradients of a step, written by _param_grads
        # Adam's step count per robot, as the tensors torch's fused Adam counts in
        self.steps = [torch.tensor(0.0) for _ in range(self.robots)]
        self.optimizers = optimizers
        self._nets, self._targets = nets, targets
        with torch.no_grad():
            for r in range(self.robots):
                for q in range(self.heads):
                    for l in range(self.depth):
                        for flat, layer in ((self.flat, nets[r][q][l]), (self.target, targets[r][q][l])):
                            self._view(flat, r, q, l, "weight").copy_(layer.weight)
                            self._view(flat, r, q, l, "bias").copy_(layer.bias)
                opt = optimizers[r]
                state = [opt.state.get(p) for p in self._params(r)]
                if all(s and "exp_avg" in s for s in state):
                    self.steps[r].fill_(float(state[0]["step"]))
                    for (q, l, kind), s in zip(self._index(), state):
                        self._view(self.exp_avg, r, q, l, kind).copy_(s["exp_avg"])
                        self._view(self.exp_avg_sq, r, q, l, kind).copy_(s["exp_avg_sq"])
                elif any(state):
                    raise RuntimeError("an optimiser with state for some parameters only")
        # each robot's part of every block (contiguous): what the fused Adam and Polyak steps take
        self._parts = {name: self._robot_parts(getattr(self, name))
                       for name in ("flat", "target", "exp_avg", "exp_avg_sq", "grad")}
        self._adam_lists: dict[tuple[int, ...], tuple[list[Tensor], ...]] = {}
        # the buffers are only ever written in place: their layer views are made once
        self._layers: dict[tuple[str, int | None], list[tuple[Tensor, Tensor]]] = {}
        # the robots' modules act with the stacked values while the chunks run
        for r in range(self.robots):
            for q, l, kind in self._index():
                getattr(nets[r][q][l], kind).data = self._view(self.flat, r, q, l, kind)
                getattr(targets[r][q][l], kind).data = self._view(self.target, r, q, l, kind)

    def _index(self) -> Iterator[tuple[int, int, str]]:
        # the order of the optimiser's parameters (Sequential order: head by head, layer by layer)
        for q in range(self.heads):
            for l in range(self.depth):
                yield q, l, "weight"
                yield q, l, "bias"

    def _params(self, r: int) -> list[Tensor]:
        return [getattr(self._nets[r][q][l], kind) for q, l, kind in self._index()]

    def _blocks(self, flat: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Per layer, the ``(robots, heads, out, in)`` weights and ``(robots, heads, out)`` biases."""
        out = []
        r, h = self.robots, self.heads
        for (out_f, in_f), (w, b) in zip(self.shapes, self.slots):
            out.append((flat[w : w + r * h * out_f * in_f].view(r, h, out_f, in_f), flat[b : b + r * h * out_f].view(r, h, out_f)))
        return out

    def _view(self, flat: Tensor, r: int, q: int, l: int, kind: str) -> Tensor:
        w, b = self._blocks(flat)[l]
        return w[r, q] if kind == "weight" else b[r, q]

    def _robot_parts(self, flat: Tensor) -> list[list[Tensor]]:
        """Per robot, its contiguous part of each block, in block order."""
        parts: list[list[Tensor]] = [[] for _ in range(self.robots)]
        for pair in self._blocks(flat):
            for block in pair:
                for r, part in enumerate(block.reshape(self.robots, -1).unbind(0)):
                    parts[r].append(part)
        return parts

    def layers(self, name: str, heads: int | None = None) -> list[tuple[Tensor, Tensor]]:
        """Per layer, weights ``(robots * heads, out, in)`` and biases ``(robots * heads, 1, out)``:
        views of the buffer ``name`` (``"flat"``, ``"target"`` or ``"grad"``); ``heads=1`` takes
        the first head only."""
        key = (name, heads)
        if key not in self._layers:
            self._layers[key] = self._layer_views(getattr(self, name), heads)
        return self._layers[key]

    def _layer_views(self, flat: Tensor, heads: int | None) -> list[tuple[Tensor, Tensor]]:
        out = []
        r, h = self.robots, self.heads
        for w, b in self._blocks(flat):
            if heads == 1 and h > 1:
                out.append((w[:, 0], b[:, 0].unsqueeze(1)))
            else:
                out.append((w.view(r * h, *w.shape[2:]), b.view(r * h, 1, b.shape[2])))
        return out

    def adam(self, rows: list[int], lr: list[float], betas: tuple[float, float], eps: float) -> None:
        """One Adam step of the robots in ``rows`` from the gradients in :attr:`grad`: torch's
        fused Adam on their parts, each robot with its own step count (its bias corrections)
        and learning rate."""
        by_lr: dict[float, list[int]] = {}
        for r in rows:
            by_lr.setdefault(lr[r], []).append(r)
        for rate, rs in by_lr.items():
            key = tuple(rs)
            if key not in self._adam_lists:
                parts = self._parts
                self._adam_lists[key] = tuple([p for r in rs for p in parts[name][r]]
                                              for name in ("flat", "grad", "exp_avg", "exp_avg_sq")) + (
                    [self.steps[r] for r in rs for _ in parts["flat"][r]], [self.steps[r] for r in rs])
            params, grads, exp_avg, exp_avg_sq, steps, counts = self._adam_lists[key]
            torch._foreach_add_(counts, 1)
            torch._fused_adam_(params, grads, exp_avg, exp_avg_sq, [], steps, amsgrad=False, lr=rate, beta1=betas[0],
                               beta2=betas[1], weight_decay=0.0, eps=eps, maximize=False)

    def polyak(self, rows: list[int], tau: float) -> None:
        """SB3's ``polyak_update`` (``target * (1 - tau) + tau * online``) of the robots in ``rows``."""
        if len(rows) == self.robots:
            self.target.mul_(1 - tau)
            torch.add(self.target, self.flat, alpha=tau, out=self.target)
            return
        targets = [p for r in rows for p in self._parts["target"][r]]
        torch._foreach_mul_(targets, 1 - tau)
        torch._foreach_add_(targets, [p for r in rows for p in self._parts["flat"][r]], alpha=tau)

    @torch.no_grad()
    def close(self) -> None:
        """Give every robot's modules their own storage again, and its optimiser its state."""
        for r in range(self.robots):
            opt = self.optimizers[r]
            step = float(self.steps[r])
            for (q, l, kind), p in zip(self._index(), self._params(r)):
                p.data = self._view(self.flat, r, q, l, kind).clone()
                t = getattr(self._targets[r][q][l], kind)
                t.data = self._view(self.target, r, q, l, kind).clone()
                if step:
                    opt.state[p] = {"step": torch.tensor(step),
                                    "exp_avg": self._view(self.exp_avg, r, q, l, kind).clone(),
                                    "exp_avg_sq": self._view(self.exp_avg_sq, r, q, l, kind).clone()}


# The MLPs' forward and backward passes, written out: autograd's graph, its slice and
# expand nodes and its per-op bookkeeping cost more than the small matmuls themselves
# (~40 % of a batched step), and a TD3 step needs only what is below.

def _forward(x: Tensor, layers: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, list[Tensor]]:
    """An SB3 MLP ``[Linear, ReLU]* Linear`` on ``(nets, batch, in)``; the output before any
    squashing and each layer's input (what the backward pass needs)."""
    inputs = [x]
    last = len(layers) - 1
    for i, (w, b) in enumerate(layers):
        x = torch.baddbmm(b, x, w.transpose(1, 2))
        if i < last:
            x = x.relu_()
            inputs.append(x)
    return x, inputs


def _input_grad(g: Tensor, layers: list[tuple[Tensor, Tensor]], inputs: list[Tensor], down_to: int) -> Tensor:
    """Back from the gradient ``g`` at the output to the output of layer ``down_to - 1``
    before its ReLU (no parameter gradients: the actor's loss through the critic)."""
    for i in range(len(layers) - 1, down_to - 1, -1):
        w = layers[i][0]
        g = g * w if w.shape[1] == 1 else torch.bmm(g, w)  # one output: an outer product
        if i > 0:
            g = torch.ops.aten.threshold_backward(g, inputs[i], 0)
    return g


def _param_grads(g: Tensor, layers: list[tuple[Tensor, Tensor]], inputs: list[Tensor],
                 out: list[tuple[Tensor, Tensor]]) -> None:
    """The loss's gradients of every layer's weight and bias, from ``g`` at the output,
    written into ``out`` (views of the same shapes as ``layers``)."""
    for i in range(len(layers) - 1, -1, -1):
        x = inputs[i]
        w_out, b_out = out[i]
        # the weight gradient g^T x, or (x^T g)^T where the layer widens: MKL's batched
        # matmul is ~3-10x slower when the output of a K=256 product is narrower than tall
        # (the first layers: 132 -> 54 us for the critic's, 194 -> 20 us for the actor's)
        if x.shape[2] < g.shape[2]:
            w_out.copy_(torch.bmm(x.transpose(1, 2), g).transpose(1, 2))
        else:
            torch.bmm(g.transpose(1, 2), x, out=w_out)
        torch.sum(g, dim=1, keepdim=True, out=b_out)
        if i > 0:
            w = layers[i][0]
            g = g * w if w.shape[1] == 1 else torch.bmm(g, w)
            g = torch.ops.aten.threshold_backward(g, inputs[i], 0)


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
        self._adam: dict[str, tuple[list[float], tuple[float, float], float]] = {}

    @torch.no_grad()
    def train(self, active: list[bool], gradient_steps: int) -> None:
        """``gradient_steps`` TD3 updates of every active robot, as ``TD3.train`` does them.

        With ``presample`` the minibatches of all ``gradient_steps`` are drawn in one
        draw per robot (the buffer does not change between them, so they are drawn from
        the same distribution, each with HER's share of real and relabelled transitions;
        one draw instead of several saves most of HER's sampling cost), else one per step
        as SB3 does (the same random numbers). The draws are
        :func:`mfd_core.learners.replay.draw`'s: ``sample``'s numbers, as flat rows.
        """
        models = self.models
        rows = [r for r in range(len(models)) if active[r]]
        if not rows or gradient_steps < 1:
            return
        steps, batch = gradient_steps, self.batch
        # every robot's minibatches of the chunk as (robots, steps * batch, ...) tensors, filled
        # once; robots that do not train ride along on zeros (nothing of theirs changes)
        robots = len(models)
        fill = np.zeros if len(rows) < robots else np.empty
        arrays: dict[str, np.ndarray] = {}

        def put(r: int, s: int, part: replay.Batch) -> None:
            for name, value in zip(replay.Batch._fields, part):
                if name not in arrays:
                    arrays[name] = fill((robots, steps * batch, value.shape[1]), dtype=np.float32)
                arrays[name][r, s * batch : s * batch + len(value)] = value

        if self.presample and steps > 1:
            for r in rows:
                m = models[r]
                put(r, 0, replay.draw(m.replay_buffer, batch * steps, self.keys, m.gamma, m._vec_normalize_env,
                                      parts=steps))
        else:  # as TD3.train draws them: step by step (robot by robot)
            for s in range(steps):
                for r in rows:
                    m = models[r]
                    put(r, s, replay.draw(m.replay_buffer, batch, self.keys, m.gamma, m._vec_normalize_env))
        data = {name: torch.from_numpy(value) for name, value in arrays.items()}
        # the target policy noise, step by step and robot by robot as TD3.train draws it (one
        # draw of the same numbers: torch fills a normal tensor in blocks of 16 in order)
        act_dim = data["actions"].shape[2]
        noise = torch.empty(steps, len(rows), batch, act_dim).normal_(0, self.noise).clamp_(-self.noise_clip,
                                                                                           self.noise_clip)
        if len(rows) < robots:
            noise = torch.zeros(steps, robots, batch, act_dim).index_copy_(1, torch.tensor(rows), noise)
        # each robot's learning rate as its optimiser has it now (TD3.train sets it per call)
        self._adam = {}
        for name in ("critic", "actor"):
            groups = [getattr(m.policy, name).optimizer.param_groups[0] for m in models]
            self._adam[name] = ([g["lr"] for g in groups], groups[0]["betas"], groups[0]["eps"])
        for s in range(steps):
            part = slice(s * batch, (s + 1) * batch)
            actor_rows = []
            for r in rows:
                m = models[r]
                m._n_updates += 1
                if m._n_updates % self.delay == 0:
                    actor_rows.append(r)
            self._update(rows, actor_rows, {k: v[:, part] for k, v in data.items()}, noise[s])
            self.updates += len(rows)

    def _update(self, rows: list[int], actor_rows: list[int], data: dict[str, Tensor], noise: Tensor) -> None:
        robots, h, batch = len(self.models), self.heads, self.batch
        obs, nxt, act = data["obs"], data["next_obs"], data["actions"]
        critic, actor = self.critic, self.actor
        # the clipped double-Q target
        next_a, _ = _forward(nxt, actor.layers("target"))
        next_a = next_a.tanh_().add_(noise).clamp_(-1, 1)
        q_in = _heads(torch.cat([nxt, next_a], dim=2), h)
        next_q, _ = _forward(q_in, critic.layers("target"))
        next_q = next_q.view(robots, h, batch, 1).amin(dim=1)
        target_q = torch.addcmul(data["rewards"], data["not_done_discount"], next_q)
        # each robot's critic loss is SB3's (the sum over heads of the mean squared error)
        layers = critic.layers("flat")
        q, inputs = _forward(_heads(torch.cat([obs, act], dim=2), h), layers)
        g = (q.view(robots, h, batch, 1) - target_q.unsqueeze(1)).mul_(2.0 / batch).view(robots * h, batch, 1)
        _param_grads(g, layers, inputs, critic.layers("grad"))
        critic.adam(rows, *self._adam["critic"])
        if not actor_rows:
            return
        # the delayed actor update: minus the updated critic's first head on the actor's actions
        layers = actor.layers("flat")
        pre, a_inputs = _forward(obs, layers)
        a = pre.tanh_()
        q1_layers = critic.layers("flat", heads=1)
        _, q_inputs = _forward(torch.cat([obs, a], dim=2), q1_layers)
        g = torch.full((robots, batch, 1), -1.0 / batch)
        g = _input_grad(g, q1_layers, q_inputs, down_to=1)
        w0 = q1_layers[0][0]
        g = torch.bmm(g, w0[:, :, obs.shape[2]:])  # d loss / d action
        g = g.mul_(1 - a * a)  # through the tanh
        _param_grads(g, layers, a_inputs, actor.layers("grad"))
        actor.adam(actor_rows, *self._adam["actor"])
        critic.polyak(actor_rows, self.tau)
        actor.polyak(actor_rows, self.tau)

    def close(self) -> None:
        self.actor.close()
        self.critic.close()


def _heads(x: Tensor, heads: int) -> Tensor:
    """``(robots, batch, f)`` inputs as ``(robots * heads, batch, f)``: every head sees them."""
    if heads == 1:
        return x
    return x.unsqueeze(1).expand(-1, heads, -1, -1).reshape(x.shape[0] * heads, *x.shape[1:])


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
        signature = {id(m): _signature(m) for m, _ in jobs}
        by_id = {id(m): m for m, _ in jobs}
        built: dict[tuple, _Group] = {}  # per architecture, the group training now
        try:
            # MLPs without dropout or batch norm: train and eval modes are the same network,
            # and SB3's switch (a walk over every module, twice an env step) is skipped
            for model, _ in jobs:
                model.policy.set_training_mode = _no_mode
                model.policy.predict = _Acting(model.policy)
            loops = {id(m): _chunk(m, n) for m, n in jobs}
            while loops:
                asks: dict[int, int] = {}
                for key, loop in list(loops.items()):
                    try:
                        asks[key] = next(loop)
                    except StopIteration:
                        del loops[key]
                # A group holds the robots that take gradient steps now, and is built anew
                # when they change: a robot whose chunk has ended (a joiner's is shorter) or
                # that is not past learning_starts would ride along on zeros, at the cost of
                # a robot's update (a fifth of a 5-robot fleet's step, for most of a run)
                wanting: dict[tuple, list[Any]] = {}
                for key, n in asks.items():
                    if n > 0:
                        wanting.setdefault(signature[key], []).append(by_id[key])
                for sig in list(built):
                    if [id(m) for m in built[sig].models] != [id(m) for m in wanting.get(sig, [])]:
                        built.pop(sig).close()
                for sig, models in wanting.items():
                    if sig not in built:
                        built[sig] = _Group(models, presample=self.presample)
                    group = built[sig]
                    wants = [asks[id(m)] for m in group.models]
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
                model.policy.__dict__.pop("predict", None)
            for group in built.values():
                group.close()
            self._flushing = False


def _no_mode(mode: bool) -> None:
    return None


class _Acting:
    """A TD3 policy's ``predict`` for its acting loop, without SB3's checks around it (each
    an observation-space walk: ~250 us an env step, ten times the actor's own forward): the
    same features (the observation keys flattened and concatenated as the extractor does),
    the same layers (the ``nn.Linear`` ops), the same unscaling."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self.keys = _extractor_keys(policy.actor.features_extractor)
        self.layers = _mlp_layers(policy.actor.mu, nn.Tanh)

    def __call__(self, observation: Any, state: Any = None, episode_start: Any = None,
                 deterministic: bool = False) -> tuple[np.ndarray, None]:
        if self.keys == [None]:
            x = np.asarray(observation, dtype=np.float32).reshape(-1, self.layers[0].in_features)
        else:
            x = np.concatenate([np.asarray(observation[k], dtype=np.float32).reshape(len(observation[k]), -1)
                                for k in self.keys], axis=1)
        with torch.no_grad():
            h = torch.from_numpy(x)
            last = len(self.layers) - 1
            for i, layer in enumerate(self.layers):
                h = torch.addmm(layer.bias, h, layer.weight.t())
                if i < last:
                    h = h.relu_()
            actions = h.tanh_().numpy()
        return self.policy.unscale_action(actions), None


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
