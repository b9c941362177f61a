"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from difftre_torch.testing import train_tiny_nequip


@pytest.fixture(scope="session")
def tiny_nequip_checkpoint(tmp_path_factory) -> Path:
    """A real ``nequip-train`` checkpoint (see :func:`difftre_torch.testing.train_tiny_nequip`)
    after one epoch on 6 EMT-labelled C4N4 frames; ~10 s."""
    pytest.importorskip("nequip")
    return train_tiny_nequip(tmp_path_factory.mktemp("tiny_nequip"))
