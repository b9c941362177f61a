"""The config reference (docs/config.md) is in step with the config dataclasses.

It is the current output of :func:`difftre_torch.config.reference.render`, every field of every
table has a meaning, and every field name of the shipped example job appears as a table row.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from difftre_torch.config import SECTIONS
from difftre_torch.config.reference import (
    DOC_PATH,
    REGENERATE,
    _check_kinds,
    blocks,
    docstring_fields,
    documented,
    field_doc,
    main,
    render,
)
from difftre_torch.config.schema import TargetEntry

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "recipes" / "gc3n4" / "full.yaml"

# Fields with no doc anywhere yet (owner: the lead). Remove an entry once its doc lands: the
# xfail is strict, so the test fails until this list is brought up to date.
UNDOCUMENTED: dict[str, list[str]] = {}


@pytest.fixture(scope="module")
def text() -> str:
    return render()


def test_docs_file_is_current(text):
    assert DOC_PATH == ROOT / "docs" / "config.md"
    assert DOC_PATH.exists(), f"docs/config.md is missing; generate it with `{REGENERATE}`"
    assert DOC_PATH.read_text(encoding="utf-8") == text, (
        f"docs/config.md is out of date with the config dataclasses; regenerate it with `{REGENERATE}`")


def test_check_mode(tmp_path, capsys):
    path = tmp_path / "config.md"
    assert main(["--check", "--path", str(path)]) == 1
    assert main(["--path", str(path)]) == 0
    assert main(["--check", "--path", str(path)]) == 0
    path.write_text(path.read_text(encoding="utf-8") + "edited\n", encoding="utf-8")
    assert main(["--check", "--path", str(path)]) == 1
    assert REGENERATE in capsys.readouterr().err


def test_sections_in_order(text):
    headings = [line.removeprefix("## `").removesuffix("`") for line in text.splitlines() if line.startswith("## ")]
    assert headings == list(SECTIONS)


@pytest.mark.parametrize(("path", "cls"), [
    pytest.param(path, cls, id=path, marks=[pytest.mark.xfail(
        strict=True, reason=f"{cls.__name__}: no doc for {UNDOCUMENTED[cls.__name__]} (ask the lead to add them)")]
        if cls.__name__ in UNDOCUMENTED else [])
    for path, cls in documented()])
def test_every_field_has_a_meaning(path, cls, text):
    fields = [f for f in dataclasses.fields(cls) if f.init]
    assert fields, f"{path}: {cls.__name__} has no fields; such a block needs no table"
    missing = [f.name for f in fields if not field_doc(cls, f).strip()]
    assert not missing, f"{path} ({cls.__module__}.{cls.__name__}): no doc for {missing}"
    for f in fields:
        assert f"| `{f.name}` |" in text


def test_kind_notes_are_not_empty():
    for b in blocks():
        if b.path.startswith(("potential (kind:", "targets[].options (observable:")):
            assert b.text.strip(), f"{b.path}: no description"
    assert all(_check_kinds().values()), _check_kinds()
    kinds = next(b for b in blocks() if b.path == "sampler kinds")
    assert all(not row.rstrip().endswith("|  |") for row in kinds.lines), kinds.lines


def test_docstring_fields_reads_sentences():
    @dataclasses.dataclass
    class Options:
        """Some settings.

        alpha_A: the first (Å). beta, gamma_K: shared text; delta: with ``gamma_K`` above
        and ``epsilon_eV`` too.
        """

        alpha_A: float = 1.0
        beta: int = 2
        gamma_K: float = 3.0
        delta: bool = False
        epsilon_eV: float = 0.0
        zeta: int = 0

    found = docstring_fields(Options)
    assert found["alpha_A"] == "the first (Å)"
    assert found["beta"] == found["gamma_K"] == "shared text"
    assert found["delta"].startswith("with ``gamma_K``")
    assert found["epsilon_eV"].startswith("(under `delta`)")
    assert "zeta" not in found  # never named: no made-up text


def _free_mappings() -> set[str]:
    """Names of fields whose value is a mapping with the user's own keys (e.g. `references`);
    a target's `options` is not one: its keys are the observable's options."""
    names = set()
    for _, cls in documented():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            if (typing.get_origin(hint) is dict or dict in typing.get_args(hint)
                    or any(typing.get_origin(a) is dict for a in typing.get_args(hint))):
                if not (cls is TargetEntry and f.name == "options"):
                    names.add(f.name)
    return names


def _keys(node, free: set[str], path: str = ""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield f"{path}.{key}" if path else str(key), str(key)
            if key not in free:
                yield from _keys(value, free, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for k, item in enumerate(node):
            yield from _keys(item, free, f"{path}[{k}]")


def test_example_job_fields_are_in_the_reference(text):
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    keys = list(_keys(data, _free_mappings()))
    assert len(keys) > 50
    sections = {key for path, key in keys if "." not in path}
    assert sections <= set(SECTIONS)
    missing = sorted({path for path, key in keys if "." in path and f"| `{key}` |" not in text})
    assert not missing, f"fields of {EXAMPLE.name} without a row in docs/config.md: {missing}"
