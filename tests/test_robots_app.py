"""The Net4LM robots app: scenario validation, policies as packets between robots, the
gate, and a tiny fleet run end to end (CLI, report files, replay)."""
from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3")

from apps.robots import config  # noqa: E402
from apps.robots.config import RobotsScenarioError, from_dict  # noqa: E402
from apps.robots.fleet import build_fleet, steps_to  # noqa: E402
from mfd_core import codec, knowledge, load_model  # noqa: E402
from mfd_core.reassembly import Reassembler  # noqa: E402

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]

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


def tiny_file(tmp_path, duration: float = 8.0):
    path = tmp_path / "tiny.toml"
    learner = "\n".join(f"{k} = {json.dumps(v)}" for k, v in TINY_LEARNER.items())
    path.write_text(f"""
name = "tiny"
duration = {duration}
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
    return path


def rows(folder) -> list[dict]:
    with open(folder / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_tiny_demo_writes_a_run_folder_with_isolated_beside_it_and_the_robots_report(tmp_path, capsys):
    """The default demo: MFD here, its measurements and the isolated reference in second
    processes; one run folder (tidy rows, summary with the speed-up, run.json kind robots);
    `mfd report` rebuilds the robots page; `play` replays; measuring in place gives the
    same figures bit for bit."""
    from apps.cli import main

    scenario = tiny_file(tmp_path)
    out = tmp_path / "run"
    assert main(["robots", "demo", "--scenario", str(scenario), "--out", str(out), "--quiet"]) == 0
    meta = json.loads((out / "run.json").read_text())
    assert meta["kind"] == "robots" and meta["network"] == "sim" and meta["processes"] == 3
    assert sorted(meta["done"]) == ["isolated/seed0", "mfd/seed0"] and not meta["interrupted"]
    table = rows(out)
    assert {r["run"] for r in table} == {"mfd/seed0", "isolated/seed0"}
    assert {"score", "env_steps", "bytes_sent", "bytes", "data_bytes"} <= {r["metric"] for r in table}
    assert all(r["value"] == "0" for r in table if r["metric"] == "data_bytes")  # policies travel, never data
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kind"] == "robots" and set(summary["policies"]) == {"mfd", "isolated"}
    assert "speedup_vs_isolated" in summary["comparisons"]["mfd"]
    runs = json.loads((out / "runs.json").read_text())
    robots = runs["mfd/seed0"]["robots"]
    assert [r["arm"] for r in robots] == ["panda", "kuka", "xarm6"] and robots[2]["join_time"] == 4.0
    assert robots[2]["counters"]["bootstraps"] == 1 and robots[0]["env_steps"] >= 150
    for policy in ("mfd", "isolated"):
        assert len(list((out / policy / "seed0" / "policies").glob("robot*.zip"))) == 3
    checkpoints = out / "checkpoints" / "mfd" / "seed0"  # the served policies, at the end at least
    assert json.loads((checkpoints / "checkpoint.json").read_text())["final"] is True
    served = load_model(checkpoints / "node2.mfdm")
    assert any(k.startswith("actor.") for k in served) and all(v.isfinite().all() for v in served.values())
    report = out / "report"
    for name in ("index.html", "success_vs_time.png", "bytes_vs_time.png", "per_robot_mfd.png",
                 "per_robot_isolated.png", "robots_acting.png", "robots_acting.gif"):
        assert (report / name).stat().st_size > 0, name
    page = (report / "index.html").read_text()
    assert "Speed-up vs isolated" in page and "MFD: the robots" in page and "kuka" in page
    assert "_" not in "".join(re.findall(r"<th>(.*?)</th>", page))  # words, not snake_case

    (report / "index.html").unlink()
    capsys.readouterr()
    assert main(["report", str(out)]) == 0  # the robots page again, never the generic one over it
    rebuilt = (report / "index.html").read_text()
    assert "Speed-up vs isolated" in rebuilt and "test accuracy" not in rebuilt
    assert json.loads((out / "summary.json").read_text())["kind"] == "robots"

    assert main(["robots", "play", str(out), "--policy", "mfd", "--robot", "1", "--episodes", "1"]) == 0
    assert "robot 1 (kuka)" in capsys.readouterr().out

    inline = tmp_path / "inline"
    assert main(["robots", "demo", "--scenario", str(scenario), "--out", str(inline), "--quiet",
                 "--no-reference", "--measure", "inline"]) == 0
    here = [r for r in rows(inline)]
    apart = [r for r in table if r["run"] == "mfd/seed0"]
    assert here and here == apart  # the same figures, measured here or in the second process


def cli(argv):
    """`mfd ARGV` in this process: (exit status, stderr)."""
    import contextlib
    import io

    from apps.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code
    return code, err.getvalue()


@pytest.mark.parametrize("argv, needle", [
    (["robots", "demo", "--policy", "bogus"], "bogus"),
    (["robots", "compare", "--policies", "mfd,fedprox"], "fedprox"),
    (["robots", "demo", "--duration", "0"], "--duration"),
    (["robots", "demo", "--duration", "-5"], "--duration"),
    (["robots", "demo", "--set", "duration=1e9"], "duration"),
    (["robots", "demo", "--set", "learner.algo=ppo"], "learner.algo"),
    (["robots", "demo", "--set", "nonsense"], "KEY=VALUE"),
    (["robots", "demo", "--seeds", "0", "0"], "given twice"),
    (["robots", "demo", "--seeds", "-1"], "seeds"),
    (["robots", "demo", "--seeds", "99999999999999999999"], "too large"),
    (["robots", "demo", "--network", "udp"], "--network udp"),
    (["robots", "compare", "--network", "ray"], "--network ray"),
    (["robots", "demo", "--scenario", "nope"], "no scenario file"),
    (["demo", "--seed", "-1"], "seeds"),
    (["robots", "play", "{tmp}", "--episodes", "-1"], "--episodes"),
    (["robots", "play", "{tmp}/missing"], "scenario.json"),
])
def test_every_bad_input_is_one_line_before_anything_is_written(tmp_path, argv, needle):
    out = tmp_path / "never"
    argv = [a.format(tmp=tmp_path) for a in argv]
    if argv[0] == "demo" or argv[1] in ("demo", "compare"):
        argv += ["--out", str(out)]
    code, err = cli(argv)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("mfd: error: ") and needle in err, err
    assert not out.exists()


def test_an_output_folder_of_another_run_is_refused(tmp_path):
    out = tmp_path / "used"
    out.mkdir()
    (out / "theirs.txt").write_text("another run's")
    code, err = cli(["robots", "demo", "--out", str(out)])
    assert code == 2 and "--force" in err and "\n" not in err.strip()
    assert sorted(p.name for p in out.iterdir()) == ["theirs.txt"]


def test_an_interrupted_demo_keeps_what_it_measured(tmp_path):
    """SIGINT mid-run (as Ctrl-C): exit 130 with one line, the rows measured so far kept,
    run.json and summary.json marked interrupted; progress on a pipe is plain lines."""
    # long enough that the run cannot end before it is stopped: on a loaded machine the
    # measuring process can lag the fleet, and the rows waited for below come late
    scenario = tiny_file(tmp_path, duration=200.0)
    out = tmp_path / "stopped"
    log = tmp_path / "stderr.txt"
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "apps.cli", "robots", "demo", "--scenario", str(scenario),
                                 "--out", str(out), "--no-reference"], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=stderr, text=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            progressed = any(line.startswith("[") for line in log.read_text().splitlines())
            if progressed and (out / "results.csv").exists() and len({r["time"] for r in rows(out)}) >= 3:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=90)
    err = log.read_text()
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("mfd: interrupted") and sum(line.startswith("mfd") for line in lines) == 1, err
    assert lines[-1].endswith(f"(finish it: mfd robots demo --resume {out})"), err
    assert "\r" not in err and any(line.startswith("[") for line in lines), err  # plain progress lines, no bar
    meta = json.loads((out / "run.json").read_text())
    assert meta["interrupted"] and meta["done"] == []
    kept = rows(out)
    assert len({r["time"] for r in kept}) >= 2 and all(r["run"] == "mfd/seed0" for r in kept)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] and summary["policies"]["mfd"]["seeds"] == 1


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


def test_a_plain_box_env_runs_as_a_fleet_scored_by_its_return(tmp_path):
    """env_id = a plain gymnasium env (Pendulum-v1: Box observations, no goal): no HER, the
    fleet measures the episode return; a bad env id is one line before any work."""
    scenario = tmp_path / "pendulum.toml"
    scenario.write_text("""
name = "pendulum"
env_id = "Pendulum-v1"
duration = 4.0
eval_interval = 2.0
eval_episodes = 1
[learner]
net_arch = [16, 16]
batch_size = 16
learning_starts = 20
local_steps = 25
score_metric = "critic"
[[robots]]
[[robots]]
""")
    out = tmp_path / "run"
    code, err = cli(["robots", "demo", "--scenario", str(scenario), "--out", str(out), "--quiet", "--no-reference",
                     "--measure", "inline"])
    assert code == 0, err
    assert json.loads((out / "run.json").read_text())["score_name"] == "episode return"
    scores = [float(r["value"]) for r in rows(out) if r["metric"] == "score" and r["value"]]
    assert scores and all(-2000.0 < s < 0.0 for s in scores)  # Pendulum's returns: 200 steps of negative cost
    bad = scenario.read_text().replace("Pendulum-v1", "NoSuchEnv-v9")
    scenario.write_text(bad)
    code, err = cli(["robots", "demo", "--scenario", str(scenario), "--out", str(tmp_path / "never")])
    assert code == 2 and "env_id 'NoSuchEnv-v9'" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "never").exists()
