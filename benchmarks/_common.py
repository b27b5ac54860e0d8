"""Shared by the benchmark scripts: where results go and what each result file records."""
from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


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
    """Write ``results/<name>.json``: name, UTC timestamp, machine, anything in ``extra``, figures."""
    path = path or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"name": name,
           "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": machine(), **extra, "figures": figures}
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return path
