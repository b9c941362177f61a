"""The sections of a difftre job config, as typed dataclasses (the one home of every setting).

A job file (YAML or TOML; paths relative to the file) has these sections::

    system:         the simulated cell: a structure file and a repeat
    potential:      {kind: nequip | lennard_jones | ..., <the kind's options>, trainable,
                     correction: {...}}  (registry: difftre_torch.potentials.registry)
    sampler:        {kind: batched | ase, <SamplerConfig fields>}
    state_points:   [{name, temperature_K, pressure_GPa, replicas, cell, refine, compare}]
    targets:        what the refinement fits: experiment files or values, each observable's
                    options checked against its options dataclass
    force_matching: labelled (DFT) frames for λ · L_FM; λ is trainer.force_matching_weight,
                    `scan` lists further λ to refine with
    trainer:        TrainerConfig fields (difftre_torch.trainer)
    compare:        the structure comparison (objective 1): blocks, extra report-only targets
    evaluation:     labelled frame sets (any cell size) to evaluate every model on; optional
                    interlayer binding curve and pair-correction ceiling
    report:         title, acceptance checks
    output:         {dir}

Units are ASE's (Å, eV, fs, K, amu; GPa at interfaces). The field docs below (``metadata["doc"]``)
are what ``docs/config.md`` lists (:mod:`difftre_torch.config.reference`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


def doc(text: str, **kwargs) -> Any:
    """A dataclass field with its documentation (unit, meaning) in ``metadata["doc"]``."""
    return field(metadata={"doc": text}, **kwargs)


def require(name: str, ok: bool, expected: str, value: Any) -> None:
    """ValueError ``"<name>: expected <expected>, got <value>"`` unless ``ok`` (the config layer
    puts the section's path in front of ``name``)."""
    if not ok:
        raise ValueError(f"{name}: expected {expected}, got {value!r}")


def named(name: str, value: Any) -> None:
    """``value`` is a non-empty name (no leading or trailing spaces)."""
    require(name, isinstance(value, str) and value.strip() == value and value != "",
            "a non-empty name without leading or trailing spaces", value)


@dataclass
class SystemSection:
    """The simulated cell."""

    structure: str = doc("structure file (anything ase.io reads: extxyz, POSCAR, cif, LAMMPS data, …); "
                         "periodic in 3D, cell vectors as rows")
    repeat: list[int] = doc("repeat of the structure along a, b, c", default_factory=lambda: [1, 1, 1])
    index: int = doc("which frame of a multi-frame file (Python index; -1: the last)", default=-1)

    def __post_init__(self) -> None:
        require("structure", bool(self.structure.strip()), "a file name", self.structure)
        if len(self.repeat) != 3 or min(self.repeat) < 1:
            raise ValueError(f"repeat: expected three integers >= 1, got {self.repeat}")


@dataclass
class PotentialSection:
    """The model: ``kind`` picks an entry of :data:`difftre_torch.potentials.registry.POTENTIALS`;
    the kind's own options sit beside it (checked against that kind's options dataclass)."""

    kind: str = doc("the model family: lennard_jones, nequip, …")
    options: Any = doc("the kind's options (written beside `kind`, not under this name)", default=None)
    trainable: list[str] | None = doc("names of the parameters DiffTRe moves (null: all)", default=None)
    correction: Any = doc("a learnable pair correction added on top of the model (CorrectionOptions); "
                          "null: DiffTRe moves the model's own weights", default=None)


@dataclass
class StatePointEntry:
    """A thermodynamic state the model is sampled at."""

    name: str = doc("unique name, referred to by targets and checks")
    temperature_K: float = doc("temperature (K)")
    pressure_GPa: float | None = doc("pressure (GPa) for NPT; null: NVT", default=None)
    replicas: int = doc("independent MD replicas", default=1)
    cell: Literal["start", "targets"] = doc(
        "NVT cell: 'start' (the structure's) or 'targets' (scaled so the lattice targets hold at "
        "their experimental values: NVT at the experiment's cell)", default="start")
    refine: bool = doc("sampled by the refinement", default=True)
    compare: bool = doc("sampled by the structure comparison", default=True)

    def __post_init__(self) -> None:
        named("name", self.name)
        if not self.temperature_K > 0:
            raise ValueError(f"temperature_K must be > 0, got {self.temperature_K}")
        if self.replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {self.replicas}")
        if self.cell == "targets" and self.pressure_GPa is not None:
            raise ValueError("cell: targets fixes the cell, so it needs NVT (pressure_GPa: null)")

    def state_point(self):
        from difftre_torch.sampling.base import StatePoint

        return StatePoint(self.name, self.temperature_K, self.pressure_GPa, self.replicas)


@dataclass
class TargetEntry:
    """One experimental quantity: from a file (.gr/.sq/.fq, CSV/text columns, or a JSON of
    scalars) or from inline values."""

    name: str = doc("unique name of the target")
    observable: str = doc("registry key: rdf, G, S, F, lattice_length, interlayer_spacing, density, "
                          "pressure, stress, …")
    file: str | None = doc("experiment file; .json: scalars read by `value_key`/`sigma_key`", default=None)
    function: str | None = doc("what a column file holds (rdf, G, S, F); must agree with a .gr header",
                               default=None)
    value_key: str | None = doc("JSON file: the key of the value", default=None)
    sigma_key: str | None = doc("JSON file: the key of its standard error", default=None)
    values: list[float] | None = doc("inline values (instead of a file)", default=None)
    sigma: list[float] | None = doc("inline standard errors", default=None)
    x: list[float] | None = doc("inline grid (Å or Å⁻¹) for function targets", default=None)
    x_range: list[float] | None = doc("[min, max] of the grid kept (Å or Å⁻¹)", default=None)
    use_sigma: bool = doc("weight bins by 1/σ² (false: ignore the file's σ)", default=True)
    sigma_floor: float = doc("added to σ in quadrature (same unit as the values)", default=0.0)
    weight: float = doc("weight of this term in the loss", default=1.0)
    state_point: str | None = doc("state point whose ensemble it refers to (null: every one that "
                                  "can measure it)", default=None)
    options: dict[str, Any] = doc("the observable's options (checked against its options dataclass)",
                                  default_factory=dict)

    def __post_init__(self) -> None:
        named("name", self.name)
        if self.file is None and self.values is None:
            raise ValueError("give either `file` or `values`")
        if self.file is not None and self.values is not None:
            raise ValueError("give `file` or `values`, not both")
        if self.x_range is not None and (len(self.x_range) != 2 or self.x_range[0] >= self.x_range[1]):
            raise ValueError(f"x_range: expected [min, max] with min < max, got {self.x_range}")
        for name in ("sigma_floor", "weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: expected a number >= 0, got {getattr(self, name)}")
        if self.values is not None:
            require("values", len(self.values) >= 1, "at least one value", self.values)
            for name in ("sigma", "x"):
                given = getattr(self, name)
                require(name, given is None or len(given) == len(self.values),
                        f"one per value ({len(self.values)})", given)
            require("sigma", self.sigma is None or all(s > 0 for s in self.sigma), "standard errors > 0",
                    self.sigma)
            require("x", self.x is None or all(b > a for a, b in zip(self.x, self.x[1:])),
                    "an increasing grid", self.x)
        # fields that would be silently ignored for this kind of source are errors
        json_file = self.file is not None and self.file.lower().endswith(".json")
        for name in ("value_key", "sigma_key"):
            if getattr(self, name) is not None and not json_file:
                raise ValueError(f"{name}: only for a .json file of scalars (the key to read), not for "
                                 f"{'inline values' if self.file is None else self.file}")
        for name in ("function", "x_range"):
            if json_file and getattr(self, name) is not None:
                raise ValueError(f"{name}: not for a .json file of scalars ({self.file})")
        for name in ("x", "sigma"):
            if self.file is not None and getattr(self, name) is not None:
                raise ValueError(f"{name}: only with inline `values`; {self.file} gives its own")


@dataclass
class ForceMatchingSection:
    """Labelled reference frames (DFT) for the force-matching term λ · L_FM."""

    file: str = doc("frames with energy (eV) and forces (eV/Å): extxyz or anything ase.io reads, or a "
                    "folder of DeePMD-kit deepmd/npy or deepmd/raw systems")
    scan: list[float] = doc("further force-matching weights λ, each refined as its own model "
                            "(the main λ is trainer.force_matching_weight)", default_factory=list)
    type_map: list[str] | None = doc("element symbols of DeePMD data types in type order, where the "
                                     "systems have no type_map.raw (null: theirs, else a DeePMD model's)",
                                     default=None)
    max_frames: int | None = doc("use a random subset of this many frames (null: all)", default=None)
    seed: int = doc("seed of that subset", default=0)

    def __post_init__(self) -> None:
        require("file", bool(self.file.strip()), "a file name", self.file)
        require("scan", all(x >= 0 for x in self.scan), "weights λ >= 0", self.scan)
        require("max_frames", self.max_frames is None or self.max_frames >= 1, "a frame count >= 1 or null",
                self.max_frames)
        require("type_map", self.type_map is None or (len(self.type_map) > 0 and all(
            isinstance(t, str) and t.strip() for t in self.type_map)), "a list of element symbols", self.type_map)


@dataclass
class CompareSection:
    """The structure comparison: each model sampled at the `compare` state points, its averages
    against the targets (R_w, χ²/bin with block errors)."""

    n_blocks: int = doc("blocks per replica for the model's standard errors", default=5)
    targets: list[TargetEntry] | None = doc("targets to report (null: the refinement's)", default=None)

    def __post_init__(self) -> None:
        if self.n_blocks < 2:
            raise ValueError(f"n_blocks must be >= 2, got {self.n_blocks}")


@dataclass
class FrameSetEntry:
    """Labelled frames to evaluate every model on (any cell size)."""

    name: str = doc("name in the report")
    file: str = doc("frames (extxyz or anything ase.io reads)")
    references: dict[str, str] = doc(
        "reference name → where its labels are: 'label' (the frame's energy/forces/stress) or a prefix "
        "P (info P_energy, arrays P_forces, info P_stress)", default_factory=lambda: {"reference": "label"})

    def __post_init__(self) -> None:
        named("name", self.name)
        if not self.references:
            raise ValueError("references: give at least one")
        for name, where in self.references.items():
            named("references", name)
            require("references", where == "label" or (bool(where) and where.strip() == where),
                    f"'label' or a prefix for {name!r}", where)


@dataclass
class BindingSection:
    """Interlayer binding curve of a layered structure: rigid layers moved apart along c at a
    fixed in-plane cell, ΔE(d) = [E(d) − E(d_ref)]/N in meV/atom."""

    structure: str = doc("the layered cell (layers stacked along its third cell vector)")
    spacings_A: list[float] = doc("interlayer spacings d (Å)")
    layers: int = doc("layers in the cell", default=2)
    reference_spacing_A: float = doc("d_ref (Å)", default=8.0)
    references: str | None = doc("JSON with reference curves: spacing_A and <name>_meV_per_atom lists",
                                 default=None)

    def __post_init__(self) -> None:
        require("spacings_A", len(self.spacings_A) >= 1 and all(d > 0 for d in self.spacings_A),
                "at least one spacing, each > 0 Å", self.spacings_A)
        require("layers", self.layers >= 1, "an integer >= 1", self.layers)
        require("reference_spacing_A", self.reference_spacing_A > 0, "a spacing > 0 Å", self.reference_spacing_A)


@dataclass
class CeilingSection:
    """For a pair-corrected model: the correction's coefficients fitted by least squares straight
    to a reference's forces on the frame sets (even frames), errors on the odd frames: the best
    this correction form can do (a diagnostic; refinement never sees these labels)."""

    reference: str = doc("reference (of evaluation.sets[].references) whose forces are fitted")
    relative_to: str | None = doc("another reference: the RMS of its force difference to `reference` "
                                  "is reported beside", default=None)
    sets: list[str] | None = doc("frame sets used (null: all with that reference)", default=None)


@dataclass
class EvaluationSection:
    """Every model (base and refined) against labelled frames."""

    sets: list[FrameSetEntry] = doc("the frame sets", default_factory=list)
    n_boot: int = doc("bootstrap resamples of the 95 % intervals", default=1000)
    binding: BindingSection | None = doc("interlayer binding curve (layered materials)", default=None)
    ceiling: CeilingSection | None = doc("pair-correction ceiling (models with `correction`)", default=None)

    def __post_init__(self) -> None:
        if self.n_boot < 1:
            raise ValueError(f"n_boot: expected an integer >= 1, got {self.n_boot}")


@dataclass
class CheckEntry:
    """One acceptance check of the report (see difftre_torch.workflow.checks for the kinds)."""

    kind: str = doc("r_w_cut, within, predicted, errors_better, errors_not_worse, rise_at_most, "
                    "ceiling_fraction, binding_depth, binding_position")
    target: str | None = doc("target name (r_w_cut, within, predicted)", default=None)
    state_point: str | None = doc("state point (r_w_cut, within, predicted)", default=None)
    threshold: float = doc("the bound: fraction for r_w_cut, rise_at_most and ceiling_fraction; the value's "
                           "unit for within; combined standard errors for predicted; meV/atom for "
                           "binding_depth; Å for binding_position", default=0.0)
    reference: str | None = doc("reference name (errors_*, rise_at_most, ceiling_fraction; the reference "
                                "curve for binding_*)", default=None)
    metric: str = doc("error metric (errors_*, rise_at_most)", default="forces_rmse_meV_per_A")
    sets: list[str] | None = doc("frame sets (errors_*, rise_at_most, ceiling_fraction; null: all)", default=None)
    min_atoms: int = doc("only sets with more atoms than this (errors_*, ceiling_fraction)", default=0)
    intervals_apart: bool = doc("errors_better: the 95 % intervals must not overlap too", default=False)

    def __post_init__(self) -> None:
        require("min_atoms", self.min_atoms >= 0, "an integer >= 0", self.min_atoms)
        if self.kind == "r_w_cut":
            require("threshold", 0 <= self.threshold < 1, "a fraction in [0, 1) (the R_w cut: 1 − refined/base)",
                    self.threshold)
        elif self.kind in ("within", "rise_at_most", "predicted", "binding_depth", "binding_position",
                           "ceiling_fraction"):
            require("threshold", self.threshold >= 0, "a bound >= 0", self.threshold)


@dataclass
class ReportSection:
    title: str = doc("first line of REPORT.md", default="DiffTRe refinement against experiment")
    checks: list[CheckEntry] = doc("acceptance checks, each measured and reported", default_factory=list)


@dataclass
class OutputSection:
    dir: str = doc("output folder (relative to the working directory)", default="outputs/difftre")

    def __post_init__(self) -> None:
        require("dir", bool(self.dir.strip()), "a folder name", self.dir)
