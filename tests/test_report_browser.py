"""The core's report page in a real headless browser: every picture loads, the page fits
1,280 px, a screenshot comes out (issue 14)."""
from __future__ import annotations

from pathlib import Path

from mfd_core.report import write_report

from tests.browser import look_at
from tests.test_report import _results

PNG = b"\x89PNG"


def test_the_core_report_shows_every_picture_and_fits_the_screen(tmp_path: Path) -> None:
    page = write_report(_results(tmp_path))
    facts = look_at(page, tmp_path / "screenshot.png")
    assert facts["images"] and all(loaded for _, loaded in facts["images"]), facts["images"]
    assert facts["width"] <= facts["view"], facts  # no sideways scrolling at 1,280 px
    assert "speed-up vs isolated" in facts["text"] and "_" not in facts["text"].split("\n")[0]
    shot = (tmp_path / "screenshot.png").read_bytes()
    assert shot[:4] == PNG and len(shot) > 10_000


def test_the_base_station_report_shows_every_picture_and_fits_the_screen(tmp_path: Path) -> None:
    from apps.basestation.report import write_report as write_basestation_report
    from tests.test_basestation_app import synthetic_rows

    page = write_basestation_report(synthetic_rows(), tmp_path / "report")
    facts = look_at(page, tmp_path / "screenshot.png")
    assert len(facts["images"]) >= 6 and all(loaded for _, loaded in facts["images"]), facts["images"]
    assert facts["width"] <= facts["view"], facts  # the tables fit 1,280 px
    assert "_" not in facts["text"]  # no snake_case headers, names or labels
    assert "load-balancing heuristic" in facts["text"] and "5th-pct rate" in facts["text"]
    shot = (tmp_path / "screenshot.png").read_bytes()

def _robots_folder(tmp_path: Path) -> Path:
    """A robots run folder as `mfd robots demo` writes it (MFD with isolated learning
    beside it, two seeds), from made-up measurements: the page is what is tested here."""
    import numpy as np

    from apps.robots.config import from_dict
    from apps.robots.run import write_gif, write_strip
    from mfd_core.metrics import RunResult
    from mfd_core.runfolder import RunFolder

    scenario = from_dict({"name": "tiny", "duration": 40.0, "eval_interval": 4.0,
                          "robots": [{"arm": "panda"}, {"arm": "kuka"}, {"arm": "xarm6", "join_at": 0.5}]})
    folder = RunFolder(tmp_path / "robots", "robots", command=["mfd", "robots", "demo"],
                       scenario=scenario.model_dump(), plan=[(p, s) for p in ("mfd", "isolated") for s in (0, 1)],
                       info={"score_name": "success rate", "network": "sim", "acting": "mfd"})
    for policy, rate in (("mfd", 0.12), ("isolated", 0.07)):
        for seed in (0, 1):
            result = RunResult("tiny", policy, seed, [0, 1, 2])
            for i, t in enumerate(np.arange(0.0, 41.0, 4.0)):
                steps = [100.0 * i, 100.0 * i, max(0.0, 100.0 * (i - 5))]
                score = [min(1.0, rate * (i + seed)), min(1.0, rate * i), min(1.0, 2 * rate * max(0, i - 5))]
                score[2] = score[2] if t >= 20 else float("nan")
                result.record(t, score, {"air_bytes": 10_000 * i * (policy == "mfd")},
                              {"env_steps": steps, "bytes_sent": [3_000.0 * i] * 3})
            folder.finish_run(result)
    folder.finish()
    report = folder.path / "report"
    report.mkdir()
    rng = np.random.default_rng(0)
    episodes = {n: ([rng.integers(0, 255, (60, 80, 3), dtype=np.uint8) for _ in range(8)], n != 1, list(range(8)))
                for n in range(3)}
    write_strip(episodes, scenario, report / "robots_acting.png", policy="mfd")
    write_gif(episodes, report / "robots_acting.gif", policy="mfd")
    return folder.path


def test_the_robots_report_shows_every_picture_and_states_the_speed_up(tmp_path: Path) -> None:
    from apps.robots.report import rebuild_report

    page = rebuild_report(_robots_folder(tmp_path))
    facts = look_at(page, tmp_path / "robots.png")
    names = {src for src, _ in facts["images"]}
    assert {"robots_acting.png", "robots_acting.gif", "success_vs_time.png", "bytes_vs_time.png",
            "per_robot_mfd.png", "per_robot_isolated.png"} <= names, names
    assert all(loaded for _, loaded in facts["images"]), facts["images"]
    assert facts["width"] <= facts["view"], facts  # no sideways scrolling at 1,280 px
    assert "Speed-up vs isolated" in facts["text"] and "Result:" in facts["text"]
    assert "MFD: the robots' trained policies acting" in facts["text"]
    shot = (tmp_path / "robots.png").read_bytes()
    assert shot[:4] == PNG and len(shot) > 10_000
