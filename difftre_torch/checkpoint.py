"""Atomic writes: a crash never leaves a half-written checkpoint or result.

Every file is written to a temporary name in the same directory, flushed to disk, then renamed
over the target with ``os.replace`` (atomic on POSIX and Windows for one filesystem).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch


def _atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` atomically."""
    return _atomic_write(path, lambda h: torch.save(obj, h))


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """``np.savez_compressed(path, **arrays)`` atomically."""
    return _atomic_write(path, lambda h: np.savez_compressed(h, **arrays))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically."""
    return _atomic_write(path, lambda h: h.write(text.encode("utf-8")))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def load_checkpoint(path: str | os.PathLike) -> Any:
    """Load a checkpoint written by :func:`atomic_torch_save` (CPU tensors, full unpickling).

    Only load checkpoints you wrote: they are pickles.
    """
    return torch.load(path, map_location="cpu", weights_only=False)
