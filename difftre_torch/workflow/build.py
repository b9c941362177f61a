"""Objects from a job config: the system, the potential, the targets, the samplers, the frames.

Everything here reads files named by a :class:`~difftre_torch.config.JobConfig` and raises a
:class:`~difftre_torch.config.ConfigError` naming the config file and the field when a file is
missing or its content is not what the field expects. :func:`check_job` runs all of it without
sampling (``difftre check``).

Conventions: cell vectors are rows (ASE); targets keep their file's function (g(r), G(r) =
4πρr(g − 1) in Å⁻², S(Q), F(Q)); lattice targets give unit-cell lengths (the cell's divided by
the observable's ``repeats``).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from ase import Atoms

from difftre_torch.config import ConfigError, JobConfig
from difftre_torch.config.schema import StatePointEntry, TargetEntry
from difftre_torch.experiment.target import Target

CELL_ONLY = ("lattice_length", "interlayer_spacing", "density")
"""Observables of the cell alone: meaningless at a fixed (NVT) cell, so not compared there."""


def _file(job: JobConfig, value: str, field: str) -> Path:
    path = job.resolve(value)
    if not path.exists():
        raise ConfigError(f"{job.source}: {field}: {path} does not exist")
    return path


# ----------------------------------------------------------------------------- system, potential


def build_system(job: JobConfig) -> Atoms:
    """``system.structure`` (frame ``system.index``) × ``system.repeat``, periodic, no calculator."""
    from ase.io import read

    path = _file(job, job.system.structure, "system.structure")
    if path.is_dir():
        raise ConfigError(f"{job.source}: system.structure: {path} is a folder; expected a structure file")
    if path.stat().st_size == 0:
        raise ConfigError(f"{job.source}: system.structure: {path} is empty; expected a structure file")
    try:
        atoms = read(path, index=job.system.index)
    except Exception as exc:  # ase.io raises many kinds
        reason = " ".join(str(exc).split()) or "its format was not recognised or the file is cut short"
        raise ConfigError(f"{job.source}: system.structure: {path} frame {job.system.index} could not be read by "
                          f"ase.io ({reason})") from None
    if not isinstance(atoms, Atoms):
        raise ConfigError(f"{job.source}: system.structure: {path} frame {job.system.index} is not one structure")
    check_structure(atoms, f"{job.source}: system.structure: {path}", job.sampler.min_distance_A,
                    int(np.prod(job.system.repeat)))
    if tuple(job.system.repeat) != (1, 1, 1):
        atoms = atoms.repeat(tuple(job.system.repeat))
    atoms.calc = None
    return atoms


def check_structure(atoms: Atoms, where: str, min_distance_A: float, copies: int = 1) -> None:
    """The start structure can be sampled: atoms of known elements at finite positions, at least
    2 of them once repeated (``copies``: the cells of ``system.repeat``), periodic in 3D with a
    cell of volume > 0 (both samplers need it, and so does the repeat), and no two atoms,
    periodic images included, closer than ``min_distance_A`` (``sampler.min_distance_A``, the
    blow-up distance: such a start would stop at the first check; 0 skips this). Any cell size
    is fine otherwise: the potentials and neighbour lists see periodic images. Atom indices are
    the file's (0-based). Raises :class:`ConfigError` starting with ``where``."""
    from ase.data import chemical_symbols
    from ase.neighborlist import neighbor_list

    if len(atoms) * copies < 2:
        raise ConfigError(f"{where}: holds {len(atoms)} atom(s)" + (f" ({copies} with system.repeat)" if copies > 1
                          else "") + "; expected at least 2 (or a system.repeat that makes them)")
    unknown = [(k, int(z)) for k, z in enumerate(atoms.numbers) if not 1 <= z < len(chemical_symbols)]
    if unknown:
        k, z = unknown[0]
        raise ConfigError(f"{where}: atom {k} has no known element (atomic number {z}, symbol "
                          f"{atoms.get_chemical_symbols()[k]!r}); expected elements H … Og")
    if not np.isfinite(atoms.positions).all():
        k = int(np.nonzero(~np.isfinite(atoms.positions).all(axis=1))[0][0])
        raise ConfigError(f"{where}: atom {k} has a position that is not finite ({atoms.positions[k].tolist()})")
    if not atoms.pbc.all():
        raise ConfigError(f"{where}: must be periodic in 3D with a full cell; pbc is "
                          f"{[bool(b) for b in atoms.pbc]} (set pbc=\"T T T\" and a Lattice)")
    volume = abs(float(np.linalg.det(atoms.cell.array))) if atoms.cell.rank == 3 else 0.0
    if not np.isfinite(atoms.cell.array).all() or volume < 1e-6 * max(float(atoms.cell.lengths().max()), 1.0) ** 3:
        raise ConfigError(f"{where}: must be periodic in 3D with a full cell; its cell vectors (rows, Å) "
                          f"{np.round(atoms.cell.array, 4).tolist()} span a volume of {volume:.3g} Å³")
    if min_distance_A > 0:
        first, second, distance = neighbor_list("ijd", atoms, min_distance_A, self_interaction=False)
        if len(distance):
            k = int(np.argmin(distance))
            i, j, d = int(first[k]), int(second[k]), float(distance[k])
            pair = f"atom {i} and its own periodic image" if i == j else f"atoms {min(i, j)} and {max(i, j)}"
            raise ConfigError(f"{where}: {pair} are {d:.3f} Å apart, closer than sampler.min_distance_A = "
                              f"{min_distance_A:g} Å (the MD would stop at once as a blow-up); fix the structure "
                              "or lower sampler.min_distance_A")


def build_base_potential(job: JobConfig, path: Path | None = None) -> torch.nn.Module:
    """The model of ``potential`` (or a refined model file ``path`` of the same kind)."""
    from difftre_torch.potentials.registry import POTENTIALS

    kind = POTENTIALS[job.potential.kind]
    resolve = lambda p: _file(job, p, "potential.path")  # noqa: E731
    try:
        if path is not None and kind.load_file is not None:
            return kind.load_file(Path(path), job.potential.options)
        if path is not None:
            return _load_state_file(Path(path), lambda: kind.build(job.potential.options, resolve))
        return kind.build(job.potential.options, resolve)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch, pickle, zipfile and the model libraries raise many kinds
        model_path = getattr(job.potential.options, "path", None)
        if path is not None:
            what = f"potential: the refined model {path}"
        elif model_path is not None:
            what = f"potential.path: {job.resolve(model_path)}"
        else:
            what = "potential"
        raise ConfigError(f"{job.source}: {what}: could not be loaded as a {job.potential.kind} model "
                          f"({_load_failure(exc)})") from None


def _load_failure(exc: BaseException) -> str:
    """Why a model file did not load, in one short line without exception class names."""
    import pickle
    import zipfile

    text = " ".join(str(exc).split())
    if isinstance(exc, (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, UnicodeDecodeError)) or not text:
        return "the file is empty, cut short or in another format"
    if isinstance(exc, FileNotFoundError):
        return text
    first = text.split(". ", 1)[0].rstrip(".")
    return first if len(first) <= 240 else first[:237] + "..."


def _load_state_file(path: Path, fresh) -> torch.nn.Module:
    """A refined model of a kind without a file format of its own (analytic potentials), as
    :func:`~difftre_torch.potentials.io.save_potential` wrote it: ``<stem>.pt`` (the module's
    state_dict, loaded into ``fresh()``) or ``<stem>.correction.pt`` (its base as such a file)."""
    from difftre_torch.potentials.io import CORRECTION_SUFFIX, load_corrected

    def load(p: Path) -> torch.nn.Module:
        if not p.exists():
            raise FileNotFoundError(f"model file {p} does not exist")
        module = fresh()
        module.load_state_dict(torch.load(p, map_location="cpu", weights_only=True))
        return module

    return load_corrected(path, load) if path.name.endswith(CORRECTION_SUFFIX) else load(path)


def build_potential(job: JobConfig, atoms: Atoms) -> torch.nn.Module:
    """The potential DiffTRe refines: the model, plus the pair correction when ``potential.correction``
    is given (base frozen unless ``train_base``), with ``potential.trainable`` applied."""
    from difftre_torch.potentials.registry import add_correction, set_trainable

    potential = build_base_potential(job)
    if job.potential.correction is not None:
        try:
            potential = add_correction(potential, job.potential.correction, atoms)
        except ValueError as exc:  # PairCorrectionSpec's own checks ("PairCorrectionSpec.centers_A: ...")
            text = str(exc).removeprefix("PairCorrectionSpec")
            raise ConfigError(f"{job.source}: potential.correction" + (text if text[:1] in ".:" else f": {text}")) from None
    try:
        set_trainable(potential, job.potential.trainable, "potential.trainable")
    except ValueError as exc:
        raise ConfigError(f"{job.source}: {exc}") from None
    if not any(p.requires_grad for p in potential.parameters()):
        raise ConfigError(f"{job.source}: potential: nothing to refine (no trainable parameter)")
    entries = sum(p.numel() for p in potential.parameters() if p.requires_grad)
    if job.trainer.optimizer == "levenberg_marquardt" and entries > job.trainer.lm_max_parameters:
        raise ConfigError(f"{job.source}: trainer.optimizer: levenberg_marquardt needs at most "
                          f"trainer.lm_max_parameters = {job.trainer.lm_max_parameters} trainable entries, the "
                          f"potential has {entries}; use adam (line_search: true for longer steps)")
    return potential


def build_sampling_potential(job: JobConfig, potential, atoms: Atoms, out_dir: Path):
    """A compiled-sampling wrapper for ``potential.sampling_model`` / ``compile_for_sampling``
    (NequIP only; :mod:`difftre_torch.potentials.compiled`), or None."""
    options = job.potential.options
    model = getattr(options, "sampling_model", None)
    compile_now = getattr(options, "compile_for_sampling", False)
    if model is None and not compile_now:
        return None
    from difftre_torch.potentials.compiled import CompiledSampling, check_frames, compile_nequip

    base = getattr(potential, "base", potential)
    workdir = Path(out_dir) / "compiled"
    field = "compile_for_sampling" if compile_now else "sampling_model"
    try:
        if compile_now:
            if base.source.format not in ("checkpoint", "package"):
                raise ValueError(f"nequip-compile takes a .ckpt or .nequip.zip, potential.path is a "
                                 f"{base.source.format} file")
            model = compile_nequip(base.source.path, workdir / "sampling_0.nequip.pt2",
                                   device=next(base.parameters()).device)
        else:
            model = _file(job, model, "potential.sampling_model")
        return CompiledSampling(potential, model, check_frames(atoms), recompile=options.recompile, workdir=workdir)
    except ConfigError:
        raise
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        raise ConfigError(f"{job.source}: potential.{field}: {exc}") from None


# ----------------------------------------------------------------------------- targets


def check_state(job: JobConfig, entry: TargetEntry, path: Path, where: str, temperature_K: float | None,
                pressure_GPa: float | None) -> None:
    """A ConfigError when the file states the temperature (K) or pressure (GPa) it was measured
    at and a state point the target refers to (its ``state_point``, or every one when it names
    none) is at another: a file of one state point fitted at another. Tolerances: 1 K; for the
    pressure 0.01 GPa (1 bar and 1 GPa differ; NVT points are not checked)."""
    points = [p for p in job.state_points if entry.state_point in (None, p.name)]
    for p in points:
        if temperature_K is not None and abs(p.temperature_K - temperature_K) > 1.0:
            hint = ("bind it to the state point it was measured at (state_point)" if entry.state_point is None
                    else "the file of that state point, or state_point naming the one it was measured at")
            raise ConfigError(f"{where}.state_point: {path} states temperature {temperature_K:g} K but state "
                              f"point {p.name!r} is at {p.temperature_K:g} K; expected {hint}")
        if pressure_GPa is not None and p.pressure_GPa is not None and abs(p.pressure_GPa - pressure_GPa) > 0.01:
            raise ConfigError(f"{where}.state_point: {path} states pressure {pressure_GPa:g} GPa but state point "
                              f"{p.name!r} is at {p.pressure_GPa:g} GPa; expected the file of that state point")


def _stated(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _json_target(job: JobConfig, entry: TargetEntry, path: Path, where: str) -> Target:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}.file: {path} is not valid JSON ({exc})") from None
    if isinstance(data, dict):
        check_state(job, entry, path, where, _stated(data.get("temperature_K")), _stated(data.get("pressure_GPa")))
    if entry.value_key is None:
        raise ConfigError(f"{where}.value_key: a JSON file needs the key of the value")
    values = []
    for key_field in ("value_key", "sigma_key"):
        key = getattr(entry, key_field)
        if key is None:
            values.append(None)
            continue
        if key not in data:
            raise ConfigError(f"{where}.{key_field}: {path} has no key {key!r}; it has {sorted(data)[:20]}")
        if isinstance(data[key], bool) or not isinstance(data[key], (int, float)):
            raise ConfigError(f"{where}.{key_field}: {path}: {key!r} is {data[key]!r}, expected a number")
        values.append(float(data[key]))
    n = len(str(entry.options.get("axes", "abc"))) if entry.observable == "lattice_length" else 1
    value, sigma = values
    return Target(entry.name, entry.observable, [value] * n, sigma=None if sigma is None or not entry.use_sigma
                  else [sigma] * n, weight=entry.weight, state_point=entry.state_point, options=dict(entry.options),
                  source=str(path))


def build_target(job: JobConfig, entry: TargetEntry, where: str) -> Target:
    """One :class:`Target` from a config entry: file or inline values, cropped to ``x_range``,
    σ floored in quadrature, options checked by the observable's options dataclass. A file's
    target comes from :meth:`~difftre_torch.experiment.data.ExperimentalData.to_target`: its
    function must be ``observable``, its header's declarations agree with the options, and its σ
    follows ``use_sigma``/``sigma_floor``."""
    from difftre_torch.experiment.checks import check_observable
    from difftre_torch.experiment.readers import read_experiment
    from difftre_torch.observables.options import OptionsError

    for key in entry.options:
        if key in _TARGET_FIELDS:
            raise ConfigError(f"{where}.options.{key}: {key} is a field of the target, not an option of the "
                              f"observable; write it beside `observable`")
    try:
        if entry.file is not None:
            path = job.resolve(entry.file)
            if not path.exists():
                raise ConfigError(f"{where}.file: {path} does not exist")
            if path.suffix == ".json":
                return _json_target(job, entry, path, where)
            data = read_experiment(path, function=entry.function)
            check_state(job, entry, path, where, _stated(data.metadata.get("temperature_K")), None)
            if entry.x_range is not None:  # crop first: points outside the range never reach the options check
                lo, hi = entry.x_range
                inside = int(((data.x >= lo) & (data.x <= hi)).sum())
                if inside < 2:
                    raise ConfigError(f"{where}.x_range: {entry.x_range} keeps {inside} point(s) of the "
                                      f"grid [{float(data.x[0]):g}, {float(data.x[-1]):g}] of {path}; expected a "
                                      "range inside it")
                data = data.crop(entry.x_range)
            if data.function != entry.observable:  # the file's own word on its function, with its line
                try:
                    check_observable(data, entry.observable)
                except ValueError as exc:
                    raise ConfigError(f"{where}.observable: {exc}") from None
            target = data.to_target(entry.name, weight=entry.weight, state_point=entry.state_point,
                                    observable=entry.observable, use_sigma=entry.use_sigma,
                                    sigma_floor=entry.sigma_floor, **entry.options)
            sigma = target.sigma  # the file's σ as use_sigma and sigma_floor say
        else:
            target = Target(entry.name, entry.observable, entry.values, x=entry.x, sigma=entry.sigma,
                            weight=entry.weight, state_point=entry.state_point, options=dict(entry.options))
            sigma = target.sigma
            if sigma is not None and entry.sigma_floor > 0:
                sigma = torch.sqrt(sigma**2 + entry.sigma_floor**2)
        if not entry.use_sigma:
            sigma = None
        keep = torch.ones_like(target.values, dtype=torch.bool)
        if entry.x_range is not None:
            if target.x is None:
                raise ConfigError(f"{where}.x_range: {entry.observable!r} is a scalar target, it has no grid")
            lo, hi = entry.x_range
            keep = (target.x >= lo) & (target.x <= hi)
            if int(keep.sum()) < 2:
                raise ConfigError(f"{where}.x_range: {entry.x_range} keeps {int(keep.sum())} point(s) of the grid "
                                  f"[{float(target.x[0]):g}, {float(target.x[-1]):g}]; expected a range inside it")
        return Target(target.name, target.observable, target.values[keep],
                      None if target.x is None else target.x[keep], None if sigma is None else sigma[keep],
                      target.weight, target.state_point, dict(target.options), source=target.source,
                      composition=target.composition)
    except ConfigError:
        raise
    except OptionsError as exc:  # the observable's options (config or file header) do not fit it
        raise ConfigError(f"{where}.options: {exc.message}") from None
    except (ValueError, KeyError, OSError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


_TARGET_FIELDS = ("name", "weight", "state_point", "observable", "use_sigma", "sigma_floor")
"""Arguments of ``to_target`` beside the observable's options: never an option's name."""


def build_targets(job: JobConfig, entries: list[TargetEntry], section: str = "targets", atoms: Atoms | None = None,
                  notes: list[str] | None = None) -> list[Target]:
    """The targets of ``entries`` (:func:`build_target`), each checked against the structure
    ``atoms`` (default: :func:`build_system`) by
    :func:`~difftre_torch.experiment.checks.check_target_against_system`: the file's composition,
    ``options.pair``'s species. Its notes (true, not errors) are appended to ``notes``."""
    from difftre_torch.experiment.checks import check_target_against_system

    atoms = build_system(job) if atoms is None else atoms
    targets = []
    for k, entry in enumerate(entries):
        where = f"{job.source}: {section}[{k}] ({entry.name})"
        target = build_target(job, entry, where)
        try:
            found = check_target_against_system(target, atoms, where)
        except ValueError as exc:  # TargetCheckError: "<where>: <file>: <field>: expected …, got …"
            raise ConfigError(" ".join(str(exc).split())) from None
        if notes is not None:
            notes.extend(found)
        targets.append(target)
    return targets


def comparable(targets: list[Target], point: StatePointEntry) -> list[Target]:
    """The targets a sample at ``point`` can be compared with: those of this state point (or of
    none), structural (θ-dependent ones such as pressure need the model's stress: the
    refinement's log reports them), and at a fixed (NVT) cell not of the cell alone."""
    from difftre_torch.observables.registry import OBSERVABLES

    mine = [t for t in targets if t.state_point in (None, point.name)
            and not OBSERVABLES[t.observable].depends_on_theta]
    if point.pressure_GPa is None:
        mine = [t for t in mine if t.observable not in CELL_ONLY]
    return mine


def compare_entries(job: JobConfig) -> list[TargetEntry]:
    return job.compare.targets if job.compare.targets is not None else job.targets


# ----------------------------------------------------------------------------- cells, samplers


LATTICE_OBSERVABLES = ("lattice_length", "interlayer_spacing")


def targets_for_cell(point: StatePointEntry, targets: list[Target], points: list[StatePointEntry]) -> list[Target]:
    """The lattice targets that fix the cell of an NVT ``cell: targets`` state point: those bound
    to it (``state_point``), else the unbound ones, else those bound to the NPT state points at
    its temperature (the experiment's cell at that temperature)."""
    lattice = [t for t in targets if t.observable in LATTICE_OBSERVABLES]
    own = [t for t in lattice if t.state_point == point.name]
    if own:
        return own
    free = [t for t in lattice if t.state_point is None]
    if free:
        return free
    temperature = {p.name: p.temperature_K for p in points if p.pressure_GPa is not None}
    return [t for t in lattice if temperature.get(t.state_point) == point.temperature_K]


def cell_at_targets(atoms: Atoms, targets: list[Target], where: str) -> Atoms:
    """``atoms`` with its cell scaled (atoms with it) so the lattice targets hold at their
    experimental values: lattice_length targets set their axes (value × repeats), an
    interlayer_spacing target sets |a₃| = layers_per_cell · d (it wins over a c length). Two
    targets asking different lengths of one axis are an error (choose them with
    :func:`targets_for_cell`)."""
    out = atoms.copy()
    lengths = out.cell.lengths()
    wanted: dict[int, float] = {}
    source: dict[int, str] = {}

    def want(i: int, value: float, name: str) -> None:
        if i in wanted and source[i] != name and not np.isclose(wanted[i], value, rtol=1e-9, atol=0.0):
            raise ConfigError(f"{where}: 'cell: targets' is ambiguous: targets {source[i]!r} and {name!r} ask "
                              f"|a{i + 1}| = {wanted[i]:.4f} and {value:.4f} Å; bind the lattice targets to "
                              "their state points (state_point)")
        wanted[i], source[i] = value, name

    spacing = any(s.observable == "interlayer_spacing" for s in targets)
    for t in targets:
        if t.observable == "lattice_length":
            axes, repeats = t.settings.axes, t.settings.repeats
            for k, axis in enumerate(axes):
                i = "abc".index(axis)
                if not (i == 2 and spacing):
                    want(i, float(t.values[k]) * repeats[i], t.name)
    for t in targets:
        if t.observable == "interlayer_spacing":
            want(2, int(t.settings.layers_per_cell) * float(t.values[0]), t.name)
    if not wanted:
        raise ConfigError(f"{where}: 'cell: targets' needs lattice_length or interlayer_spacing targets")
    scale = np.array([wanted.get(i, lengths[i]) / lengths[i] for i in range(3)])
    out.set_cell(out.cell.array * scale[:, None], scale_atoms=True)
    return out


def sampler_class(job: JobConfig):
    from difftre_torch.config import SAMPLERS

    return SAMPLERS[job.sampler_kind]()


def make_sampler(job: JobConfig, atoms: Atoms, points: list[StatePointEntry], seed_offset: int = 0,
                 ranks=None):
    """A sampler of ``sampler.kind`` for ``points`` from ``atoms``, seed ``sampler.seed + seed_offset``;
    with several ``ranks`` (:class:`~difftre_torch.distributed.Ranks`) this rank's share of the
    replicas (a ConfigError naming the state point when it has fewer replicas than ranks), the
    progress bar on rank 0 only."""
    from difftre_torch.distributed import replica_share

    config = replace(job.sampler, seed=job.sampler.seed + seed_offset)
    owned = None
    if ranks is not None and ranks.active:
        config = replace(config, progress=config.progress and ranks.is_main)
        try:
            owned = replica_share([p.replicas for p in points], ranks.rank, ranks.world_size, [p.name for p in points])
        except ValueError as exc:
            raise ConfigError(f"{job.source}: {exc}") from None
    return sampler_class(job)(atoms, [p.state_point() for p in points], config, owned=owned)


# ----------------------------------------------------------------------------- frames


def read_frames(job: JobConfig, value: str, field: str, **options) -> list[Atoms]:
    """Every frame of a labelled file or DeePMD-kit data folder (each frame's
    ``info['source_file']`` names file and frame); ``options`` as
    :func:`difftre_torch.frames.read_frames_file` takes them."""
    from difftre_torch.frames import FramesError, read_frames_file

    path = _file(job, value, field)
    try:
        frames = read_frames_file(path, **options)
    except FramesError as exc:
        raise ConfigError(f"{job.source}: {field}: {exc}") from None
    except Exception as exc:
        raise ConfigError(f"{job.source}: {field}: {path} could not be read by ase.io ({exc})") from None
    if not frames:
        raise ConfigError(f"{job.source}: {field}: {path} holds no frames")
    for k, atoms in enumerate(frames):
        atoms.info.setdefault("source_file", f"{path} frame {k}")
    return frames


def check_labels(job: JobConfig, frames: list[Atoms], references: dict[str, str], field: str) -> None:
    """Every frame has each reference's energy and forces (a clear error naming file and frame)."""
    from difftre_torch.evaluation import frame_labels

    for atoms in frames:
        for name, source in references.items():
            try:
                labels = frame_labels(atoms, source)
            except KeyError as exc:
                raise ConfigError(f"{job.source}: {field}.references.{name}: {exc.args[0]}") from None
            if labels.forces.shape != (len(atoms), 3) or not np.isfinite(labels.forces).all():
                raise ConfigError(f"{job.source}: {field}.references.{name}: {atoms.info['source_file']}: forces "
                                  f"must be finite, shape ({len(atoms)}, 3)")


def reference_frames(job: JobConfig):
    """The force-matching frames (:class:`~difftre_torch.force_matching.ReferenceFrames`)."""
    from difftre_torch.force_matching import ReferenceFrames

    section = job.force_matching
    path = job.resolve(section.file)
    type_map = section.type_map
    if type_map is None and job.potential.kind == "deepmd" and path.is_dir():
        type_map = build_base_potential(job).type_map  # DeePMD data named by the model's own types
    frames = read_frames(job, section.file, "force_matching.file", type_map=type_map,
                         max_frames=section.max_frames, seed=section.seed)
    try:
        return ReferenceFrames.from_atoms(frames, source=str(path))
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ConfigError(f"{job.source}: force_matching.file: {exc}") from None


# ----------------------------------------------------------------------------- check


def check_job(job: JobConfig, load_models: bool = True) -> list[str]:
    """Read every file the job names and build every object short of sampling; returns lines
    saying what would run. Raises :class:`ConfigError` (file and field) at the first problem."""
    lines = [f"job {job.source}"]
    atoms = build_system(job)
    lines.append(f"  system: {len(atoms)} atoms ({atoms.get_chemical_formula()}), cell "
                 + " × ".join(f"{x:.3f}" for x in atoms.cell.lengths()) + " Å")
    notes: list[str] = []
    fit = build_targets(job, job.targets, atoms=atoms, notes=notes)
    report = build_targets(job, compare_entries(job), "compare.targets" if job.compare.targets is not None else "targets",
                           atoms=atoms, notes=notes)
    for k, point in enumerate(job.state_points):
        if point.cell == "targets":
            cell_at_targets(atoms, targets_for_cell(point, fit + report, job.state_points),
                            f"{job.source}: state_points[{k}] ({point.name}).cell")
    lines.append(f"  targets: {', '.join(f'{t.name} ({t.observable}, {t.values.shape[0]} values)' for t in fit)}")
    lines.extend(f"  note: {note}" for note in dict.fromkeys(notes))
    if load_models or job.trainer.optimizer == "levenberg_marquardt":  # its size limit, before any MD
        potential = build_potential(job, atoms)
        n = sum(p.numel() for p in potential.parameters() if p.requires_grad)
        lines.append(f"  potential: {job.potential.kind}"
                     + (" + pair correction" if job.potential.correction is not None else "")
                     + f", {n} trainable parameters")
    else:
        options = job.potential.options
        if getattr(options, "path", None):
            _file(job, options.path, "potential.path")
    if job.force_matching is not None:
        frames = reference_frames(job)  # every frame labelled (energy and forces), periodic
        lines.append(f"  force matching: {len(frames)} labelled frames")
    for s in job.evaluation.sets:
        frames = read_frames(job, s.file, f"evaluation.sets ({s.name}).file")
        check_labels(job, frames, s.references, f"evaluation.sets ({s.name})")
        lines.append(f"  evaluation set {s.name}: {len(frames)} frames of {len(frames[0])} atoms, "
                     f"references {', '.join(s.references)}")
    if job.evaluation.binding is not None:
        _file(job, job.evaluation.binding.structure, "evaluation.binding.structure")
        if job.evaluation.binding.references:
            _file(job, job.evaluation.binding.references, "evaluation.binding.references")
    points = ", ".join(f"{p.name} ({p.temperature_K:g} K, " + ("NVT" if p.pressure_GPa is None else
                       f"{p.pressure_GPa:g} GPa") + f", {p.replicas} replicas)" for p in job.state_points)
    lines.append(f"  state points: {points}; sampler {job.sampler_kind}, "
                 f"{job.sampler.snapshots_per_replica} snapshots per replica")
    if job.trainer.updates > 0:
        lines.append(f"  refinement: {job.trainer.updates} updates for λ = "
                     + ", ".join(f"{x:g}" for x in job.lambdas))
    else:
        lines.append("  refinement: none (trainer.updates: 0): the base model is compared and evaluated only")
    lines.append(f"  output: {job.out_dir}")
    return lines
