"""The start-structure check of :func:`difftre_torch.workflow.build.check_structure`: what it
refuses names the structure, the atoms (the file's 0-based indices) and the distance; what any
sampler can start from passes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from difftre_torch.config import ConfigError
from difftre_torch.workflow.build import check_structure

WHERE = "job.yaml: system.structure: start.extxyz"


def fcc_argon() -> Atoms:
    return bulk("Ar", "fcc", a=5.26, cubic=True).repeat((2, 2, 2))  # 32 atoms, nearest pair 3.72 Å


def refused(atoms: Atoms, min_distance_A: float = 1.5, copies: int = 1) -> str:
    with pytest.raises(ConfigError) as info:
        check_structure(atoms, WHERE, min_distance_A, copies)
    message = str(info.value)
    assert message.startswith(WHERE + ": ") and "\n" not in message
    return message


def test_a_crystal_passes():
    check_structure(fcc_argon(), WHERE, 1.5)


def test_close_pair_names_atoms_and_distance():
    atoms = fcc_argon()
    atoms.positions[9] = atoms.positions[2] + [0.0, 0.35, 0.0]
    message = refused(atoms)
    assert "atoms 2 and 9 are 0.350 Å apart" in message and "sampler.min_distance_A = 1.5 Å" in message


def test_close_pair_across_the_cell_boundary():
    """Minimum image: atom 0 at the origin, another 0.3 Å behind it, wrapped to the far face."""
    atoms = fcc_argon()
    atoms.positions[5] = atoms.positions[0] - [0.3, 0.0, 0.0]
    atoms.wrap()
    assert np.linalg.norm(atoms.positions[5] - atoms.positions[0]) > 10.0  # far apart inside the cell
    assert "atoms 0 and 5 are 0.300 Å apart" in refused(atoms)


def test_atom_close_to_its_own_image():
    atoms = Atoms("Ar2", positions=[[0.0, 0.0, 0.0], [0.5, 3.0, 3.0]], cell=[1.2, 6.0, 6.0], pbc=True)
    assert "its own periodic image are 1.200 Å apart" in refused(atoms)


def test_zero_min_distance_turns_the_pair_check_off():
    atoms = fcc_argon()
    atoms.positions[9] = atoms.positions[2] + [0.0, 0.35, 0.0]
    check_structure(atoms, WHERE, 0.0)


def test_one_atom_needs_a_repeat():
    primitive = bulk("Ar", "fcc", a=5.26)  # 1 atom; its images 3.72 Å away
    assert "holds 1 atom(s); expected at least 2" in refused(primitive)
    check_structure(primitive, WHERE, 1.5, copies=8)


def test_unknown_element_and_non_finite_position():
    atoms = fcc_argon()
    atoms.numbers[3] = 0
    assert "atom 3 has no known element" in refused(atoms)
    atoms = fcc_argon()
    atoms.positions[4, 1] = np.nan
    assert "atom 4 has a position that is not finite" in refused(atoms)


@pytest.mark.parametrize("pbc", [[True, True, False], [False, False, False]])
def test_not_periodic_in_3d(pbc):
    atoms = fcc_argon()
    atoms.pbc = pbc
    assert "periodic in 3D" in refused(atoms)


def test_cell_without_volume():
    atoms = fcc_argon()
    cell = atoms.cell.array.copy()
    cell[2] = cell[0] + cell[1]
    atoms.set_cell(cell)
    assert "volume of 0 Å³" in refused(atoms)


def test_levenberg_marquardt_on_too_many_parameters_stops_before_any_md():
    """`difftre refine` checks without loading models (load_models=False), but the step rule's size
    limit needs the model: it is built and the limit checked there, before the first sample."""
    import difftre_torch
    from difftre_torch.config import load_job
    from difftre_torch.workflow.build import check_job

    example = Path(difftre_torch.__file__).parent / "data" / "lj_argon" / "lj_argon.yaml"
    job = load_job(example, ["trainer.optimizer=levenberg_marquardt", "potential.trainable=[sigma, epsilon]",
                                "trainer.lm_max_parameters=1"])
    with pytest.raises(ConfigError, match="trainer.optimizer: levenberg_marquardt needs at most "
                                          "trainer.lm_max_parameters = 1 trainable entries, the potential has 2"):
        check_job(job, load_models=False)
    job = load_job(example, ["trainer.optimizer=levenberg_marquardt"])
    assert any("1 trainable parameters" in line for line in check_job(job, load_models=False))


def _lattice(name: str, value: float, point: str | None, observable: str = "lattice_length"):
    from difftre_torch.experiment.target import Target

    options = {"axes": "ab", "repeats": [1, 1, 1]} if observable == "lattice_length" else {"layers_per_cell": 2}
    values = [value, value] if observable == "lattice_length" else [value]
    return Target(name, observable, np.array(values), state_point=point, options=options)


def test_cell_targets_come_from_the_state_point_or_its_temperature():
    from difftre_torch.config.schema import StatePointEntry
    from difftre_torch.workflow.build import cell_at_targets, targets_for_cell

    points = [StatePointEntry("T150", 150.0, 1e-4), StatePointEntry("T300", 300.0, 1e-4),
              StatePointEntry("nvt", 300.0), StatePointEntry("nvt_own", 300.0)]
    targets = [_lattice("a_150", 7.05, "T150"), _lattice("a_300", 7.00, "T300"),
               _lattice("d_300", 3.57, "T300", "interlayer_spacing"), _lattice("a_own", 7.10, "nvt_own")]
    chosen = targets_for_cell(points[2], targets, points)
    assert [t.name for t in chosen] == ["a_300", "d_300"]   # the experiment at 300 K
    assert [t.name for t in targets_for_cell(points[3], targets, points)] == ["a_own"]
    atoms = Atoms("C", cell=[6.0, 6.0, 6.0], pbc=True)
    cell = cell_at_targets(atoms, chosen, "job.yaml").cell.lengths()
    assert cell == pytest.approx([7.00, 7.00, 2 * 3.57])
    with pytest.raises(ConfigError, match="ambiguous: targets 'a_150' and 'a_300'"):
        cell_at_targets(atoms, targets[:2], "job.yaml: state_points[2] (nvt).cell")
