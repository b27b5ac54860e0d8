"""`mfd robots demo | compare --resume RUNDIR`: a stopped robots run is finished from its
folder, with the figures of a run that was never stopped (a seed determines a run: robot
time is simulated, every budget is in env steps)."""
from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("stable_baselines3")

from tests.test_robots_app import cli, tiny_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def rows(folder: Path) -> list[list[str]]:
    """results.csv as it is on disk, line by line (no parsing that could hide a change)."""
    with open(folder / "results.csv", newline="") as fh:
        return list(csv.reader(fh))[1:]


def of(table: list[list[str]], run: str) -> list[list[str]]:
    return [r for r in table if r[0] == run]


def meta(folder: Path) -> dict:
    return json.loads((folder / "run.json").read_text())


def figures(folder: Path) -> dict:
    """summary.json less what a clock measures (wall and CPU seconds)."""
    def clean(doc):
        if isinstance(doc, dict):
            return {k: clean(v) for k, v in doc.items() if "seconds" not in k}
        if isinstance(doc, list):
            return [clean(v) for v in doc]
        return doc
    return clean(json.loads((folder / "summary.json").read_text()))


def test_a_compare_stopped_after_its_first_run_resumes_to_the_figures_of_a_whole_one(tmp_path):
    """SIGINT once the first of two runs is done: exit 130, one line that says how to finish
    it; --resume runs the second only (the first's rows byte for byte as they were), and the
    folder then holds what an uninterrupted compare writes, clocks apart."""
    scenario = tiny_file(tmp_path)
    stopped, whole = tmp_path / "stopped", tmp_path / "whole"
    argv = ["robots", "compare", "--scenario", str(scenario), "--policies", "isolated,mfd", "--no-frames"]
    proc = subprocess.Popen([sys.executable, "-m", "apps.cli", *argv, "--out", str(stopped)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if meta(stopped)["done"]:
                break
        except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or mid-replace
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, err
    said = [line for line in err.strip().splitlines() if line.startswith("mfd")]
    assert len(said) == 1 and said[0].startswith("mfd: interrupted") \
        and said[0].endswith(f"(finish it: mfd robots compare --resume {stopped})"), err
    first = meta(stopped)
    assert first["interrupted"] and first["done"] == ["isolated/seed0"], first
    kept = of(rows(stopped), "isolated/seed0")
    assert kept

    code, err = cli(["robots", "compare", "--resume", str(stopped), "--quiet"])
    assert code == 0, err
    after = meta(stopped)
    assert sorted(after["done"]) == ["isolated/seed0", "mfd/seed0"] and not after["interrupted"]
    assert of(rows(stopped), "isolated/seed0") == kept  # the done run was not run again
    summary = json.loads((stopped / "summary.json").read_text())
    assert not summary["interrupted"] and set(summary["policies"]) == {"isolated", "mfd"}
    assert (stopped / "report" / "index.html").stat().st_size > 0

    code, err = cli([*argv, "--out", str(whole), "--quiet"])
    assert code == 0, err
    assert rows(stopped) == rows(whole)  # same rows, same order: the seed determines the run
    assert figures(stopped) == figures(whole)
    # the resumed run did work worth comparing: MFD's robots sent policies
    assert any(r[5] == "bytes" and float(r[6]) > 0 for r in of(rows(stopped), "mfd/seed0"))


def test_a_demo_whose_reference_was_stopped_runs_the_reference_alone(tmp_path):
    """A demo stopped while its isolated reference was still out (the MFD run done): resume
    runs the reference here, alone, to the rows the second process measured, keeps the MFD
    run as it was, and draws the robots acting from the MFD policies it saved."""
    scenario = tiny_file(tmp_path)
    out = tmp_path / "demo"
    code, err = cli(["robots", "demo", "--scenario", str(scenario), "--out", str(out), "--quiet"])
    assert code == 0, err
    table = rows(out)
    zips = sorted((out / "mfd" / "seed0" / "policies").glob("robot*.zip"))
    saved = {z: z.stat().st_mtime_ns for z in zips}
    # the state Ctrl-C leaves after the MFD run and before the reference came back
    doc = meta(out)
    doc.update(done=["mfd/seed0"], interrupted=True)
    (out / "run.json").write_text(json.dumps(doc))
    for name in ("robots_acting.png", "robots_acting.gif", "index.html"):
        (out / "report" / name).unlink()

    code, err = cli(["robots", "demo", "--resume", str(out), "--quiet"])
    assert code == 0, err
    assert sorted(meta(out)["done"]) == ["isolated/seed0", "mfd/seed0"] and not meta(out)["interrupted"]
    assert of(rows(out), "mfd/seed0") == of(table, "mfd/seed0")
    assert of(rows(out), "isolated/seed0") == of(table, "isolated/seed0") != []
    assert {z: z.stat().st_mtime_ns for z in zips} == saved  # the MFD fleet was not trained again
    for name in ("robots_acting.png", "robots_acting.gif", "index.html"):
        assert (out / "report" / name).stat().st_size > 0, name


@pytest.mark.parametrize("argv, needle", [
    (["robots", "compare", "--resume", "{tmp}/nonexistent"], "no such folder"),
    (["robots", "demo", "--resume", "{tmp}"], "no run.json"),
    (["robots", "demo", "--resume", "{compare}"], "mfd robots compare --resume"),
    (["robots", "compare", "--resume", "{core}"], "a core run folder"),
    (["robots", "compare", "--resume", "{compare}", "--seeds", "1"], "--seeds"),
    (["robots", "compare", "--resume", "{compare}", "--policies", "mfd"], "--policies"),
    (["robots", "demo", "--resume", "{compare}", "--scenario", "robots"], "--scenario"),
    (["robots", "demo", "--resume", "{compare}", "--set", "duration=4"], "--set"),
    (["robots", "compare", "--resume", "{compare}", "--out", "{tmp}/elsewhere"], "--out"),
])
def test_a_bad_resume_is_one_line_and_changes_nothing(tmp_path, argv, needle):
    compare, core = tmp_path / "compare", tmp_path / "core"
    for folder, kind, command in ((compare, "robots", ["mfd", "robots", "compare"]), (core, "core", ["mfd", "run"])):
        folder.mkdir()
        (folder / "run.json").write_text(json.dumps({"kind": kind, "command": command, "planned": ["mfd/seed0"],
                                                     "done": [], "interrupted": True}))
        (folder / "results.csv").write_text("run,policy,seed,node,time,metric,value\nmfd/seed0,mfd,0,0,4.0,score,0.5\n")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    argv = [a.format(tmp=tmp_path, compare=compare, core=core) for a in argv]
    code, err = cli(argv)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("mfd: error: ") and needle in err, err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # no rows dropped
    assert not (tmp_path / "nonexistent").exists() and not (tmp_path / "elsewhere").exists()
