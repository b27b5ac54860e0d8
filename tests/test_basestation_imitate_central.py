"""Imitating the central look-ahead (benchmarks/basestation_imitate_central.py, issue 15): one
run with tiny budgets, checked for what the study's figures rest on: the rule it measures
against, labels never drawn from an evaluation episode, a row per imitator."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import benchmarks.basestation_imitate_central as study
from apps.basestation.lookahead import label_seeds
from apps.basestation.rules import LoadRatioRule, play
from envs.basestation import BaseStationParallelEnv, load_scenario

TRAIN_SEEDS = (0, 1)
EPISODES, DAGGER, EVAL_STEPS = 2, 1, 3
# horizon and futures 1, 2 steps per label episode: the central's cost is what makes the
# study slow (about 100 s per full episode), not what is checked here
TINY = ["--train-seeds", ",".join(map(str, TRAIN_SEEDS)), "--episodes", str(EPISODES), "--steps", "2",
        "--eval-steps", str(EVAL_STEPS), "--horizon", "1", "--futures", "1", "--epochs", "1",
        "--dagger", str(DAGGER), "--raise-power", "--central-eval"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(results, seeds the central labelled, seeds DAgger labelled, label cache)."""
    tmp = tmp_path_factory.mktemp("imitate")
    labelled, daggered = [], []
    real_label, real_dagger = study.label_episode, study.dagger_episode

    def label(env, res, seed, *args, **kwargs):
        labelled.append(seed)
        return real_label(env, res, seed, *args, **kwargs)

    def dagger(env, res, seed, *args, **kwargs):
        daggered.append(seed)
        return real_dagger(env, res, seed, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(study, "label_episode", label)
        mp.setattr(study, "dagger_episode", dagger)
        assert study.main(TINY + ["--label-cache", str(tmp / "labels"), "--out", str(tmp / "out.json")]) == 0
    return json.loads((tmp / "out.json").read_text())["figures"], labelled, daggered, tmp / "labels"


def _expected_rows():
    rows = []
    for variant in study.VARIANTS:
        pooled = f"{variant}/pooled"
        rows += [f"{variant}/per_station", pooled, f"{pooled}/power_only", f"{pooled}/cio_only",
                 f"{pooled}+dagger{DAGGER}"]
    return rows


def test_a_row_and_a_median_per_imitator(run):
    figures, *_ = run
    hotspot = figures["scenarios"]["hotspot"]
    rows = hotspot["per_seed"]
    assert [r["seed"] for r in rows] == list(TRAIN_SEEDS)
    for r in rows:
        assert list(r["imitators"]) == _expected_rows()
        assert r["labels"]["steps_per_episode"] == 2
    assert list(hotspot["median"]) == _expected_rows()
    for key, med in hotspot["median"].items():
        per_seed = [r["imitators"][key]["pf_gain_vs_tuned_rule"] for r in rows]
        assert med["pf_gain_per_seed"] == per_seed
        assert med["pf_gain_vs_tuned_rule"] == pytest.approx(np.median(per_seed))
    assert len(hotspot["central_eval_per_seed"]) == len(study.EVAL_SEEDS)
    assert "jobs" not in figures["settings"]
    assert figures["settings"]["rules_from"] == "benchmarks/results/basestation_timedomain.json"


def test_the_tuned_rule_is_the_rules_files(run):
    figures, *_ = run
    rules = study.rules_from(study.RULES_FILE)
    env = BaseStationParallelEnv(load_scenario("hotspot"))
    for row in figures["scenarios"]["hotspot"]["per_seed"]:
        params = rules[("hotspot", row["seed"])]
        assert row["rule"] == {"params": params, "from": "benchmarks/results/basestation_timedomain.json"}
        # played here independently of the study's residual stations: the same figures
        for seed, played in zip(study.EVAL_SEEDS, row["tuned_rule_per_eval_seed"]):
            pf, energy = play(env, LoadRatioRule(env, params), seed, steps=EVAL_STEPS)
            assert played["pf_utility"] == pytest.approx(pf) and played["energy_kj"] == pytest.approx(energy)


def test_labels_come_from_label_episodes_never_from_evaluation_ones(run):
    _, labelled, daggered, cache = run
    per_variant_and_seed = [(v, t) for t in TRAIN_SEEDS for v in study.VARIANTS]
    assert labelled == [s for t in TRAIN_SEEDS for s in label_seeds(t, EPISODES, study.EVAL_SEEDS)]
    assert daggered == [s for _, t in per_variant_and_seed
                        for s in label_seeds(t, EPISODES + DAGGER, study.EVAL_SEEDS)[EPISODES:]]
    assert not set(labelled + daggered) & set(study.EVAL_SEEDS)
    # what the cache holds: label and DAgger episodes of training seeds; central plays of the evaluation ones
    episodes = sorted(int(f.name.split("_")[1]) for f in cache.glob("*.npz"))
    assert episodes == sorted(labelled + daggered)
    assert sorted(int(f.name.split("_")[3]) for f in cache.glob("*_central_eval_*.json")) == list(study.EVAL_SEEDS)


def test_accuracies_are_shares(run):
    figures, *_ = run
    for row in figures["scenarios"]["hotspot"]["per_seed"]:
        for key, imitator in row["imitators"].items():
            for which in ("held_out_accuracy", "train_accuracy"):
                for head, acc in imitator.get(which, {}).items():
                    assert 0.0 <= acc["policy"] <= 1.0 and 0.0 <= acc["no_correction"] <= 1.0, (key, which, head)
            assert set(imitator["held_out_accuracy"]) == {*study.HEADS, "joint"}


def test_a_rule_the_file_lacks_is_tuned_and_kept_under_runs(monkeypatch):
    tuned = []
    monkeypatch.setattr(study, "tune_rule_params", lambda name, seed: tuned.append((name, seed)) or {"x": 1})
    params, source = study.rule_params("hotspot", 7, study.rules_from(study.RULES_FILE), study.RULES_FILE)
    assert tuned == [("hotspot", 7)] and params == {"x": 1} and source.startswith("tuned here (runs/")
    runs = study.ROOT / "runs"
    assert study.TUNED_RULES_CACHE.is_relative_to(runs) and study.LABEL_CACHE.is_relative_to(runs)


@pytest.mark.parametrize("bad", [["--episodes", "1"], ["--variants", "c"], ["--models", "pooled,shared"]])
def test_refuses_settings_it_cannot_measure(bad):
    with pytest.raises(SystemExit):
        study.parse_args(bad)
