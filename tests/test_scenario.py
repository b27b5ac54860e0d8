"""Scenario files: what loads, and what stops before anything runs, naming the field."""
from __future__ import annotations

from pathlib import Path

import pytest

from mfd_core import scenario as scenario_module
from mfd_core.scenario import Scenario, ScenarioError, from_dict, load

SHIPPED = Path(__file__).resolve().parents[1] / "apps" / "scenarios"


def test_the_shipped_digits_scenario_loads_as_the_issue_describes_it() -> None:
    s = load(SHIPPED / "digits.toml")
    assert s.topology.kind == "random_geometric" and s.topology.nodes == 20
    assert s.data.dataset == "digits" and s.data.split == "dirichlet" and s.data.alpha == 0.3
    assert s.learner.kind == "mlp" and s.seeds == (0, 1, 2)


@pytest.mark.parametrize("path", sorted(SHIPPED.glob("*.toml")), ids=lambda p: p.stem)
def test_every_shipped_core_scenario_loads(path: Path) -> None:
    text = path.read_text()
    if "[topology]" not in text or "[data]" not in text:
        pytest.skip("an app's scenario, validated by the app")
    assert isinstance(load(path), Scenario)


def test_defaults_make_a_valid_scenario_and_arrays_fill_tuples() -> None:
    s = from_dict({"seeds": [3, 4], "learner": {"hidden": [8, 8]},
                   "faults": [{"kind": "link_down", "at": 0.5, "link": [0, 1]}]})
    assert s.seeds == (3, 4) and s.learner.hidden == (8, 8) and s.faults[0].link == (0, 1)
    assert from_dict({}) == Scenario()
    assert from_dict({"topology": {"bandwidth": float("inf")}}).topology.bandwidth == float("inf")  # ideal link


BAD = [
    # unknown keys, at every level
    ({"colour": "red"}, "colour"),
    ({"topology": {"colour": "red"}}, "topology.colour"),
    ({"policy": {"fanuot": 3}}, "policy.fanuot"),
    ({"faults": [{"kind": "loss", "at": 0.5, "value": 0.1, "nodez": [1]}]}, "faults.0.nodez"),
    # wrong types: TOML is typed, so a string or a boolean where a number belongs is wrong
    ({"topology": {"nodes": "many"}}, "topology.nodes"),
    ({"topology": {"nodes": "20"}}, "topology.nodes"),
    ({"topology": {"nodes": True}}, "topology.nodes"),
    ({"topology": {"nodes": 2.5}}, "topology.nodes"),
    ({"topology": {"loss": "0.2"}}, "topology.loss"),
    ({"topology": {"degrade": "no"}}, "topology.degrade"),
    ({"learner": {"hidden": 64}}, "learner.hidden"),
    ({"seeds": 0}, "seeds"),
    ({"topology": "ring"}, "topology"),
    # impossible values
    ({"topology": {"loss": 1.5}}, "topology.loss"),
    ({"topology": {"loss": -0.1}}, "topology.loss"),
    ({"topology": {"bandwidth": -1.0}}, "topology.bandwidth"),
    ({"topology": {"bandwidth": 0}}, "topology.bandwidth"),
    ({"topology": {"latency": -0.001}}, "topology.latency"),
    ({"topology": {"compute": 0}}, "topology.compute"),
    ({"topology": {"nodes": 0}}, "topology.nodes"),
    ({"topology": {"kind": "torus"}}, "topology.kind"),
    ({"duration": -1}, "duration"),
    ({"duration": float("inf")}, "duration"),
    ({"topology": {"compute": float("inf")}}, "topology.compute"),
    ({"eval_interval": 100.0, "duration": 10.0}, "eval_interval"),
    ({"policy": {"name": "fedprox"}}, "policy.name"),
    ({"policy": {"server": 20}}, "policy.server"),
    ({"data": {"alpha": 0}}, "data.alpha"),
    ({"learner": {"width": 1.5}}, "learner.width"),
    # references to nodes that do not exist
    ({"faults": [{"kind": "node_leave", "at": 0.3, "nodes": [20]}]}, "faults.0.nodes"),
    ({"faults": [{"kind": "node_leave", "at": 0.3, "nodes": [-1]}]}, "faults.0.nodes"),
    ({"faults": [{"kind": "node_leave", "at": 0.3, "nodes": [1]},
                 {"kind": "node_join", "at": 0.5, "nodes": [99]}]}, "faults.1.nodes"),
    ({"faults": [{"kind": "link_down", "at": 0.3, "link": [0, 25]}]}, "faults.0.link"),
    ({"faults": [{"kind": "link_down", "at": 0.3}]}, "faults.0.link"),
    ({"faults": [{"kind": "loss", "at": 0.3}]}, "faults.0.value"),
    ({"faults": [{"kind": "loss", "at": 0.3, "value": 2.0}]}, "faults.0.value"),
    ({"faults": [{"kind": "node_leave", "at": 1.5, "nodes": [1]}]}, "faults.0.at"),
    ({"faults": [{"kind": "node_leave", "at": 0.5, "nodes": [1], "rejoin_at": 0.4}]}, "faults.0.rejoin_at"),
    ({"faults": [{"kind": "node_leave", "at": 0.5}]}, "faults.0"),
    ({"faults": [{"kind": "earthquake", "at": 0.5}]}, "faults.0.kind"),
    # topologies that cannot be built with these numbers fail at load, not mid-run
    ({"topology": {"kind": "ring", "nodes": 2}}, "topology.nodes"),
    ({"topology": {"kind": "star", "nodes": 1}}, "topology.nodes"),
    ({"topology": {"kind": "small_world", "nodes": 4, "k": 4}}, "topology.k"),
    ({"topology": {"kind": "grid", "nodes": 7}}, "topology.rows"),
    ({"topology": {"kind": "grid", "nodes": 12, "rows": 5}}, "topology.rows"),
    ({"topology": {"kind": "hierarchy", "nodes": 3, "edges": 2}}, "topology.nodes"),
]


@pytest.mark.parametrize("doc, field", BAD, ids=[f for _, f in BAD])
def test_a_bad_field_stops_with_its_name(doc, field) -> None:
    with pytest.raises(ScenarioError) as err:
        from_dict(doc)
    message = str(err.value)
    assert message.startswith(field + ":") or f"; {field}:" in message, message
    assert "\n" not in message
    if field.rsplit(".", 1)[-1] in ("colour", "fanuot", "nodez"):
        assert message == f"{field}: unknown key"


def test_good_topology_numbers_pass() -> None:
    for topology in ({"kind": "ring", "nodes": 3}, {"kind": "star", "nodes": 2}, {"kind": "grid", "nodes": 12},
                     {"kind": "grid", "nodes": 7, "rows": 1}, {"kind": "small_world", "nodes": 6, "k": 4},
                     {"kind": "hierarchy", "nodes": 4, "edges": 2}, {"kind": "random_geometric", "nodes": 2}):
        from_dict({"topology": topology})


def test_a_file_names_itself_and_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('duration = 10.0\n[topology]\nkind = "ring"\nnodes = 5\nloss = 1.5\n')
    with pytest.raises(ScenarioError, match=r"bad\.toml: topology\.loss: .*1"):
        load(path)
    path.write_text("[topology\nnodes = 5\n")
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load(path)
    with pytest.raises(ScenarioError, match="no such scenario file"):
        load(tmp_path / "missing.toml")


def test_replace_and_with_policy() -> None:
    s = from_dict({"topology": {"kind": "ring", "nodes": 5}})
    assert s.replace(topology={"loss": 0.2}).topology.loss == 0.2
    assert s.replace(topology={"loss": 0.2}).topology.nodes == 5
    with pytest.raises(ScenarioError, match="topology.loss"):
        s.replace(topology={"loss": 2.0})
    assert s.with_policy("fedavg").policy.name == "fedavg" and s.policy.name == "mfd"


def test_the_reference_page_is_current() -> None:
    page = Path(__file__).resolve().parents[1] / "docs" / "scenarios.md"
    assert page.read_text().strip() == scenario_module.reference_markdown().strip()
