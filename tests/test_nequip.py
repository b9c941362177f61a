"""NequIP potentials: agreement with nequip's own ASE calculator (.ckpt and .nequip.zip),
batching, gradients in θ (incl. force matching vs finite differences), unknown elements, the
inference-only .pt2 path, and the measured nequip facts of the module docstring. Reading and
writing model files (round trips, dtype rebuild, TorchScript): tests/test_nequip_files.py.

The .pt2 path is tested with a stand-in for nequip's AOTI wrapper (same interface, an eager
model inside): compiling a real .nequip.pt2 takes ~80 s on 2 CPU cores. A real one was checked
by hand (forces and stress through ``evaluate`` agreed with the eager model to 2e-7).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("nequip")

from difftre_torch.testing import as_batch, calculator_results, fake_aoti_model, tiny_cn_frames  # noqa: E402

from difftre_torch.potentials.base import evaluate  # noqa: E402
from difftre_torch.potentials.nequip import NequIPPotential  # noqa: E402
from difftre_torch.potentials.nequip_files import _nequip_state, load_nequip  # noqa: E402


def nequip_calculator(path):
    """nequip's eager ASE calculator (its own neighbour list, its own autograd forces)."""
    from nequip.integrations.ase import NequIPCalculator

    return NequIPCalculator._from_saved_model(str(path), chemical_species_to_atom_type_map=True)


@pytest.mark.parametrize("kind", ["ckpt", "zip"])
def test_matches_nequip_calculator(kind, tiny_nequip_checkpoint, tiny_nequip_package, cn_frames):
    path = tiny_nequip_checkpoint if kind == "ckpt" else tiny_nequip_package
    potential = load_nequip(path)
    assert potential.source.format == {"ckpt": "checkpoint", "zip": "package"}[kind]
    assert potential.type_names == ["C", "N"] and potential.r_max_A == 4.0
    ev = evaluate(potential, *as_batch(cn_frames), stress=True)
    calc = nequip_calculator(path)
    for b, atoms in enumerate(cn_frames):
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


def test_gradient_step_changes_energies(tiny_nequip_checkpoint, cn_frames):
    potential = load_nequip(tiny_nequip_checkpoint)
    pos, cell, numbers = as_batch(cn_frames)
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


def test_force_matching_gradient_matches_finite_difference(tiny_nequip_checkpoint, cn_frames):
    potential = load_nequip(tiny_nequip_checkpoint, dtype=torch.float64)
    pos, cell, numbers = as_batch(cn_frames)
    reference = torch.tensor(np.stack([a.get_forces() for a in cn_frames]))

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


def test_unknown_element_is_a_clear_error(tiny_nequip_checkpoint, cn_frames):
    potential = load_nequip(tiny_nequip_checkpoint)
    pos, cell, numbers = as_batch(cn_frames)
    numbers = numbers.clone()
    numbers[0] = 8
    with pytest.raises(ValueError, match=r"does not know element\(s\) O"):
        potential(pos, cell, numbers)


@pytest.mark.parametrize("batched", [True, False], ids=["target-batch", "target-ase"])
def test_pt2_path_is_inference_only(tiny_nequip_checkpoint, cn_frames, batched):
    eager = load_nequip(tiny_nequip_checkpoint)
    compiled = NequIPPotential(fake_aoti_model(eager.model, batched), eager.type_names, eager.r_max_A, compiled=True)
    assert compiled.inference_only and not list(compiled.parameters())
    pos, cell, numbers = as_batch(cn_frames)
    expected = evaluate(eager, pos, cell, numbers, stress=True)
    got = evaluate(compiled, pos, cell, numbers, stress=True)  # sampling works: F and σ
    torch.testing.assert_close(got.energy, expected.energy.detach(), atol=1e-7, rtol=0)
    torch.testing.assert_close(got.forces, expected.forces, atol=1e-6, rtol=0)
    torch.testing.assert_close(got.stress, expected.stress, atol=1e-7, rtol=0)
    with pytest.raises(RuntimeError, match="inference-only"):
        evaluate(compiled, pos, cell, numbers, create_graph=True)
    with pytest.raises(RuntimeError, match="no trainable parameters"):
        compiled.trainable_parameters()


def test_nequip_facts_and_global_state_isolation(tiny_nequip_checkpoint, cn_frames, tmp_path):
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
    data = potential.graph(*as_batch(cn_frames))
    with _nequip_state():
        model = load_saved_model(str(tiny_nequip_checkpoint))
    assert model.training
    assert model(dict(data))["forces"].requires_grad
    assert not model.eval()(dict(data))["forces"].requires_grad

    # .double() on a float32 nequip model fails at forward
    model.double()
    with pytest.raises(RuntimeError, match="dtype"):
        model(dict(data))
