"""Reading and writing nequip model files (difftre_torch.potentials.nequip_files): refined
weights written back and reloaded (.ckpt from a checkpoint, from a package, and .nequip.pth),
EMA weights, ``nequip-package build`` accepting what is written, and the float64 rebuild.
Fixtures ``tiny_nequip_checkpoint``, ``tiny_nequip_package`` and ``cn_frames``: tests/conftest.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("nequip")

from difftre_torch.testing import as_batch, calculator_results, package_build  # noqa: E402

from difftre_torch.potentials.base import evaluate  # noqa: E402
from difftre_torch.potentials.nequip_files import _nequip_state, load_nequip, save_nequip  # noqa: E402


def refine(potential, frames, lr=0.05):
    """One SGD step on a force-matching loss (double backward through the energy)."""
    pos, cell, numbers = as_batch(frames)
    reference = torch.tensor(np.stack([a.get_forces() for a in frames]))
    params = potential.trainable_parameters()
    forces = evaluate(potential, pos, cell, numbers, create_graph=True).forces
    loss = ((forces - reference.to(forces.dtype)) ** 2).mean()
    grads = torch.autograd.grad(loss, params)
    with torch.no_grad():
        for p, g in zip(params, grads):
            p -= lr * g
    return potential


@pytest.fixture(scope="module")
def refined_checkpoint(tiny_nequip_checkpoint, cn_frames, tmp_path_factory):
    potential = refine(load_nequip(tiny_nequip_checkpoint), cn_frames)
    path = save_nequip(potential, tmp_path_factory.mktemp("refined") / "refined.ckpt")
    return potential, path


def test_save_checkpoint_reloads_new_weights(tiny_nequip_checkpoint, refined_checkpoint, cn_frames):
    potential, path = refined_checkpoint
    pos, cell, numbers = as_batch(cn_frames)
    original = load_nequip(tiny_nequip_checkpoint)(pos, cell, numbers)
    refined = potential(pos, cell, numbers)
    reloaded = load_nequip(path)
    assert (refined - original).abs().max() > 1e-4
    torch.testing.assert_close(reloaded(pos, cell, numbers), refined, atol=1e-7, rtol=0)
    ckpt = torch.load(path, weights_only=False)
    assert ckpt["difftre_torch"]["source_format"] == "checkpoint"
    # nequip evaluates EMA checkpoints with the EMA weights: those must be the refined ones
    for i, p in enumerate(potential.model.parameters()):
        torch.testing.assert_close(ckpt["state_dict"][f"ema.ema_weight_{i}"], p.detach())


def test_nequip_package_accepts_written_checkpoint(refined_checkpoint, cn_frames):
    potential, path = refined_checkpoint
    packaged = load_nequip(package_build(path, path.with_name("refined.nequip.zip")))
    pos, cell, numbers = as_batch(cn_frames)
    torch.testing.assert_close(packaged(pos, cell, numbers), potential(pos, cell, numbers), atol=1e-7, rtol=0)


def test_save_from_package_roundtrip(tiny_nequip_package, cn_frames, tmp_path):
    potential = refine(load_nequip(tiny_nequip_package), cn_frames)
    path = save_nequip(potential, tmp_path / "from_package.ckpt")
    pos, cell, numbers = as_batch(cn_frames)
    refined = potential(pos, cell, numbers)
    assert (refined - load_nequip(tiny_nequip_package)(pos, cell, numbers)).abs().max() > 1e-4
    reloaded = load_nequip(path)
    torch.testing.assert_close(reloaded(pos, cell, numbers), refined, atol=1e-7, rtol=0)
    packaged = load_nequip(package_build(path, tmp_path / "again.nequip.zip"))
    torch.testing.assert_close(packaged(pos, cell, numbers), refined, atol=1e-7, rtol=0)


def test_float64_rebuild_matches_float32(tiny_nequip_checkpoint, tiny_nequip_package, cn_frames, tmp_path):
    pos, cell, numbers = as_batch(cn_frames)
    e32 = load_nequip(tiny_nequip_checkpoint)(pos, cell, numbers)
    for path in (tiny_nequip_checkpoint, tiny_nequip_package):
        potential = load_nequip(path, dtype=torch.float64)
        assert all(p.dtype == torch.float64 for p in potential.parameters())
        torch.testing.assert_close(potential(pos, cell, numbers), e32, atol=2e-5, rtol=0)
    # written back in the checkpoint's own dtype (float32)
    written = save_nequip(potential, tmp_path / "f64.ckpt")
    assert load_nequip(written).source.model_dtype == "float32"
    assert torch.get_default_dtype() == torch.float32


def test_torchscript_roundtrip(tiny_nequip_checkpoint, cn_frames, tmp_path):
    from nequip.integrations.ase import NequIPCalculator
    from nequip.model.inference_models.torchscript import save_torchscript_model
    from nequip.model.saved_models.load_utils import load_saved_model

    with _nequip_state():  # a .nequip.pth as older nequip-compile --mode torchscript made them
        model = load_saved_model(str(tiny_nequip_checkpoint)).eval()
        metadata = dict(model.metadata, allow_tf32="0")  # as nequip-compile wrote it
        save_torchscript_model(model, metadata, str(tmp_path / "tiny.nequip.pth"), "cpu")
    pos, cell, numbers = as_batch(cn_frames)
    potential = load_nequip(tmp_path / "tiny.nequip.pth")
    assert potential.source.format == "torchscript"
    torch.testing.assert_close(
        potential(pos, cell, numbers), load_nequip(tiny_nequip_checkpoint)(pos, cell, numbers), atol=1e-6, rtol=0
    )
    refine(potential, cn_frames)
    refined = evaluate(potential, pos, cell, numbers, stress=True)
    written = save_nequip(potential, tmp_path / "refined.nequip.pth")
    torch.testing.assert_close(load_nequip(written)(pos, cell, numbers), refined.energy, atol=1e-7, rtol=0)
    # nequip's own TorchScript route (frozen, forces by its ForceStressOutput) sees the new weights
    calc = NequIPCalculator.from_compiled_model(str(written), chemical_species_to_atom_type_map=True)
    for b, atoms in enumerate(cn_frames):
        energy, forces, _ = calculator_results(calc, atoms)
        assert energy == pytest.approx(refined.energy[b].item(), abs=2e-5)
        np.testing.assert_allclose(forces, refined.forces[b].numpy(), atol=2e-5)
