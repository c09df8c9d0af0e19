"""Atomic writes: a crash mid-write never leaves a half-written result or checkpoint behind.

Everything is written to a temporary sibling and moved into place with ``os.replace`` (atomic on POSIX).
``tempfile`` makes that sibling private (0600, or 0700 for a folder); it is given the permissions a plain
``open`` or ``mkdir`` would have (under the umask) before the move, so collaborators can read run folders,
and it is deleted if writing fails.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@contextmanager
def _atomic(path: Path, folder: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` (a file, or a folder) to write; then give it the permissions a
    plain ``open`` or ``mkdir`` would and move it onto ``path`` — or, if writing failed, delete it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if folder:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    else:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        umask = os.umask(0o022)  # reading the umask means setting it; put it straight back
        os.umask(umask)
        os.chmod(tmp, (0o777 if folder else 0o666) & ~umask)
        old = path.with_name(f".{path.name}.old") if folder and path.exists() else None
        if old is not None:  # os.replace cannot replace a non-empty folder: move the old one aside
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True) if folder else tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    with _atomic(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def _plain(obj: Any) -> Any:
    """The JSON form of what analyses return besides plain Python: numpy and torch arrays and scalars, sets."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=_plain) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def save_figure(fig, path: str | Path) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    path = Path(path)
    try:
        with _atomic(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def save_checkpoint(model, tokenizer, path: str | Path) -> Path:
    """``save_pretrained`` model and tokenizer into ``path``, replacing any old folder atomically."""
    path = Path(path)
    with _atomic(path, folder=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return path
