"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from difftre_torch.testing import package_build, tiny_cn_frames, train_tiny_nequip


@pytest.fixture(scope="session")
def tiny_nequip_checkpoint(tmp_path_factory) -> Path:
    """A real ``nequip-train`` checkpoint (see :func:`difftre_torch.testing.train_tiny_nequip`)
    after one epoch on 6 EMT-labelled C4N4 frames; ~10 s."""
    pytest.importorskip("nequip")
    return train_tiny_nequip(tmp_path_factory.mktemp("tiny_nequip"))


@pytest.fixture(scope="session")
def cn_frames():
    """An orthorhombic and a triclinic C4N4 frame, not in the tiny model's training set."""
    return tiny_cn_frames(n_frames=2, seed=11)


@pytest.fixture(scope="session")
def tiny_deepmd(tmp_path_factory) -> tuple[Path, Path]:
    """A real ``dp --pt train`` checkpoint and its ``dp --pt freeze`` .pth (see
    :func:`difftre_torch.testing.train_tiny_deepmd`); ~15 s."""
    pytest.importorskip("deepmd")
    from difftre_torch.testing import train_tiny_deepmd

    return train_tiny_deepmd(tmp_path_factory.mktemp("tiny_deepmd"))


@pytest.fixture(scope="session")
def tiny_nequip_package(tiny_nequip_checkpoint, tmp_path_factory) -> Path:
    """The tiny checkpoint through ``nequip-package build`` (.nequip.zip), built once."""
    return package_build(tiny_nequip_checkpoint, tmp_path_factory.mktemp("pkg") / "tiny.nequip.zip")



@pytest.fixture
def one_torch_thread():
    """torch on one CPU thread for the test (the thread count restored after): small tensors, and
    no oversubscription when the suite shares its cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
