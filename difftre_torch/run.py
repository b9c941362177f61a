"""``python -m difftre_torch.run [CONFIG] [--out DIR] [--resume] [--updates N]``: the main job.

CONFIG is a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file that fills :class:`RunConfig`;
without one, the built-in default (``data/default/lj_argon.yaml``) runs: a Lennard-Jones argon
fluid started from σ = 3.15 Å is refined with DiffTRe until its RDF matches the RDF of the
reference fluid (σ* = 3.405 Å) made by ``python -m recipes.lj_reference``.

Config layout (relative paths are relative to the config file)::

    system:      {structure: start.extxyz, repeat: [1, 1, 1]}
    potential:   {kind: lennard_jones, sigma_A: 3.15, epsilon_eV: 0.0104, cutoff_A: 8.5,
                  trainable: [sigma]}
                 # or {kind: nequip, path: model.ckpt, dtype: float64, device: auto}
                 # nequip only, optional: sample with a compiled (AOTInductor) copy
                 #   sampling_model: model.nequip.pt2  # made by nequip-compile --target batch, or
                 #   compile_for_sampling: true        # nequip-compile `path` into <out>/compiled/
                 #   recompile: false                  # true: re-export after each update
    state_points: [{name: T181, temperature_K: 181, pressure_GPa: null, replicas: 1}]
    sampler:     {SamplerConfig fields: timestep_fs, friction_per_fs, equilibration_steps, ...}
    trainer:     {TrainerConfig fields: updates, learning_rate, resample_ratio, ...}
    targets:     [{name: rdf, observable: rdf, file: target.csv, function: rdf,
                   weight: 1.0, state_point: T181, options: {...}}]
                 # use_sigma: false ignores the file's σ column; x_min/x_max crop the grid
                 # or inline values: {name: a, observable: lattice_length, values: [7.1],
                 #                    sigma: [0.01], options: {axes: a}}
    force_matching: {file: frames.extxyz, weight: 0.1}   # optional
    output:      {dir: outputs/lj_argon}

Compiled sampling (:mod:`difftre_torch.potentials.compiled`): the MD may run on a compiled
``.nequip.pt2`` while U_θ̃ and every gradient come from the eager model of ``path``. The compiled
model is checked at load (energies and forces on rattled copies of the system, float tolerance
of the model's dtype; a mismatch stops the run naming both files) and used only while the
parameters are those it was checked at: the first sample of a fresh run. After an update the
trainer samples with the eager model, or, with ``recompile: true``, writes the refined weights
and runs ``nequip-compile`` again (each re-export is checked too; it pays only when a sampling
round takes longer than a compile, ~40 s for a tiny model on 2 CPU cores).

Units: Å, eV, fs, K, GPa (ASE's, with GPa at the interface).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from difftre_torch.experiment.target import Target
from difftre_torch.sampling.sampler import SamplerConfig, StatePoint
from difftre_torch.trainer import TrainerConfig

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "data" / "default" / "lj_argon.yaml"


@dataclass
class RunConfig:
    """Everything one DiffTRe run needs, as read from a config file (see module docstring)."""

    system: dict
    potential: dict
    state_points: list[StatePoint]
    targets: list[dict]
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    force_matching: dict | None = None
    output: dict = field(default_factory=lambda: {"dir": "outputs/run"})
    base_dir: Path = Path(".")
    source: str = "<dict>"


def _dataclass_from(cls, data: dict | None, where: str):
    data = dict(data or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; expected some of {sorted(known)}")
    for key, value in data.items():
        if isinstance(value, list):
            data[key] = tuple(value) if key.endswith("betas") else value
    try:
        return cls(**data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None


def read_config_file(path: str | Path) -> dict:
    """The raw mapping of a YAML or TOML config file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        import tomllib

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: not valid TOML ({exc})") from None
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def parse_config(data: dict, base_dir: Path = Path("."), source: str = "<dict>") -> RunConfig:
    """Validate a raw mapping into a :class:`RunConfig` (errors name the file and the field)."""
    allowed = {"system", "potential", "state_points", "targets", "sampler", "trainer",
               "force_matching", "output"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"{source}: unknown section(s) {unknown}; expected some of {sorted(allowed)}")
    for required in ("system", "potential", "state_points", "targets"):
        if required not in data:
            raise ValueError(f"{source}: missing section {required!r}")
    points = [_dataclass_from(StatePoint, p, f"{source}: state_points[{k}]")
              for k, p in enumerate(data["state_points"])]
    return RunConfig(
        system=dict(data["system"]),
        potential=dict(data["potential"]),
        state_points=points,
        targets=list(data["targets"]),
        sampler=_dataclass_from(SamplerConfig, data.get("sampler"), f"{source}: sampler"),
        trainer=_dataclass_from(TrainerConfig, data.get("trainer"), f"{source}: trainer"),
        force_matching=data.get("force_matching"),
        output=dict(data.get("output") or {"dir": "outputs/run"}),
        base_dir=base_dir,
        source=source,
    )


def load_config(path: str | Path) -> RunConfig:
    path = Path(path).resolve()
    return parse_config(read_config_file(path), path.parent, str(path))


# ----------------------------------------------------------------------------- building blocks


def _resolve(config: RunConfig, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else config.base_dir / p


def build_system(config: RunConfig):
    """The simulated system (ASE Atoms, periodic) from ``system.structure`` × ``system.repeat``."""
    from ase.io import read

    if "structure" not in config.system:
        raise ValueError(f"{config.source}: system.structure (a structure file) is required")
    path = _resolve(config, config.system["structure"])
    if not path.exists():
        raise FileNotFoundError(f"{config.source}: system.structure {path} does not exist")
    atoms = read(path)
    repeat = config.system.get("repeat")
    if repeat:
        atoms = atoms.repeat(tuple(int(r) for r in repeat))
    if not atoms.pbc.all():
        raise ValueError(f"{config.source}: system.structure {path} must be periodic in 3D")
    atoms.calc = None
    return atoms


def build_potential(config: RunConfig) -> torch.nn.Module:
    """The potential of ``potential.kind`` ("lennard_jones" or "nequip") with θ set trainable
    (the compiled-sampling fields are read by :func:`build_sampling_potential`)."""
    spec = {k: v for k, v in config.potential.items() if k not in _SAMPLING_FIELDS}
    kind = spec.pop("kind", None)
    trainable = spec.pop("trainable", None)
    if kind == "lennard_jones":
        from difftre_torch.potentials import LennardJones

        try:
            potential = LennardJones(float(spec.pop("sigma_A")), float(spec.pop("epsilon_eV")),
                                     spec.pop("cutoff_A", None))
        except KeyError as exc:
            raise ValueError(f"{config.source}: potential.{exc.args[0]} is required for lennard_jones") from None
    elif kind == "nequip":
        from difftre_torch.potentials.nequip_files import load_nequip

        device = spec.pop("device", "auto")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = {"float32": torch.float32, "float64": torch.float64, None: None}[spec.pop("dtype", None)]
        potential = load_nequip(_resolve(config, spec.pop("path")), device=device, dtype=dtype,
                                chemical_species_to_atom_type_map=spec.pop("chemical_species_to_atom_type_map", None))
    else:
        raise ValueError(f"{config.source}: potential.kind must be 'lennard_jones' or 'nequip', got {kind!r}")
    if spec:
        raise ValueError(f"{config.source}: unknown potential field(s) {sorted(spec)}")
    if trainable is not None:
        names = dict(potential.named_parameters())
        missing = sorted(set(trainable) - set(names))
        if missing:
            raise ValueError(f"{config.source}: potential.trainable names unknown parameter(s) "
                             f"{missing}; the potential has {sorted(names)[:10]}")
        for name, p in names.items():
            p.requires_grad_(name in trainable)
    return potential


_SAMPLING_FIELDS = ("sampling_model", "compile_for_sampling", "recompile")


def build_sampling_potential(config: RunConfig, potential: torch.nn.Module, atoms, out_dir: Path):
    """A :class:`~difftre_torch.potentials.compiled.CompiledSampling` for ``potential.sampling_model``
    or ``potential.compile_for_sampling`` (checked against ``potential`` on
    :func:`~difftre_torch.potentials.compiled.check_frames` of ``atoms``; re-exports go to
    ``<out_dir>/compiled``), or None when neither is given."""
    spec = config.potential
    where = f"{config.source}: potential"
    for key in ("compile_for_sampling", "recompile"):
        if not isinstance(spec.get(key, False), bool):
            raise ValueError(f"{where}.{key} must be true or false, got {spec[key]!r}")
    model = spec.get("sampling_model")
    compile_now, recompile = spec.get("compile_for_sampling", False), spec.get("recompile", False)
    if model is None and not compile_now:
        if recompile:
            raise ValueError(f"{where}.recompile needs potential.sampling_model or potential.compile_for_sampling")
        return None
    field_name = "sampling_model" if model is not None else "compile_for_sampling"
    if spec.get("kind") != "nequip":
        raise ValueError(f"{where}.{field_name}: compiled sampling is for kind: nequip, not {spec.get('kind')!r}")
    if model is not None and compile_now:
        raise ValueError(f"{where}: give sampling_model or compile_for_sampling, not both")
    from difftre_torch.potentials.compiled import CompiledSampling, check_frames, compile_nequip

    workdir = Path(out_dir) / "compiled"
    if compile_now:
        if potential.source.format not in ("checkpoint", "package"):
            raise ValueError(f"{where}.compile_for_sampling: nequip-compile takes a .ckpt or .nequip.zip, "
                             f"potential.path is a {potential.source.format} file")
        model = compile_nequip(potential.source.path, workdir / "sampling_0.nequip.pt2",
                               device=next(potential.parameters()).device)
    else:
        model = _resolve(config, str(model))
        if not model.name.endswith(".nequip.pt2"):
            raise ValueError(f"{where}.sampling_model: expected a .nequip.pt2 (nequip-compile --mode "
                             f"aotinductor --target batch), got {model.name}")
        if not model.exists():
            raise FileNotFoundError(f"{where}.sampling_model: {model} does not exist")
    try:
        return CompiledSampling(potential, model, check_frames(atoms), recompile=recompile, workdir=workdir)
    except ValueError as exc:
        raise ValueError(f"{where}.{field_name}: {exc}") from None


def build_targets(config: RunConfig) -> list[Target]:
    """Targets from files (via :mod:`difftre_torch.experiment.readers`) or inline values."""
    from difftre_torch.experiment.readers import read_experiment

    targets = []
    for k, raw in enumerate(config.targets):
        entry = dict(raw)
        where = f"{config.source}: targets[{k}]"
        if "name" not in entry or "observable" not in entry:
            raise ValueError(f"{where}: 'name' and 'observable' are required")
        options = dict(entry.get("options") or {})
        if "file" in entry:
            data = read_experiment(_resolve(config, entry["file"]), function=entry.get("function"))
            target = data.to_target(entry["name"], weight=float(entry.get("weight", 1.0)),
                                    state_point=entry.get("state_point"), **options)
            if target.observable != entry["observable"]:
                target.observable = entry["observable"]
            if not entry.get("use_sigma", True):
                target.sigma = None
            r_min = entry.get("x_min")
            r_max = entry.get("x_max")
            if r_min is not None or r_max is not None:
                target = _crop(target, r_min, r_max)
        else:
            if "values" not in entry:
                raise ValueError(f"{where}: give either 'file' or 'values'")
            target = Target(name=entry["name"], observable=entry["observable"], values=entry["values"],
                            x=entry.get("x"), sigma=entry.get("sigma"),
                            weight=float(entry.get("weight", 1.0)),
                            state_point=entry.get("state_point"), options=options)
        targets.append(target)
    return targets


def _crop(target: Target, x_min: float | None, x_max: float | None) -> Target:
    keep = torch.ones_like(target.values, dtype=torch.bool)
    if x_min is not None:
        keep &= target.x >= x_min
    if x_max is not None:
        keep &= target.x <= x_max
    return Target(target.name, target.observable, target.values[keep], target.x[keep],
                  None if target.sigma is None else target.sigma[keep], target.weight,
                  target.state_point, target.options)


def build_trainer(config: RunConfig, out_dir: str | Path | None = None):
    """A :class:`~difftre_torch.trainer.DiffTReTrainer` for ``config``."""
    from difftre_torch.force_matching import ReferenceFrames
    from difftre_torch.trainer import DiffTReTrainer

    frames = None
    trainer_config = config.trainer
    if config.force_matching:
        fm = dict(config.force_matching)
        frames = ReferenceFrames.read(_resolve(config, fm["file"]))
        if "weight" in fm:
            trainer_config.force_matching_weight = float(fm["weight"])
    out = Path(out_dir) if out_dir is not None else Path(config.output.get("dir", "outputs/run"))
    potential, atoms = build_potential(config), build_system(config)
    return DiffTReTrainer(potential, atoms, config.state_points,
                          build_targets(config), sampler_config=config.sampler,
                          config=trainer_config, out_dir=out, reference_frames=frames,
                          sampling_potential=build_sampling_potential(config, potential, atoms, out))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m difftre_torch.run", description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default=str(DEFAULT_CONFIG),
                        help="YAML/TOML run config (default: the built-in Lennard-Jones job)")
    parser.add_argument("--out", default=None, help="output directory (default: output.dir of the config)")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    parser.add_argument("--updates", type=int, default=None, help="override trainer.updates")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="plain log lines instead of a tqdm bar")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(args.config)
    if args.updates is not None:
        config.trainer.updates = args.updates
    if args.no_progress:
        config.trainer.progress = False
    trainer = build_trainer(config, args.out)
    print(f"difftre_torch: {len(trainer.numbers)} atoms, {len(trainer.targets)} target(s), "
          f"{len(trainer.state_points)} state point(s) -> {trainer.out_dir}", flush=True)
    summary = trainer.fit(resume=args.resume)
    initial, final = summary["loss_initial"] or {}, summary["loss_final"]
    print("\nloss term            initial        final")
    for key in final:
        print(f"  {key:18s} {initial.get(key, float('nan')):12.5g} {final[key]:12.5g}")
    if summary["parameters_final"]:
        print("parameters: " + json.dumps({"initial": summary["parameters_initial"],
                                            "final": summary["parameters_final"]}))
    print(f"resamples: {summary['resamples']}, time: {summary['time_s']}")
    print(f"wrote {trainer.out_dir / 'summary.json'}, figures {', '.join(Path(f).name for f in summary['figures'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
