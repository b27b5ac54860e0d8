"""Shared by the benchmark scripts: where results go and what each result file records."""
from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


# The load when the benchmark began: figures measured on a busy machine mean less.
LOAD_AT_START = load_average()
STARTED = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def commit() -> str:
    """The git commit the figures were measured at ('+dirty' if the tree had changes)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def command() -> str:
    """How this benchmark was started, as one could type it again."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(ROOT)
    except ValueError:
        pass
    return shlex.join(["python", str(script), *sys.argv[1:]])


def machine() -> dict[str, Any]:
    """What the figures were measured on: they mean little without it."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    try:
        info["load_average_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    for name in ("torch", "numpy"):
        module = sys.modules.get(name)
        if module is not None:
            info[name] = module.__version__
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
    return info


def write_results(name: str, figures: Any, *, path: Path | None = None, **extra: Any) -> Path:
    """Write ``results/<name>.json``: name, UTC start and end, the command and the commit,
    the machine with its load at start and end, anything in ``extra``, figures."""
    path = path or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    info = machine()
    info["load_average_1m_start"] = LOAD_AT_START
    info["load_average_1m_end"] = info.pop("load_average_1m", load_average())
    extra.setdefault("command", command())
    extra.setdefault("commit", commit())
    doc = {"name": name, "started": STARTED,
           "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": info, **extra, "figures": figures}
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return path
