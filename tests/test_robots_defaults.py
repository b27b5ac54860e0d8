"""A fleet file that names only its robots and its radio network runs the best-known
settings of its task (issue 16): the tuned values of the reach fleet, not the library's
first guesses; a shipped file writes only what differs from them."""
from __future__ import annotations

import pytest

from apps.robots import config
from apps.robots.config import DEFAULT_POLICY, LearnerSettings, from_dict, learner_defaults

MINIMAL = """
[[robots]]
arm = "panda"
[[robots]]
arm = "panda"
table_height = 0.05
[[robots]]
arm = "panda"
goal_center = [-0.05, 0.05]
[[robots]]
arm = "kuka"
[[robots]]
arm = "xarm6"
join_at = 0.5

[topology]
loss = 0.1
"""

# what the reach fleet was tuned to (apps/robots/config.py quotes the measurements)
TUNED_LEARNER = {"learning_rate": 4e-3, "gradient_steps": 4, "local_steps": 10, "score_metric": "critic",
                 "share_targets": True, "share_critic": True, "family_by": "fleet", "net_arch": (64, 64),
                 "batch_size": 256, "n_sampled_goal": 4}
TUNED_MFD = {"precision": "int8", "max_silence": 0.4, "merge_window": 0.4, "share_hops": 3,
             "gate_tolerance": 0.5, "merge_weights": "samples", "serve_blend": False, "fanout": 3}


@pytest.mark.parametrize("task", ["reach", "push"])
def test_a_minimal_fleet_file_resolves_to_the_tuned_settings(tmp_path, task):
    path = tmp_path / "mine.toml"
    path.write_text(f'task = "{task}"\n' + MINIMAL, encoding="utf-8")
    s = config.load(path)
    learner = s.learner.model_dump()
    expected = dict(TUNED_LEARNER, net_arch=(64, 64) if task == "reach" else (128, 128))
    assert {k: learner[k] for k in expected} == expected
    assert s.policy.name == "mfd"
    mfd = s.policy.settings.model_dump()
    assert {k: mfd[k] for k in TUNED_MFD} == TUNED_MFD
    assert s.topology.loss == 0.1 and len(s.founders) == 4 and s.joiners == [4]


def test_the_shipped_reach_file_keeps_only_what_differs():
    """robots.toml was the tuned file: it now runs on the defaults alone."""
    text = config.resolve("robots").read_text(encoding="utf-8")
    tables = [line.strip() for line in text.splitlines() if line.startswith("[")]
    assert "[learner]" not in tables and "[policy]" not in tables
    s = config.load("robots")
    assert s.learner == learner_defaults("reach") == LearnerSettings()
    assert s.policy == DEFAULT_POLICY


def test_a_partial_table_keeps_the_other_tuned_values():
    s = from_dict({"robots": [{"arm": "panda"}], "learner": {"learning_rate": 1e-3},
                   "policy": {"gate_tolerance": 0.1, "mfd": {"fanout": 2}}})
    assert s.learner.learning_rate == 1e-3 and s.learner.gradient_steps == 4 and s.learner.share_targets
    mfd = s.policy.settings
    assert (mfd.gate_tolerance, mfd.fanout, mfd.merge_window, mfd.precision) == (0.1, 2, 0.4, "int8")
    # a table that only names another policy keeps MFD's tuned settings for a comparison
    g = from_dict({"robots": [{"arm": "panda"}], "policy": {"name": "gossip"}})
    assert g.policy.name == "gossip" and g.policy.mfd == DEFAULT_POLICY.mfd


def test_push_keeps_its_task_default_when_the_learner_table_is_partial():
    s = from_dict({"task": "push", "robots": [{"arm": "panda"}], "learner": {"local_steps": 20}})
    assert s.learner.net_arch == (128, 128) and s.learner.local_steps == 20
    assert from_dict({"task": "push", "robots": [{"arm": "panda"}],
                      "learner": {"net_arch": [32]}}).learner.net_arch == (32,)


def test_round_trips_and_replace_keep_every_value():
    for name in ("robots", "robots_kuka", "robots_push"):
        s = config.load(name)
        assert from_dict(s.model_dump(by_alias=True)) == s
        assert s.replace(learner={"local_steps": 7}).learner.local_steps == 7
        assert s.replace(learner={"local_steps": 7}).policy == s.policy


def test_bad_policy_keys_still_name_the_field():
    with pytest.raises(config.RobotsScenarioError, match="policy"):
        from_dict({"robots": [{"arm": "panda"}], "policy": {"fanout": "many"}})
    with pytest.raises(config.RobotsScenarioError, match="policy"):
        from_dict({"robots": [{"arm": "panda"}], "policy": {"name": "nope"}})
