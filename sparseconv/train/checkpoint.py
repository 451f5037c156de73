"""Checkpoints that are written atomically and verified on load.

File format: a magic line, the SHA-256 of the payload, then the payload (``torch.save`` of a dict
of tensors and plain values, loaded with ``weights_only=True`` so a checkpoint cannot run code).
Writing goes to a temporary file in the same folder, is fsynced, then renamed over ``last.pt``
after the previous ``last.pt`` became ``previous.pt``: a crash mid-write never destroys the last
good checkpoint, and a corrupted file is refused on load with the reason.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path

import torch

MAGIC = b"SPARSECONV-CKPT-1\n"


class CheckpointError(RuntimeError):
    """The file is not a sparseconv checkpoint or its content does not match its checksum."""


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Write ``state`` to ``path`` atomically; an existing ``path`` is kept as ``previous.pt``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:  # e.g. a full disk: the previous checkpoints stay as they were
        tmp.unlink(missing_ok=True)
        raise CheckpointError(
            f"could not write checkpoint {path} ({err.strerror or err}); the previous checkpoint "
            "is unchanged"
        ) from err
    if path.exists():
        os.replace(path, path.with_name("previous.pt"))
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        raise CheckpointError(f"{path}: not a sparseconv checkpoint (bad header)")
    digest, _, payload = data[len(MAGIC) :].partition(b"\n")
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise CheckpointError(f"{path}: corrupted (SHA-256 of the content does not match); refused")
    return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)


def load_latest(folder: str | os.PathLike, map_location="cpu") -> tuple[dict, Path] | None:
    """``last.pt``, or ``previous.pt`` with a warning when ``last.pt`` is corrupted; None if neither."""
    folder = Path(folder)
    last, prev = folder / "last.pt", folder / "previous.pt"
    if not last.exists() and not prev.exists():
        return None
    try:
        return load_checkpoint(last, map_location), last
    except (CheckpointError, FileNotFoundError) as err:
        if not prev.exists():
            raise
        warnings.warn(f"{err}; resuming from {prev} instead", stacklevel=2)
        return load_checkpoint(prev, map_location), prev
