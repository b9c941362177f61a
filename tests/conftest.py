"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

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
def tiny_nequip_package(tiny_nequip_checkpoint, tmp_path_factory) -> Path:
    """The tiny checkpoint through ``nequip-package build`` (.nequip.zip), built once."""
    return package_build(tiny_nequip_checkpoint, tmp_path_factory.mktemp("pkg") / "tiny.nequip.zip")

