"""The Net4LM robots app: scenario validation, policies as packets between robots, the
gate, and a tiny fleet run end to end (CLI, report files, replay)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3")

from apps.robots import config  # noqa: E402
from apps.robots.config import RobotsScenarioError, from_dict  # noqa: E402
from apps.robots.fleet import build_fleet, steps_to  # noqa: E402
from mfd_core import codec, knowledge  # noqa: E402
from mfd_core.reassembly import Reassembler  # noqa: E402

torch.set_num_threads(1)

TINY_LEARNER = {"net_arch": [32, 32], "batch_size": 32, "learning_starts": 50, "local_steps": 50,
                "score_episodes": 2, "buffer_size": 5000,
                # the settings these tests were written for (not the tuned defaults: one gradient
                # step per env step keeps them fast, and the gate judges on episodes)
                "learning_rate": 1e-3, "gradient_steps": 1, "score_metric": "progress", "share_targets": False,
                "family_by": "arm"}
TINY_POLICY = {"precision": "fp16", "max_silence": 8.0, "gate_tolerance": 0.0, "share_hops": 1,
               "merge_window": 0.0, "merge_weights": "samples_score"}


def tiny(**changes) -> config.RobotsScenario:
    doc = {
        "name": "tiny", "duration": 8.0, "eval_interval": 4.0, "eval_episodes": 2,
        "learner": TINY_LEARNER, "policy": TINY_POLICY,
        "robots": [{"arm": "panda", "goal_center": [0.05, 0.05], "goal_xy_range": 0.2},
                   {"arm": "kuka", "goal_center": [-0.05, 0.0], "goal_xy_range": 0.2},
                   {"arm": "xarm6", "join_at": 0.5}],
    }
    doc.update(changes)
    return from_dict(doc)


# --------------------------------------------------------------------------- scenario


def test_shipped_scenarios_load():
    s = config.load("robots")
    assert len(s.founders) == 4 and len(s.joiners) == 1
    assert {r.arm for r in s.robots} == {"panda", "kuka", "xarm6"}
    assert config.load("robots_push").task == "push"


@pytest.mark.parametrize("doc, field", [
    ({"robots": [{"arm": "ur5"}]}, "robots.0.arm"),
    ({"robots": [{"arm": "panda", "goal_center": [0.2, 0.0]}]}, "goal_center"),
    ({"robots": [{"arm": "panda", "colour": "red"}]}, "robots.0.colour: unknown key"),
    ({"robots": [{"arm": "panda"}], "learner": {"algo": "ppo"}}, "learner.algo"),
    ({"robots": [{"arm": "panda"}], "topology": {"loss": 1.5}}, "topology.loss"),
    ({"robots": [{"arm": "panda", "join_at": 0.5}]}, "robots: at least one robot"),
    ({"robots": []}, "robots"),
])
def test_bad_scenarios_name_the_field(doc, field):
    with pytest.raises(RobotsScenarioError, match=field.replace(".", r"\.")):
        from_dict(doc)


def test_bad_file_names_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[[robots]]\narm = "panda"\ntable_height = 0.5\n')
    with pytest.raises(RobotsScenarioError, match="bad.toml: robots.0.*table_height"):
        config.load(path)


# --------------------------------------------------------------------------- packets and gate


@pytest.fixture(scope="module")
def fleet():
    f = build_fleet(tiny(), seed=0)
    yield f
    f.close()


def _scripted_reach(x: torch.Tensor) -> torch.Tensor:
    """A scripted teacher: move the tool straight at the goal (flat layout: achieved,
    desired, observation)."""
    return torch.clamp((x[:, 3:6] - x[:, 0:3]) / 0.05, -1.0, 1.0)


@pytest.fixture(scope="module")
def good_panda(fleet):
    """A good reach policy in seconds: the scripted teacher distilled into the Panda's
    learner, DAgger-style (distil on the states the student visits; training only the
    critic meanwhile fills the replay buffer with them and leaves the actor alone)."""
    panda = fleet.learners[0]
    panda.train(150)  # first states to distil on (random actions)
    critic = {k for k, _ in panda.policy.named_parameters() if k.startswith("critic")}
    for _ in range(3):
        panda.distil_from(_scripted_reach, 500, "deterministic")
        panda.train(150, trainable=critic)
    return panda


def _success(learner, fleet, node, episodes=10):
    return learner.evaluate_episodes(fleet.test_envs[node], episodes, seed=5, metric="success")


def test_fleet_starts_from_one_initialisation(fleet):
    states = [fleet.learners[n].get_state() for n in (1, 2)]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not fleet.world.network.is_up(2)  # the joiner is absent until it joins


def test_policy_packet_from_one_robot_loads_into_another(fleet, good_panda):
    kuka = fleet.learners[1].clone()
    state = good_panda.get_state()
    datagrams = codec.to_datagrams(state, origin=0, destination=1, model_version=1, message_id=1, mtu=1400,
                                   precision="fp32", meta={"kind": "model"},
                                   scaling={"family": good_panda.family, "ratio": 1.0})
    assert len(datagrams) > 1
    rx = Reassembler()
    message = None
    for d in datagrams[::-1]:
        message = rx.receive(d, 0.0) or message
    assert message is not None and message.complete
    kuka.set_state(message.state, message.masks)
    x = kuka.local_inputs(64)
    assert torch.allclose(kuka.outputs(x), good_panda.outputs(x))
    # the Panda's policy acts on the KUKA's cell: same task space, same meaning
    assert _success(kuka, fleet, 1) >= 0.5


def test_gate_refuses_a_random_policy_and_accepts_a_good_one(fleet, good_panda):
    assert _success(good_panda, fleet, 0) >= 0.5
    gate = knowledge.Gate(tolerance=0.1)
    random_state = {k: torch.randn_like(v) for k, v in good_panda.get_state().items()}
    assert not gate.check(good_panda, random_state).accepted
    result = knowledge.absorb_knowledge(
        good_panda, knowledge.IncomingModel(family=good_panda.family, state=random_state, weight=1e6), gate=gate)
    assert result.outcomes[0].action == "refused"
    fresh = fleet.learners[2].clone()  # the joiner, untrained: a good policy helps it
    assert gate.check(fresh, good_panda.get_state()).accepted


# --------------------------------------------------------------------------- end to end


def test_steps_to_counts_the_robots_own_steps():
    assert steps_to([0.1, float("nan"), 0.95], [100, 200, 300], 0.9) == 300
    assert steps_to([0.1, 0.5], [100, 200], 0.9) is None


def test_tiny_fleet_runs_end_to_end_and_writes_the_report(tmp_path, monkeypatch, capsys):
    from apps.cli import main

    scenario_file = tmp_path / "tiny.toml"
    learner = "\n".join(f"{k} = {json.dumps(v)}" for k, v in TINY_LEARNER.items())
    scenario_file.write_text(f"""
name = "tiny"
duration = 12.0
eval_interval = 4.0
eval_episodes = 2
[learner]
{learner}
[[robots]]
arm = "panda"
[[robots]]
arm = "kuka"
[[robots]]
arm = "xarm6"
join_at = 0.5
""")
    out = tmp_path / "run"
    assert main(["robots", "demo", "--scenario", str(scenario_file), "--out", str(out), "--quiet"]) == 0
    report = out / "report"
    for name in ("index.html", "success_vs_time.png", "bytes_vs_time.png", "per_robot_mfd.png",
                 "robots_acting.png", "robots_acting.gif", "summary.json"):
        assert (report / name).stat().st_size > 0, name
    record = json.loads((out / "mfd" / "seed0" / "robots.json").read_text())
    assert [r["arm"] for r in record["robots"]] == ["panda", "kuka", "xarm6"]
    assert record["robots"][2]["join_time"] == 6.0
    assert record["robots"][2]["counters"]["bootstraps"] == 1
    assert record["robots"][0]["env_steps"] >= 250  # 300 steps of robot time, less gate/distil time
    summary = json.loads((out / "mfd" / "seed0" / "summary.json").read_text())
    assert summary["data_bytes"] == 0 and summary["model_bytes"] > 0
    assert len(list((out / "mfd" / "seed0" / "policies").glob("robot*.zip"))) == 3
    html = (report / "index.html").read_text()
    assert "robots_acting.png" in html and "kuka" in html

    capsys.readouterr()
    assert main(["robots", "play", str(out), "--robot", "1", "--episodes", "1"]) == 0
    assert "robot 1 (kuka)" in capsys.readouterr().out


def test_families_follow_the_arm_under_mfd_and_are_one_for_the_baselines():
    from apps.robots.fleet import family_name

    s = tiny()
    assert [family_name(s, i) for i in range(3)] == ["td3-mlp-panda", "td3-mlp-kuka", "td3-mlp-xarm6"]
    for name in ("fedavg", "gossip", "isolated"):
        assert {family_name(s.with_policy(name), i) for i in range(3)} == {"td3-mlp"}


def test_gradient_steps_per_env_step_reach_the_learner():
    from apps.robots.fleet import make_env, make_model

    s = tiny(learner={**TINY_LEARNER, "gradient_steps": 3})
    env = make_env(s.task, s.robots[0].cell())
    try:
        model = make_model(s, env, width=1.0, seed=0)
        assert model.gradient_steps == 3 and model.train_freq.frequency == 1
        assert make_model(tiny(), env, width=1.0, seed=0).gradient_steps == 1
    finally:
        env.close()
