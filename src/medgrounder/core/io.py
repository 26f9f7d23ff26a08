"""Atomic writes: a file is written under a temporary name in its own folder, then renamed over
its final name, so a reader (or a resumed run) sees either the old file or the whole new one,
never a half-written one, even when the writer is killed. A whole folder (:func:`write_complete`)
is written beside its final name and renamed into place at the end, for the same reason."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_json", "atomic_write_text", "temporary_name",
           "write_complete"]


def temporary_name(path: str | os.PathLike) -> Path:
    """The hidden sibling a write goes to first (one per process, so two writers never share it)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` to fill a temporary sibling of ``path``, then rename it over ``path``
    (the temporary file is removed if ``write`` fails)."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: object, indent: int | None = 2) -> Path:
    """``obj`` as JSON with a final newline."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def write_complete(root: str | os.PathLike, write: Callable[..., object], **kwargs) -> Path:
    """``write(folder, **kwargs)`` into the sibling ``ROOT.partial`` (emptied first), renamed to
    ``root`` at the end: an interrupted writer leaves no half-written folder where a reader would
    take it for a finished one."""
    root = Path(root)
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp, **kwargs)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(root)
    return root
