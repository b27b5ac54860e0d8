#!/usr/bin/env python3
"""Set up the project in ./.venv and run its main job or its tests.

    python3 dev.py demo     # set up, then run the main job (`mfd demo`)
    python3 dev.py test     # set up, then run the test suite

Needs only Python 3.11. Setting up is skipped when pyproject.toml has not
changed since the last install.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
STAMP = VENV / ".mfd-installed"
# The CPU build of torch lies on the machine's disk; an unpinned torch pulls a
# multi-GB CUDA build, so it is installed first, on its own, pinned.
TORCH = "torch==2.13.0"


def _run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def setup() -> None:
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted and PY.exists():
        return
    if not PY.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    pip = [str(PY), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    _run(pip + [TORCH])
    _run(pip + ["-e", ".[dev]"])
    STAMP.write_text(wanted)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in {"demo", "test", "setup"}:
        print(__doc__)
        return 0 if argv and argv[0] in {"-h", "--help"} else 2
    setup()
    job, rest = argv[0], argv[1:]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if job == "demo":
        return subprocess.call([str(BIN / "mfd"), "demo", *rest], cwd=ROOT, env=env)
    if job == "test":
        # Two workers: the suite is sized for a 2-core machine.
        return subprocess.call([str(PY), "-m", "pytest", "-n", "2", *rest], cwd=ROOT, env=env)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
