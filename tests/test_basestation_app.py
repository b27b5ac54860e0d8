"""LM4Net app (apps/basestation): scenario files, station learners, packets, gate, CLI."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from apps.basestation.config import AppScenarioError, load_app_scenario, shipped_scenarios
from apps.basestation.learner import RadioCommons, StationLearner, StationView, single_thread
from apps.basestation.training import x2_topology
from mfd_core import codec, load_model
from mfd_core.knowledge import Gate
from mfd_core.reassembly import Reassembler

# A small, fast radio scenario: the 7-cell outage preset with short episodes.
TINY = """
name = "tiny"
preset = "outage"
[basestation]
episode_steps = 20
initial_users = 20
max_users = 40
arrival_rate_per_step = 0.5
[training]
rounds = 2
chunk_steps = 20
batch_size = 10
n_epochs = 2
hidden = [16, 16]
eval_steps = 5
eval_interval = 1.0
eval_seeds = [1]
"""


@pytest.fixture(autouse=True)
def one_thread():
    with single_thread():
        yield


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def _write(tmp_path, text: str):
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


# -- scenario files ---------------------------------------------------------------------


def test_shipped_scenarios_load():
    names = shipped_scenarios()
    assert set(names) >= {"uniform", "hotspot", "rush_hour", "outage", "night"}
    for name in names:
        sc = load_app_scenario(name)
        assert sc.name == name and sc.training.rounds >= 1 and sc.sharing.name == "mfd"


@pytest.mark.parametrize("text, field", [
    ('preset = "uniform"\n[basestation]\nn_macro_cells = 8\n', "basestation.n_macro_cells"),
    ('preset = "uniform"\n[basestation]\nmax_users = "many"\n', "basestation.max_users"),
    ('preset = "uniform"\n[training]\nrounds = 0\n', "training.rounds"),
    ('preset = "uniform"\n[training]\nroundz = 3\n', "training.roundz"),
    ('preset = "uniform"\n[x2]\nloss = 2.0\n', "x2.loss"),
    ('preset = "uniform"\n[sharing]\nprecision = "fp8"\n', "sharing.precision"),
    ('preset = "downtown"\n', "preset"),
    ('preset = "uniform"\nn_macro_cells = 7\n', "n_macro_cells"),
])
def test_bad_scenario_field_is_named(tmp_path, text, field):
    with pytest.raises(AppScenarioError) as err:
        load_app_scenario(_write(tmp_path, text))
    assert str(err.value).startswith(field + ":"), str(err.value)


def test_radio_field_at_top_level_says_where_it_belongs(tmp_path):
    with pytest.raises(AppScenarioError, match=r"\[basestation\]"):
        load_app_scenario(_write(tmp_path, 'preset = "uniform"\nmax_users = 10\n'))


def test_env_preset_name_works_with_app_defaults():
    sc = load_app_scenario("hotspot")
    assert sc.env.n_small_cells == 7 and sc.sharing.mfd.precision == "fp16"


# -- learners, packets, gate ------------------------------------------------------------


@pytest.fixture(params=["residual", "absolute"])
def fleet(tiny, request):
    sc = load_app_scenario(tiny).with_training(action=request.param)
    commons = RadioCommons(sc.env, sc.training, seed=0)
    learners = {i: StationLearner(commons, i, sc.training, seed=0) for i in range(commons.S) if not commons.off[i]}
    return sc, commons, learners


def test_x2_topology_leaves_out_the_station_in_outage(fleet):
    sc, commons, _ = fleet
    g = x2_topology(commons, sc)
    assert 0 not in g and sorted(g) == [1, 2, 3, 4, 5, 6]
    for _, _, attrs in g.edges(data=True):
        assert attrs["bandwidth"] == sc.x2.bandwidth and attrs["latency"] == sc.x2.latency


def test_static_start_scores_one_and_training_counts_work(fleet):
    sc, commons, learners = fleet
    first = learners[1]
    assert first.score() == pytest.approx(1.0)  # starts greedy at the static configuration
    work = first.train(sc.training.chunk_steps)
    assert work == sc.training.chunk_steps * (1 + sc.training.n_epochs)
    assert commons.collections == 1
    learners[2].train(sc.training.chunk_steps)  # uses the same collection
    assert commons.collections == 1 and first.num_samples == sc.training.chunk_steps
    assert math.isfinite(first.score()) and math.isfinite(first.test_score())


def test_station_model_packet_loads_into_a_neighbour(fleet):
    sc, commons, learners = fleet
    sender, receiver = learners[1], learners[2]
    sender.train(sc.training.chunk_steps)  # make the two differ
    state = sender.get_state()
    assert any(not torch.equal(state[k], receiver.get_state()[k]) for k in state)
    datagrams = codec.to_datagrams(state, origin=1, destination=2, model_version=1, message_id=7, mtu=1400,
                                   precision="fp32", meta={"kind": "model"})
    assert all(len(d) <= 1400 for d in datagrams) and len(datagrams) > 1
    rx = Reassembler()
    messages = [m for d in reversed(datagrams) if (m := rx.receive(d, now=0.0)) is not None]
    assert len(messages) == 1 and messages[0].complete and messages[0].origin == 1
    receiver.set_state(messages[0].state)
    got = receiver.get_state()
    assert all(torch.equal(got[k], state[k]) for k in state)
    assert receiver.score() == pytest.approx(receiver.score(state))


def test_gate_refuses_a_random_model_and_accepts_its_own(fleet):
    sc, _, learners = fleet
    if sc.training.action == "residual":
        # a random correction of the rule is often no change at all on a 5-step twin
        # (clipped at full power, an offset inside time-to-trigger): absolute actions show the gate
        pytest.skip("the gate is the same for both; random absolute models are the ones that hurt")
    learner = learners[3]
    gen = torch.Generator().manual_seed(1)
    gate = Gate(tolerance=0.02)
    # A random model may happen to do well on the station's short twin (lower power
    # pays in energy efficiency); most do not, and the gate must refuse exactly those.
    checks = [gate.check(learner, {k: torch.randn(v.shape, generator=gen) * 2.0
                                   for k, v in learner.get_state().items()}) for _ in range(6)]
    assert any(not c.accepted for c in checks)
    for c in checks:
        assert c.accepted == (c.candidate_score >= c.local_score - 0.02)
    assert gate.check(learner, learner.get_state()).accepted
    broken = {k: torch.full_like(v, float("nan")) for k, v in learner.get_state().items()}
    assert not gate.check(learner, broken).accepted


def test_clone_shares_the_network_not_the_model(fleet):
    sc, commons, learners = fleet
    twin = learners[1].clone()
    learners[1].train(sc.training.chunk_steps)  # a trained SB3 policy refuses deepcopy: clone must not need it
    twin = learners[1].clone()
    assert twin.commons is commons and twin.model is not learners[1].model
    assert twin.score() == pytest.approx(learners[1].score())
    twin.set_state({k: v + 1 for k, v in twin.get_state().items()})
    assert not torch.equal(twin.get_state()["action_net.bias"], learners[1].get_state()["action_net.bias"])


def test_station_view_is_a_gymnasium_env(fleet):
    from gymnasium.utils.env_checker import check_env

    _, commons, _ = fleet
    from envs.basestation import BaseStationParallelEnv

    view = StationView(BaseStationParallelEnv(commons.config), station=2)
    check_env(view, skip_render_check=True)
    obs, _ = view.reset(seed=3)
    assert obs.shape == view.observation_space.shape


# -- the commands -----------------------------------------------------------------------


def _bs(*argv: str) -> tuple[int, str, str]:
    """`mfd basestation ARGV` in this process: exit status, stdout, stderr."""
    import contextlib
    import io

    from apps.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["basestation", *argv])
        except SystemExit as exc:  # argparse's own errors
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def _tidy(folder) -> list[dict]:
    import csv

    with open(folder / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_train_and_evaluate_write_run_folders_and_mfd_report_rebuilds_them(tiny, tmp_path):
    train, ev = tmp_path / "train", tmp_path / "eval"
    # training seeds 0 and 2: the residual stations' rule is tuned on the training seed's episodes,
    # which may not be the scenario's evaluation seed (1)
    code, out, err = _bs("train", str(tiny), "--seeds", "0,2", "--policies", "fedavg,mfd,central",
                         "--set", "training.eval_interval=0.5", "--out", str(train))
    assert code == 0, err
    assert "\r" not in err and "[100%]" in err  # plain progress lines off a terminal
    for seed in (0, 2):
        assert (train / "models" / f"seed{seed}" / "tiny" / "tuned_rule" / "params.json").is_file()  # what they correct
        for policy in ("fedavg", "mfd"):
            assert (train / "models" / f"seed{seed}" / "tiny" / policy / "bs_1" / "model.zip").is_file()
            assert not (train / "models" / f"seed{seed}" / "tiny" / policy / "bs_0").exists()  # in outage
        assert (train / "models" / f"seed{seed}" / "tiny" / "central" / "model.zip").is_file()
        # every station's served model, checkpointed as the run went and at its end
        checkpoint = train / "checkpoints" / "mfd" / f"seed{seed}"
        note = json.loads((checkpoint / "checkpoint.json").read_text())
        assert note["final"] is True and 0 not in note["nodes"] and note["nodes"]  # station 0 is in outage
        assert all(v.isfinite().all() for v in load_model(checkpoint / f"node{note['nodes'][0]}.mfdm").values())
    meta = json.loads((train / "run.json").read_text())
    assert meta["kind"] == "basestation" and meta["stage"] == "train" and meta["network"] == "sim"
    assert meta["processes"] == 1 and not meta["interrupted"] and len(meta["done"]) == 6
    assert json.loads((train / "scenario.json").read_text())["training"]["eval_interval"] == 0.5  # --set
    rows = _tidy(train)
    assert list(rows[0]) == ["run", "policy", "seed", "node", "time", "metric", "value"]
    assert {r["run"] for r in rows} == {f"{p}/seed{s}" for p in ("fedavg", "mfd", "central")
                                        for s in (0, 2)}
    assert {r["time"] for r in rows if r["run"] == "mfd/seed0" and r["metric"] == "score"} == \
        {"0.0", "0.5", "1.0", "1.5", "2.0"}
    summary = json.loads((train / "summary.json").read_text())
    assert summary["policies"]["mfd"]["seeds"] == 2
    spread = summary["policies"]["fedavg"]["model_bytes"]
    assert 0 < spread["min"] <= spread["median"] <= spread["max"]
    assert summary["comparisons"]["mfd"]["bytes_over_fedavg"]["median"] > 0
    assert summary["controllers"]["central"]["measurement_bytes"]["median"] > 0
    assert summary["controllers"]["central"]["env_steps"]["n"] == 2
    assert (train / "summary.csv").read_text().count("\n") == 1 + 6
    assert (train / "report" / "index.html").is_file() and (train / "report" / "training_scores.png").is_file()

    code, out, err = _bs("evaluate", "--models", str(train), "--seeds", "1-2", "--out", str(ev), "--quiet")
    assert code == 0, err
    assert err == "" and "report:" in out  # --quiet: no progress
    rows = _tidy(ev)
    runs = {r["run"] for r in rows}
    # the training's scenario (no --scenarios), each controller on each evaluation seed,
    # each trained one once per training seed
    assert {r for r in runs if "/heuristic/" in r} == {"tiny/heuristic/seed1", "tiny/heuristic/seed2"}
    # the tuned rule the stations correct is played beside them
    assert "tiny/mfd/train2/seed2" in runs and len(runs) == 2 * 2 + 4 * 2 * 2
    assert {r["metric"] for r in rows} >= {"pf_utility", "energy_kj", "mean_user_rate_mbps", "model_mb"}
    doc = json.loads((ev / "summary.json").read_text())["scenarios"]["tiny"]
    assert doc["policies"]["mfd"]["seeds"] == 4 and doc["policies"]["heuristic"]["seeds"] == 2
    assert doc["best_heuristic"]["pf_utility"] in ("full_power", "heuristic", "tuned_rule")
    ref = doc["best_heuristic"]["pf_utility"]
    assert doc["minus_best_heuristic"][ref]["pf_utility"]["median"] == 0.0
    assert set(doc["policies"]) == {"full_power", "heuristic", "tuned_rule", "fedavg", "mfd", "central"}
    assert (ev / "report" / "pf_utility.png").is_file()
    meta = json.loads((ev / "run.json").read_text())
    assert meta["kind"] == "basestation" and meta["stage"] == "evaluate" and len(meta["done"]) == len(runs)

    # mfd report rebuilds each stage's own page and leaves the measurements alone
    before = (ev / "results.csv").read_bytes(), (ev / "summary.json").read_bytes()
    (ev / "report" / "index.html").unlink()
    from apps.cli import main

    assert main(["report", str(ev)]) == 0 and main(["report", str(train)]) == 0
    page = (ev / "report" / "index.html").read_text()
    assert "MFD RL" in page and "minus the best heuristic" in page
    assert "load-balancing heuristic" in page and "training_scores.png" in page
    assert ((ev / "results.csv").read_bytes(), (ev / "summary.json").read_bytes()) == before
    assert "final station score" in (train / "report" / "index.html").read_text()


def test_evaluate_skips_missing_models_with_a_note(tiny, tmp_path):
    from apps.basestation.evaluation import evaluate

    sc = load_app_scenario(tiny)
    rows, notes = evaluate([sc], tmp_path / "none", ("full_power", "mfd"), seeds=[1])
    assert {r["policy"] for r in rows} == {"full_power"}
    assert len(notes) == 1 and "mfd" in notes[0]


def test_evaluate_without_models_plays_the_heuristics_and_says_so(tiny, tmp_path):
    code, out, err = _bs("evaluate", "--scenarios", str(tiny), "--out", str(tmp_path / "e"), "--quiet")
    assert code == 0, err
    assert {r["policy"] for r in _tidy(tmp_path / "e")} == {"full_power", "heuristic"}
    assert "note: no --models" in out


@pytest.mark.parametrize("argv, message", [
    (["train", "TINY", "--seed", "-1"], "seeds are whole numbers"),
    (["train", "TINY", "--seeds", "99999999999999999999"], "too large"),
    (["train", "TINY", "--seeds", "0", "0"], "given twice"),
    (["evaluate", "--seeds", "x"], "seeds are whole numbers"),
    (["train", "TINY", "--policies", "mfd,qlearning"], "unknown policy qlearning"),
    (["evaluate", "--policies", "bogus"], "unknown policy bogus"),
    (["evaluate", "--models", "/nonexistent"], "--models /nonexistent: no such folder"),
    (["evaluate", "--policies", "mfd"], "need --models"),
    (["train", "TINY", "--rounds", "0"], "--rounds must be from 1"),
    (["train", "TINY", "--rounds", "1000000"], "--rounds must be from 1"),
    (["train", "TINY", "--network", "udp"], "share one simulated radio network"),
    (["train", "TINY", "--network", "ray"], "cannot run as separate Ray actors"),
    (["train", "TINY", "--set", "training.rounds=-1"], "training.rounds"),
    (["train", "TINY", "--set", "x2.loss=2"], "x2.loss"),
    (["train", "TINY", "--set", "nothing"], "expected KEY=VALUE"),
    (["train", "BAD"], "training.rounds"),
    (["evaluate", "--rounds", "3"], "goes with --train"),
])
def test_every_bad_input_is_one_line_before_any_work(tiny, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    bad = _write(tmp_path, 'preset = "uniform"\n[training]\nrounds = -1\n')
    argv = [str(tiny) if a == "TINY" else str(bad) if a == "BAD" else a for a in argv]
    before = sorted(tmp_path.rglob("*"))
    code, out, err = _bs(*argv, "--out", str(tmp_path / "out"))
    assert code == 2, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mfd: error: ") and message in lines[0], err
    assert sorted(tmp_path.rglob("*")) == before  # nothing half-written, no folder made


def test_an_output_folder_is_checked_and_never_reused(tiny, tmp_path, monkeypatch):
    from apps.basestation import cli

    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("another run")
    code, _, err = _bs("train", str(tiny), "--out", str(tmp_path / "used"))
    assert code == 2 and "holds files already" in err
    (tmp_path / "file").write_text("")
    code, _, err = _bs("train", str(tiny), "--out", str(tmp_path / "file"))
    assert code == 2 and "is a file" in err
    # the default folder is a new one each time, even within the same second
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli.time, "strftime", lambda fmt: "20260101-000000")
    first = cli.default_out("basestation-tiny-train")
    first.mkdir(parents=True)
    second = cli.default_out("basestation-tiny-train")
    assert second != first and not second.exists()


def test_ctrl_c_keeps_what_was_measured(tiny, tmp_path):
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    out = tmp_path / "run"
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "apps.cli", "basestation", "train", str(tiny), "--rounds", "5000",
                             "--policies", "mfd", "--out", str(out), "--quiet"], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "results.csv").is_file() and len(_tidy(out)) > 40:  # a few measurements streamed
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mfd: interrupted") and str(out) in lines[0], stderr
    meta = json.loads((out / "run.json").read_text())
    assert meta["interrupted"] is True and meta["done"] == []
    assert json.loads((out / "summary.json").read_text())["interrupted"] is True
    times = {float(r["time"]) for r in _tidy(out) if r["metric"] == "score"}
    assert 0.0 < max(times) < 5000  # stopped part-way, and what it measured is there
    assert (out / "report" / "index.html").is_file()


def test_stacked_forward_matches_sb3(fleet):
    from apps.basestation.learner import StackedPolicies, policy_actions

    sc, commons, learners = fleet
    for learner in learners.values():  # different weights per station
        with torch.no_grad():
            for p in learner.policy.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(learner.station)) * 0.1)
    stations = sorted(learners)
    obs = torch.rand(len(stations), commons.obs_dim, generator=torch.Generator().manual_seed(5))
    stacked = StackedPolicies([learners[s].policy for s in stations])
    logits, values = stacked.logits(obs), stacked.values(obs)
    actions, logp = policy_actions(logits, commons.nvec, torch.Generator().manual_seed(0))
    for k, s in enumerate(stations):
        policy = learners[s].policy
        with torch.no_grad():
            v, lp, _ = policy.evaluate_actions(obs[k:k + 1], torch.as_tensor(actions[k:k + 1]))
        assert float(v) == pytest.approx(float(values[k]), abs=1e-5)
        assert float(lp) == pytest.approx(float(logp[k]), abs=1e-5)


def test_peer_models_play_in_the_twin_when_asked(tiny):
    # absolute actions: a neighbour told to sleep does (no macro of this layout may sleep by the rule's reckoning)
    sc = load_app_scenario(tiny).with_training(twin="peers", action="absolute")
    commons = RadioCommons(sc.env, sc.training, seed=0)
    me, other = (StationLearner(commons, i, sc.training, seed=0) for i in (1, 2))
    assert me.score() == pytest.approx(1.0)
    sleepy = other.get_state()
    sleepy["action_net.bias"] = sleepy["action_net.bias"].clone()
    sleepy["action_net.bias"][-2:] = torch.tensor([0.0, 9.0])  # the neighbour always sleeps
    assert not me.observe_peer(2, {"action_net.bias": sleepy["action_net.bias"]})  # incomplete: ignored
    assert me.observe_peer(2, sleepy)
    assert me.score() != pytest.approx(1.0)  # its users now land on station 1's neighbourhood
    static = load_app_scenario(tiny)  # the default twin keeps no peers
    assert not StationLearner(RadioCommons(static.env, static.training, seed=0), 1, static.training).observe_peer(2, sleepy)


def test_fork_replays_the_real_step_exactly(tiny):
    # the difference reward's counterfactuals are only fair if the fork sees the same
    # arrivals, moves and shadowing as the real step
    from apps.basestation.learner import _Fork

    sc = load_app_scenario(tiny).with_env(rayleigh_fading=True).with_training(action="absolute")
    commons = RadioCommons(sc.env, sc.training, seed=0)
    env, net = commons.env, commons.env.network
    rng = np.random.default_rng(1)
    for _ in range(5):
        a = np.stack([rng.integers(0, n, size=net.n_stations) for n in commons.nvec], axis=1)
        predicted = _Fork(net).step_total(a)
        _, rewards, *_ = env.step({ag: a[i] for i, ag in enumerate(commons.agents)})
        assert predicted == np.array([rewards[ag] for ag in commons.agents]).sum()


def test_difference_credit_is_what_the_station_changed(tiny):
    from apps.basestation.learner import _Fork

    sc = load_app_scenario(tiny).with_training(reward="difference", difference_steps=2, action="absolute")
    commons = RadioCommons(sc.env, sc.training, seed=0)
    stations = np.arange(1, commons.S)
    actions = commons.default.copy()
    assert (commons._credits(actions, stations) == 0).all()
    actions[3] = [0, 0, 1]  # station 3 sleeps: its users move to neighbours
    credit = commons._credits(actions, stations)
    assert credit[stations == 3][0] != 0 and (credit[stations != 3] == 0).all()
    with_sleep = _Fork(commons.env.network).step_total(actions, 2)
    without = _Fork(commons.env.network).step_total(commons.default, 2)
    assert credit[stations == 3][0] == pytest.approx(with_sleep - without)
    learner = StationLearner(commons, 1, sc.training, seed=0)
    assert learner.train(sc.training.chunk_steps) > 0 and math.isfinite(learner.score())


def test_held_decisions_make_one_transition_per_window(tiny):
    sc = load_app_scenario(tiny).with_training(reward="difference", hold_steps=4, difference_steps=2)
    commons = RadioCommons(sc.env, sc.training, seed=0)
    learner = StationLearner(commons, 1, sc.training, seed=0)
    before = commons.env_steps
    assert learner.train(sc.training.chunk_steps) > 0
    assert commons.env_steps - before == sc.training.chunk_steps  # the budget counts env steps
    assert learner.model.rollout_buffer.buffer_size == sc.training.chunk_steps // 4
    assert learner.samples == sc.training.chunk_steps


def test_pinned_heads_keep_the_static_choice(tiny):
    from apps.basestation.learner import policy_actions

    sc = load_app_scenario(tiny).with_training(pinned=("power", "sleep"))
    commons = RadioCommons(sc.env, sc.training, seed=0)
    learner = StationLearner(commons, 1, sc.training, seed=0)
    obs = torch.rand(500, commons.obs_dim)
    a, _ = policy_actions(learner.outputs(obs), commons.nvec, torch.Generator().manual_seed(0))
    assert (a[:, 0] == commons.default[1, 0]).all() and (a[:, 2] == 0).all()
    assert len(np.unique(a[:, 1])) > 1  # the offset is still explored
    with pytest.raises(AppScenarioError, match="pinned"):
        load_app_scenario(tiny).with_training(pinned=("power", "cio", "sleep"))


# -- the report ---------------------------------------------------------------------------


def synthetic_rows() -> list[dict]:
    """Evaluation rows as `evaluate` gives them: two scenarios, three evaluation seeds,
    MFD exactly 0.5 PF utility above the load-balancing heuristic on every seed."""
    rows = []
    for scen, base in (("rush_hour", 10.0), ("uniform", 20.0)):
        for seed in (100, 101, 102):
            wobble = (seed - 101) * 2.0  # the seeds differ far more than the controllers
            kpis = {
                "full_power": dict(pf=base - 1 + wobble, rate=3.9 + wobble / 10, energy=30.0, ho=4.0),
                "heuristic": dict(pf=base + wobble, rate=3.93 + wobble / 10, energy=25.0 + seed - 101, ho=6.0),
                "mfd": dict(pf=base + 0.5 + wobble, rate=3.95 + wobble / 10, energy=26.0, ho=5.0),
                "fedavg": dict(pf=base - 0.2 + wobble, rate=3.91 + wobble / 10, energy=27.0, ho=7.0),
            }
            for policy, k in kpis.items():
                rows.append({"scenario": scen, "policy": policy, "seed": seed, "steps": 100,
                             "mean_user_rate_mbps": k["rate"], "p5_user_rate_mbps": k["rate"] / 4,
                             "pf_utility": k["pf"], "energy_kj": k["energy"], "mean_power_w": k["energy"] * 10,
                             "energy_efficiency_kbit_per_j": 100 * k["rate"] / k["energy"], "handovers": k["ho"],
                             "sleeping_stations": 0.0, "unserved_users": 0.0,
                             "model_mb": {"mfd": 0.2, "fedavg": 1.0}.get(policy, 0.0), "training_env_steps": 0})
    return rows


def test_summary_pairs_seeds_against_the_better_heuristic():
    from apps.basestation.report import evaluation_summary

    doc = evaluation_summary(synthetic_rows())["scenarios"]["uniform"]
    assert doc["best_heuristic"]["pf_utility"] == "heuristic"
    assert doc["best_heuristic"]["energy_kj"] == "heuristic"  # less energy is better
    assert doc["best_heuristic"]["handovers"] == "full_power"  # fewer handovers are better
    raw = doc["policies"]["mfd"]["pf_utility"]
    assert raw["max"] - raw["min"] == pytest.approx(4.0) and raw["n"] == 3  # the seeds' spread
    diff = doc["minus_best_heuristic"]["mfd"]["pf_utility"]  # ... but paired by seed MFD is always +0.5
    assert diff["median"] == pytest.approx(0.5) and diff["min"] == pytest.approx(0.5) == diff["max"]
    energy = doc["minus_best_heuristic"]["mfd"]["energy_kj"]
    assert (energy["min"], energy["median"], energy["max"]) == pytest.approx((0.0, 1.0, 2.0))
    assert doc["minus_best_heuristic"]["heuristic"]["pf_utility"]["median"] == 0.0


def test_report_states_the_result_and_writes_tidy_summary(tmp_path):
    import csv

    from apps.basestation.report import evaluation_summary, write_report, write_summary

    rows = synthetic_rows()
    page = write_report(rows, tmp_path / "report")
    text = page.read_text()
    assert "MFD RL +0.5 against the load-balancing heuristic" in text  # the finding, in words
    assert "rush hour" in text and "<h2>rush_hour" not in text
    for key in ("pf_utility", "mean_user_rate_mbps", "energy_kj", "handovers"):
        assert (tmp_path / "report" / f"{key}.png").read_bytes()[:4] == b"\x89PNG"
    write_summary(evaluation_summary(rows), tmp_path)
    with open(tmp_path / "summary.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    mfd = next(r for r in table if r["scenario"] == "uniform" and r["policy"] == "mfd" and r["metric"] == "pf_utility")
    assert float(mfd["minus_best_heuristic_median"]) == pytest.approx(0.5) and mfd["best_heuristic"] == "heuristic"
    assert float(mfd["min"]) < float(mfd["median"]) < float(mfd["max"])


def test_resume_finishes_a_stopped_training_with_the_same_figures(tiny, tmp_path, monkeypatch):
    from apps.basestation import training
    from apps.common import Interrupted

    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    argv = ("train", str(tiny), "--policies", "mfd,fedavg,central", "--quiet")
    assert _bs(*argv, "--out", str(whole))[0] == 0
    real = training.train_fleet

    def stop_fedavg(scenario, policy, seed, out, progress, observe=None, **rest):
        def tick(t):
            progress(t)
            if t >= 1.0:
                raise Interrupted("SIGINT")
        return real(scenario, policy, seed, out, tick if policy == "fedavg" else progress, observe, **rest)

    monkeypatch.setattr(training, "train_fleet", stop_fedavg)
    code, _, err = _bs(*argv, "--out", str(stopped))
    assert code == 130 and f"--resume {stopped}" in err
    assert json.loads((stopped / "run.json").read_text())["done"] == ["mfd/seed0"]
    assert {r["run"] for r in _tidy(stopped)} == {"mfd/seed0", "fedavg/seed0"}  # fedavg's first rounds kept
    monkeypatch.setattr(training, "train_fleet", real)
    code, _, err = _bs("train", "--resume", str(stopped), "--quiet")
    assert code == 0, err
    assert json.loads((stopped / "run.json").read_text())["interrupted"] is False

    def figures(folder):
        return sorted(tuple(r.values()) for r in _tidy(folder) if r["metric"] != "wall_seconds")

    assert figures(stopped) == figures(whole)
    assert (stopped / "models" / "seed0" / "tiny" / "fedavg" / "bs_1" / "model.zip").is_file()
    assert _bs("train", "--resume", str(stopped), str(tiny))[0] == 2  # nothing else with --resume


def test_ctrl_c_during_evaluate_keeps_the_episodes_played(tiny, tmp_path, monkeypatch):
    from apps.basestation import evaluation
    from apps.common import Interrupted

    real, calls = evaluation.evaluate, []

    def stop_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise Interrupted("SIGINT")
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate", stop_third)
    out = tmp_path / "e"
    code, _, err = _bs("evaluate", "--scenarios", str(tiny), "--seeds", "1-3", "--out", str(out), "--quiet")
    assert code == 130 and err.startswith("mfd: interrupted") and len(err.strip().splitlines()) == 1
    meta = json.loads((out / "run.json").read_text())
    assert meta["interrupted"] and meta["done"] == ["tiny/full_power/seed1", "tiny/full_power/seed2"]
    assert {r["run"] for r in _tidy(out)} == set(meta["done"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] and summary["scenarios"]["tiny"]["policies"]["full_power"]["seeds"] == 2
    assert "Interrupted" in (out / "report" / "index.html").read_text()


@pytest.mark.parametrize("command", [[], ["train"], ["evaluate"], ["list"]])
def test_help_is_plain_words(command):
    code, out, _ = _bs(*command, "--help")
    assert code == 0 and "mfd basestation" in out
    for markup in ("``", ":mod:", ":class:", ":func:", "topology.loss"):  # no reST, no other app's fields
        assert markup not in out, markup


def test_station_models_trained_on_one_layout_play_on_another_by_kind(tiny, tmp_path):
    """Trained on 7 macro cells (X2 degree 6), played on 7 macro + 7 small cells (degree
    7): the observation has the same size, every station takes the model of its kind's
    best-scored trained station, small cells the macro one (the training had none)."""
    from apps.basestation.evaluation import StationController, evaluate, kind_models
    from apps.basestation.training import train_fleet
    from envs.basestation import BaseStationParallelEnv

    sc = load_app_scenario(tiny)
    summary = train_fleet(sc, "mfd", seed=0, out=tmp_path)
    folder = tmp_path / "tiny" / "mfd"
    assert set(summary["station_kinds"].values()) == {"macro"}
    picks = kind_models(folder)
    scores = summary["station_test_scores"]
    assert picks["macro"] == picks["small"]
    assert scores[f"bs_{picks['macro']}"] == max(scores.values())

    path = tmp_path / "tiny_small.toml"  # the same, on 7 macro + 7 small cells, none in outage
    path.write_text(TINY.replace('name = "tiny"', 'name = "tiny_small"')
                    .replace("[basestation]\n", "[basestation]\nn_small_cells = 7\noutage_stations = []\n"))
    other = load_app_scenario(path)
    env = BaseStationParallelEnv(other.env)
    trained_env = BaseStationParallelEnv(sc.env)
    assert env.network.layout.max_degree != trained_env.network.layout.max_degree
    assert env.network.obs_dim == trained_env.network.obs_dim
    controller = StationController(env, folder, by_kind=True)
    assert controller.stations == list(range(env.network.n_stations))
    rows, notes = evaluate([other], tmp_path, ("full_power", "mfd"), seeds=[1], trained_on="tiny")
    assert not notes, notes
    played = {r["policy"]: r for r in rows}
    assert played["mfd"]["trained_on"] == "tiny" and played["full_power"]["trained_on"] == "tiny_small"
    assert math.isfinite(played["mfd"]["pf_utility"]) and played["mfd"]["steps"] == other.env.episode_steps
    # per station index they do not fit: 7 trained stations, 14 here
    with pytest.raises(FileNotFoundError, match="no model for stations"):
        StationController(env, folder)
    # the command line: mfd basestation evaluate --models ... --trained-on tiny
    code, out, err = _bs("evaluate", "--scenarios", str(path), "--models", str(tmp_path), "--trained-on", "tiny",
                         "--policies", "mfd", "--seeds", "1", "--out", str(tmp_path / "ev"), "--quiet")
    assert code == 0, err
    doc = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert doc["scenarios"]["tiny_small"]["policies"]["mfd"]["seeds"] == 1
