"""The same scenario on the three networks: the simulator, a process per node on real
UDP sockets, and the simulator spread over Ray actors (issue 12)."""
from __future__ import annotations

import math
import os
import signal
import threading

import pytest

from mfd_core.network.ray import lookahead, partition
from mfd_core.network.topology import ring
from mfd_core.runtime.launch import run_on
from mfd_core.runtime.recipe import Recipe, scenario_recipe

from tests.helpers import tiny


def four_nodes(duration: float = 3.0):
    return tiny("mfd", duration=duration, eval_interval=0.5, topology={"nodes": 4, "loss": 0.05})


def test_a_recipe_is_plain_data_that_builds_the_same_world_anywhere() -> None:
    recipe = scenario_recipe(four_nodes(), seed=3)
    again = Recipe.from_json(recipe.to_json())
    assert again == recipe
    builder = again.build()
    assert sorted(builder.graph().nodes) == [0, 1, 2, 3] and builder.seed == 3
    with pytest.raises(ValueError, match="module:Class"):
        Recipe("nonsense").build()


def test_partitions_are_balanced_and_the_window_is_the_fastest_crossing_link() -> None:
    graph = ring(10, latency=0.02)
    graph.edges[0, 9]["latency"] = 0.004
    groups = partition(graph, 3)
    assert sorted(n for g in groups for n in g) == list(range(10))
    assert sorted(len(g) for g in groups) == [3, 3, 4]
    assert lookahead(graph, groups) <= 0.02
    assert lookahead(graph, [list(range(10))]) == math.inf  # one partition: nothing crosses


def test_ray_runs_four_nodes_and_agrees_with_the_simulator() -> None:
    pytest.importorskip("ray")
    recipe = scenario_recipe(four_nodes(), seed=0)
    sim = run_on(recipe, "sim")
    ray = run_on(recipe, "ray", workers=2)
    assert ray.node_ids == sim.node_ids == [0, 1, 2, 3]
    assert ray.times == sim.times
    # each node and each link draws from its own stream, and no two datagrams reach a node
    # at the same instant: the partitions replay the simulator exactly
    assert ray.bytes == sim.bytes and ray.packets == sim.packets
    assert ray.scores == sim.scores
    where = ray.extra["network"]
    assert where["driver"] == "ray" and where["actors"] == 2 and set(where["nodes"]) == {"0", "1", "2", "3"}
    assert len({v for v in where["nodes"].values()}) == 2  # two actors hosted them
    # a later run in the same process that asks for more actors than the first one did
    # gets them (the local instance was once sized for the first run: its actors waited for ever)
    three = run_on(recipe, "ray", workers=3)
    assert three.extra["network"]["actors"] == 3 and three.scores == sim.scores


def test_udp_runs_four_node_processes_on_real_sockets(tmp_path) -> None:
    result = run_on(scenario_recipe(four_nodes(), seed=0), "udp", workdir=tmp_path, speed=2.0)
    assert result.node_ids == [0, 1, 2, 3]
    assert all(math.isfinite(s) for s in result.scores[-1])
    assert result.bytes[-1] > 0 and result.extra["shares"] > 0
    where = result.extra["network"]
    assert where["driver"] == "udp" and where["processes"] == 4
    assert all(v.startswith("127.0.0.1:") for v in where["nodes"].values())
    assert len({v.split("pid ")[1] for v in where["nodes"].values()}) == 4  # four OS processes
    assert "dead_nodes" not in result.extra


def test_a_killed_node_process_is_reported_and_the_others_finish(tmp_path) -> None:
    victim = 2

    def kill_soon(pids: dict[int, int]) -> None:
        threading.Timer(1.5, os.kill, (pids[victim], signal.SIGKILL)).start()

    result = run_on(scenario_recipe(four_nodes(duration=4.0), seed=0), "udp", workdir=tmp_path, speed=2.0,
                    on_start=kill_soon)
    assert result.extra["dead_nodes"] == [victim]
    column = result.node_ids.index(victim)
    assert math.isnan(result.scores[-1][column])  # it measured nothing after it died
    assert any(math.isfinite(row[column]) for row in result.scores)  # but what it measured before is kept
    survivors = [s for n, s in zip(result.node_ids, result.scores[-1]) if n != victim]
    assert all(math.isfinite(s) for s in survivors) and result.times[-1] >= 3.5
