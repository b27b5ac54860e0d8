"""RunResult (files and questions) and the report: PNGs and an HTML page, from synthetic runs."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mfd_core.metrics import RunResult
from mfd_core.report import find_runs, summary_rows, write_report

PNG = b"\x89PNG\r\n\x1a\n"


def synthetic(policy: str, seed: int, *, slope: float, bytes_per_s: int, away: tuple[int, float, float] | None = None):
    """A 3-node run: score = slope * t per node (offset per node), bytes linear in time."""
    result = RunResult("synthetic", policy, seed, [0, 1, 2])
    for k in range(11):
        t = float(k)
        scores = [min(1.0, 0.1 + slope * t + 0.01 * n) for n in range(3)]
        if away is not None and away[1] <= t < away[2]:
            scores[away[0]] = math.nan
        stats = {"air_bytes": bytes_per_s * k, "air_packets": k * 3,
                 "kinds": {"model": {"air_bytes": bytes_per_s * k}}}
        result.record(t, scores, stats)
    result.events.append({"t": 3.0, "event": "gate", "node": 1, "accepted": True})
    result.extra["faults"] = [{"kind": "node_leave", "at": 4.0, "nodes": [2], "rejoin_at": 7.0}]
    result.wall_seconds = 0.25
    return result


def test_run_result_answers_the_benchmark_questions() -> None:
    r = synthetic("mfd", 0, slope=0.05, bytes_per_s=1000)
    assert r.mean_scores()[0] == pytest.approx(0.11)
    assert r.final_mean_score == pytest.approx(0.61)
    assert r.first_reach(0.36) == 5 and r.time_to(0.36) == 5.0 and r.bytes_to(0.36) == 5000.0
    assert r.time_to(0.99) == math.inf and r.bytes_to(0.99) == math.inf
    s = r.summary()
    assert s["total_bytes"] == 10_000 and s["model_bytes"] == 10_000 and s["data_bytes"] == 0
    assert s["packets"] == 30 and s["simulated_seconds"] == 10.0


def test_nodes_away_are_gaps_not_zeros() -> None:
    r = synthetic("mfd", 0, slope=0.05, bytes_per_s=1000, away=(2, 4.0, 7.0))
    assert math.isnan(r.node_series(2)[5])
    assert r.mean_scores()[5] == pytest.approx((0.1 + 0.25 + 0.1 + 0.25 + 0.01) / 2)  # over the nodes present


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    r = synthetic("gossip", 3, slope=0.04, bytes_per_s=500, away=(0, 2.0, 5.0))
    r.save(tmp_path / "run")
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 11 and json.loads(lines[3])["scores"]["0"] is None  # NaN is written as null
    back = RunResult.load(tmp_path / "run")
    assert (back.scenario, back.policy, back.seed, back.node_ids) == ("synthetic", "gossip", 3, [0, 1, 2])
    assert back.times == r.times and back.bytes == r.bytes and back.packets == r.packets
    for a, b in zip(back.scores, r.scores):
        assert all((math.isnan(x) and math.isnan(y)) or x == y for x, y in zip(a, b))
    assert back.events == r.events and back.extra["faults"] == r.extra["faults"]
    assert back.wall_seconds == 0.25


def _results(tmp_path: Path) -> Path:
    """A run folder of three policies x two seeds, written as `mfd compare` writes it."""
    from mfd_core.runfolder import RunFolder

    folder = RunFolder(tmp_path / "results", "core", command=["mfd", "compare"], scenario={"name": "synthetic"},
                       plan=[(p, s) for p in ("fedavg", "mfd", "isolated") for s in (0, 1)],
                       info={"name": "synthetic", "score_name": "test accuracy"})
    for policy, slope, rate in (("fedavg", 0.06, 5000), ("mfd", 0.05, 1500), ("isolated", 0.02, 0)):
        for seed in (0, 1):
            folder.finish_run(synthetic(policy, seed, slope=slope + 0.001 * seed, bytes_per_s=rate,
                                        away=(1, 4.0, 7.0) if policy == "mfd" else None))
    folder.finish()
    return folder.path


def test_a_run_folder_reads_back_as_the_runs_it_holds(tmp_path: Path) -> None:
    from mfd_core.runfolder import read_results

    folder = _results(tmp_path)
    runs = {(r.policy, r.seed): r for r in read_results(folder)}
    assert len(runs) == 6
    original = synthetic("mfd", 1, slope=0.051, bytes_per_s=1500, away=(1, 4.0, 7.0))
    back = runs[("mfd", 1)]
    assert back.times == original.times and back.bytes == original.bytes and back.node_ids == [0, 1, 2]
    for a, b in zip(back.scores, original.scores):
        assert all((math.isnan(x) and math.isnan(y)) or x == pytest.approx(y) for x, y in zip(a, b))
    assert back.events == original.events


def test_report_draws_every_plot_and_a_page_with_the_summary_table(tmp_path: Path) -> None:
    folder = _results(tmp_path)
    page = write_report(folder)
    assert page == folder / "report" / "index.html"
    names = ["score_vs_time.png", "score_vs_bytes.png", "per_node_fedavg.png", "per_node_isolated.png",
             "per_node_mfd.png"]
    for name in names:
        assert (page.parent / name).read_bytes()[:8] == PNG
        assert f'src="{name}"' in page.read_text()
    html = page.read_text()
    assert html.count("<tr>") == 1 + 3  # header and one row per policy
    assert "speed-up vs isolated" in html and "bytes vs FedAvg" in html and "total_MB" not in html
    rows = json.loads((page.parent / "summary.json").read_text())
    assert [r["policy"] for r in rows] == ["fedavg", "isolated", "mfd"]
    assert all(r["seeds"] == 2 for r in rows)
    fedavg, _, mfd = rows
    assert fedavg["total_MB"]["median"] == pytest.approx(0.05)
    assert fedavg["final_mean_score"]["median"] == pytest.approx(0.715)
    assert fedavg["final_mean_score"]["min"] < fedavg["final_mean_score"]["max"]  # the spread over seeds
    # isolated learning ends at 0.1 + 0.2 * ... : MFD's slope reaches it sooner
    assert mfd["speedup_vs_isolated"]["median"] > 1 and mfd["bytes_over_fedavg"]["median"] == pytest.approx(0.3)
    assert all(r["data_bytes"] == 0 for r in rows)
    write_report(folder, tmp_path / "elsewhere", title="Mine")
    assert "<title>Mine</title>" in (tmp_path / "elsewhere" / "index.html").read_text()


def test_report_of_an_older_results_folder(tmp_path: Path) -> None:
    synthetic("mfd", 0, slope=0.05, bytes_per_s=100).save(tmp_path / "one")
    page = write_report(tmp_path / "one")
    assert (page.parent / "per_node_mfd.png").exists()


def test_summary_rows_give_median_and_range_over_seeds() -> None:
    rows = summary_rows([synthetic("mfd", s, slope=0.05 + 0.01 * s, bytes_per_s=1000) for s in range(2)])
    (row,) = rows
    assert row["final_mean_score"]["median"] == pytest.approx((0.61 + 0.71) / 2)
    assert (row["final_mean_score"]["min"], row["final_mean_score"]["max"]) == pytest.approx((0.61, 0.71))


def test_report_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such results folder"):
        write_report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no runs found"):
        write_report(tmp_path / "empty")
