"""A run owns its output folder: a lock that refuses a second live writer.

``<folder>/.lock`` is held with ``flock`` for as long as the run writes:

- a whole run (one process, or rank 0 of a torchrun job for all its ranks) holds it
  **exclusively**;
- a job-array task (``--shard I/N``) holds it **shared**, so the tasks of one array run
  side by side, plus ``<folder>/.lock-shard-I-of-N`` exclusively, so the same task never
  runs twice.

A whole run beside live tasks, a task beside a live whole run, or a second copy of a run is
refused with a :class:`LockedError` naming the holder (pid, host, start time, command, as
written into the lock file). The kernel drops the lock of a process that dies however it
dies, so a stale lock is simply taken over: no pid guessing, and it works across machines on
a shared file system whose ``flock`` is honoured cluster-wide (NFSv4, Lustre/GPFS mounted
with flock support; see docs/SCALE_OUT.md).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from detector.core.distributed import Shard

LOCK_NAME = ".lock"


class LockedError(RuntimeError):
    """Another live run writes into the folder; the message names it."""


class OutputLock:
    """The held lock of one output folder; :meth:`release` (or the process's end) frees it.

    Attributes:
        previous: the owner record of a holder that stopped without releasing (it died or
            was killed), else None: the caller may say that it took the folder over.
    """

    def __init__(self, fds: list[int], previous: dict[str, Any] | None) -> None:
        self._fds = fds  # the last one carries this run's owner record
        self.previous = previous

    def release(self) -> None:
        """Clear the owner record (a clean end leaves none behind) and drop the lock."""
        if self._fds:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fds[-1], 0)
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)  # closing drops the flock
        self._fds = []


def lock_output(folder: Path, shard: Shard) -> OutputLock:
    """Lock ``folder`` (created if missing) for a whole run or for share ``shard``.

    Raises:
        LockedError: a live run holds a conflicting lock.
        OSError: the folder or the lock file cannot be created.
    """
    folder.mkdir(parents=True, exist_ok=True)
    main = folder / LOCK_NAME
    if shard.whole:
        fd = _take(main, fcntl.LOCK_EX, lambda: _holders_of(folder))
        previous = _read_owner(fd)
        _write_owner(fd)
        return OutputLock([fd], previous)
    fd_main = _take(main, fcntl.LOCK_SH, lambda: _holders_of(folder))
    mine = folder / f"{LOCK_NAME}-shard-{shard.index}-of-{shard.count}"
    try:
        fd = _take(mine, fcntl.LOCK_EX, lambda: [_owner_text(mine)])
    except BaseException:
        os.close(fd_main)
        raise
    previous = _read_owner(fd)
    _write_owner(fd)
    return OutputLock([fd_main, fd], previous)


def _take(path: Path, mode: int, holders: Callable[[], list[str]]) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        who = "; ".join(h for h in holders() if h) or "another process"
        raise LockedError(
            f"{path.parent}: another live run is writing here ({who}); wait for it to end or "
            "choose another output folder"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _holders_of(folder: Path) -> list[str]:
    """Who holds the folder's locks now: the whole run's owner, or the live tasks'."""
    shards = sorted(folder.glob(f"{LOCK_NAME}-shard-*"))
    live = [_owner_text(p) for p in shards if _is_held(p)]
    return live or [_owner_text(folder / LOCK_NAME)]


def _is_held(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _owner_text(path: Path) -> str:
    try:
        owner = json.loads(path.read_text() or "null")
    except (OSError, ValueError):
        return ""
    if not isinstance(owner, dict):
        return ""
    return (
        f"pid {owner.get('pid')} on {owner.get('host')}, started {owner.get('started')}: "
        f"{owner.get('command')}"
    )


def _read_owner(fd: int) -> dict[str, Any] | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 1 << 16)
        owner = json.loads(data or b"null")
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _write_owner(fd: int) -> None:
    owner = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(getattr(sys, "orig_argv", sys.argv)),  # as typed: python -m ...
    }
    data = json.dumps(owner).encode()
    with contextlib.suppress(OSError):  # the owner record only helps messages
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
