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
    assert shot[:4] == PNG and len(shot) > 10_000
