"""The stand-in world's two ASE calculators: the PBE-level teacher and dispersion-corrected reality.

* teacher: CHGNet 0.3.0 (Deng et al., Nat. Mach. Intell. 5, 1031 (2023),
  doi:10.1038/s42256-023-00716-3), trained on Materials Project PBE/PBE+U trajectories (MPtrj);
  for C and N the labels are plain PBE. The weights ship inside the ``chgnet`` wheel, so nothing
  is fetched at run time.
* reality: teacher + DFT-D3(BJ) for PBE (Grimme et al., J. Comput. Chem. 32, 1456 (2011),
  doi:10.1002/jcc.21759) through simple-dftd3's ASE calculator, summed with ASE's SumCalculator.

Both return energy (eV), forces (eV/Å) and stress (eV/Å³, ASE sign convention: Voigt order
xx, yy, zz, yz, xz, xy; positive = tensile).
"""

from __future__ import annotations

import contextlib
import io
import os

from ase.calculators.calculator import Calculator


def _require(module: str, extra: str = "world"):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            f"the stand-in world needs '{module}': pip install -c constraints.txt -e '.[{extra}]'"
        ) from exc


def teacher(device: str | None = None) -> Calculator:
    """CHGNet 0.3.0 as an ASE calculator on ``device`` (default: CUDA when present, else CPU)."""
    dyn = _require("chgnet.model.dynamics")
    model_mod = _require("chgnet.model")
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    with contextlib.redirect_stdout(io.StringIO()):  # CHGNet prints its device on load
        model = model_mod.CHGNet.load(model_name="0.3.0", verbose=False, use_device=device)
        return dyn.CHGNetCalculator(model=model, use_device=device, on_isolated_atoms="ignore")


def dispersion() -> Calculator:
    """DFT-D3(BJ) with PBE parameters (simple-dftd3), energy/forces/stress in ASE units."""
    d3 = _require("dftd3.ase")
    return d3.DFTD3(method="PBE", damping="d3bj")


def reality(device: str | None = None) -> Calculator:
    """Teacher + D3(BJ) through ASE's SumCalculator."""
    from ase.calculators.mixing import SumCalculator

    return SumCalculator([teacher(device), dispersion()])


def make(name: str, device: str | None = None) -> Calculator:
    """``"teacher"`` or ``"reality"`` by name."""
    if name == "teacher":
        return teacher(device)
    if name == "reality":
        return reality(device)
    raise ValueError(f"unknown world calculator {name!r}; expected 'teacher' or 'reality'")


def set_threads(n: int | None = None) -> None:
    """Pin torch (and OpenMP) to ``n`` threads (env DIFFTRE_THREADS, default: leave as is)."""
    import torch

    n = n or int(os.environ.get("DIFFTRE_THREADS", "0"))
    if n > 0:
        torch.set_num_threads(n)
