"""The tutorials in docs/ run as written: their files are written, their commands run,
their Python runs (issue 14). A tutorial that stops working fails here."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```(\w+)([^\n]*)\n(.*?)```", re.S)


def blocks(page: str) -> list[tuple[str, str | None, str]]:
    """(language, file name or None, text) of every fenced block of a docs page."""
    out = []
    for lang, info, text in BLOCK.findall((ROOT / "docs" / page).read_text()):
        title = re.search(r"title=(\S+)", info)
        out.append((lang, title.group(1) if title else None, text))
    return out


@pytest.mark.parametrize("page", ["tutorial-own-model.md", "tutorial-own-env.md"])
def test_the_tutorial_runs_as_written(page: str, tmp_path: Path) -> None:
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    ran = []
    for lang, name, text in blocks(page):
        if name is not None:
            (tmp_path / name).write_text(text)
        elif lang == "sh":
            for command in filter(None, (line.strip() for line in text.splitlines())):
                args = command.split()
                assert args[0] == "mfd", command
                proc = subprocess.run([sys.executable, "-m", "apps.cli", *args[1:]], cwd=tmp_path, env=env,
                                      capture_output=True, text=True, timeout=600)
                assert proc.returncode == 0, (command, proc.stderr)
                ran.append(command)
        elif lang == "python":
            proc = subprocess.run([sys.executable, "-c", text], cwd=tmp_path, env=env, capture_output=True,
                                  text=True, timeout=600)
            assert proc.returncode == 0, proc.stderr
            ran.append(proc.stdout)
    assert ran, "the page has nothing to run"
    if page == "tutorial-own-model.md":
        summary = json.loads((tmp_path / "runs" / "mine" / "summary.json").read_text())
        assert set(summary["policies"]) == {"isolated", "fedavg", "mfd"}
        scenario = json.loads((tmp_path / "runs" / "mine" / "scenario.json").read_text())
        assert scenario["data"]["dataset"] == "mywork:four_blobs"
        printed = dict(line.split(": final mean accuracy ") for line in ran[-1].splitlines())
        accuracy = {k: float(v.split(",")[0]) for k, v in printed.items()}
        # a fleet sorted by label: alone each node knows its classes only; MFD shares the rest
        assert accuracy["mfd"] > accuracy["isolated"] + 0.1, accuracy
    if page == "tutorial-own-env.md":
        folder = tmp_path / "runs" / "mine"
        assert json.loads((folder / "scenario.json").read_text())["env_id"] == "pointreach:PointReach-v0"
        meta = json.loads((folder / "run.json").read_text())
        assert meta["kind"] == "robots" and meta["score_name"] == "success rate"
        assert sorted(meta["done"]) == ["isolated/seed0", "mfd/seed0"]
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["runs"][0]["data_bytes"] == 0 and summary["policies"]["mfd"]["total_bytes"]["median"] > 0
        printed = dict(line.split(": ", 1) for line in ran[-2].splitlines())
        assert set(printed) == {"isolated", "mfd"}
        # agents sharing one PettingZoo env: each learns the bit from its own experience,
        # models travel and no data does
        lamps = dict(part.rsplit(" ", 1) for part in ran[-1].strip().removeprefix("lamps: ").split(", "))
        assert float(lamps["final mean score"]) >= 0.9 > float(lamps["first mean score"]), lamps
        assert int(lamps["model bytes"]) > 0 and int(lamps["data bytes"]) == 0, lamps
        assert (folder / "report" / "robots_acting.png").stat().st_size > 0  # the env's own pictures
