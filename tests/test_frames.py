"""Labelled frames from files (:mod:`difftre_torch.frames`): DeePMD-kit deepmd/npy and deepmd/raw
folders against the extxyz they were made from (positions, labels, the virial → stress
convention), subsets, clear errors; and force matching on a deepmd/npy folder giving the same loss
as on the same frames in extxyz."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("dpdata")

from difftre_torch.force_matching import ReferenceFrames, force_matching_gradient  # noqa: E402
from difftre_torch.frames import FramesError, read_frames_file  # noqa: E402
from difftre_torch.potentials import LennardJones  # noqa: E402
from difftre_torch.testing import write_deepmd_npy  # noqa: E402

WORLD = Path(__file__).resolve().parents[1] / "data" / "world"


@pytest.fixture(scope="module")
def world_frames():
    """12 labelled teacher frames (energy, forces, stress) of the stand-in world's test split."""
    return read_frames_file(WORLD / "dataset" / "test.extxyz.gz")[:12]


def _by_source(frames):
    return {tuple(np.round(a.positions[0], 6)): a for a in frames}


def test_deepmd_npy_equals_the_extxyz_it_came_from(world_frames, tmp_path):
    write_deepmd_npy(world_frames, tmp_path / "npy")
    back = read_frames_file(tmp_path / "npy")
    assert len(back) == len(world_frames)
    originals = _by_source(world_frames)
    for atoms in back:
        ref = originals[tuple(np.round(atoms.positions[0], 6))]
        assert sorted(atoms.get_chemical_symbols()) == sorted(ref.get_chemical_symbols())
        assert atoms.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-9)
        np.testing.assert_allclose(atoms.cell.array, ref.cell.array, atol=1e-12)
        # DeePMD's virial W = −Vσ comes back as ASE's stress (sign and volume)
        np.testing.assert_allclose(atoms.get_stress(voigt=False), ref.get_stress(voigt=False), atol=1e-9)
        order = [np.flatnonzero(np.all(np.isclose(ref.positions, p, atol=1e-9), axis=1))[0] for p in atoms.positions]
        assert [ref[k].symbol for k in order] == atoms.get_chemical_symbols()
        np.testing.assert_allclose(atoms.get_forces(), ref.get_forces()[order], atol=1e-9)


def test_deepmd_raw_and_type_map(world_frames, tmp_path):
    import dpdata

    system = dpdata.LabeledSystem(world_frames[0], fmt="ase/structure", type_map=["C", "N"])
    system.to("deepmd/raw", str(tmp_path / "raw"))
    (frame,) = read_frames_file(tmp_path / "raw")
    assert frame.get_potential_energy() == pytest.approx(world_frames[0].get_potential_energy(), abs=1e-9)
    (tmp_path / "raw" / "type_map.raw").unlink()
    with pytest.raises(FramesError, match="no type_map.raw, and no type map given"):
        read_frames_file(tmp_path / "raw")
    (named,) = read_frames_file(tmp_path / "raw", type_map=["C", "N"])
    assert sorted(named.get_chemical_symbols()) == sorted(world_frames[0].get_chemical_symbols())
    with pytest.raises(FramesError, match=r"type names \['X'\] are not element symbols"):
        read_frames_file(tmp_path / "raw", type_map=["X", "N"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FramesError, match="no DeePMD system in it"):
        read_frames_file(tmp_path / "empty")


def test_subset_is_seeded_and_bounded(world_frames, tmp_path):
    write_deepmd_npy(world_frames, tmp_path / "npy")
    a = read_frames_file(tmp_path / "npy", max_frames=5, seed=1)
    b = read_frames_file(tmp_path / "npy", max_frames=5, seed=1)
    c = read_frames_file(tmp_path / "npy", max_frames=5, seed=2)
    assert len(a) == 5 and [x.info["source_file"] for x in a] == [x.info["source_file"] for x in b]
    assert [x.info["source_file"] for x in a] != [x.info["source_file"] for x in c]
    assert len(read_frames_file(WORLD / "dataset" / "test.extxyz.gz", max_frames=7)) == 7


def test_force_matching_loss_on_deepmd_npy_equals_extxyz(world_frames, tmp_path):
    """Same frames, same loss and gradient (a pair potential over C and N)."""
    from ase.io import write

    write(tmp_path / "frames.extxyz", world_frames)
    write_deepmd_npy(world_frames, tmp_path / "npy")
    potential = LennardJones(3.0, 0.01, 6.0)
    params = [potential.sigma, potential.epsilon]
    losses = []
    for source in (tmp_path / "frames.extxyz", tmp_path / "npy"):
        frames = ReferenceFrames.from_atoms(read_frames_file(source), source=str(source))
        batch = [(g, np.arange(int(group[1].shape[0]))) for g, group in enumerate(frames.groups)]
        losses.append(force_matching_gradient(potential, frames, batch, params))
    assert float(losses[0].loss) > 0
    torch.testing.assert_close(losses[0].loss, losses[1].loss, rtol=1e-12, atol=0)
    for g0, g1 in zip(losses[0].grads, losses[1].grads):
        torch.testing.assert_close(g0, g1, rtol=1e-10, atol=0)
