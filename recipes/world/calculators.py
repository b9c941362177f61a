"""The stand-in world's two ASE calculators: the PBE-level teacher and dispersion-corrected reality.

* teacher: CHGNet 0.3.0 (Deng et al., Nat. Mach. Intell. 5, 1031 (2023),
  doi:10.1038/s42256-023-00716-3), trained on Materials Project PBE/PBE+U trajectories (MPtrj);
  for C and N the labels are plain PBE. The weights ship inside the ``chgnet`` wheel, so nothing
  is fetched at run time.
* reality: teacher + DFT-D3(BJ) for PBE (Grimme et al., J. Comput. Chem. 32, 1456 (2011),
  doi:10.1002/jcc.21759) through simple-dftd3's ASE calculator, summed with ASE's SumCalculator.

Both return energy (eV), forces (eV/Å) and stress (eV/Å³, ASE sign convention: Voigt order
xx, yy, zz, yz, xz, xy; positive = tensile).

Speed: CHGNet's ``_compute`` takes the forces and the stress with two ``torch.autograd.grad``
calls, each with ``create_graph=True`` (what training on forces needs). For MD neither the second
backward nor the double-backward graph is needed: :func:`one_backward` makes the teacher take
both gradients in one backward pass without a graph (the same derivatives: equal to CHGNet's own
to float32 round-off, measured 1.4e-5 eV/Å and 1e-7 eV/Å³ on a rattled 112-atom cell). Measured
on that cell, one thread on a shared 2-core machine: 2.08 s → 1.04 s per force + stress call.
``teacher(fast=False)`` gives CHGNet untouched.
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


def one_backward(model) -> None:
    """Make ``model`` (a CHGNet) take ∂E/∂x and ∂E/∂ε in one backward pass without a graph.

    Its ``_compute`` is wrapped (on this instance only): while it runs, ``torch.autograd.grad``
    is replaced by a function that, asked for the gradient with respect to the graph's atom
    positions, computes the positions' and the strains' gradients together and hands the
    strains' out on the next call; any other call goes to torch unchanged. The original
    ``torch.autograd.grad`` is restored when ``_compute`` returns or raises. Inference only:
    the results carry no graph, so a loss on forces cannot be trained through them."""
    import torch

    compute = model._compute
    torch_grad = torch.autograd.grad

    def _compute(g, **kwargs):
        cache: dict = {}

        def grad(outputs, inputs, *args, **options):
            if inputs is g.atom_positions:
                strains = [s for s in g.strains if s.requires_grad] if hasattr(g, "strains") else []
                both = torch_grad(outputs, [*inputs, *strains])
                cache["strains"] = both[len(inputs):] if len(strains) == len(g.strains) else None
                return both[: len(inputs)]
            if getattr(g, "strains", None) is not None and inputs is g.strains and cache.get("strains") is not None:
                return cache.pop("strains")
            return torch_grad(outputs, inputs, *args, **options)

        torch.autograd.grad = grad
        try:
            return compute(g, **kwargs)
        finally:
            torch.autograd.grad = torch_grad

    model._compute = _compute


def teacher(device: str | None = None, fast: bool = True) -> Calculator:
    """CHGNet 0.3.0 as an ASE calculator on ``device`` (default: CUDA when present, else CPU);
    ``fast``: forces and stress in one backward (:func:`one_backward`)."""
    dyn = _require("chgnet.model.dynamics")
    model_mod = _require("chgnet.model")
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    with contextlib.redirect_stdout(io.StringIO()):  # CHGNet prints its device on load
        model = model_mod.CHGNet.load(model_name="0.3.0", verbose=False, use_device=device)
        if fast:
            one_backward(model)
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
