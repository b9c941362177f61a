"""The job config reference (``docs/config.md``), generated from the config dataclasses.

Every table row is one dataclass field: its type (:func:`~difftre_torch.config.parse.type_name`),
its default (YAML-ish; ``required`` where there is none) and its meaning, taken from the field's
``metadata["doc"]`` or, failing that, from a ``name: text.`` sentence of the class docstring (as
:class:`~difftre_torch.trainer.TrainerConfig` documents its fields). Nothing here restates a
field, so the reference cannot drift from the code; ``tests/test_config_reference.py`` checks that
``docs/config.md`` is the current output and that every field has a meaning.

    python -m difftre_torch.config.reference           # (re)write docs/config.md
    python -m difftre_torch.config.reference --check   # exit 1 if docs/config.md is stale
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from difftre_torch.config import REQUIRED, SAMPLERS, SECTIONS, _sampler_config_cls, _trainer_config_cls
from difftre_torch.config.parse import type_name
from difftre_torch.config.schema import (
    BindingSection,
    CeilingSection,
    CheckEntry,
    CompareSection,
    EvaluationSection,
    ForceMatchingSection,
    FrameSetEntry,
    OutputSection,
    PotentialSection,
    ReportSection,
    StatePointEntry,
    SystemSection,
    TargetEntry,
)

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "config.md"
REGENERATE = "python -m difftre_torch.config.reference"


# ----------------------------------------------------------------------------- text of a field


def markdown(text: str) -> str:
    """Docstring text as one line of Markdown: Sphinx roles and ``literals`` become `code`,
    whitespace collapses, and ``|`` is escaped so the text can sit in a table cell."""
    text = re.sub(r":\w+:`(~?)([^`]+)`", lambda m: f"`{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}`",
                  text)
    text = text.replace("``", "`")
    return " ".join(text.split()).replace("|", "\\|")


def own_docstring(obj: Any) -> str:
    """``obj``'s own docstring, ``""`` for none (nor the signature dataclasses makes up)."""
    doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else obj.__doc__
    if not doc or (dataclasses.is_dataclass(obj) and doc.startswith(f"{obj.__name__}(")):
        return ""
    return inspect.cleandoc(doc)


def first_paragraph(doc: str, lower: bool = False) -> str:
    """The first paragraph of a docstring as Markdown; ``lower``: to follow a colon."""
    text = markdown(doc.split("\n\n", 1)[0]) if doc else ""
    return text[:1].lower() + text[1:] if lower else text


_BOUNDARY = r"(?:^|(?<=\.\s)|(?<=;\s)|(?<=\n))"


def docstring_fields(cls: type) -> dict[str, str]:
    """Field name → its text in ``cls``'s docstring, which documents fields as sentences
    ``name: text.`` (or ``a, b: text.`` for several) starting a line, a sentence or a
    ``;``-clause. A field the docstring names only inside another field's text (``× lr_decay per
    update`` in ``lr_schedule: ...``) gets that text, marked as such; only names with an
    underscore count as such a mention (a plain word such as ``seed`` may mean anything)."""
    doc = own_docstring(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    if not doc or not names:
        return {}
    alternatives = "|".join(sorted(map(re.escape, names), key=len, reverse=True))
    label = re.compile(rf"{_BOUNDARY}((?:{alternatives})(?:,\s+(?:{alternatives}))*):\s", re.M)
    matches = list(label.finditer(doc))
    labelled = []  # (the label, e.g. "fm_energy_weight, fm_force_weight", its text)
    for k, m in enumerate(matches):
        end = matches[k + 1].start() if k + 1 < len(matches) else len(doc)
        text = doc[m.end():end].split("\n\n", 1)[0]  # a field's text ends with its paragraph
        labelled.append((m.group(1), text.strip().rstrip(";").removesuffix(".").strip()))
    found: dict[str, str] = {}
    for owner, text in labelled:
        for name in re.split(r",\s+", owner):
            found.setdefault(name, text)
    for name in names:
        if name in found or "_" not in name:
            continue
        for owner, text in labelled:
            if re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", text):
                found[name] = f"(under `{owner}`) {text}"
                break
    return found


def field_doc(cls: type, f: dataclasses.Field) -> str:
    """The meaning of field ``f`` of ``cls`` as Markdown: ``metadata["doc"]``, else its sentence
    in the class docstring (:func:`docstring_fields`), else ``""``."""
    text = f.metadata.get("doc") or docstring_fields(cls).get(f.name, "")
    return markdown(text)


def yamlish(value: Any) -> str:
    """``value`` as it would be written in a YAML job file (flow style)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        import yaml

        plain = value and value.strip() == value and not re.search(r"[:#,\[\]{}&*!|>'\"%@`]", value)
        return value if plain and yaml.safe_load(value) == value else '"' + value.replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yamlish(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{yamlish(k)}: {yamlish(v)}" for k, v in value.items()) + "}"
    if dataclasses.is_dataclass(value):
        return yamlish({f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.init})
    return str(value)


def default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return f"`{yamlish(f.default)}`"
    if f.default_factory is not dataclasses.MISSING:
        return f"`{yamlish(f.default_factory())}`"
    return "required"


def field_type(hint: Any) -> str:
    return "any" if hint is Any else type_name(hint)


def fields_of(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


def nested_dataclass(hint: Any) -> type | None:
    """The dataclass a field's type holds (``X``, ``list[X]``, ``X | None``), or None."""
    if dataclasses.is_dataclass(hint):
        return hint
    return next((d for d in map(nested_dataclass, typing.get_args(hint)) if d is not None), None)


def table(cls: type, extra_rows: tuple[tuple[str, str, str, str], ...] = (),
          tables: dict[type, str] | None = None) -> list[str]:
    """The ``| field | type | default | meaning |`` table of dataclass ``cls``; a field holding
    another dataclass names that one's table (``tables``: dataclass → its path)."""
    hints = typing.get_type_hints(cls)
    tables = tables or {}

    def kind(hint: Any) -> str:
        inner = nested_dataclass(hint)
        return field_type(hint) + (f" (see `{tables[inner]}`)" if inner in tables else "")

    rows = [*extra_rows, *((f.name, kind(hints[f.name]), default_text(f), field_doc(cls, f))
                           for f in fields_of(cls))]
    out = ["| field | type | default | meaning |", "|---|---|---|---|"]
    out += [f"| `{name}` | {markdown(kind)} | {default} | {meaning} |" for name, kind, default, meaning in rows]
    return out


# ----------------------------------------------------------------------------- the document's blocks


@dataclass
class Block:
    """One heading of the reference: ``path`` (where it sits in a job file), a paragraph, and the
    table of the dataclass ``cls`` (plus ``extra_rows``) or other ``lines``."""

    level: int
    path: str
    text: str = ""
    cls: type | None = None
    extra_rows: tuple = ()
    lines: list[str] = field(default_factory=list)


def _potential_blocks() -> list[Block]:
    from difftre_torch.potentials.registry import POTENTIALS, CorrectionOptions

    out = [Block(2, "potential", first_paragraph(own_docstring(PotentialSection)) + " Kinds: "
                 + ", ".join(f"`{k}`" for k in POTENTIALS) + ".", PotentialSection)]
    for name, kind in POTENTIALS.items():
        out.append(Block(3, f"potential (kind: {name})", markdown(kind.doc), kind.options))
    out.append(Block(3, "potential.correction", first_paragraph(own_docstring(CorrectionOptions)),
                     CorrectionOptions))
    return out


def _sampler_blocks() -> list[Block]:
    cls = _sampler_config_cls()
    kinds = ["| kind | class | note |", "|---|---|---|"]
    for name, get in SAMPLERS.items():
        sampler = get()
        note = (first_paragraph(own_docstring(sys.modules[sampler.__module__]))
                or first_paragraph(own_docstring(sampler)))
        kinds.append(f"| `{name}` | `{sampler.__module__}.{sampler.__qualname__}` | {note} |")
    kind_row = ("kind", "one of " + ", ".join(repr(k) for k in SAMPLERS), "`ase`",  # parse_job's default
                "the sampler implementation (see the kinds below)")
    return [Block(2, "sampler", first_paragraph(own_docstring(cls)), cls, extra_rows=(kind_row,)),
            Block(3, "sampler kinds", "", lines=kinds)]


def _target_blocks() -> list[Block]:
    from difftre_torch.observables.registry import OBSERVABLES

    out = [Block(2, "targets", "A list; each entry is " + first_paragraph(own_docstring(TargetEntry), lower=True),
                 TargetEntry)]
    # the library's own observables: one a user (or a test) registers at run time is not part of it
    builtin = {n: s for n, s in OBSERVABLES.items() if s.fn.__module__.startswith("difftre_torch.")}
    for name, spec in builtin.items():
        options = getattr(spec, "options", None)
        text = first_paragraph(own_docstring(spec.fn))
        if spec.depends_on_theta:
            text += " Depends on the potential's parameters θ (recomputed at every update)."
        if options is not None and not fields_of(options):
            text += " No options."
        has_table = options is not None and bool(fields_of(options))
        out.append(Block(3, f"targets[].options (observable: {name})", text, options if has_table else None))
    return out


def _check_kinds() -> dict[str, str]:
    """Check kind → its description: the ``* ``kind``: text`` bullet of the checks module's
    docstring, else the first paragraph of the check function's docstring."""
    from difftre_torch.workflow import checks

    bullets = {m.group(1): m.group(2) for m in re.finditer(
        r"^\* ``(\w+)``: (.*?)(?=^\* |^\s*$|\Z)", own_docstring(checks), re.M | re.S)}
    return {name: markdown(bullets.get(name, "").rstrip().rstrip(";.")) or first_paragraph(own_docstring(fn))
            for name, fn in checks.CHECKS.items()}


def blocks() -> list[Block]:
    """Every heading of the reference, the sections in :data:`~difftre_torch.config.SECTIONS` order."""
    trainer = _trainer_config_cls()
    by_section = {
        "system": [Block(2, "system", first_paragraph(own_docstring(SystemSection)), SystemSection)],
        "potential": _potential_blocks(),
        "sampler": _sampler_blocks(),
        "state_points": [Block(2, "state_points", "A list (at least one); each entry is "
                               + first_paragraph(own_docstring(StatePointEntry), lower=True), StatePointEntry)],
        "targets": _target_blocks(),
        "force_matching": [Block(2, "force_matching", first_paragraph(own_docstring(ForceMatchingSection)),
                                 ForceMatchingSection)],
        "trainer": [Block(2, "trainer", first_paragraph(own_docstring(trainer)), trainer)],
        "compare": [Block(2, "compare", first_paragraph(own_docstring(CompareSection))
                          + " Its `targets` entries are those of `targets`.", CompareSection)],
        "evaluation": [Block(2, "evaluation", first_paragraph(own_docstring(EvaluationSection)), EvaluationSection),
                       Block(3, "evaluation.sets[]", first_paragraph(own_docstring(FrameSetEntry)), FrameSetEntry),
                       Block(3, "evaluation.binding", first_paragraph(own_docstring(BindingSection)), BindingSection),
                       Block(3, "evaluation.ceiling", first_paragraph(own_docstring(CeilingSection)), CeilingSection)],
        "report": [Block(2, "report", "", ReportSection),
                   Block(3, "report.checks[]", first_paragraph(own_docstring(CheckEntry)), CheckEntry),
                   Block(3, "check kinds", "", lines=["| kind | holds when |", "|---|---|"]
                         + [f"| `{k}` | {v} |" for k, v in _check_kinds().items()])],
        "output": [Block(2, "output", "", OutputSection)],
    }
    missing = [s for s in SECTIONS if s not in by_section]
    if missing:
        raise KeyError(f"config reference: no block for section(s) {missing}; add them to blocks()")
    return [b for s in SECTIONS for b in by_section[s]]


def documented() -> list[tuple[str, type]]:
    """(path in a job file, dataclass) of every table in the reference."""
    return [(b.path, b.cls) for b in blocks() if b.cls is not None]


# ----------------------------------------------------------------------------- the document

INTRO = f"""\
# Job config reference

<!-- Generated by `{REGENERATE}` from the config dataclasses; do not edit by hand. -->

A job is one YAML (or TOML) file of sections; `difftre check CONFIG` validates it without running
any MD, and every misspelt, missing or mistyped field is an error naming the file and the field
(strings are never coerced: write numbers and booleans without quotes).

```yaml
system:         {{structure, repeat, index}}                  # the simulated cell
potential:      {{kind, <the kind's options>, trainable, correction}}
sampler:        {{kind, <MD settings>}}
state_points:   [{{name, temperature_K, pressure_GPa, ...}}, ...]
targets:        [{{name, observable, file or values, options, ...}}, ...]
force_matching: {{file, scan}}                                # optional
trainer:        {{updates, learning_rate, ...}}
compare:        {{n_blocks, targets}}
evaluation:     {{sets, n_boot, binding, ceiling}}
report:         {{title, checks}}
output:         {{dir}}
```

Required sections: {", ".join(f"`{s}`" for s in REQUIRED)}; every other section and field has the
default listed below. A field whose default is `required` must be given whenever its section (or
list entry) is.

* **Units** are ASE's: Å, eV, fs, K, amu; pressures and stresses in GPa. Names carry the unit
  where it could be mistaken (`temperature_K`, `timestep_fs`, `cutoff_A`).
* **Paths** (structures, models, experiment files, frames) are relative to the config file's
  folder, so a job runs from any working directory; `output.dir` is the exception (relative to
  the working directory).
* **`extends: base.yaml`** at the top level reads that file (in the same folder) first and merges
  this one over it: mappings merge key by key, anything else (lists included) replaces.
* **`--set KEY=VALUE`** on the command line (`difftre refine|check|compare|evaluate CONFIG --set
  trainer.updates=4`, repeatable) overrides one field after `extends:` is followed; `KEY` is a
  dotted path (`targets.0.weight=2` indexes a list) and `VALUE` is read as YAML (`4` a number,
  `[1, 2]` a list, `"4"` a string).

Example jobs: `recipes/gc3n4/full.yaml` and `recipes/gc3n4/quick.yaml` (which extends it).
"""


def render() -> str:
    """The reference as Markdown (the content of ``docs/config.md``)."""
    out = [INTRO.rstrip("\n")]
    every = blocks()
    tables = {b.cls: b.path for b in every if b.cls is not None}
    for b in every:
        out += ["", f"{'#' * b.level} `{b.path}`" if " " not in b.path else f"{'#' * b.level} {_heading(b.path)}"]
        if b.text.strip():
            out += ["", b.text.strip()]
        if b.cls is not None:
            out += [""] + table(b.cls, b.extra_rows, tables)
        if b.lines:
            out += [""] + b.lines
    return "\n".join(out) + "\n"


def _heading(path: str) -> str:
    """``potential (kind: nequip)`` → ``potential`` with ``kind: nequip`` as code."""
    m = re.fullmatch(r"(\S+) \((.+)\)", path)
    return f"`{m.group(1)}` with `{m.group(2)}`" if m else path[0].upper() + path[1:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=REGENERATE, description="Write the job config reference (docs/config.md).")
    parser.add_argument("--check", action="store_true", help="only compare: exit 1 if the file differs")
    parser.add_argument("--path", type=Path, default=DOC_PATH, help=f"the file (default: {DOC_PATH})")
    args = parser.parse_args(argv)
    text = render()
    current = args.path.read_text(encoding="utf-8") if args.path.exists() else None
    if args.check:
        if current != text:
            print(f"{args.path} is out of date with the config dataclasses; regenerate it with `{REGENERATE}`",
                  file=sys.stderr)
            return 1
        print(f"{args.path} is up to date")
        return 0
    if current != text:
        args.path.parent.mkdir(parents=True, exist_ok=True)
        args.path.write_text(text, encoding="utf-8")
        print(f"wrote {args.path}")
    else:
        print(f"{args.path} is up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
