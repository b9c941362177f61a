"""Chemical elements → a model's atom-type indices, for model families that name their types
(NequIP ``type_names``, DeePMD ``type_map``).

:func:`type_table` builds a lookup [119] (atomic number → type index, −1 where the model has no
type for that element); :func:`atom_types` applies it with errors that name the unknown
elements and the model's types.
"""

from __future__ import annotations

import torch


def type_table(type_names: list[str], species_map: dict[str, str] | None, who: str) -> torch.Tensor:
    """Atomic number → index in ``type_names`` ([119] int64, −1: none). ``species_map``: element
    symbol → type name (default: the type names that are element symbols, as themselves)."""
    from ase.data import atomic_numbers

    species_map = species_map or {t: t for t in type_names if t in atomic_numbers}
    table = torch.full((119,), -1, dtype=torch.long)
    for symbol, type_name in species_map.items():
        if symbol not in atomic_numbers:
            raise ValueError(f"{who}: {symbol!r} is not a chemical element symbol")
        if type_name not in type_names:
            raise ValueError(f"{who}: {symbol} maps to type {type_name!r}, which the model does not have "
                             f"(its types: {list(type_names)})")
        table[atomic_numbers[symbol]] = type_names.index(type_name)
    return table


def atom_types(table: torch.Tensor, numbers: torch.Tensor, type_names: list[str], who: str) -> torch.Tensor:
    """Atomic numbers [N] → type indices [N] through ``table`` (ValueError naming unknown elements)."""
    from ase.data import chemical_symbols

    numbers = numbers.to(table.device).long()
    if numbers.numel() and (numbers.min() < 0 or numbers.max() >= table.numel()):
        raise ValueError(f"{who}: invalid atomic numbers {numbers.unique().tolist()}")
    types = table[numbers]
    if bool((types < 0).any()):
        unknown = sorted({chemical_symbols[int(z)] for z in numbers[types < 0].unique()})
        raise ValueError(f"{who}: the model does not know element(s) {', '.join(unknown)}; its types are "
                         f"{list(type_names)}")
    return types
