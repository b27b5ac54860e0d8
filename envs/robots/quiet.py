"""Keep PyBullet's C-level chatter off the terminal.

PyBullet writes from C straight to the process's file descriptors ("pybullet build
time: ..." on fd 2 at import, "argv[0]=" on fd 1 at connect, URDF warnings on load), so
redirecting ``sys.stdout`` does nothing: the descriptors themselves must point at
``/dev/null`` while such a call runs.  An environment never prints (STYLE.md).
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

try:  # flushing C stdio before the descriptors move back keeps buffered text in /dev/null
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None)
except OSError:  # pragma: no cover - platforms without a global libc handle
    _LIBC = None


def _flush_c_stdio() -> None:
    if _LIBC is not None:
        try:
            _LIBC.fflush(None)
        except AttributeError:  # pragma: no cover
            pass


@contextmanager
def silenced_output() -> Iterator[None]:
    """Point file descriptors 1 and 2 at ``/dev/null`` for the duration of the block.

    Not thread-safe: another thread writing to stdout/stderr meanwhile is silenced too,
    so only short calls (connect, URDF loading) go inside.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, ValueError):  # closed or replaced streams
            pass
    _flush_c_stdio()
    saved: list[tuple[int, int]] = []
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in (1, 2):
            try:
                saved.append((fd, os.dup(fd)))
            except OSError:  # descriptor not open: nothing to silence
                continue
            os.dup2(devnull, fd)
        yield
    finally:
        _flush_c_stdio()
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)
        os.close(devnull)


with silenced_output():
    import pybullet  # noqa: E402  (its import prints the build time from C)
    from pybullet_utils.bullet_client import BulletClient  # noqa: E402

__all__ = ["BulletClient", "pybullet", "silenced_output"]
