"""Atomic writes and the run lock."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from difftre_torch.checkpoint import LockHeld, atomic_torch_save, atomic_write_json, load_checkpoint, run_lock


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
