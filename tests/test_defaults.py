"""The defaults are the best-known settings (issue 14 item 7): a digits scenario file that
names only its topology and its data runs MFD with what the shipped digits scenarios found
best, and the shipped files keep only what differs from the defaults."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from mfd_core.scenario import Learner, Policy, load

SHIPPED = Path(__file__).resolve().parents[1] / "apps" / "scenarios"

# What apps/scenarios/digits.toml spelt out before these became the defaults (its [policy]
# and [learner] tables at commit 29b7453): MFD 0.848 against FedAvg 0.798 on the issue's
# 12-node lossy grid, where the old defaults (fp32, max_silence 10, fanout 2, ...) gave 0.655.
# The gate's tolerance was 0.15 there; 0.3 since benchmarks/defaults.py's 8 networks x 3 seeds
# measured it better on 7 of them (strongly skewed data: a merge scores lower on a node's own
# few classes while it generalises better).
TUNED_POLICY = {"name": "mfd", "precision": "int8", "share_margin": 0.02, "max_silence": 3.0, "fanout": 4,
                "gate_tolerance": 0.3, "hello_interval": 5.0, "bootstrap_hops": 3, "echo_window": 2.0,
                "round_timeout": 5.0, "gossip_interval": 1.0}
TUNED_LEARNER = {"kind": "mlp", "hidden": (64, 64), "lr": 0.005, "batch_size": 32, "local_steps": 10}

MINIMAL = """
[topology]
kind = "grid"
nodes = 12
loss = 0.05

[data]
dataset = "digits"
alpha = 0.2
"""


def _value(policy: Policy, key: str):
    if key == "name":
        return policy.name
    return getattr(policy.settings_for(next(p for p in ("mfd", "fedavg", "gossip")
                                            if key in type(policy.settings_for(p)).model_fields)), key)


def test_a_file_with_only_topology_and_data_resolves_to_the_tuned_settings(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(MINIMAL)
    s = load(path)
    assert {key: _value(s.policy, key) for key in TUNED_POLICY} == TUNED_POLICY
    assert {key: getattr(s.learner, key) for key in TUNED_LEARNER} == TUNED_LEARNER
    # mfd-travel is MFD with travelling models: it shares the defaults
    travel = s.policy.settings_for("mfd-travel")
    assert {key: getattr(travel, key) for key in TUNED_POLICY if key in type(travel).model_fields} == \
        {key: value for key, value in TUNED_POLICY.items() if key in type(travel).model_fields}


@pytest.mark.parametrize("name", ["digits", "digits_mixed_arch", "digits_tiers"])
def test_the_shipped_digits_files_run_the_minimal_files_policy(tmp_path: Path, name: str) -> None:
    """Every policy's settings, not just the tuned keys: what a new user gets is what was tuned."""
    path = tmp_path / "mine.toml"
    path.write_text(MINIMAL)
    assert load(SHIPPED / f"{name}.toml").policy == load(path).policy


@pytest.mark.parametrize("name", ["digits", "digits_mixed_arch", "digits_tiers"])
def test_the_shipped_digits_files_keep_only_what_differs(name: str) -> None:
    doc = tomllib.loads((SHIPPED / f"{name}.toml").read_text())
    policy, learner = Policy(), Learner()
    for key, value in doc.get("policy", {}).items():
        assert value != _value(policy, key), f"{name}.toml: policy.{key} = {value!r} is the default"
    for key, value in doc.get("learner", {}).items():
        default = getattr(learner, key)
        assert (tuple(value) if isinstance(value, list) else value) != default, \
            f"{name}.toml: learner.{key} = {value!r} is the default"


def test_the_apps_keep_the_mfd_settings_they_were_measured_with() -> None:
    """The robots and base-station apps were tuned with a joining node asking its neighbours
    only and no echo window; the core's new defaults must not change their runs."""
    from apps.basestation.config import load_app_scenario, shipped_scenarios
    from apps.robots import config as robots

    fleets = [robots.RobotsScenario.model_fields["policy"].default]
    fleets += [robots.load(path).policy for path in sorted(SHIPPED.glob("robots*.toml"))]
    fleets += [load_app_scenario(name).sharing for name in shipped_scenarios()]
    assert len(fleets) >= 5
    for policy in fleets:
        assert (policy.mfd.bootstrap_hops, policy.mfd.echo_window) == (1, 0.0)
        assert (policy.mfd.silence_density, policy.mfd.clean_silence) == (0.0, 1.0)


def _defaults_benchmark():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "defaults.py"
    spec = importlib.util.spec_from_file_location("defaults_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_robustness_set_is_new_users_files_and_its_targets_judge_each_case() -> None:
    bench = _defaults_benchmark()
    sizes, losses, alphas, kinds = set(), set(), set(), set()
    for case in bench.CASES:
        s = bench.scenario_of(case, {}, None)
        assert s.policy == Policy() and s.learner == Learner()  # nothing but topology and data
        sizes.add(s.topology.nodes), losses.add(s.topology.loss), alphas.add(s.data.alpha), kinds.add(s.topology.kind)
    assert min(sizes) <= 12 and max(sizes) >= 50 and max(losses) >= 0.1 and min(alphas) <= 0.2 and len(kinds) >= 3

    def runs(case, mfd_acc, fedavg_acc, mfd_bytes, fedavg_bytes):
        return [{"case": case, "policy": p, "seed": seed, "acc": acc, "bytes": b}
                for seed in (0, 1) for p, acc, b in (("mfd", mfd_acc, mfd_bytes), ("fedavg", fedavg_acc, fedavg_bytes))]

    cases = list(bench.CASES)[:4]
    fig = bench.figures_from(runs(cases[0], 0.900, 0.915, 50, 100) + runs(cases[1], 0.900, 0.925, 50, 100)
                             + runs(cases[2], 0.950, 0.900, 61, 100) + runs(cases[3], 0.950, 0.900, 60, 100),
                             cases, [0, 1])
    assert [row["met_all"] for row in fig["cases"]] == [True, False, False, True]
    assert fig["missed"] == cases[1:3] and not fig["all_met"]
    assert fig["cases"][1]["mean"]["diff_points"] == pytest.approx(-2.5)
    assert "NO (accuracy)" in bench.table(fig) and "NO (bytes)" in bench.table(fig)
