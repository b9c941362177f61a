"""One config layer for every job: typed sections, registries, validation before any MD, overrides.

``load_job(path, overrides)`` reads a YAML/TOML job file (following ``extends:``), applies
``--set key.path=value`` overrides, and returns a :class:`JobConfig` whose sections are the
dataclasses of :mod:`difftre_torch.config.schema` and the library's own settings types
(:class:`~difftre_torch.sampling.sampler.SamplerConfig`, :class:`~difftre_torch.trainer.TrainerConfig`:
the one home of their fields). Every error is a :class:`ConfigError` naming the file and the
field. Files are checked by :func:`difftre_torch.workflow.build.check_job` (``difftre check``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Sequence

from difftre_torch.config.parse import (
    ConfigError,
    apply_overrides,
    build,
    deep_merge,
    read_mapping,
    suggest,
    unknown_keys,
)
from difftre_torch.config.schema import (
    CompareSection,
    EvaluationSection,
    ForceMatchingSection,
    OutputSection,
    PotentialSection,
    ReportSection,
    StatePointEntry,
    SystemSection,
    TargetEntry,
)

__all__ = ["ConfigError", "JobConfig", "load_job", "parse_job", "SAMPLERS", "SECTIONS", "apply_overrides",
           "deep_merge"]


def _ase_sampler():
    from difftre_torch.sampling.sampler import AseSampler

    return AseSampler


def _batched_sampler():
    from difftre_torch.sampling.batched import BatchedSampler

    return BatchedSampler


SAMPLERS = {"ase": _ase_sampler, "batched": _batched_sampler}
"""Sampler kinds (``sampler.kind``): name → a function returning the class, which takes
``(atoms, state_points, SamplerConfig)``. Add a sampler here."""

SECTIONS = ("system", "potential", "sampler", "state_points", "targets", "force_matching", "trainer",
            "compare", "evaluation", "report", "output")
REQUIRED = ("system", "potential", "state_points")


def _sampler_config_cls():
    from difftre_torch.sampling.base import SamplerConfig

    return SamplerConfig


def _trainer_config_cls():
    from difftre_torch.trainer import TrainerConfig

    return TrainerConfig


@dataclass
class JobConfig:
    """A parsed job (see :mod:`difftre_torch.config.schema` for the sections)."""

    system: SystemSection
    potential: PotentialSection
    sampler_kind: str
    sampler: Any  # SamplerConfig
    state_points: list[StatePointEntry]
    targets: list[TargetEntry]
    trainer: Any  # TrainerConfig
    force_matching: ForceMatchingSection | None = None
    compare: CompareSection = field(default_factory=CompareSection)
    evaluation: EvaluationSection = field(default_factory=EvaluationSection)
    report: ReportSection = field(default_factory=ReportSection)
    output: OutputSection = field(default_factory=OutputSection)
    source: str = "<dict>"
    base_dir: Path = Path(".")
    raw: dict = field(default_factory=dict)

    def resolve(self, value: str | Path) -> Path:
        """A path of the config, relative to the config file's folder, made absolute."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.base_dir / p).resolve()

    @property
    def out_dir(self) -> Path:
        return Path(self.output.dir).expanduser()

    def point(self, name: str) -> StatePointEntry:
        for p in self.state_points:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def lambdas(self) -> list[float]:
        """The main force-matching weight first, then the scan's others."""
        main = float(self.trainer.force_matching_weight)
        scan = [] if self.force_matching is None else self.force_matching.scan
        return [main] + [float(x) for x in dict.fromkeys(scan) if float(x) != main]

    def model_key(self, lam: float) -> str:
        return "refined" if float(lam) == float(self.trainer.force_matching_weight) else f"lambda_{lam:g}"

    def to_json(self) -> dict:
        """The resolved settings (JSON-ready)."""
        out = {}
        for name in ("system", "potential", "sampler", "state_points", "targets", "force_matching", "trainer",
                     "compare", "evaluation", "report", "output"):
            out[name] = _jsonable(getattr(self, name))
        out["sampler"] = {"kind": self.sampler_kind, **out["sampler"]}
        return out

    def fingerprint(self) -> str:
        """sha256 of the settings that determine results (all but output and report)."""
        data = self.to_json()
        for key in ("output", "report"):
            data.pop(key, None)
        data["trainer"] = {k: v for k, v in data["trainer"].items() if k not in ("progress", "tensorboard")}
        data["sampler"] = {k: v for k, v in data["sampler"].items() if k != "progress"}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _jsonable(value):
    if is_dataclass(value):
        return {k: _jsonable(v) for k, v in asdict(value).items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def _section(data: dict, name: str, source: str):
    value = data.get(name)
    if value is not None and not isinstance(value, dict):
        raise ConfigError(f"{source}: {name}: expected a mapping, got {value!r}")
    return value


def _parse_potential(raw: Any, source: str) -> PotentialSection:
    from difftre_torch.potentials.registry import POTENTIALS, CorrectionOptions

    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: potential: expected a mapping with `kind`, got {raw!r}")
    raw = dict(raw)
    kind = raw.pop("kind", None)
    if kind is None:
        raise ConfigError(f"{source}: potential.kind: required field is missing; expected one of {sorted(POTENTIALS)}")
    if kind not in POTENTIALS:
        raise ConfigError(f"{source}: potential.kind: unknown kind {kind!r}{suggest(kind, POTENTIALS)}; "
                          f"expected one of {sorted(POTENTIALS)}")
    trainable = raw.pop("trainable", None)
    if trainable is not None and (not isinstance(trainable, list) or not all(isinstance(t, str) for t in trainable)):
        raise ConfigError(f"{source}: potential.trainable: expected a list of parameter names, got {trainable!r}")
    correction = raw.pop("correction", None)
    if correction is not None:
        correction = build(CorrectionOptions, correction, source, "potential.correction")
    options = build(POTENTIALS[kind].options, raw, source, "potential")
    return PotentialSection(kind=kind, options=options, trainable=trainable, correction=correction)


def _parse_sampler(raw: Any, source: str):
    raw = dict(raw or {})
    kind = raw.pop("kind", "ase")
    if kind not in SAMPLERS:
        raise ConfigError(f"{source}: sampler.kind: unknown kind {kind!r}{suggest(str(kind), SAMPLERS)}; "
                          f"expected one of {sorted(SAMPLERS)}")
    if kind != "batched":
        for f in fields(_sampler_config_cls()):
            if f.name in raw and f.metadata.get("doc", "").startswith("batched sampler only"):
                raise ConfigError(f"{source}: sampler.{f.name}: a setting of the batched sampler, which this "
                                  f"config does not use (sampler.kind is {kind!r}); set kind: batched, or "
                                  f"remove the field")
    return kind, build(_sampler_config_cls(), raw, source, "sampler")


def _list_of(cls, raw: Any, source: str, name: str) -> list:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(f"{source}: {name}: expected a list, got {raw!r}")
    return [build(cls, item, source, f"{name}[{k}]") for k, item in enumerate(raw)]


def _unique(names: list[str], source: str, what: str) -> None:
    seen = set()
    for k, n in enumerate(names):
        if n in seen:
            raise ConfigError(f"{source}: {what}[{k}].name: {n!r} is used twice; names must be unique")
        seen.add(n)


def parse_job(data: dict, base_dir: str | Path = ".", source: str = "<dict>") -> JobConfig:
    """A :class:`JobConfig` from a raw mapping (sections as in :mod:`difftre_torch.config.schema`);
    every section and field is checked, and so are the names sections refer to each other by."""
    from difftre_torch.observables.registry import OBSERVABLES

    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections")
    unknown_keys(data, SECTIONS, source, "", "section")
    for name in REQUIRED:
        if data.get(name) is None:
            raise ConfigError(f"{source}: section {name!r} is missing (required: {', '.join(REQUIRED)})")
    system = build(SystemSection, _section(data, "system", source), source, "system")
    potential = _parse_potential(data["potential"], source)
    sampler_kind, sampler = _parse_sampler(_section(data, "sampler", source), source)
    points = _list_of(StatePointEntry, data["state_points"], source, "state_points")
    if not points:
        raise ConfigError(f"{source}: state_points: give at least one state point")
    _unique([p.name for p in points], source, "state_points")
    targets = _list_of(TargetEntry, data.get("targets"), source, "targets")
    _unique([t.name for t in targets], source, "targets")
    fm_raw = _section(data, "force_matching", source)
    force_matching = None if fm_raw is None else build(ForceMatchingSection, fm_raw, source, "force_matching")
    trainer = build(_trainer_config_cls(), _section(data, "trainer", source), source, "trainer")
    compare = build(CompareSection, _section(data, "compare", source), source, "compare")
    evaluation = build(EvaluationSection, _section(data, "evaluation", source), source, "evaluation")
    report = build(ReportSection, _section(data, "report", source), source, "report")
    output = build(OutputSection, _section(data, "output", source), source, "output")
    job = JobConfig(system=system, potential=potential, sampler_kind=sampler_kind, sampler=sampler,
                    state_points=points, targets=targets, trainer=trainer, force_matching=force_matching,
                    compare=compare, evaluation=evaluation, report=report, output=output, source=source,
                    base_dir=Path(base_dir).resolve(), raw=data)

    # cross-references
    point_names = [p.name for p in points]
    if not any(p.refine for p in points):
        raise ConfigError(f"{source}: state_points: no state point has refine: true")
    for k, p in enumerate(points):
        if p.refine and p.cell == "targets":
            raise ConfigError(f"{source}: state_points[{k}] ({p.name}).refine: a state point at the targets' cell "
                              "is for the comparison only (set refine: false)")
    compare_targets = compare.targets or []
    _unique([t.name for t in compare_targets], source, "compare.targets")
    for section, entries in (("targets", targets), ("compare.targets", compare_targets)):
        for k, t in enumerate(entries):
            if t.observable not in OBSERVABLES:
                raise ConfigError(f"{source}: {section}[{k}].observable: unknown observable {t.observable!r}"
                                  f"{suggest(t.observable, OBSERVABLES)}; expected one of {sorted(OBSERVABLES)}")
            if t.state_point is not None and t.state_point not in point_names:
                raise ConfigError(f"{source}: {section}[{k}].state_point: {t.state_point!r} is not a state point; "
                                  f"expected one of {point_names}")
    if not targets and trainer.updates > 0:
        raise ConfigError(f"{source}: targets: a refinement needs at least one target (or trainer.updates: 0)")
    if trainer.force_matching_weight > 0 and force_matching is None:
        raise ConfigError(f"{source}: trainer.force_matching_weight is {trainer.force_matching_weight:g} but there "
                          "is no force_matching section with the frames (force_matching.file)")
    if trainer.updates == 0:  # nothing is refined: settings about refined models would be ignored or fail late
        if force_matching is not None and force_matching.scan:
            raise ConfigError(f"{source}: force_matching.scan: refines one model per λ, but trainer.updates is 0 "
                              "(no refinement); drop the scan or set trainer.updates >= 1")
        if report.checks:
            raise ConfigError(f"{source}: report.checks[0]: every check measures the refined model, but "
                              "trainer.updates is 0 (no refinement); drop the checks or set trainer.updates >= 1")
    _unique([s.name for s in evaluation.sets], source, "evaluation.sets")
    references = {r for s in evaluation.sets for r in s.references}
    set_names = [s.name for s in evaluation.sets]
    if evaluation.ceiling is not None:
        c = evaluation.ceiling
        if potential.correction is None:
            raise ConfigError(f"{source}: evaluation.ceiling: needs potential.correction (it fits that correction)")
        for name, value in (("reference", c.reference), ("relative_to", c.relative_to)):
            if value is not None and value not in references:
                raise ConfigError(f"{source}: evaluation.ceiling.{name}: {value!r} is not a reference of "
                                  f"evaluation.sets; expected one of {sorted(references)}")
        for s in c.sets or []:
            if s not in set_names:
                raise ConfigError(f"{source}: evaluation.ceiling.sets: {s!r} is not a frame set; expected one of {set_names}")
    from difftre_torch.workflow.checks import validate_check

    all_targets = list(dict.fromkeys([t.name for t in targets] + [t.name for t in compare_targets]))
    for k, check in enumerate(report.checks):
        validate_check(check, f"{source}: report.checks[{k}]", all_targets, point_names, sorted(references), set_names)
        if check.kind == "ceiling_fraction" and evaluation.ceiling is None:
            raise ConfigError(f"{source}: report.checks[{k}]: ceiling_fraction needs evaluation.ceiling (the pair "
                              "ceiling it compares the refined model's gain with)")
        if check.kind in ("binding_depth", "binding_position") and (
                evaluation.binding is None or not evaluation.binding.references):
            raise ConfigError(f"{source}: report.checks[{k}]: {check.kind} needs evaluation.binding with "
                              "references (the JSON holding the reference curve's minimum)")
    return job


def load_job(path: str | Path, overrides: Sequence[str] = ()) -> JobConfig:
    """Read, override (``KEY=VALUE`` strings) and parse the job file ``path``."""
    path = Path(path).resolve()
    data = read_mapping(path)
    try:
        data = apply_overrides(data, overrides)
    except ConfigError as exc:  # name the file the override was meant for
        raise ConfigError(f"{path}: {exc}") from None
    return parse_job(data, path.parent, str(path))
