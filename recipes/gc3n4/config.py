"""The g-C3N4 recipe's configuration: ``config.yaml`` read into typed sections.

The file has shared sections and two override sections, ``quick`` (CPU) and ``full`` (GPU);
``load(path, quick)`` deep-merges the chosen one over the shared ones. Unknown sections or
fields are errors that name the file and the field. Units: Å, eV, fs, K, GPa.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).with_name("config.yaml")
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Paths:
    """Inputs (the shipped world) and the output directory; relative to the repository root."""

    model: str
    structure: str
    experiment: str
    heldout: str
    teacher_train: str
    teacher_test: str
    binding: str
    out: str


@dataclass
class System:
    """The simulated cell and state: ``cell`` names a supercell of recipes.world.structures."""

    cell: str = "cell112"
    repeats: list[int] = field(default_factory=lambda: [2, 2, 1])
    layers_per_unit: int = 2
    temperature_K: float = 300.0
    pressure_GPa: float = 1e-4


@dataclass
class Model:
    dtype: str = "float32"
    device: str = "auto"


@dataclass
class Experiment:
    """Which published files to fit: ``total`` (a .gr G(r)) in ``fit_r_A``; lattice a and the
    interlayer spacing (not |c|, which drifts as layers slide)."""

    total: str = "neutron.gr"
    fit_r_A: list[float] = field(default_factory=lambda: [1.0, 10.0])
    report_r_A: list[float] = field(default_factory=lambda: [1.0, 20.0])
    lattice: str = "lattice.json"
    lattice_weight: float = 1.0
    total_weight: float = 1.0
    sigma_floor: float = 0.0


@dataclass
class Sampler:
    """MD for every sample (ASE units); ``kind``: "batched" or "ase"; replicas per state point."""

    kind: str = "batched"
    timestep_fs: float = 1.0
    friction_per_fs: float = 0.01
    barostat_tau_fs: float = 500.0
    equilibration_steps: int = 2000
    reequilibration_steps: int = 300
    snapshots_per_replica: int = 100
    stride: int = 10
    replicas: int = 4
    min_distance_A: float = 0.8
    seed: int = 0


@dataclass
class Compare:
    n_blocks: int = 5


@dataclass
class Trainer:
    """Fields of :class:`difftre_torch.trainer.TrainerConfig` the recipe sets."""

    updates: int = 40
    learning_rate: float = 5e-4
    adam_betas: list[float] = field(default_factory=lambda: [0.0, 0.5])
    lr_schedule: str = "cosine"
    resample_ratio: float = 0.6
    chunk_size: int = 25
    fm_batch_frames: int = 8
    grad_clip_norm: float | None = None
    seed: int = 0
    select: str = "best"
    select_min_n_eff_ratio: float = 0.9


@dataclass
class Refine:
    """λ of the force-matching term (L_FM in eV²/Å²) for the main model, and the λ scan.

    ``parameters``: what DiffTRe moves. "correction": a pair correction ΔU added to the frozen
    base (:mod:`difftre_torch.potentials.correction`; ``correction`` holds its cutoff_A,
    centers_A, width_A); "model": every weight of the base; "both": the two together."""

    force_matching_weight: float = 1000.0
    lambda_scan: list[float] = field(default_factory=list)
    parameters: str = "correction"
    correction: dict = field(default_factory=dict)


@dataclass
class Transfer:
    n_boot: int = 1000
    binding_spacings_A: list[float] = field(default_factory=lambda: [3.0, 3.3, 3.6, 4.0, 5.0])


@dataclass
class RecipeConfig:
    paths: Paths
    system: System
    model: Model
    experiment: Experiment
    sampler: Sampler
    compare: Compare
    trainer: Trainer
    refine: Refine
    transfer: Transfer
    mode: str = "full"
    source: str = "<dict>"

    def path(self, name: str) -> Path:
        """``paths.<name>`` resolved against the repository root."""
        p = Path(getattr(self.paths, name))
        return p if p.is_absolute() else ROOT / p

    def to_json(self) -> dict:
        return asdict(self)


SECTIONS = {"paths": Paths, "system": System, "model": Model, "experiment": Experiment,
            "sampler": Sampler, "compare": Compare, "trainer": Trainer, "refine": Refine,
            "transfer": Transfer}


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse(data: dict, quick: bool = False, source: str = "<dict>", overrides: dict | None = None) -> RecipeConfig:
    """A :class:`RecipeConfig` from the raw mapping: shared sections, then the ``quick``/``full``
    section, then ``overrides`` (a nested mapping of sections), each over the one before."""
    unknown = sorted(set(data) - set(SECTIONS) - {"quick", "full"})
    if unknown:
        raise ValueError(f"{source}: unknown section(s) {unknown}; expected {sorted(SECTIONS)}, quick, full")
    mode = "quick" if quick else "full"
    merged = _merge({k: v for k, v in data.items() if k in SECTIONS}, data.get(mode) or {})
    merged = _merge(merged, overrides or {})
    sections = {}
    for name, cls in SECTIONS.items():
        raw = dict(merged.get(name) or {})
        known = {f.name for f in fields(cls)}
        bad = sorted(set(raw) - known)
        if bad:
            raise ValueError(f"{source}: {name}: unknown field(s) {bad}; expected some of {sorted(known)}")
        try:
            sections[name] = cls(**raw)
        except TypeError as exc:
            raise ValueError(f"{source}: {name}: {exc}") from None
    config = RecipeConfig(**sections, mode=mode, source=source)
    if config.sampler.kind not in ("batched", "ase"):
        raise ValueError(f"{source}: sampler.kind must be 'batched' or 'ase', got {config.sampler.kind!r}")
    if config.trainer.select not in ("best", "last"):
        raise ValueError(f"{source}: trainer.select must be 'best' or 'last', got {config.trainer.select!r}")
    if config.refine.parameters not in ("correction", "model", "both"):
        raise ValueError(f"{source}: refine.parameters must be 'correction', 'model' or 'both', "
                         f"got {config.refine.parameters!r}")
    bad = sorted(set(config.refine.correction) - {"cutoff_A", "centers_A", "width_A"})
    if bad:
        raise ValueError(f"{source}: refine.correction: unknown field(s) {bad}; expected some of "
                         "['centers_A', 'cutoff_A', 'width_A']")
    if config.model.dtype not in ("float32", "float64"):
        raise ValueError(f"{source}: model.dtype must be 'float32' or 'float64', got {config.model.dtype!r}")
    return config


def load(path: str | Path = DEFAULT_CONFIG, quick: bool = False, overrides: dict | None = None) -> RecipeConfig:
    """Read ``path`` (YAML), apply the mode's overrides, then ``overrides`` (a nested mapping)."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"recipe config {path} does not exist")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return parse(data, quick, str(path), overrides)
