"""DeePMD-kit models through difftre_torch: energies, forces and virial against DeePMD's own
``DeepPot`` (frozen .pth, training checkpoint, float64 and float32), batching, the DiffTRe and
force-matching gradients against central finite differences, writing back (DeepPot reloads the
refined weights; ``dp --pt freeze`` and ``dp --pt train --finetune`` accept the checkpoint), the
.pb route's message, and the config kind. The model is a real ``dp --pt train`` run
(``tiny_deepmd`` in conftest); the frames are the stand-in world's g-C3N4 cells."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("deepmd")

from difftre_torch.gradient import difftre_gradient  # noqa: E402
from difftre_torch.loss import observable_loss  # noqa: E402
from difftre_torch.observables import partial_rdfs  # noqa: E402
from difftre_torch.observables.thermo import pressure  # noqa: E402
from difftre_torch.potentials.base import evaluate  # noqa: E402
from difftre_torch.potentials.deepmd import DeepMDError, DeepMDPotential, load_deepmd  # noqa: E402
from difftre_torch.reweighting import reweighted_mean  # noqa: E402
from difftre_torch.sampling.store import SnapshotStore  # noqa: E402
from difftre_torch.testing import as_batch, dp_cli, tiny_deepmd_input  # noqa: E402

WORLD = Path(__file__).resolve().parents[1] / "data" / "world"


@pytest.fixture(scope="module")
def gcn_frames():
    """Two 56-atom and one 112-atom g-C3N4 frames (reality MD of the stand-in world)."""
    from difftre_torch.frames import read_frames_file as read_all_frames

    small = read_all_frames(WORLD / "heldout" / "train56.extxyz.gz")[:2]
    large = read_all_frames(WORLD / "heldout" / "cell112.extxyz.gz")[:1]
    return small, large


def deeppot(path, frames):
    """DeePMD's own DeepPot: energies [B], forces [B, N, 3], virials [B, 3, 3]."""
    from deepmd.infer import DeepPot

    dp = DeepPot(str(path))
    atype = [dp.get_type_map().index(s) for s in frames[0].get_chemical_symbols()]
    coord = np.stack([a.positions for a in frames]).reshape(len(frames), -1)
    box = np.stack([a.cell.array for a in frames]).reshape(len(frames), 9)
    e, f, v = dp.eval(coord, box, atype)[:3]
    return e.reshape(-1), f.reshape(len(frames), -1, 3), v.reshape(len(frames), 3, 3)


def assert_matches_deeppot(potential, path, frames, rtol):
    ev = evaluate(potential, *as_batch(frames), stress=True)
    e, f, v = deeppot(path, frames)
    np.testing.assert_allclose(ev.energy.detach().numpy(), e, rtol=rtol, atol=0)
    np.testing.assert_allclose(ev.forces.numpy(), f, rtol=0, atol=rtol * np.abs(f).max())
    np.testing.assert_allclose(ev.virial.numpy(), v, rtol=0, atol=rtol * np.abs(v).max())
    return ev


@pytest.mark.parametrize("which", ["pth", "checkpoint"])
def test_matches_deeppot_float64(which, tiny_deepmd, gcn_frames):
    ckpt, pth = tiny_deepmd
    potential = load_deepmd(pth if which == "pth" else ckpt)
    assert potential.source.format == {"pth": "torchscript", "checkpoint": "checkpoint"}[which]
    assert potential.type_map == ["C", "N"] and potential.r_max_A == 4.0
    for frames in gcn_frames:
        ev = assert_matches_deeppot(potential, pth, frames, rtol=1e-10)
        # DeePMD's own forces and virial equal our autograd of its energy (sign and volume of W = −Vσ)
        plain = evaluate(lambda x, h, z: potential(x, h, z), *as_batch(frames), stress=True)
        torch.testing.assert_close(plain.forces, ev.forces, rtol=0, atol=1e-12)
        torch.testing.assert_close(plain.stress, ev.stress, rtol=0, atol=1e-14)


DPA1 = {"type": "dpa1", "rcut": 4.0, "rcut_smth": 0.5, "sel": 40, "neuron": [4, 8], "axis_neuron": 4, "attn": 8,
        "attn_layer": 1, "attn_dotr": True, "precision": "float64", "seed": 1}


@pytest.mark.parametrize("kind", ["se_e2_a float32", "dpa1 float64"])
def test_models_built_here_match_deeppot(kind, tmp_path, gcn_frames):
    """Models made with DeePMD's get_model and frozen by torch.jit.script as dp freeze does
    (random weights): a float32 se_e2_a (float32 arithmetic inside, stated tolerance 1e-6
    relative) and a DPA-1 with one attention layer (float64, 1e-10)."""
    from deepmd.pt.model.model import get_model

    params = tiny_deepmd_input([], precision="float32")["model"]
    if kind.startswith("dpa1"):
        params = {**tiny_deepmd_input([])["model"], "descriptor": DPA1}
    torch.manual_seed(0)
    model = get_model(params)
    path = tmp_path / "built.pth"
    torch.jit.save(torch.jit.script(model.eval()), str(path), _extra_files={"data_modifier.pth": ""})
    potential = load_deepmd(path)
    for frames in gcn_frames:
        ev = assert_matches_deeppot(potential, path, frames, rtol=1e-6 if "float32" in kind else 1e-10)
        assert ev.energy.dtype == torch.float64


def test_batched_equals_separate_and_no_grad(tiny_deepmd, gcn_frames):
    potential = load_deepmd(tiny_deepmd[1])
    pos, cell, numbers = as_batch(gcn_frames[0])
    batched = potential(pos, cell, numbers)
    separate = torch.cat([potential(pos[b:b + 1], cell[b:b + 1], numbers) for b in range(len(pos))])
    torch.testing.assert_close(batched, separate, rtol=1e-12, atol=0)
    assert batched.requires_grad
    with torch.no_grad():
        quiet = potential(pos, cell, numbers)
    assert not quiet.requires_grad
    torch.testing.assert_close(quiet, batched.detach(), rtol=0, atol=0)
    # frames in groups (the CPU default for large batches) give what one call gives
    whole = evaluate(potential, pos, cell, numbers, stress=True)
    potential.cpu_atoms_per_call = pos.shape[1]  # one frame per call
    grouped = evaluate(potential, pos, cell, numbers, stress=True)
    for a, b in ((whole.energy, grouped.energy), (whole.forces, grouped.forces), (whole.stress, grouped.stress)):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-12, atol=1e-14)


def _direction(param, seed=0):
    return torch.randn(param.shape, generator=torch.Generator().manual_seed(seed), dtype=param.dtype)


def _central_difference(loss, param, direction, eps):
    with torch.no_grad():
        param += eps * direction
    plus = loss()
    with torch.no_grad():
        param -= 2 * eps * direction
    minus = loss()
    with torch.no_grad():
        param += eps * direction
    return (plus - minus) / (2 * eps)


def test_difftre_gradient_matches_finite_differences(tiny_deepmd, gcn_frames):
    """dL/dθ of a reweighted RDF + pressure loss through the chunked DiffTRe gradient (the
    pressure through DeePMD's own virial in training mode) against central differences."""
    potential = load_deepmd(tiny_deepmd[0])
    base = gcn_frames[0][0]
    frames = []
    for k in range(6):
        atoms = base.copy()
        atoms.rattle(0.05, seed=k)
        frames.append(atoms)
    pos, cell, numbers = as_batch(frames)
    with torch.no_grad():
        reference = potential(pos, cell, numbers)
    _, partials = partial_rdfs(pos, cell, numbers, 5.0, 25)
    rdf = partials[(6, 7)]
    store = SnapshotStore(numbers=numbers, positions=pos, cells=cell, reference_energies=reference,
                          temperature_K=300.0, pressure_GPa=0.0, observables={"rdf": rdf})
    rdf_target = rdf.mean(0) * 1.05
    p_target = torch.tensor(0.5, dtype=torch.float64)

    def chunk_fn(pot, positions, cells, z, _store, create_graph):
        return {"energy": pot(positions, cells, z),
                "pressure": pressure(pot, positions, cells, z, 300.0, create_graph=create_graph)}

    def loss_fn(weights, values):
        w, v = weights[0], values[0]
        a = observable_loss(reweighted_mean(w, v["rdf"]), rdf_target)
        b = observable_loss(reweighted_mean(w, v["pressure"]), p_target, torch.tensor(0.1, dtype=torch.float64))
        return a + b, {"rdf": a, "pressure": b}

    params = potential.trainable_parameters()
    name, param = max(potential.model.named_parameters(), key=lambda kv: kv[1].numel())
    with torch.no_grad():  # away from θ̃, so that the weights are not uniform
        for p in params:
            p += 0.05 * _direction(p, seed=1)
    result = difftre_gradient(potential, [store], loss_fn, params, chunk_fn=chunk_fn, chunk_size=4)
    assert 1.0 < result.n_eff[0] < 5.999
    direction = _direction(param)
    analytic = float((result.grads[[id(p) for p in params].index(id(param))] * direction).sum())

    def loss():
        return float(difftre_gradient(potential, [store], loss_fn, [param], chunk_fn=chunk_fn,
                                      chunk_size=6).loss)

    numeric = _central_difference(loss, param, direction, 1e-5)
    assert abs(analytic) > 1e-3, name
    assert analytic == pytest.approx(numeric, rel=1e-6)


def test_force_matching_gradient_matches_finite_differences(tiny_deepmd, gcn_frames):
    from difftre_torch.force_matching import ReferenceFrames, force_matching_gradient

    potential = load_deepmd(tiny_deepmd[1])
    reference = ReferenceFrames.from_atoms(gcn_frames[0])
    batch = [(0, np.arange(2))]
    params = potential.trainable_parameters()
    result = force_matching_gradient(potential, reference, batch, params, energy_weight=1.0, force_weight=1.0)
    name, param = max(potential.model.named_parameters(), key=lambda kv: kv[1].numel())
    direction = _direction(param, seed=2)
    analytic = float((result.grads[[id(p) for p in params].index(id(param))] * direction).sum())

    def loss():
        return float(force_matching_gradient(potential, reference, batch, [param]).loss)

    numeric = _central_difference(loss, param, direction, 1e-5)
    assert abs(analytic) > 1e-3, name
    assert analytic == pytest.approx(numeric, rel=1e-6)


def _refine_a_little(potential):
    with torch.no_grad():
        for p in potential.trainable_parameters():
            p += 0.05 * _direction(p, seed=3) * (p.abs().mean() + 1e-3)


@pytest.mark.parametrize("which", ["pth", "checkpoint"])
def test_written_model_reloads_in_deeppot_with_refined_weights(which, tiny_deepmd, gcn_frames, tmp_path):
    ckpt, pth = tiny_deepmd
    potential = load_deepmd(pth if which == "pth" else ckpt)
    frames = gcn_frames[0]
    before = evaluate(potential, *as_batch(frames)).energy.detach().numpy()
    _refine_a_little(potential)
    refined = evaluate(potential, *as_batch(frames), stress=True)
    assert np.abs(refined.energy.detach().numpy() - before).max() > 1e-3
    from difftre_torch.potentials.io import save_potential

    written = save_potential(potential, tmp_path / "refined")
    assert written == tmp_path / "refined.pth" and (tmp_path / "refined.ckpt.pt").exists()
    e, f, v = deeppot(written, frames)
    np.testing.assert_allclose(e, refined.energy.detach().numpy(), rtol=1e-10, atol=0)
    np.testing.assert_allclose(f, refined.forces.numpy(), rtol=0, atol=1e-10 * np.abs(f).max())
    # the checkpoint holds the same weights: read back through our loader and DeePMD's freeze
    again = load_deepmd(tmp_path / "refined.ckpt.pt")
    np.testing.assert_allclose(evaluate(again, *as_batch(frames)).energy.detach().numpy(), e, rtol=1e-10, atol=0)


def test_written_checkpoint_is_accepted_by_dp_freeze_and_finetune(tiny_deepmd, gcn_frames, tmp_path):
    ckpt, _ = tiny_deepmd
    potential = load_deepmd(ckpt)
    _refine_a_little(potential)
    frames = gcn_frames[0]
    refined = evaluate(potential, *as_batch(frames)).energy.detach().numpy()
    potential.write_back(tmp_path / "refined")
    dp_cli("--pt", "freeze", "-c", "refined.ckpt.pt", "-o", "frozen.pth", cwd=tmp_path)
    e, _, _ = deeppot(tmp_path / "frozen.pth", frames)
    np.testing.assert_allclose(e, refined, rtol=1e-10, atol=0)
    systems = [str(p) for p in (ckpt.parent / "data").iterdir()]
    (tmp_path / "input.json").write_text(json.dumps(tiny_deepmd_input(systems, steps=2)))
    dp_cli("--pt", "train", "input.json", "--finetune", "refined.ckpt.pt", cwd=tmp_path)
    assert (tmp_path / "model.ckpt-2.pt").exists()


def _tensorflow_backend() -> bool:
    try:
        import tensorflow  # noqa: F401
        from deepmd.tf.env import op_module  # noqa: F401
    except Exception:  # noqa: BLE001 - not installed, or DeePMD built without it
        return False
    return True


def test_pb_converted_matches_deeppot(tiny_deepmd, gcn_frames, tmp_path):
    """Where DeePMD's TensorFlow backend is installed: a ``dp --tf train`` + ``dp --tf freeze``
    model (.pb) loads through ``dp convert-backend`` with DeepPot(.pb)'s energies, forces and
    virial (float64)."""
    if not _tensorflow_backend():
        pytest.skip("DeePMD-kit's TensorFlow backend is not installed here (make setup builds the PyTorch one)")
    systems = [str(p) for p in (tiny_deepmd[0].parent / "data").iterdir()]
    (tmp_path / "input.json").write_text(json.dumps(tiny_deepmd_input(systems)))
    dp_cli("--tf", "train", "input.json", cwd=tmp_path)
    dp_cli("--tf", "freeze", "-o", "tiny.pb", cwd=tmp_path)
    potential = load_deepmd(tmp_path / "tiny.pb")
    assert (tmp_path / "tiny.converted.pth").exists()
    for frames in gcn_frames:
        assert_matches_deeppot(potential, tmp_path / "tiny.pb", frames, rtol=1e-10)


def test_pb_without_tensorflow_names_the_conversion(tmp_path):
    if _tensorflow_backend():
        pytest.skip("DeePMD-kit's TensorFlow backend is installed: the conversion itself runs")
    pb = tmp_path / "graph.pb"
    pb.write_bytes(b"\x00")
    with pytest.raises(DeepMDError, match=r"dp convert-backend graph.pb graph.converted.pth"):
        load_deepmd(pb)


def test_unknown_element_and_wrong_file(tiny_deepmd, gcn_frames, tmp_path):
    potential = load_deepmd(tiny_deepmd[1])
    pos, cell, _ = as_batch(gcn_frames[0])
    numbers = torch.full((pos.shape[1],), 8)
    with pytest.raises(ValueError, match=r"does not know element\(s\) O; its types are \['C', 'N'\]"):
        potential(pos, cell, numbers)
    swapped = load_deepmd(tiny_deepmd[1], chemical_species_to_type_map={"C": "N", "N": "C"})
    assert swapped.atom_types(torch.tensor([6, 7, 7])).tolist() == [1, 0, 0]
    with pytest.raises(ValueError, match=r"C maps to type 'X', which the model does not have"):
        load_deepmd(tiny_deepmd[1], chemical_species_to_type_map={"C": "X"})
    bad = tmp_path / "x.txt"
    bad.write_text("hello")
    with pytest.raises(DeepMDError, match="expected a DeePMD-kit model"):
        load_deepmd(bad)
    with pytest.raises(DeepMDError, match="not a DeePMD-kit PyTorch checkpoint"):
        torch.save({"weights": 1}, tmp_path / "other.pt")
        load_deepmd(tmp_path / "other.pt")
    assert isinstance(potential, DeepMDPotential)


def _deepmd_job(folder: Path, model: Path, frames_dir: Path, updates: int) -> Path:
    import yaml

    config = {
        "system": {"structure": str(WORLD / "structures" / "teacher_unit.extxyz")},
        "potential": {"kind": "deepmd", "path": str(model), "device": "cpu",
                      "correction": {"cutoff_A": 6.0, "centers_A": [3.0, 4.0, 5.0], "width_A": 0.75}},
        "sampler": {"kind": "batched", "timestep_fs": 0.5, "equilibration_steps": 4, "reequilibration_steps": 2,
                    "snapshots_per_replica": 4, "stride": 2, "min_distance_A": 0.5},
        "state_points": [{"name": "nvt", "temperature_K": 300.0, "replicas": 2}],
        "targets": [{"name": "a", "observable": "lattice_length", "file": str(WORLD / "experiment" / "lattice.json"),
                     "value_key": "a_A", "sigma_key": "a_err_A", "options": {"axes": "ab", "repeats": [1, 1, 1]}}],
        "force_matching": {"file": str(frames_dir)},
        "trainer": {"updates": updates, "learning_rate": 0.001, "force_matching_weight": 1.0, "fm_batch_frames": 2},
        "compare": {"n_blocks": 2},
        "evaluation": {"n_boot": 10},
        "output": {"dir": str(folder / "out")},
    }
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_config_kind_with_deepmd_data_named_by_the_model(tiny_deepmd, gcn_frames, tmp_path, capsys):
    """``potential: {kind: deepmd}`` with force matching on a deepmd/npy folder that has no
    type_map.raw: the types are named by the model's type_map."""
    from difftre_torch.cli import main
    from difftre_torch.testing import write_deepmd_npy

    (system,) = write_deepmd_npy(gcn_frames[0], tmp_path / "npy")
    (system / "type_map.raw").unlink()
    path = _deepmd_job(tmp_path, tiny_deepmd[1], tmp_path / "npy", updates=1)
    code = main(["check", str(path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "potential: deepmd + pair correction, 11 trainable parameters" in out
    assert "force matching: 2 labelled frames" in out
    bad = _deepmd_job(tmp_path, tmp_path / "missing.pth", tmp_path / "npy", updates=1)
    assert main(["check", str(bad)]) == 2
    assert "potential.path" in capsys.readouterr().err


def test_refine_end_to_end_writes_a_corrected_deepmd_model(tiny_deepmd, gcn_frames, tmp_path, capsys):
    """``difftre refine`` on a DeePMD base with a pair correction (one update, tiny MD): the
    refined model is the correction file beside a DeePMD base that DeepPot loads unchanged
    (the base is frozen), and it reads back through the deepmd kind with the refined energies."""
    from difftre_torch.cli import main
    from difftre_torch.potentials.registry import DeepMDOptions, load_deepmd_file
    from difftre_torch.testing import write_deepmd_npy

    write_deepmd_npy(gcn_frames[0], tmp_path / "npy")
    path = _deepmd_job(tmp_path, tiny_deepmd[1], tmp_path / "npy", updates=1)
    assert main(["refine", str(path)]) == 0, capsys.readouterr().err
    folder = tmp_path / "out" / "refine" / "lambda_1"
    refined = load_deepmd_file(folder / "refined_potential.correction.pt", DeepMDOptions(path="x.pth", device="cpu"))
    assert float(refined.correction.coefficients.detach().abs().sum()) > 0
    frames = gcn_frames[0]
    e_base, _, _ = deeppot(folder / "refined_potential.base.pth", frames)
    e_orig, _, _ = deeppot(tiny_deepmd[1], frames)
    np.testing.assert_allclose(e_base, e_orig, rtol=1e-12, atol=0)
    ev = evaluate(refined, *as_batch(frames))
    assert np.abs(ev.energy.detach().numpy() - e_orig).max() > 1e-6


def test_sampler_force_pass_uses_deepmd_own_derivatives(tiny_deepmd, gcn_frames):
    """The batched sampler's force pass (alone, and for a corrected DeePMD base over a
    precomputed pair list) equals the autograd pass of the same energy."""
    import functools

    from difftre_torch.neighbors import neighbor_pairs
    from difftre_torch.potentials.registry import CorrectionOptions, add_correction
    from difftre_torch.sampling.integrators import forces_and_stress

    potential = load_deepmd(tiny_deepmd[1])
    frames = gcn_frames[0]
    pos, cell, numbers = as_batch(frames)
    corrected = add_correction(potential, CorrectionOptions(cutoff_A=6.0, centers_A=[3.0, 4.0], width_A=0.7), frames[0])
    with torch.no_grad():
        corrected.correction.coefficients.copy_(torch.tensor([[0.01, -0.02]] * 3))
    pairs = neighbor_pairs(pos, cell, corrected.r_max_A + 0.5, full=True)
    for model, call in ((potential, potential), (corrected, functools.partial(corrected, pairs=pairs))):
        native_f, native_s = forces_and_stress(call, pos, cell, numbers, stress=True)
        plain_f, plain_s = forces_and_stress(lambda x, h, z: model(x, h, z), pos, cell, numbers, stress=True)
        torch.testing.assert_close(native_f, plain_f, rtol=0, atol=1e-12)
        torch.testing.assert_close(native_s, plain_s, rtol=0, atol=1e-14)


def test_deepmd_facts_of_the_module_docstring(tiny_deepmd, gcn_frames):
    """A frozen .pth loads in eval mode with every parameter requiring grad; DeePMD's forces
    carry a graph to θ in training mode only."""
    import deepmd.pt  # noqa: F401 - its compiled operators

    frozen = torch.jit.load(str(tiny_deepmd[1]))
    assert not frozen.training and all(p.requires_grad for p in frozen.parameters())
    pos, cell, numbers = as_batch(gcn_frames[0])
    potential = DeepMDPotential(frozen, list(frozen.get_type_map()))
    coord, box = pos.reshape(len(pos), -1), cell.reshape(len(pos), 9)
    atype = potential.atom_types(numbers).expand(len(pos), -1)
    assert not frozen(coord, atype, box=box)["force"].requires_grad
    frozen.train()
    assert frozen(coord, atype, box=box)["force"].requires_grad
