"""Exporting refined NequIP models to LAMMPS ``pair_style nequip`` (difftre_torch.export.nequip).

Fast: compile_for_lammps's errors (one failing ``nequip-compile``, ~10 s); the pair correction
folded into a nequip checkpoint, loaded by nequip's own loader and evaluated against
base + correction as difftre_torch evaluates it (a second implementation) on 112-atom g-C3N4
frames; the type mapping. Slow (``-m slow``): ``nequip-compile --target pair_nequip`` of the
shipped base and of the folded model (~130 s each on 2 idle CPU cores, 160–630 s when another
process keeps a core busy), each .nequip.pt2 evaluated
with the inputs pair_nequip gives it and compared with its checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("nequip")

from difftre_torch.export.nequip import (  # noqa: E402
    LammpsExportError,
    compile_for_lammps,
    fold_correction,
    folded_terms,
)
from difftre_torch.potentials.base import evaluate  # noqa: E402
from difftre_torch.potentials.compiled import check_same_energies  # noqa: E402
from difftre_torch.potentials.correction import (  # noqa: E402
    CorrectedPotential,
    PairCorrection,
    PairCorrectionSpec,
    species_densities,
)
from difftre_torch.potentials.io import load_corrected, save_potential  # noqa: E402
from difftre_torch.potentials.nequip_files import load_nequip  # noqa: E402
from difftre_torch.potentials.types import type_table  # noqa: E402
from difftre_torch.testing import as_batch  # noqa: E402

WORLD = Path(__file__).resolve().parents[1] / "data" / "world"
BASE = WORLD / "base_model" / "base.ckpt"  # g-C3N4 (C, N), r_max 6 Å, float32
PAIR_NEQUIP_INPUTS = ["pos", "edge_index", "atom_types", "cell", "edge_cell_shift"]
PAIR_NEQUIP_OUTPUTS = ["atomic_energy", "forces", "virial"]


@pytest.fixture(scope="module")
def frames112():
    """Two 112-atom g-C3N4 frames (2×2×1 cells, c = 6.8 Å: atoms see their own images within
    the correction's 8 Å) as (positions, cells, numbers)."""
    from ase.io import read

    return as_batch(read(WORLD / "heldout" / "cell112.extxyz.gz", ":2"))


@pytest.fixture(scope="module")
def refined(tmp_path_factory, frames112):
    """A refined model as save_potential writes it: ``refined.base.ckpt`` (the base) and
    ``refined.correction.pt`` (random coefficients, non-zero shifts and mean-field term)."""
    _, cells, numbers = frames112
    volume = float(torch.linalg.det(cells[0]).abs())
    spec = PairCorrectionSpec(species=[6, 7], reference_densities_per_A3=species_densities(numbers, volume, [6, 7]))
    correction = PairCorrection(spec)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        correction.coefficients.copy_(0.02 * torch.randn(correction.coefficients.shape, generator=generator,
                                                         dtype=torch.float64))
        correction.shifts.copy_(torch.tensor([0.05, -0.03], dtype=torch.float64))
    folder = tmp_path_factory.mktemp("refined")
    path = save_potential(CorrectedPotential(load_nequip(BASE), correction), folder / "refined")
    return folder / "refined.base.ckpt", path


def _assert_same_stress(reference, other, frames, atol_eV_A3: float = 1e-6) -> None:
    a = evaluate(reference, *frames, forces=False, stress=True).stress
    b = evaluate(other, *frames, forces=False, stress=True).stress
    assert (a - b).abs().max() <= atol_eV_A3


# ----------------------------------------------------------------------------- compile_for_lammps


def test_compile_for_lammps_names_the_file_and_quotes_stderr(tmp_path):
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(LammpsExportError) as info:
        compile_for_lammps(broken, tmp_path / "out.nequip.pt2")
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert str(broken) in message and "--target pair_nequip" in message and "stderr" in message
    assert "Error" in message.split("stderr:", 1)[1]  # nequip-compile's own last lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.ckpt"]  # no partial output left


def test_compile_for_lammps_checks_its_arguments_first(tmp_path):
    with pytest.raises(ValueError, match=r"\.nequip\.pt2"):
        compile_for_lammps(BASE, tmp_path / "model.pt2")
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        compile_for_lammps(tmp_path / "missing.ckpt", tmp_path / "model.nequip.pt2")


# ----------------------------------------------------------------------------- folding, eager


def test_folded_checkpoint_is_base_plus_correction(refined, frames112, tmp_path):
    base_file, correction_file = refined
    folded_file = fold_correction(base_file, correction_file, tmp_path / "folded.ckpt")
    reference = load_corrected(correction_file, load_nequip)  # how difftre_torch evaluates it
    folded = load_nequip(folded_file)  # nequip's load_saved_model, eager
    metadata = folded.model.metadata
    assert float(metadata["r_max"]) == 8.0 and "per_edge_type_cutoff" not in metadata
    assert metadata["type_names"] == "C N"
    # the correction is not small on these frames, so agreement means something
    base = evaluate(reference.base, *frames112, forces=True)
    full = evaluate(reference, *frames112, forces=True)
    assert (full.energy - base.energy).abs().min() > 1.0 and (full.forces - base.forces).abs().max() > 0.05
    agreement = check_same_energies(reference, folded, *frames112)  # float32 tolerance
    assert agreement.max_abs_energy_eV / frames112[0].shape[1] < 1e-7 and agreement.max_abs_force_eV_A < 1e-5
    _assert_same_stress(reference, folded, frames112)
    # weights, EMA weights included, are the base's
    stored = torch.load(folded_file, map_location="cpu", weights_only=False)["state_dict"]
    original = torch.load(base_file, map_location="cpu", weights_only=False)["state_dict"]
    same = lambda a, b: torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b  # noqa: E731
    assert stored.keys() == original.keys() and all(same(stored[k], original[k]) for k in stored)


def test_folded_terms_map_species_to_model_types():
    spec = PairCorrectionSpec(species=[7, 6], centers_A=[3.0, 5.0])  # species order ≠ type order
    correction = PairCorrection(spec)
    with torch.no_grad():
        correction.coefficients.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]))  # NN, NC, CC
        correction.shifts.copy_(torch.tensor([0.7, 0.6]))
    terms = folded_terms(correction, ["C", "N"], type_table(["C", "N"], None, "test"))
    assert terms["pair_coefficients_eV"] == [[[5.0, 6.0], [3.0, 4.0]], [[3.0, 4.0], [1.0, 2.0]]]
    assert terms["per_type_energy_eV"] == pytest.approx([0.6, 0.7])
    carbon_only = PairCorrection(PairCorrectionSpec(species=[6]))
    with pytest.raises(ValueError, match=r"\['N'\] have no species"):
        folded_terms(carbon_only, ["C", "N"], type_table(["C", "N"], None, "test"))


# ----------------------------------------------------------------------------- compiled (slow)


def _check_pair_nequip_model(path: Path, r_max_A: float) -> None:
    """The metadata as pair_nequip reads it (AOTIModelPackageLoader::get_metadata): its cutoff,
    type names split on spaces, no per-edge-type cutoffs, the pair_nequip inputs and outputs."""
    metadata = torch._inductor.aoti_load_package(str(path)).get_metadata()
    assert float(metadata["r_max"]) == r_max_A and metadata["type_names"].split() == ["C", "N"]
    assert "per_edge_type_cutoff" not in metadata
    assert metadata["nequip_aoti_inputs"].split() == PAIR_NEQUIP_INPUTS
    assert metadata["nequip_aoti_outputs"].split() == PAIR_NEQUIP_OUTPUTS


@pytest.mark.slow
def test_compiled_base_matches_its_checkpoint(frames112, tmp_path):
    """nequip-compile --target pair_nequip of base.ckpt: ~130 s on 2 CPU cores."""
    out = compile_for_lammps(BASE, tmp_path / "base.nequip.pt2")
    _check_pair_nequip_model(out, 6.0)
    compiled = load_nequip(out)  # nequip's loader, the keys from the metadata
    eager = load_nequip(BASE)
    agreement = check_same_energies(eager, compiled, *frames112)
    assert agreement.max_abs_energy_eV / frames112[0].shape[1] < 1e-7 and agreement.max_abs_force_eV_A < 1e-5
    _assert_same_stress(eager, compiled, frames112)


@pytest.mark.slow
def test_compiled_folded_model_is_base_plus_correction(refined, frames112, tmp_path):
    """fold_correction then nequip-compile --target pair_nequip: ~130 s on 2 CPU cores."""
    base_file, correction_file = refined
    folded_file = fold_correction(base_file, correction_file, tmp_path / "folded.ckpt")
    out = compile_for_lammps(folded_file, tmp_path / "folded.nequip.pt2")
    _check_pair_nequip_model(out, 8.0)
    compiled = load_nequip(out)
    reference = load_corrected(correction_file, load_nequip)
    agreement = check_same_energies(reference, compiled, *frames112)
    assert agreement.max_abs_energy_eV / frames112[0].shape[1] < 1e-7 and agreement.max_abs_force_eV_A < 1e-5
    _assert_same_stress(reference, compiled, frames112)
