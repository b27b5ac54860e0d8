"""The core's commands, in-process: `mfd run / compare / report / packets` on a tiny scenario."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from apps.cli import main

TINY = """\
name = "tiny"
seeds = [0]
duration = 3.0
eval_interval = 0.5

[topology]
kind = "ring"
nodes = 4
compute = 2000.0

[learner]
hidden = [16]
local_steps = 5
lr = 0.01

[policy]
name = "mfd"
max_silence = 1.0
hello_interval = 1.0
"""


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


def exit_of(argv: list[str]) -> SystemExit:
    with pytest.raises(SystemExit) as err:
        main(argv)
    return err.value


def test_help_lists_the_commands(capsys) -> None:
    assert exit_of(["--help"]).code == 0
    out = capsys.readouterr().out
    for command in ("run", "compare", "report", "packets"):
        assert command in out
    assert main([]) == 2  # no command: the help, and a failing status


def test_run_then_report_write_results_plots_and_a_page(tiny: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "results"
    assert main(["run", str(tiny), "--out", str(out)]) == 0
    run = out / "mfd" / "seed0"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["t"] for r in rows] == [0.5 * i for i in range(7)]
    assert all(set(r["scores"]) == {"0", "1", "2", "3"} for r in rows)
    assert rows[-1]["bytes"] > 0 and rows[-1]["data_bytes"] == 0
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert any(e["event"] == "gate" for e in events)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["policy"] == "mfd" and summary["seed"] == 0 and 0 < summary["final_mean_score"] <= 1
    printed = capsys.readouterr().out
    assert "mfd" in printed and str(out) in printed

    assert main(["report", str(out)]) == 0
    report = out / "report"
    for name in ("score_vs_time.png", "score_vs_bytes.png", "per_node_mfd.png"):
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (report / "index.html").read_text()
    assert "<table>" in page and "mfd" in page and 'src="score_vs_time.png"' in page
    assert str(report / "index.html") in capsys.readouterr().out


def test_run_with_seeds_and_policy_override(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "r"
    assert main(["run", str(tiny), "--policy", "gossip", "--seeds", "0", "1", "--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "gossip").iterdir()) == ["seed0", "seed1"]
    a, b = (json.loads((out / "gossip" / s / "summary.json").read_text()) for s in ("seed0", "seed1"))
    assert a["policy"] == b["policy"] == "gossip" and a["final_mean_score"] != b["final_mean_score"]


def test_compare_runs_each_policy_on_the_same_seeds_and_reports(tiny: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cmp"
    assert main(["compare", str(tiny), "--policies", "isolated,fedavg", "--out", str(out)]) == 0
    for policy in ("isolated", "fedavg"):
        assert (out / policy / "seed0" / "metrics.jsonl").exists()
    page = (out / "report" / "index.html").read_text()
    assert "isolated" in page and "fedavg" in page
    assert (out / "report" / "per_node_fedavg.png").exists()
    table = capsys.readouterr().out
    assert "isolated" in table and "fedavg" in table
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert {row["policy"] for row in summary} == {"isolated", "fedavg"}
    assert next(r for r in summary if r["policy"] == "isolated")["total_MB"] == 0


@pytest.mark.parametrize("bad, field", [
    ("[topology]\nloss = 1.5\n", "topology.loss"),
    ("[topology]\ncolour = 3\n", "topology.colour"),
    ("[topology]\nnodes = \"five\"\n", "topology.nodes"),
    ("[topology]\nbandwidth = -10.0\n", "topology.bandwidth"),
    ("[topology]\nkind = \"ring\"\nnodes = 4\n[[faults]]\nkind = \"node_leave\"\nat = 0.5\nnodes = [9]\n", "faults.0.nodes"),
    ("[topology]\nkind = \"grid\"\nnodes = 7\n", "topology.rows"),
])
@pytest.mark.parametrize("command", ["run", "compare"])
def test_a_bad_scenario_is_one_clear_line_and_nothing_runs(tmp_path: Path, bad: str, field: str, command: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(bad)
    out = tmp_path / "never"
    err = exit_of([command, str(path), "--out", str(out)])
    message = str(err.code)
    assert err.code not in (0, None) and message.startswith("mfd: invalid scenario")
    assert field in message and "\n" not in message
    assert not out.exists()


def test_unknown_names_fail_cleanly(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "never"
    for argv in (["run", str(tiny), "--policy", "fedprox", "--out", str(out)],
                 ["compare", str(tiny), "--policies", "mfd,fedprox", "--out", str(out)]):
        err = exit_of(argv)
        assert "fedprox" in str(err.code) and "\n" not in str(err.code), argv
        assert not out.exists()
    assert "no policy" in str(exit_of(["compare", str(tiny), "--policies", " , "]).code)
    err = exit_of(["run", str(tmp_path / "nope.toml")])
    assert "no scenario file" in str(err.code)
    err = exit_of(["report", str(tmp_path)])
    assert str(err.code).startswith("mfd report:") and "no runs found" in str(err.code)


def test_run_list_shows_the_shipped_scenarios(capsys) -> None:
    assert main(["run", "--list"]) == 0
    assert "digits" in capsys.readouterr().out.split()


def test_packets_demo(capsys) -> None:
    assert main(["packets", "--loss", "0.3", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "datagrams" in out and "arrived" in out
    assert main(["packets", "--loss", "0", "--precision", "int8"]) == 0
    out = capsys.readouterr().out
    assert "complete" in out and not math.isnan(float(out.split("max error ")[1].split()[0]))
