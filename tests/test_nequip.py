"""NequIP potentials: loading (.ckpt, .nequip.zip, .nequip.pth), agreement with nequip's own
ASE calculator, batching, gradients in θ (incl. force matching vs finite differences), dtype
rebuild, writing back (nequip-package build accepts it), and the inference-only .pt2 path.

The .pt2 path is tested with a stand-in for nequip's AOTI wrapper (same interface, an eager
model inside): compiling a real .nequip.pt2 takes ~80 s on 2 CPU cores. A real one was checked
by hand (forces and stress through ``evaluate`` agreed with the eager model to 2e-7).
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch

pytest.importorskip("nequip")

from difftre_torch.testing import fake_aoti_model, nequip_cli, tiny_cn_frames  # noqa: E402

from difftre_torch.potentials.base import evaluate  # noqa: E402
from difftre_torch.potentials.nequip import (  # noqa: E402
    NequIPPotential,
    _nequip_state,
    load_nequip,
    save_nequip,
)


def as_batch(frames):
    pos = torch.tensor(np.stack([a.positions for a in frames]))
    cell = torch.tensor(np.stack([a.cell.array for a in frames]))
    return pos, cell, torch.tensor(frames[0].numbers)


@pytest.fixture(scope="module")
def frames():
    """An orthorhombic and a triclinic C4N4 frame, not in the training set."""
    return tiny_cn_frames(n_frames=2, seed=11)


@pytest.fixture(scope="module")
def package(tiny_nequip_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("pkg") / "tiny.nequip.zip"
    package_build(tiny_nequip_checkpoint, out)
    return out


def package_build(ckpt, out):
    result = subprocess.run(
        [nequip_cli("nequip-package"), "build", str(ckpt), str(out)], capture_output=True, text=True
    )
    assert result.returncode == 0 and out.exists(), result.stderr[-3000:]
    return out


def nequip_calculator(path):
    """nequip's eager ASE calculator (its own neighbour list, its own autograd forces)."""
    from nequip.integrations.ase import NequIPCalculator

    return NequIPCalculator._from_saved_model(str(path), chemical_species_to_atom_type_map=True)


def calculator_results(calc, atoms):
    from nequip.utils.dtype import torch_default_dtype

    atoms = atoms.copy()
    atoms.calc = calc
    with torch_default_dtype(torch.float64):  # nequip's data dtype, as set_global_state leaves it
        return atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(voigt=False)


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


@pytest.mark.parametrize("kind", ["ckpt", "zip"])
def test_matches_nequip_calculator(kind, tiny_nequip_checkpoint, package, frames):
    path = tiny_nequip_checkpoint if kind == "ckpt" else package
    potential = load_nequip(path)
    assert potential.source.format == {"ckpt": "checkpoint", "zip": "package"}[kind]
    assert potential.type_names == ["C", "N"] and potential.r_max_A == 4.0
    ev = evaluate(potential, *as_batch(frames), stress=True)
    calc = nequip_calculator(path)
    for b, atoms in enumerate(frames):
        energy, forces, stress = calculator_results(calc, atoms)
        assert ev.energy[b].item() == pytest.approx(energy, abs=2e-5)
        np.testing.assert_allclose(ev.forces[b].numpy(), forces, atol=2e-5)
        np.testing.assert_allclose(ev.stress[b].numpy(), stress, atol=1e-6)


def test_batched_equals_separate(tiny_nequip_checkpoint):
    potential = load_nequip(tiny_nequip_checkpoint)
    pos, cell, numbers = as_batch(tiny_cn_frames(n_frames=3, seed=5))
    batched = potential(pos, cell, numbers)
    separate = torch.cat([potential(pos[b : b + 1], cell[b : b + 1], numbers) for b in range(3)])
    torch.testing.assert_close(batched, separate, atol=1e-6, rtol=0)
    # float32 inputs give float32 energies of the same values
    e32 = potential(pos.float(), cell.float(), numbers)
    assert e32.dtype == torch.float32
    torch.testing.assert_close(e32.double(), batched.detach(), atol=1e-4, rtol=0)


def test_gradient_step_changes_energies(tiny_nequip_checkpoint, frames):
    potential = load_nequip(tiny_nequip_checkpoint)
    pos, cell, numbers = as_batch(frames)
    params = potential.trainable_parameters()
    assert len(params) == len(list(potential.model.parameters())) > 0
    energy = potential(pos, cell, numbers)
    grads = torch.autograd.grad(energy.sum(), params)
    assert all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    with torch.no_grad():
        for p, g in zip(params, grads):
            p -= 1e-3 * g
        after = potential(pos, cell, numbers)
    assert after.sum() < energy.sum() - 1e-4


@pytest.fixture(scope="module")
def refined_checkpoint(tiny_nequip_checkpoint, frames, tmp_path_factory):
    potential = refine(load_nequip(tiny_nequip_checkpoint), frames)
    path = save_nequip(potential, tmp_path_factory.mktemp("refined") / "refined.ckpt")
    return potential, path


def test_save_checkpoint_reloads_new_weights(tiny_nequip_checkpoint, refined_checkpoint, frames):
    potential, path = refined_checkpoint
    pos, cell, numbers = as_batch(frames)
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


def test_nequip_package_accepts_written_checkpoint(refined_checkpoint, frames):
    potential, path = refined_checkpoint
    packaged = load_nequip(package_build(path, path.with_name("refined.nequip.zip")))
    pos, cell, numbers = as_batch(frames)
    torch.testing.assert_close(packaged(pos, cell, numbers), potential(pos, cell, numbers), atol=1e-7, rtol=0)


def test_save_from_package_roundtrip(package, frames, tmp_path):
    potential = refine(load_nequip(package), frames)
    path = save_nequip(potential, tmp_path / "from_package.ckpt")
    pos, cell, numbers = as_batch(frames)
    refined = potential(pos, cell, numbers)
    assert (refined - load_nequip(package)(pos, cell, numbers)).abs().max() > 1e-4
    reloaded = load_nequip(path)
    torch.testing.assert_close(reloaded(pos, cell, numbers), refined, atol=1e-7, rtol=0)
    packaged = load_nequip(package_build(path, tmp_path / "again.nequip.zip"))
    torch.testing.assert_close(packaged(pos, cell, numbers), refined, atol=1e-7, rtol=0)


def test_float64_rebuild_matches_float32(tiny_nequip_checkpoint, package, frames, tmp_path):
    pos, cell, numbers = as_batch(frames)
    e32 = load_nequip(tiny_nequip_checkpoint)(pos, cell, numbers)
    for path in (tiny_nequip_checkpoint, package):
        potential = load_nequip(path, dtype=torch.float64)
        assert all(p.dtype == torch.float64 for p in potential.parameters())
        torch.testing.assert_close(potential(pos, cell, numbers), e32, atol=2e-5, rtol=0)
    # written back in the checkpoint's own dtype (float32)
    written = save_nequip(potential, tmp_path / "f64.ckpt")
    assert load_nequip(written).source.model_dtype == "float32"
    assert torch.get_default_dtype() == torch.float32


def test_force_matching_gradient_matches_finite_difference(tiny_nequip_checkpoint, frames):
    potential = load_nequip(tiny_nequip_checkpoint, dtype=torch.float64)
    pos, cell, numbers = as_batch(frames)
    reference = torch.tensor(np.stack([a.get_forces() for a in frames]))

    def loss():
        forces = evaluate(potential, pos, cell, numbers, create_graph=True).forces
        return ((forces - reference) ** 2).sum()

    name, param = max(potential.model.named_parameters(), key=lambda kv: kv[1].numel())
    direction = torch.randn(param.shape, generator=torch.Generator().manual_seed(0), dtype=param.dtype)
    (grad,) = torch.autograd.grad(loss(), [param])
    analytic = (grad * direction).sum().item()
    eps = 1e-4
    with torch.no_grad():
        param += eps * direction
    plus = loss().item()
    with torch.no_grad():
        param -= 2 * eps * direction
    minus = loss().item()
    numeric = (plus - minus) / (2 * eps)
    assert np.isfinite(analytic) and abs(analytic) > 1e-2, name
    assert analytic == pytest.approx(numeric, rel=1e-5)


def test_unknown_element_is_a_clear_error(tiny_nequip_checkpoint, frames):
    potential = load_nequip(tiny_nequip_checkpoint)
    pos, cell, numbers = as_batch(frames)
    numbers = numbers.clone()
    numbers[0] = 8
    with pytest.raises(ValueError, match=r"does not know element\(s\) O"):
        potential(pos, cell, numbers)


def test_torchscript_roundtrip(tiny_nequip_checkpoint, frames, tmp_path):
    from nequip.integrations.ase import NequIPCalculator
    from nequip.model.inference_models.torchscript import save_torchscript_model
    from nequip.model.saved_models.load_utils import load_saved_model

    with _nequip_state():  # a .nequip.pth as older nequip-compile --mode torchscript made them
        model = load_saved_model(str(tiny_nequip_checkpoint)).eval()
        metadata = dict(model.metadata, allow_tf32="0")  # as nequip-compile wrote it
        save_torchscript_model(model, metadata, str(tmp_path / "tiny.nequip.pth"), "cpu")
    pos, cell, numbers = as_batch(frames)
    potential = load_nequip(tmp_path / "tiny.nequip.pth")
    assert potential.source.format == "torchscript"
    torch.testing.assert_close(
        potential(pos, cell, numbers), load_nequip(tiny_nequip_checkpoint)(pos, cell, numbers), atol=1e-6, rtol=0
    )
    refine(potential, frames)
    refined = evaluate(potential, pos, cell, numbers, stress=True)
    written = save_nequip(potential, tmp_path / "refined.nequip.pth")
    torch.testing.assert_close(load_nequip(written)(pos, cell, numbers), refined.energy, atol=1e-7, rtol=0)
    # nequip's own TorchScript route (frozen, forces by its ForceStressOutput) sees the new weights
    calc = NequIPCalculator.from_compiled_model(str(written), chemical_species_to_atom_type_map=True)
    for b, atoms in enumerate(frames):
        energy, forces, _ = calculator_results(calc, atoms)
        assert energy == pytest.approx(refined.energy[b].item(), abs=2e-5)
        np.testing.assert_allclose(forces, refined.forces[b].numpy(), atol=2e-5)


@pytest.mark.parametrize("batched", [True, False], ids=["target-batch", "target-ase"])
def test_pt2_path_is_inference_only(tiny_nequip_checkpoint, frames, batched):
    eager = load_nequip(tiny_nequip_checkpoint)
    compiled = NequIPPotential(fake_aoti_model(eager.model, batched), eager.type_names, eager.r_max_A, compiled=True)
    assert compiled.inference_only and not list(compiled.parameters())
    pos, cell, numbers = as_batch(frames)
    expected = evaluate(eager, pos, cell, numbers, stress=True)
    got = evaluate(compiled, pos, cell, numbers, stress=True)  # sampling works: F and σ
    torch.testing.assert_close(got.energy, expected.energy.detach(), atol=1e-7, rtol=0)
    torch.testing.assert_close(got.forces, expected.forces, atol=1e-6, rtol=0)
    torch.testing.assert_close(got.stress, expected.stress, atol=1e-7, rtol=0)
    with pytest.raises(RuntimeError, match="inference-only"):
        evaluate(compiled, pos, cell, numbers, create_graph=True)
    with pytest.raises(RuntimeError, match="no trainable parameters"):
        compiled.trainable_parameters()


def test_nequip_facts_and_global_state_isolation(tiny_nequip_checkpoint, frames, tmp_path):
    """Regression tripwires for the facts in the module docstring (nequip 0.19.1, torch 2.13)."""
    import nequip.utils.global_state as global_state
    from lightning.pytorch.utilities.seed import isolate_rng
    from nequip.model.saved_models.load_utils import load_saved_model
    from nequip.scripts._workflow_utils import set_workflow_state
    from nequip.scripts.compile import main as nequip_compile

    # set_global_state() switches torch's default dtype to float64 (on its first call) ...
    initialized = global_state._GLOBAL_STATE_INITIALIZED
    try:
        global_state._GLOBAL_STATE_INITIALIZED = False
        with isolate_rng():
            global_state.set_global_state()
        assert torch.get_default_dtype() == torch.float64
    finally:
        torch.set_default_dtype(torch.float32)
    # ... and reseeds the RNGs; load_nequip isolates both
    global_state._GLOBAL_STATE_INITIALIZED = False
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    load_nequip(tiny_nequip_checkpoint)
    torch.testing.assert_close(torch.rand(4), expected)
    assert torch.get_default_dtype() == torch.float32
    global_state._GLOBAL_STATE_INITIALIZED = initialized or global_state._GLOBAL_STATE_INITIALIZED

    # nequip-compile refuses TorchScript on torch >= 2.10
    try:
        with pytest.raises(ValueError, match="TorchScript compilation is deprecated"):
            nequip_compile([str(tiny_nequip_checkpoint), str(tmp_path / "x.nequip.pth"), "--mode", "torchscript", "--device", "cpu"])
    finally:
        set_workflow_state(None)

    # models load in training mode; their ForceStressOutput keeps the force graph only then
    potential = load_nequip(tiny_nequip_checkpoint)
    data = potential.graph(*as_batch(frames))
    with _nequip_state():
        model = load_saved_model(str(tiny_nequip_checkpoint))
    assert model.training
    assert model(dict(data))["forces"].requires_grad
    assert not model.eval()(dict(data))["forces"].requires_grad

    # .double() on a float32 nequip model fails at forward
    model.double()
    with pytest.raises(RuntimeError, match="dtype"):
        model(dict(data))
