"""Atomic writes: a crash never leaves a half-written checkpoint or result. And a run lock: two
processes never write one run's checkpoint.

Every file is written to a temporary name in the same directory, flushed to disk, then renamed
over the target with ``os.replace`` (atomic on POSIX and Windows for one filesystem).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch


def _atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` atomically."""
    return _atomic_write(path, lambda h: torch.save(obj, h))


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """``np.savez_compressed(path, **arrays)`` atomically."""
    return _atomic_write(path, lambda h: np.savez_compressed(h, **arrays))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically."""
    return _atomic_write(path, lambda h: h.write(text.encode("utf-8")))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def load_checkpoint(path: str | os.PathLike) -> Any:
    """Load a checkpoint written by :func:`atomic_torch_save` (CPU tensors, full unpickling).

    Only load checkpoints you wrote: they are pickles.
    """
    return torch.load(path, map_location="cpu", weights_only=False)


def _boot_id() -> str:
    """This boot of the machine (Linux: /proc/sys/kernel/random/boot_id; elsewhere "")."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class LockHeld(RuntimeError):
    """A run lock is held by a live process (this host) or by another host; ``path``: the lock file."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


@contextlib.contextmanager
def run_lock(directory: str | os.PathLike, name: str = "run.lock"):
    """Hold ``<directory>/<name>`` (this host and pid) while the block runs; removed after it.

    A lock left by a process that no longer runs on this host (killed, or the machine rebooted:
    the lock records the boot, so a reused pid after a reboot does not count) is taken over;
    one held by a live process, or by another host, is an error naming it (:class:`LockHeld`):
    two processes resuming the same checkpoint would overwrite each other's updates.
    """
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "boot": _boot_id()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text())
                host, pid = str(holder["host"]), int(holder["pid"])
            except (OSError, ValueError, KeyError, TypeError):
                raise RuntimeError(f"{path}: unreadable run lock; delete it if no process runs in "
                                   f"{path.parent}") from None
            same_boot = holder.get("boot", me["boot"]) == me["boot"]
            if host == me["host"] and (not same_boot or not _process_alive(pid)):
                path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            raise LockHeld(f"{path.parent} is in use by process {pid} on {host} (lock file {path}); "
                           "wait for it to finish, or delete the lock if that process is gone", path) from None
        with os.fdopen(fd, "w") as handle:
            json.dump(me, handle)
        break
    else:
        raise RuntimeError(f"{path}: could not take the run lock")
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
