"""Atomic writes: a crash never leaves a half-written checkpoint or result. And a run lock: two
processes never write one run's checkpoint.

Every file is written to a temporary name in the same directory, flushed to disk, then renamed
over the target with ``os.replace`` (atomic on POSIX and Windows for one filesystem). It gets the
permissions a plain ``open`` would give: 0666 less the umask (and a directory's default ACL). The
temporary name, ``.<name>.<random>.<host>-<boot>-<pid>.tmp`` (host and boot as 8-hex hashes),
says who writes it: the temporary file of a writer that was killed can be told from one that a
live process is writing now, and removed when a run resumes (:func:`remove_stale_temp_files`).

The run lock (:func:`run_lock`) is a file holding its holder's host, pid and boot, and an
exclusive ``flock`` on it while held. The kernel drops the flock when the holder dies however it
dies, so on one host "is the holder alive" has an exact answer, and taking over a dead holder's
lock cannot race: the file appears complete under its name (``link``, which fails if the name
exists) and is replaced only by the process that holds the old file's flock.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import io
import json
import os
import re
import secrets
import socket
import time
from pathlib import Path
from typing import Any, Callable

try:
    import fcntl
except ImportError:  # Windows: no flock; the run lock falls back to checking the holder's pid
    fcntl = None

_OPEN_FLAGS = getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0)  # Windows: no newline translation


# ---------------------------------------------------------------------------- atomic writes


@functools.lru_cache(maxsize=1)
def _boot_id() -> str:
    """This boot of the machine (Linux: /proc/sys/kernel/random/boot_id; elsewhere "")."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _token(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]


def _writer_tag() -> str:
    """``<host>-<boot>-<pid>`` of this process, as temporary file names carry it."""
    return f"{_token(socket.gethostname())}-{_token(_boot_id())}-{os.getpid()}"


_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[0-9a-f]{8}\.(?P<host>[0-9a-f]{8})-(?P<boot>[0-9a-f]{8})-(?P<pid>\d+)"
                        r"\.tmp$")


def _create_temp(path: Path) -> tuple[int, Path]:
    """A new empty file next to ``path``, named for its writer; (descriptor open for reading and
    writing, its path). Mode 0666 less the umask, as ``open`` gives."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.{_writer_tag()}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: no free temporary name for {path.name}")


def _atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` atomically."""
    import torch

    return _atomic_write(path, lambda h: torch.save(obj, h))


def atomic_save_npz(path: str | os.PathLike, **arrays) -> Path:
    """``np.savez_compressed(path, **arrays)`` atomically."""
    import numpy as np

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
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temp_files(directory: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Delete the temporary files of interrupted atomic writes in ``directory`` (and below it if
    ``recursive``); returns their paths.

    Only files named by this module's writer (module docstring) whose writer is gone are removed:
    written on this host in an earlier boot, or by a pid that no longer runs. A write in progress
    by a live process sharing the folder is left alone, and so is a temporary file from another
    host (its process cannot be checked from here) or any other file.
    """
    host, boot = _token(socket.gethostname()), _token(_boot_id())
    removed = []
    folders = os.walk(directory) if recursive else [(directory, [], _listdir(directory))]
    for root, _, names in folders:
        for name in names:
            match = _TEMP_NAME.match(name)
            if match is None or match["host"] != host:
                continue
            if match["boot"] == boot and _process_alive(int(match["pid"])):
                continue
            path = Path(root) / name
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def _listdir(directory: str | os.PathLike) -> list[str]:
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []


# ---------------------------------------------------------------------------- the run lock


class LockHeld(RuntimeError):
    """A run lock is held by a live process (this host) or by another host; ``path``: the lock file."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


_HELD: set[int] = set()  # descriptors of the run locks this process holds (with their flock)


def _close_held_in_child() -> None:
    """A forked child closes its copies of the held locks' descriptors: the flock belongs to the
    open file, so a child keeping one would hold the lock after its parent died."""
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_in_child)


def _flock(fd: int) -> bool | None:
    """Take the kernel's exclusive lock on ``fd``'s file without waiting: True if taken, False if
    another open file holds it, None where the system or filesystem has no flock."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.EBADF):
            return None
        raise
    return True


def _read_fd(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", errors="replace")


def _identity(fd: int) -> tuple[int, int]:
    opened = os.fstat(fd)
    return opened.st_dev, opened.st_ino


def _names(path: Path, identity: tuple[int, int]) -> bool:
    """Whether ``path`` names the file ``identity`` (device, inode) now. An open descriptor of
    that file keeps its inode number from being reused."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    return (named.st_dev, named.st_ino) == identity


def _held_message(path: Path, who: str) -> str:
    return (f"{path.parent} is in use by {who} (lock file {path}); wait for it to finish, or delete "
            "the lock if that process is gone")


def _holder(path: Path, text: str) -> dict:
    """The holder recorded in a lock file's ``text``: {"host", "pid", "boot"}."""
    if not text.strip():
        raise LockHeld(_held_message(path, "a process that is writing the lock, or was killed while "
                                           "writing it"), path)
    try:
        holder = json.loads(text)
        return {"host": str(holder["host"]), "pid": int(holder["pid"]), "boot": holder.get("boot")}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise RuntimeError(f"{path}: unreadable run lock; delete it if no process runs in "
                           f"{path.parent}") from None


def _who(path: Path, text: str) -> str:
    try:
        holder = _holder(path, text)
    except RuntimeError:
        return "another process"
    return f"process {holder['pid']} on {holder['host']}"


def _publish(tmp: Path, path: Path, fd: int) -> int | None:
    """Give the complete lock file ``tmp`` (open as ``fd``) the name ``path`` unless that exists;
    the lock's descriptor, or None. ``link`` is atomic, also over NFS (where a retried link may
    report EEXIST after it succeeded: the link count tells). Without hard links, ``path`` is
    created exclusively and then filled: it is empty for a moment, which others read as held."""
    try:
        os.link(tmp, path)
        return fd
    except FileExistsError:
        return fd if os.fstat(fd).st_nlink == 2 else None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK):
            raise
    try:
        new = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS, 0o666)
    except FileExistsError:
        return None
    for _ in range(1000):  # a process looking at the empty file holds its flock for a moment
        if _flock(new) is not False:
            break
        time.sleep(0.001)
    os.write(new, _read_fd(fd).encode("utf-8"))
    os.fsync(new)
    os.close(fd)
    return new


def _take_over(tmp: Path, path: Path, me: dict, kernel: bool) -> bool:
    """``path`` exists: raise :class:`LockHeld` if its holder may be alive, else replace it with
    the complete lock file ``tmp`` (True). False: ``path`` changed meanwhile; look again.
    ``kernel``: whether flock works here."""
    try:
        try:
            old = os.open(path, os.O_RDWR | _OPEN_FLAGS)
        except PermissionError:  # another user's lock: flock needs no write access (but on NFS)
            old = os.open(path, os.O_RDONLY | _OPEN_FLAGS)
    except FileNotFoundError:
        return False  # released meanwhile
    try:
        locked = _flock(old) if kernel else None
        text = _read_fd(old)
        identity = _identity(old)
        if locked is False or (kernel and locked is None):  # its holder lives (or cannot be checked)
            with contextlib.suppress(OSError):  # name the holder now, if it changed meanwhile
                text = path.read_text(encoding="utf-8", errors="replace") or text
            raise LockHeld(_held_message(path, _who(path, text)), path)
        if not _names(path, identity):
            return False  # released or taken over between our open and our flock
        holder = _holder(path, text)
        who = f"process {holder['pid']} on {holder['host']}"
        if holder["host"] != me["host"]:
            raise LockHeld(_held_message(path, who), path)
        same_boot = holder["boot"] in (None, me["boot"])
        if same_boot and (holder["pid"] == me["pid"] or (not kernel and _process_alive(holder["pid"]))):
            raise LockHeld(_held_message(path, who), path)
        if kernel:  # its holder is gone, and we hold its flock: nobody else replaces it meanwhile
            os.replace(tmp, path)
            return True
        opened, old = old, None
        return _replace_guarded(tmp, path, opened)
    finally:
        if old is not None:
            os.close(old)


def _replace_guarded(tmp: Path, path: Path, old: int) -> bool:
    """Without flock: replace the dead holder's lock (open as ``old``, closed here) with ``tmp``
    while holding the exclusive file ``.<name>.takeover``, so that of two processes that judged
    it dead only the first replaces it (the second finds another file under the name and looks
    again)."""
    guard = path.with_name(f".{path.name}.takeover")
    try:
        try:
            fd = os.open(guard, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            raise LockHeld(f"{path.parent}: another process is taking over the lock {path} (if "
                           f"none is, delete {guard})", path) from None
        try:
            if not _names(path, _identity(old)):
                return False
            os.close(old)  # before the replace: Windows replaces no open file
            old = None
            os.replace(tmp, path)
            return True
        finally:
            os.close(fd)
            guard.unlink(missing_ok=True)
    finally:
        if old is not None:
            os.close(old)


@contextlib.contextmanager
def run_lock(directory: str | os.PathLike, name: str = "run.lock"):
    """Hold ``<directory>/<name>`` (this host, pid and boot) while the block runs; removed after it.

    A lock whose holder is gone (killed, or the machine rebooted) is taken over; one held by a
    live process, or recorded by another host, is an error naming it (:class:`LockHeld`): two
    processes resuming the same checkpoint would overwrite each other's updates.

    Whether the holder is gone: on this host, whether the lock file's flock is free (exact: the
    kernel releases it when the process dies; a pid reused by another process does not count),
    except that a lock recording this very process counts as held.
    On NFS, Linux implements flock with POSIX locks, shared by all clients; a lock recorded by
    another host is never taken over, as its process cannot be checked from here (delete the
    file if it is gone), so a filesystem whose locks are local to each client is safe too. Where
    there is no flock at all (Windows, a filesystem that refuses it), the recorded pid and boot
    decide, and a takeover holds ``.<name>.takeover`` exclusively for a moment.
    """
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "boot": _boot_id()}
    owner = me["pid"]
    fd, tmp = _create_temp(path)
    try:
        kernel = _flock(fd) is True  # a new file nobody else has open: taken, unless no flock here
        os.write(fd, json.dumps(me).encode("utf-8"))
        os.fsync(fd)
        for _ in range(1000):
            lock = _publish(tmp, path, fd)
            if lock is not None:
                fd = lock
                break
            if _take_over(tmp, path, me, kernel):
                break
        else:
            raise RuntimeError(f"{path}: could not take the run lock (it changed hands 1000 times)")
    except BaseException:
        os.close(fd)
        raise
    finally:
        tmp.unlink(missing_ok=True)
    identity = _identity(fd)
    if kernel:
        _HELD.add(fd)
    else:  # nothing to keep open (and Windows removes no open file)
        os.close(fd)
    try:
        yield path
    finally:
        if os.getpid() == owner:  # not in a forked child leaving the block
            if _names(path, identity):  # ours: nobody replaces or removes a held lock (but a person may)
                path.unlink(missing_ok=True)
            if kernel:
                _HELD.discard(fd)
                os.close(fd)  # the flock goes last: a process waiting on it finds the name gone
