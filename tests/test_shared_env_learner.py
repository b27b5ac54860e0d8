"""The core's shared-environment learner (mfd_core/learners/shared_env.py) on a toy
PettingZoo ParallelEnv defined here: no radio, no robots."""
from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch
from gymnasium import spaces
from pettingzoo import ParallelEnv

from mfd_core import MFDPolicy, SharedEnvCommons, SharedEnvLearner, SimNetwork, World
from mfd_core.learners.shared_env import make_ppo

torch.set_num_threads(1)

EPISODE = 8


class MatchEnv(ParallelEnv):
    """Three agents; each sees a random bit (and its own id) and is paid 1 for answering
    that bit: trivially learnable, and every transition says whose it is. Agent ``c``
    has its own spaces (one more feature; with ``box_c`` a ``Box`` action, paid
    ``-(action - bit)^2``), so the commons must batch it apart. The env logs what each
    agent was sent and paid."""

    metadata = {"name": "match_v0", "render_modes": []}

    def __init__(self, box_c: bool = False) -> None:
        self.possible_agents = ["a", "b", "c"]
        self.box_c = box_c
        self.log: list[dict] = []
        self.rng = np.random.default_rng(0)

    def observation_space(self, agent: str) -> spaces.Box:
        return spaces.Box(0.0, 1.0, shape=(3 if agent == "c" else 2,), dtype=np.float32)

    def action_space(self, agent: str) -> spaces.Space:
        if agent == "c" and self.box_c:
            return spaces.Box(-1.0, 2.0, shape=(1,), dtype=np.float32)
        return spaces.Discrete(2)

    def _obs(self) -> dict[str, np.ndarray]:
        out = {}
        for i, a in enumerate(self.possible_agents):
            o = [self.bits[i], i / 10]
            out[a] = np.array(o + ([0.5] if a == "c" else []), dtype=np.float32)
        return out

    def reset(self, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.agents = list(self.possible_agents)
        self.t = 0
        self.bits = self.rng.integers(0, 2, size=3).astype(np.float32)
        return self._obs(), {a: {} for a in self.agents}

    def step(self, actions):
        rewards = {}
        for i, a in enumerate(self.possible_agents):
            act = float(np.asarray(actions[a]).reshape(-1)[0])
            rewards[a] = -(act - self.bits[i]) ** 2 if isinstance(self.action_space(a), spaces.Box) \
                else float(act == self.bits[i])
        self.log.append({"bits": self.bits.copy(), "actions": dict(actions), "rewards": dict(rewards)})
        self.t += 1
        self.bits = self.rng.integers(0, 2, size=3).astype(np.float32)
        trunc = self.t >= EPISODE
        if trunc:
            self.agents = []
        return (self._obs(), rewards, {a: False for a in self.possible_agents},
                {a: trunc for a in self.possible_agents}, {a: {} for a in self.possible_agents})


def fleet(box_c: bool = False, lr: float = 3e-3, n_epochs: int = 4, seed: int = 0,
          families: dict[str, str] | None = None):
    env = MatchEnv(box_c)
    commons = SharedEnvCommons(env, seed=seed, gamma=0.5, eval_env=MatchEnv(box_c), eval_seed=99, eval_steps=40)
    learners = {}
    for a in env.possible_agents:
        model = make_ppo(env.observation_space(a), env.action_space(a), seed=seed, n_steps=32, batch_size=16,
                         n_epochs=n_epochs, learning_rate=lr, gamma=0.5, gae_lambda=0.9,
                         policy_kwargs={"net_arch": {"pi": [16], "vf": [16]}})
        learners[a] = SharedEnvLearner(commons, a, model, family=(families or {}).get(a, f"toy-{a}"))
    return env, commons, learners


def test_each_learner_gets_only_its_own_transitions():
    env, commons, learners = fleet()
    commons.collect(20)  # one collection serves all three
    assert commons.collections == 1 and commons.env_steps == 20
    ends = [EPISODE - 1, 2 * EPISODE - 1]  # a truncation adds gamma * V(last obs) to these
    for k, (name, learner) in enumerate(learners.items()):
        tr = learner.pending
        assert tr.obs.shape == (20, 3 if name == "c" else 2) and tr.collection == 1
        assert np.allclose(tr.obs[:, 1], k / 10)  # its own id in every observation
        sent = np.array([float(np.asarray(s["actions"][name]).reshape(-1)[0]) for s in env.log])
        paid = np.array([s["rewards"][name] for s in env.log], dtype=np.float32)
        bits = np.array([s["bits"][k] for s in env.log], dtype=np.float32)
        assert np.array_equal(tr.actions[:, 0], sent) and np.array_equal(tr.obs[:, 0], bits)
        keep = np.setdiff1d(np.arange(20), ends)
        assert np.array_equal(tr.rewards[keep], paid[keep])
        # ... gamma (0.5) times the critic's value of the episode's last observation
        with torch.no_grad():
            last = torch.tensor([[bit, k / 10] + ([0.5] if name == "c" else []) for bit in (0.0, 1.0)])
            candidates = 0.5 * learner.policy.predict_values(last).squeeze(1).numpy()
        for d in tr.rewards[ends] - paid[ends]:
            assert np.isclose(candidates, d, atol=1e-6).any()
        assert np.flatnonzero(tr.starts).tolist() == [0, EPISODE, 2 * EPISODE]
    learners["b"].train(20)
    learners["c"].train(20)
    assert commons.collections == 1  # served from the same collection
    learners["b"].train(20)
    assert commons.collections == 2  # b asked again: a new collection for everyone


def test_agents_with_their_own_spaces_play_in_their_own_batch_box_actions_included():
    env, commons, learners = fleet(box_c=True)
    groups = commons.groups({a: lr.policy for a, lr in learners.items()})
    assert [g for g, _ in groups] == [["a", "b"], ["c"]]
    assert learners["c"].output_kind == "gaussian" and learners["a"].output_kind == "categorical"
    before = learners["c"].get_state()
    learners["c"].train(16)
    assert not torch.equal(before["log_std"], learners["c"].get_state()["log_std"])  # PPO on Box actions
    tr = learners["a"].pending
    sent_c = np.array([float(np.asarray(s["actions"]["c"]).reshape(-1)[0]) for s in env.log])
    assert ((sent_c >= -1.0) & (sent_c <= 2.0)).all()  # clipped for the env, as SB3 does
    mean, log_std = learners["c"].outputs(torch.zeros(4, 3))
    assert mean.shape == (4, 1) and log_std.shape == (4, 1)
    assert tr.actions.shape == (16, 1)


def test_the_commons_plays_every_agent_with_its_current_policy():
    env, commons, learners = fleet()
    # agent b now always answers 1: its action net's bias says so
    state = learners["b"].get_state()
    state["action_net.bias"] = torch.tensor([-30.0, 30.0])
    learners["b"].set_state(state)
    learners["a"].train(16)
    assert all(int(s["actions"]["b"]) == 1 for s in env.log)
    assert (learners["b"].pending.actions == 1).all()
    state["action_net.bias"] = torch.tensor([30.0, -30.0])
    learners["b"].set_state(state)
    learners["a"].train(16)
    assert all(int(s["actions"]["b"]) == 0 for s in env.log[16:])


def test_ppo_moves_the_policy_and_the_return_rises():
    _, commons, learners = fleet(lr=1e-2, n_epochs=8)
    before = {a: lr.get_state() for a, lr in learners.items()}
    score0 = learners["a"].score()
    for _ in range(12):
        for learner in learners.values():
            learner.train(32)
    moved = {a: any(not torch.equal(v, learners[a].get_state()[k]) for k, v in s.items()) for a, s in before.items()}
    assert all(moved.values())
    assert learners["a"].samples == 12 * 32 and learners["a"].work_done == 12 * 32 * (1 + 8)
    # the greedy answer is right (nearly) every time: a rise from whatever the start scored
    score1 = learners["a"].score()
    assert score1 >= 0.9 and score1 > score0
    assert learners["c"].score() >= 0.9


def test_trainable_freezes_the_rest():
    _, _, learners = fleet()
    before = learners["a"].get_state()
    learners["a"].train(16, trainable={"action_net.weight", "action_net.bias"})
    after = learners["a"].get_state()
    assert not torch.equal(before["action_net.bias"], after["action_net.bias"])
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("action_net"))


def test_state_round_trips_and_masks_write_only_their_elements():
    _, commons, learners = fleet()
    learners["a"].train(16)
    state = learners["a"].get_state()
    fresh = learners["b"].get_state()
    # a candidate is scored without touching the learner, as if it were installed
    candidate_score = learners["b"].score(state)
    assert all(torch.equal(fresh[k], v) for k, v in learners["b"].get_state().items())
    learners["b"].set_state(state)
    assert all(torch.equal(state[k], v) for k, v in learners["b"].get_state().items())
    assert learners["b"].score() == candidate_score
    mask = {"action_net.bias": torch.tensor([True, False])}
    learners["a"].set_state({"action_net.bias": torch.tensor([5.0, 6.0])}, masks=mask)
    got = learners["a"].get_state()
    assert got["action_net.bias"][0] == 5.0 and got["action_net.bias"][1] == state["action_net.bias"][1]
    assert all(torch.equal(state[k], v) for k, v in got.items() if k != "action_net.bias")
    with pytest.raises(ValueError):
        learners["a"].set_state({"action_net.bias": torch.zeros(3)})
    with pytest.raises(KeyError):
        learners["a"].set_state({"no.such.tensor": torch.zeros(1)})


def test_clone_distils_towards_a_teacher_and_is_not_played():
    _, commons, learners = fleet()
    learners["a"].train(16)
    twin = learners["a"].clone()
    assert all(torch.equal(v, twin.get_state()[k]) for k, v in learners["a"].get_state().items())
    teacher = learners["b"]
    gap0 = float(((twin.outputs(twin.local_inputs(16)) - teacher.outputs(twin.local_inputs(16))) ** 2).mean())
    twin.distil_from(teacher.outputs, 30, "categorical")
    gap1 = float(((twin.outputs(twin.local_inputs(16)) - teacher.outputs(twin.local_inputs(16))) ** 2).mean())
    assert gap1 < gap0
    assert commons.learners["a"] is learners["a"]
    with pytest.raises(RuntimeError, match="clone"):
        twin.train(16)


def test_it_runs_as_the_learners_of_an_mfd_world():
    """Three agents of one env as MFD nodes on a line: a and b (same shapes, one family)
    share models as packets; c (its own spaces) learns beside them."""
    _, commons, learners = fleet(families={"a": "toy", "b": "toy", "c": "toy-c"})
    graph = nx.path_graph(3)
    for n in graph:
        graph.nodes[n].update(compute=100.0, memory=1 << 30)
    for u, v in graph.edges:
        graph.edges[u, v].update(bandwidth=1e8, latency=0.001)
    world = World(SimNetwork(graph, seed=0), {i: learners[a] for i, a in enumerate("abc")}, seed=0, duration=3.0,
                  eval_interval=1.0, local_steps=16, evaluate=lambda _node, learner: learner.score(),
                  policy=MFDPolicy())
    result = world.run()
    assert commons.collections >= 2 and all(lr.samples >= 32 for lr in learners.values())
    assert result.node_ids == [0, 1, 2] and len(result.times) >= 2
    assert np.isfinite(np.asarray(result.scores)).all()
    assert result.model_bytes[-1] > 0 and result.data_bytes[-1] == 0  # models travelled, no data did
