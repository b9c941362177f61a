"""Atomic writes (permissions, temporary files of killed writers) and the run lock."""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import subprocess
import sys

import pytest
import torch

from difftre_torch import checkpoint
from difftre_torch.checkpoint import (
    LockHeld,
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    load_checkpoint,
    remove_stale_temp_files,
    run_lock,
)

WRITER = """
import sys, time
from difftre_torch.checkpoint import _atomic_write

def write(handle):
    handle.write(b"half a checkpoint")
    handle.flush()
    print("writing", flush=True)
    time.sleep(600)

_atomic_write(sys.argv[1], write)
"""


def start_writer(path) -> subprocess.Popen:
    """A process in the middle of an atomic write of ``path`` (its temporary file exists)."""
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline() == "writing\n"
    return writer


def killed_writer(path) -> int:
    """SIGKILL a process while it writes ``path`` atomically; returns its pid."""
    writer = start_writer(path)
    writer.kill()
    writer.wait()
    writer.stdout.close()
    return writer.pid


def test_atomic_writes_leave_no_temporary_files(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    atomic_torch_save({"t": torch.arange(3)}, tmp_path / "c.pt")
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    assert torch.equal(load_checkpoint(tmp_path / "c.pt")["t"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "c.pt"]


def test_a_write_failing_halfway_keeps_the_old_file(tmp_path):
    """torch.save writes the tensor, then fails to pickle the lambda: the target keeps its old
    content and the temporary file is gone."""
    atomic_torch_save({"t": torch.arange(3)}, tmp_path / "c.pt")
    with pytest.raises(Exception, match="lambda|pickle"):
        atomic_torch_save({"t": torch.zeros(1000), "f": lambda: 0}, tmp_path / "c.pt")
    assert torch.equal(load_checkpoint(tmp_path / "c.pt")["t"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_run_lock_refuses_a_second_holder_and_is_released(tmp_path):
    with run_lock(tmp_path) as path:
        assert json.loads(path.read_text())["pid"] > 0
        with pytest.raises(LockHeld, match=r"in use by process \d+ on .*run\.lock") as held:
            with run_lock(tmp_path):
                pass
        assert held.value.path == path
        with run_lock(tmp_path, "other.lock"):  # another name is another lock
            assert (tmp_path / "other.lock").exists()
    assert not (tmp_path / "run.lock").exists() and not (tmp_path / "other.lock").exists()
    with pytest.raises(ValueError):
        with run_lock(tmp_path):
            raise ValueError("the block failed")
    assert not (tmp_path / "run.lock").exists()  # released on errors too


def test_run_lock_takes_over_a_dead_process_lock_but_not_another_hosts(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    lock = tmp_path / "run.lock"
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": int(finished.stdout)}))
    with run_lock(tmp_path):
        assert json.loads(lock.read_text())["pid"] != int(finished.stdout)
    alive = {"host": socket.gethostname(), "pid": os.getpid()}
    lock.write_text(json.dumps({**alive, "boot": "an earlier boot"}))  # pid reused after a reboot
    with run_lock(tmp_path):
        assert json.loads(lock.read_text())["boot"] != "an earlier boot"
    lock.write_text(json.dumps({"host": "another-machine", "pid": 1}))
    with pytest.raises(LockHeld, match="process 1 on another-machine"):
        with run_lock(tmp_path):
            pass
    lock.write_text("not json")
    with pytest.raises(RuntimeError, match="unreadable run lock"):
        with run_lock(tmp_path):
            pass


def test_written_files_get_the_permissions_of_the_umask(tmp_path):
    """Files (and the run lock) get 0666 less the umask, as open() gives, not mkstemp's 0600."""
    mode = lambda path: stat.S_IMODE(os.stat(path).st_mode)
    previous = os.umask(0o027)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        atomic_torch_save({"t": torch.arange(3)}, tmp_path / "c.pt")
        with run_lock(tmp_path) as lock:
            lock_mode = mode(lock)
        os.umask(0o002)
        atomic_write_text(tmp_path / "b.txt", "b")
        atomic_write_text(tmp_path / "a.json", "{}")  # a rewrite takes the umask of now
    finally:
        os.umask(previous)
    assert (mode(tmp_path / "c.pt"), lock_mode) == (0o640, 0o640)
    assert (mode(tmp_path / "b.txt"), mode(tmp_path / "a.json")) == (0o664, 0o664)


def test_only_temporary_files_of_dead_writers_on_this_host_are_removed(tmp_path):
    """A writer SIGKILLed mid-write leaves its temporary file, named with its pid; the cleanup
    removes it but keeps a live process's write in progress, another host's temporary file (its
    writer cannot be checked) and files it did not name; below the folder only if recursive."""
    dead = killed_writer(tmp_path / "checkpoint.pt")
    (leftover,) = tmp_path.glob(".checkpoint.pt.*.tmp")
    assert leftover.name.endswith(f"-{dead}.tmp") and leftover.read_bytes() == b"half a checkpoint"
    assert not (tmp_path / "checkpoint.pt").exists()
    (tmp_path / "sub").mkdir()
    deeper = tmp_path / "sub" / leftover.name.replace("checkpoint.pt", "summary.json")
    deeper.write_bytes(b"")
    boot = leftover.name.split("-")[-2]
    elsewhere = tmp_path / f".c.pt.0123abcd.{checkpoint._token('another-machine')}-{boot}-{dead}.tmp"
    elsewhere.write_bytes(b"")
    foreign = [tmp_path / ".notes.tmp", tmp_path / f".x.0123abcd.zzzzzzzz-00000000-{dead}.tmp"]
    for path in foreign:
        path.write_bytes(b"")
    live = start_writer(tmp_path / "results.json")
    try:
        (in_progress,) = tmp_path.glob(".results.json.*.tmp")
        assert remove_stale_temp_files(tmp_path) == [leftover]
        assert remove_stale_temp_files(tmp_path, recursive=True) == [deeper]
        assert in_progress.exists() and elsewhere.exists() and all(p.exists() for p in foreign)
    finally:
        live.kill()
        live.wait()
        live.stdout.close()
    assert remove_stale_temp_files(tmp_path) == [in_progress]  # once its writer is gone
    assert remove_stale_temp_files(tmp_path / "absent") == []


def test_run_lock_on_a_filesystem_without_hard_links(tmp_path, monkeypatch):
    """Where ``link`` is refused the lock file is created in place, with the same behaviour."""
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(checkpoint.os, "link", refuse)
    with run_lock(tmp_path) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
        with pytest.raises(LockHeld, match=r"in use by process \d+ on "):
            with run_lock(tmp_path):
                pass
        assert [p.name for p in tmp_path.iterdir()] == ["run.lock"]
    assert list(tmp_path.iterdir()) == []
