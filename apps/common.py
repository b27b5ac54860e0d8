"""What every `mfd` command that runs something shares: the same options with the same
syntax, input checked before any work, an output folder that is checked writable and
never mixed with another run's, progress that suits a terminal or a log file, and a run
that survives Ctrl-C.

A bad input is one line, ``mfd: error: ...``, and a non-zero exit (:class:`UsageError`);
``mfd --debug ...`` shows the traceback of anything else.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import signal
import sys
import time
import tomllib
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

# Seeds go into numpy and torch generators and are multiplied by 1,000 per node; 2^31 - 1
# keeps every derived seed a valid 64-bit one.
MAX_SEED = 2**31 - 1


class UsageError(Exception):
    """A bad input or an impossible request: shown as one line, exit status 2."""


# -- options -----------------------------------------------------------------------------


def seeds_type(text: str) -> list[int]:
    """One seed, a list (``0,1,2``) or a range (``0-4``): the seed syntax of every command."""
    seeds: list[int] = []
    for part in text.replace(" ", "").split(","):
        first, sep, last = part.partition("-")
        if not first.isdigit() or (sep and not last.isdigit()):
            raise argparse.ArgumentTypeError(
                f"{text!r}: seeds are whole numbers from 0 to {MAX_SEED}, like 3, 0,1,2 or 0-4")
        low, high = int(first), int(last or first)
        if high > MAX_SEED:
            raise argparse.ArgumentTypeError(f"seed {high} is too large (at most {MAX_SEED})")
        if high < low:
            raise argparse.ArgumentTypeError(f"{part!r}: a range goes up (e.g. 0-4)")
        seeds.extend(range(low, high + 1))
    return seeds


def flatten_seeds(groups: Sequence[list[int]] | None) -> list[int] | None:
    """``--seeds 0 1 --seeds 2-3`` -> [0, 1, 2, 3]; a seed given twice is an error."""
    if not groups:
        return None
    seeds = [s for group in groups for s in group]
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise UsageError(f"--seeds: seed {repeated[0]} is given twice (each seed runs once)")
    return seeds


def positive_seconds(name: str, upper: float) -> Callable[[str], float]:
    """A duration in simulated seconds: > 0 and at most ``upper`` (beyond it a run does not end in a day)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not (math.isfinite(value) and 0 < value <= upper):
            raise argparse.ArgumentTypeError(f"{name} must be more than 0 and at most {upper:g} s, got {text}")
        return value
    return parse


def add_run_arguments(p: argparse.ArgumentParser, *, seeds_help: str = "the scenario's",
                      network: bool = True,
                      set_example: str = "--set topology.loss=0.1 --set policy.fanout=4") -> None:
    """--out, --force, --quiet, --seeds, --set (and --network) as every run command has them;
    ``set_example`` shows fields of this command's scenarios."""
    p.add_argument("--out", help="output folder (default: a new folder under runs/)")
    p.add_argument("--force", action="store_true", help="write into --out even if it holds files already")
    p.add_argument("--quiet", action="store_true", help="no progress, only the result")
    p.add_argument("--seeds", type=seeds_type, nargs="+", metavar="SEEDS",
                   help=f"seeds to run: 3, 0,1,2, 0-4 or several of those (default: {seeds_help})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"change one scenario field, e.g. {set_example} "
                        "(values as in the scenario file; repeatable)")
    if network:
        p.add_argument("--network", choices=("sim", "udp", "ray"), default="sim",
                       help="where the nodes run: sim = one process on a simulated network (default); "
                            "udp = one OS process per node on real UDP sockets, in real time; "
                            "ray = the simulator spread over Ray actors")
        p.add_argument("--workers", type=int, default=2, help="Ray actors for --network ray (default 2)")
        p.add_argument("--ray-address", help="an existing Ray cluster to join (default: start Ray here)")


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["topology.loss=0.1", "policy.fanout=4"]`` -> ``{"topology": {"loss": 0.1}, "policy": {...}}``.

    The value is read as a TOML value, so types are what a scenario file would give
    (``4`` an integer, ``0.1`` a float, ``true``, ``[64, 64]``); a bare word is a string.
    """
    changes: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise UsageError(f"--set {item!r}: expected KEY=VALUE, e.g. --set topology.loss=0.1")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        *tables, last = key.split(".")
        node = changes
        for table in tables:
            node = node.setdefault(table, {})
            if not isinstance(node, dict):
                raise UsageError(f"--set {item!r}: {table} is set to a value and used as a table")
        node[last] = value
    return changes


# -- the output folder ---------------------------------------------------------------------


def prepare_out(out: str | Path, *, force: bool) -> Path:
    """Make ``out`` ready before any work: created, writable, and empty unless ``force``."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {path}: is a file, not a folder")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise UsageError(f"--out {path}: holds files already (another run's?); choose another folder or "
                         "add --force to write into it")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".mfd-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise UsageError(f"--out {path}: cannot write there ({err.strerror or err})") from None
    return path


def remove_if_empty(path: Path) -> None:
    """Leave nothing half-written behind a run that failed before it wrote anything."""
    with contextlib.suppress(OSError):
        if path.is_dir() and not any(path.rglob("*")):
            shutil.rmtree(path)


# -- progress ------------------------------------------------------------------------------


class Progress:
    """A bar on a terminal; on a pipe or a log file, a plain line every 10 % (no ``\\r`` frames).

    :param total: how much there is to do, in ``unit``.
    """

    def __init__(self, total: float, *, unit: str = "sim s", quiet: bool = False, stream=None) -> None:
        self.total, self.unit, self.quiet = float(total), unit, quiet
        self.stream = stream or sys.stderr
        self.done = 0.0
        self._bar = None
        self._next_line = 0.1
        self._started = time.monotonic()
        self._label = ""
        if not quiet and self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=round(self.total, 3), unit=unit, file=self.stream, leave=True,
                             bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} " + unit + " [{elapsed}<{remaining}]")

    def describe(self, label: str) -> None:
        self._label = label
        if self._bar is not None:
            self._bar.set_description(label)

    def advance(self, amount: float) -> None:
        if amount <= 0 or self.quiet:
            self.done += max(amount, 0.0)
            return
        self.done += amount
        if self._bar is not None:
            self._bar.update(amount)
            return
        share = self.done / self.total if self.total else 1.0
        if share >= self._next_line - 1e-12:
            elapsed = time.monotonic() - self._started
            print(f"[{share:4.0%}] {self._label}: {self.done:.1f} of {self.total:.1f} {self.unit}, "
                  f"{elapsed:.0f} s elapsed", file=self.stream, flush=True)
            while self._next_line <= share + 1e-12:
                self._next_line += 0.1

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


# -- interruption --------------------------------------------------------------------------


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM during a run: the run writes what it has and stops.

    A :class:`BaseException`, as :class:`KeyboardInterrupt` is: the signal lands in
    whatever code runs, and code that turns its own exceptions into a refusal and goes on
    (the reassembler counts any ``Exception`` on a datagram as an internal error and drops
    the datagram, so one bad packet costs no run) would otherwise swallow it, and the run
    would carry on to its end (a run stopped this way finished both its seeds and exited
    0, the signal caught mid-datagram)."""


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into :class:`Interrupted` once (a second signal during the
    clean-up is ignored, so the clean-up finishes and the folder is consistent)."""
    received: list[int] = []

    def handler(signum, _frame):
        if received:
            return
        received.append(signum)
        raise Interrupted(signal.Signals(signum).name)

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    in_main = threading_main()
    if in_main:
        for sig in previous:
            signal.signal(sig, handler)
    try:
        yield
    finally:
        if in_main:
            for sig, old in previous.items():
                signal.signal(sig, old)


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes"}
