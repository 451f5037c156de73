"""Loaders refuse pickled code: a malicious payload never runs."""

import hashlib
import io
import os

import numpy as np
import pytest
import torch

import sparseconv as sc
from sparseconv.train.checkpoint import MAGIC, CheckpointError, load_checkpoint


class _Payload:
    """Unpickling this object would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_with_a_pickled_payload_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save({"model": _Payload(marker)}, buf)
    payload = buf.getvalue()
    path = tmp_path / "last.pt"
    path.write_bytes(MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
    with pytest.raises((CheckpointError, RuntimeError, Exception), match="(?i)weights|unpickl"):
        load_checkpoint(path)
    assert not marker.exists()


def test_a_pruned_model_file_with_a_pickled_array_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.npz"
    np.savez(path, evil=np.array([_Payload(marker)], dtype=object))
    with pytest.raises(ValueError, match="not a sparseconv pruned-model file"):
        sc.prune.load(path)
    assert not marker.exists()


def test_a_non_npz_file_is_refused_with_a_clear_message(tmp_path):
    path = tmp_path / "model.npz"
    path.write_bytes(b"this is not an archive")
    with pytest.raises(ValueError, match="not a sparseconv pruned-model file"):
        sc.prune.load(path)
    with pytest.raises(FileNotFoundError, match="not found"):
        sc.prune.load(tmp_path / "missing.npz")
